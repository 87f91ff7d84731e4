//! A counter as a Durable Object: every name is its own `Counter` object,
//! with its count in the object's storage. Requests for one name are
//! handled one at a time by the object's one live instance, so concurrent
//! increments never lose a count.
//!
//! - `GET /counter/<name>`: the count.
//! - `POST /counter/<name>/increment?by=N`: add `N` (default 1), answer
//!   the new count.
//! - `POST /counter/<name>/alarm?in_ms=N&fail=K`: set the object's alarm
//!   `N` ms from now (default 0); its first `K` tries fail on purpose, to
//!   show the host's retries (2 s, 4 s...).
//! - `GET /counter/<name>/alarm`: when the alarm is set for, and each time
//!   it fired (from the object's SQL table).
//!
//! Every answer carries `x-count` (where there is one) and
//! `x-served-by-live-instance`: how many events the object's current
//! instance has served. It grows from one request to the next because the
//! instance (and with it the `Counter` value and its cached count) stays
//! alive between them; it starts again at 1 after the instance is evicted
//! (idle for `durable_object_idle_s`) or reset, while the count, kept in
//! storage, carries on.

use isola_sdk::durable::{ListOptions, now_ms};
use isola_sdk::{
    AlarmInfo, Ctx, DurableObject, Env, Method, ObjectState, OutboundRequest, Request, Response,
    Result, bail, percent_decode,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The worker: routes `/counter/<name>...` to the object called `<name>`.
#[isola_sdk::fetch]
async fn fetch(req: Request, env: Env, _ctx: Ctx) -> Result<Response> {
    let path = req.path().to_owned();
    let Some(rest) = path.strip_prefix("/counter/") else {
        return Ok(usage());
    };
    let (name, action) = rest.split_once('/').unwrap_or((rest, ""));
    let name = percent_decode(name);
    if name.is_empty() {
        return Ok(usage());
    }
    let query = req.query().map(|q| format!("?{q}")).unwrap_or_default();
    let forward = match (req.method().clone(), action) {
        (Method::GET, "") => OutboundRequest::get(format!("/{query}")),
        (Method::POST, "increment") => OutboundRequest::post(format!("/increment{query}"), ""),
        (Method::GET, "alarm") => OutboundRequest::get("/alarm"),
        (Method::POST, "alarm") => OutboundRequest::post(format!("/alarm{query}"), ""),
        _ => return Ok(usage()),
    };
    let stub = env.durable_object("COUNTER").get_by_name(&name)?;
    Ok(stub.fetch(forward).await?.into())
}

fn usage() -> Response {
    Response::text(
        "GET /counter/<name>, POST /counter/<name>/increment?by=N,\n\
         POST /counter/<name>/alarm?in_ms=N&fail=K, GET /counter/<name>/alarm\n",
    )
    .with_status(404)
}

/// One counter. Its fields live as long as the object's instance.
#[isola_sdk::durable_object]
struct Counter {
    state: ObjectState,
    /// The stored count, once read: the instance is the object's only
    /// writer, so the copy stays right until the instance goes.
    count: Option<u64>,
    /// Events (requests and alarms) this instance has served.
    events: u64,
    /// Whether this instance has made the alarm table.
    schema_ready: bool,
}

/// A row of the `alarms` table.
#[derive(Serialize, Deserialize)]
struct Fired {
    fired_at: u64,
    retry_count: u32,
    outcome: String,
}

impl DurableObject for Counter {
    fn new(state: ObjectState, _env: Env) -> Self {
        Counter {
            state,
            count: None,
            events: 0,
            schema_ready: false,
        }
    }

    async fn fetch(&mut self, req: Request) -> Result<Response> {
        self.events += 1;
        let storage = self.state.storage();
        let response = match (req.method().clone(), req.path()) {
            (Method::GET, "/") => {
                let count = self.count().await?;
                self.answer(json!({ "count": count }))?
                    .with_header("x-count", &count.to_string())
            }
            (Method::POST, "/increment") => {
                let by: u64 = match req.query_param("by").map(|by| by.parse()) {
                    None => 1,
                    Some(Ok(by)) => by,
                    Some(Err(_)) => {
                        return Ok(Response::text("by: not a number\n").with_status(400));
                    }
                };
                let before = self.count().await?;
                // The count and the time it changed, together or not at all.
                let count = storage
                    .transaction(async |txn| {
                        let count = before + by;
                        txn.put_json("count", &count).await?;
                        txn.put_json("updated_at", &now_ms()).await?;
                        Ok(count)
                    })
                    .await?;
                self.count = Some(count);
                self.answer(json!({ "count": count }))?
                    .with_header("x-count", &count.to_string())
            }
            (Method::POST, "/alarm") => {
                let number = |name: &str| -> Result<u64> {
                    Ok(match req.query_param(name) {
                        Some(text) => text.parse()?,
                        None => 0,
                    })
                };
                let (in_ms, fail) = (number("in_ms")?, number("fail")?);
                storage.put_json("alarm_fail", &fail).await?;
                let at = now_ms() + in_ms;
                storage.set_alarm(at).await?;
                self.answer(json!({ "scheduled": at }))?.with_status(202)
            }
            (Method::GET, "/alarm") => {
                self.ensure_schema().await?;
                let fired: Vec<Fired> = storage
                    .sql()
                    .exec(
                        "SELECT fired_at, retry_count, outcome FROM alarms ORDER BY rowid",
                        (),
                    )
                    .await?
                    .results()?;
                let scheduled = storage.get_alarm().await?;
                self.answer(json!({ "scheduled": scheduled, "fired": fired }))?
            }
            _ => Response::text("not found\n").with_status(404),
        };
        Ok(response)
    }

    async fn alarm(&mut self, alarm: AlarmInfo) -> Result<()> {
        self.events += 1;
        self.ensure_schema().await?;
        let storage = self.state.storage();
        let fail: u32 = storage.get_json("alarm_fail").await?.unwrap_or(0);
        let outcome = if alarm.retry_count < fail {
            "failed"
        } else {
            "ok"
        };
        storage
            .sql()
            .exec(
                "INSERT INTO alarms(fired_at, retry_count, outcome) VALUES (?, ?, ?)",
                (now_ms() as i64, alarm.retry_count, outcome),
            )
            .await?;
        if outcome == "failed" {
            // The host tries again after 2 s, 4 s...; the row above stays.
            bail!("failing on purpose ({} of {fail})", alarm.retry_count + 1);
        }
        // Keep a note of the last run in the key-value storage too.
        storage.put_json("last_alarm", &now_ms()).await?;
        let notes = storage.list(ListOptions::new().prefix("last_")).await?;
        println!("alarm ran; notes: {}", notes.len());
        Ok(())
    }
}

impl Counter {
    /// The count: the cached copy, or the stored one on this instance's
    /// first read.
    async fn count(&mut self) -> Result<u64> {
        if let Some(count) = self.count {
            return Ok(count);
        }
        let count = self.state.storage().get_json("count").await?.unwrap_or(0);
        self.count = Some(count);
        Ok(count)
    }

    async fn ensure_schema(&mut self) -> Result<()> {
        if !self.schema_ready {
            self.state
                .storage()
                .sql()
                .exec(
                    "CREATE TABLE IF NOT EXISTS alarms(\
                     fired_at INTEGER NOT NULL, retry_count INTEGER NOT NULL, outcome TEXT NOT NULL)",
                    (),
                )
                .await?;
            self.schema_ready = true;
        }
        Ok(())
    }

    /// `body` as JSON, with the object's name and the instance's event
    /// count added.
    fn answer(&self, mut body: serde_json::Value) -> Result<Response> {
        let id = self.state.id();
        body["name"] = json!(id.name());
        body["id"] = json!(id.to_string());
        body["served_by_live_instance"] = json!(self.events);
        Ok(Response::json(&body)?
            .with_header("x-served-by-live-instance", &self.events.to_string()))
    }
}
