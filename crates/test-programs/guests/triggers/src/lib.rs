//! One component with all three handlers — `fetch`, `scheduled` and a queue
//! consumer — for the end-to-end tests of cron triggers and queues.
//!
//! Bindings: KV `KV`, queue producer `JOBS`; var `SCHEDULED_FAIL`.
//!
//! fetch:
//! - `POST /send?n=N&delay=S`: send N (default 1) messages `{"i": k}`
//!   (k = 0..N-1, `application/json`) to `JOBS`, with `send_batch` in
//!   batches of at most 100 when N > 1 and `send` when N = 1, each delayed
//!   S seconds when `delay` is given → 200 `sent N`.
//! - `POST /send-raw`: one message whose body is the request body, with the
//!   request's content type (none when it has none) → 200 `sent 1`.
//! - `GET /kv/<key>` (percent-decoded): 200 with the value, or 404.
//!
//! scheduled: increments KV `cron:<cron expression>` (the firings so far)
//! and sets `cron-last` to the event's `scheduled_time` (ms) as text; then,
//! when `SCHEDULED_FAIL` is `1`, returns `Err("scheduled failure on
//! purpose")` (the writes are made first).
//!
//! queue, for each message in order:
//! - a JSON body with `"i": k` sets KV `msg:<k>` to this delivery's
//!   `attempts`;
//! - body `poison` → `retry()`;
//! - body `trap` → panic (the host retries the whole batch);
//! - body `error` → no decision; the handler returns `Err` once the batch
//!   is done, so this message (and only the undecided ones) is retried;
//! - a JSON body with `"fail_until": n` and `attempts < n` → `retry()`;
//! - anything else (including bodies starting with `slow`) → `ack()`.
//!
//! After the messages it sets `batch:<first message id>` to the batch size
//! and increments `batches` (read-modify-write: meant for consumers with
//! `max_concurrency = 1`). A batch that panics records neither.

use isola_sdk::{
    Ctx, Env, MessageBatch, Method, QueueMessage, QueueSendOptions, Request, Response, Result,
    ScheduledEvent, anyhow, bail, percent_decode,
};
use serde_json::{Value, json};

#[isola_sdk::fetch]
async fn fetch(mut req: Request, env: Env, _ctx: Ctx) -> Result<Response> {
    let path = req.path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/send") => {
            let n: usize = match req.query_param("n") {
                Some(n) => n.parse().map_err(|_| anyhow!("bad n: {n}"))?,
                None => 1,
            };
            let delay: Option<u32> = match req.query_param("delay") {
                Some(d) => Some(d.parse().map_err(|_| anyhow!("bad delay: {d}"))?),
                None => None,
            };
            let jobs = env.queue("JOBS")?;
            let message = |k: usize| -> Result<QueueMessage> {
                let message = QueueMessage::json(&json!({ "i": k }))?;
                Ok(match delay {
                    Some(seconds) => message.delay_seconds(seconds),
                    None => message,
                })
            };
            if n == 1 {
                let one = message(0)?;
                jobs.send(&one.body, one.options).await?;
            } else {
                let ks: Vec<usize> = (0..n).collect();
                for chunk in ks.chunks(100) {
                    let batch = chunk.iter().map(|&k| message(k)).collect::<Result<_>>()?;
                    jobs.send_batch(batch).await?;
                }
            }
            Ok(Response::text(format!("sent {n}")))
        }
        (Method::POST, "/send-raw") => {
            let content_type = req.header("content-type").map(str::to_owned);
            let body = req.bytes().await?;
            let options = QueueSendOptions {
                content_type,
                delay_seconds: None,
            };
            env.queue("JOBS")?.send(&body, options).await?;
            Ok(Response::text("sent 1"))
        }
        (Method::GET, key) if key.starts_with("/kv/") => {
            let key = percent_decode(&key["/kv/".len()..]);
            Ok(match env.kv("KV")?.get_text(&key).await? {
                Some(value) => Response::text(value),
                None => Response::empty(404),
            })
        }
        _ => Ok(Response::empty(404)),
    }
}

#[isola_sdk::scheduled]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: Ctx) -> Result<()> {
    let kv = env.kv("KV")?;
    let key = format!("cron:{}", event.cron);
    let count = read_count(&env, &key).await? + 1;
    kv.put(&key, count.to_string()).await?;
    kv.put("cron-last", event.scheduled_time.to_string())
        .await?;
    if env.var("SCHEDULED_FAIL").as_deref() == Some("1") {
        bail!("scheduled failure on purpose");
    }
    Ok(())
}

#[isola_sdk::queue]
async fn queue(batch: MessageBatch, env: Env, _ctx: Ctx) -> Result<()> {
    let kv = env.kv("KV")?;
    let mut fail = false;
    for message in &batch.messages {
        let text = String::from_utf8_lossy(&message.body).into_owned();
        let json: Option<Value> = serde_json::from_slice(&message.body).ok();
        if let Some(k) = json.as_ref().and_then(|j| j.get("i")) {
            kv.put(&format!("msg:{k}"), message.attempts.to_string())
                .await?;
        }
        let fail_until = json
            .as_ref()
            .and_then(|j| j.get("fail_until"))
            .and_then(Value::as_u64);
        match text.as_str() {
            "poison" => message.retry(),
            "trap" => panic!("trap on purpose (message {})", message.id),
            "error" => fail = true,
            _ => match fail_until {
                Some(n) if u64::from(message.attempts) < n => message.retry(),
                _ => message.ack(),
            },
        }
    }
    if let Some(first) = batch.messages.first() {
        kv.put(&format!("batch:{}", first.id), batch.len().to_string())
            .await?;
    }
    let batches = read_count(&env, "batches").await? + 1;
    kv.put("batches", batches.to_string()).await?;
    if fail {
        bail!("queue failure on purpose");
    }
    Ok(())
}

/// A counter stored as decimal text in KV; 0 when absent.
async fn read_count(env: &Env, key: &str) -> Result<u64> {
    match env.kv("KV")?.get_text(key).await? {
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| anyhow!("{key} is not a number: {text}")),
        None => Ok(0),
    }
}
