//! Fan-out with a queue: one request creates a job of many documents, a
//! queue consumer processes them in small batches, and a cron trigger
//! reports on the jobs still running.
//!
//! - `POST /jobs[?documents=N]`: create a job of N documents (200 by
//!   default, at most 1000): one row in D1, one queue message per document
//!   (`send_batch`, 100 at a time) → 202 `{"id", "total", "status"}`
//! - `GET /jobs`: the last 20 jobs with their progress
//! - `GET /jobs/<id>`: one job's progress: `{"id", "total", "done",
//!   "words", "finished_at"}`
//!
//! The consumer (`#[isola_sdk::queue]`) generates each document, counts
//! its words and checksums it, and stores the result with `INSERT OR
//! IGNORE`, so a message delivered twice changes nothing. The whole batch
//! is written in one D1 transaction: if it fails the handler returns `Err`
//! and every message is retried; a message that cannot be parsed is retried
//! on its own until it lands in the dead-letter queue.
//!
//! The cron handler (`#[isola_sdk::scheduled]`) prints the progress of
//! unfinished jobs and adds a row to `progress_log`.

use isola_sdk::{
    BindingError, Ctx, D1, D1Statement, Env, MessageBatch, Method, QueueMessage, Request, Response,
    Result, ScheduledEvent,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS jobs(
        id INTEGER PRIMARY KEY,
        total INTEGER NOT NULL,
        created_at TEXT NOT NULL DEFAULT (datetime('now')),
        finished_at TEXT
    );
    CREATE TABLE IF NOT EXISTS documents(
        job_id INTEGER NOT NULL,
        doc INTEGER NOT NULL,
        words INTEGER NOT NULL,
        checksum TEXT NOT NULL,
        processed_at TEXT NOT NULL DEFAULT (datetime('now')),
        PRIMARY KEY (job_id, doc)
    );
    CREATE TABLE IF NOT EXISTS progress_log(
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL DEFAULT (datetime('now')),
        cron TEXT NOT NULL,
        scheduled_time INTEGER NOT NULL,
        unfinished_jobs INTEGER NOT NULL,
        pending_documents INTEGER NOT NULL
    );
";

const DEFAULT_DOCUMENTS: u32 = 200;
const MAX_DOCUMENTS: u32 = 1000;

/// The body of one queue message: a document of a job.
#[derive(Serialize, Deserialize)]
struct Task {
    job: i64,
    doc: u32,
}

#[derive(Serialize, Deserialize)]
struct Progress {
    id: i64,
    total: i64,
    done: i64,
    words: i64,
    created_at: String,
    finished_at: Option<String>,
}

const PROGRESS: &str = "
    SELECT j.id, j.total, j.created_at, j.finished_at,
           count(d.doc) AS done, coalesce(sum(d.words), 0) AS words
    FROM jobs j LEFT JOIN documents d ON d.job_id = j.id";

#[isola_sdk::fetch]
async fn fetch(req: Request, env: Env, _ctx: Ctx) -> Result<Response> {
    let db = env.d1("DB")?;
    let path = req.path().trim_end_matches('/').to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/jobs") => {
            let total = match req.query_param("documents") {
                None => DEFAULT_DOCUMENTS,
                Some(n) => match n.parse::<u32>() {
                    Ok(n) if (1..=MAX_DOCUMENTS).contains(&n) => n,
                    _ => return error(400, format!("documents must be 1..={MAX_DOCUMENTS}")),
                },
            };
            db.exec(SCHEMA).await?;
            let job = db
                .prepare("INSERT INTO jobs(total) VALUES (?1)")
                .bind([total])
                .run()
                .await?
                .last_row_id;
            // One message per document, 100 per call (the most a batch
            // may hold).
            let docs = env.queue("DOCS")?;
            let tasks: Vec<u32> = (0..total).collect();
            for chunk in tasks.chunks(100) {
                let messages = chunk
                    .iter()
                    .map(|&doc| QueueMessage::json(&Task { job, doc }))
                    .collect::<Result<Vec<_>>>()?;
                docs.send_batch(messages).await?;
            }
            Ok(Response::json(&json!({
                "id": job,
                "total": total,
                "status": format!("/jobs/{job}"),
            }))?
            .with_status(202))
        }
        (Method::GET, "/jobs") => {
            let jobs = db
                .prepare(format!(
                    "{PROGRESS} GROUP BY j.id ORDER BY j.id DESC LIMIT 20"
                ))
                .all()
                .await;
            match jobs {
                Ok(jobs) => Response::json(&jobs.results::<Progress>()?),
                Err(e) if is_missing_table(&e) => Response::json(&json!([])),
                Err(e) => Err(e),
            }
        }
        (Method::GET, other) => {
            let Some(id) = other
                .strip_prefix("/jobs/")
                .and_then(|id| id.parse::<i64>().ok())
            else {
                return error(404, "not found");
            };
            let progress = db
                .prepare(format!("{PROGRESS} WHERE j.id = ?1 GROUP BY j.id"))
                .bind([id])
                .first::<Progress>()
                .await;
            match progress {
                Ok(Some(progress)) => Response::json(&progress),
                Ok(None) => error(404, "no such job"),
                Err(e) if is_missing_table(&e) => error(404, "no such job"),
                Err(e) => Err(e),
            }
        }
        _ => error(405, "try POST /jobs, GET /jobs or GET /jobs/<id>"),
    }
}

#[isola_sdk::queue]
async fn queue(batch: MessageBatch, env: Env, _ctx: Ctx) -> Result<()> {
    let db = env.d1("DB")?;
    let mut statements = Vec::new();
    let mut jobs = Vec::new();
    for message in &batch.messages {
        let task: Task = match message.json() {
            Ok(task) => task,
            Err(e) => {
                // It will never parse: retried up to max_retries, it ends
                // up in the dead-letter queue for someone to look at.
                eprintln!("message {}: not a task: {e}", message.id);
                message.retry();
                continue;
            }
        };
        let (words, checksum) = process(&document(task.job, task.doc));
        statements.push(
            db.prepare(
                "INSERT OR IGNORE INTO documents(job_id, doc, words, checksum)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .bind((task.job, task.doc, words, format!("{checksum:016x}"))),
        );
        if !jobs.contains(&task.job) {
            jobs.push(task.job);
        }
    }
    statements.extend(jobs.into_iter().map(|job| finish_if_complete(&db, job)));
    if !statements.is_empty() {
        // One transaction: if it fails, returning the error retries every
        // message not retried above.
        db.batch(statements).await?;
    }
    Ok(())
}

#[isola_sdk::scheduled]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: Ctx) -> Result<()> {
    let db = env.d1("DB")?;
    db.exec(SCHEMA).await?;
    let unfinished = db
        .prepare(format!(
            "{PROGRESS} WHERE j.finished_at IS NULL GROUP BY j.id ORDER BY j.id"
        ))
        .all()
        .await?
        .results::<Progress>()?;
    let mut pending = 0;
    for job in &unfinished {
        pending += job.total - job.done;
        println!(
            "[{}] job {}: {}/{} documents ({} words so far)",
            event.cron, job.id, job.done, job.total, job.words
        );
    }
    if unfinished.is_empty() {
        println!("[{}] no unfinished jobs", event.cron);
    }
    db.prepare(
        "INSERT INTO progress_log(cron, scheduled_time, unfinished_jobs, pending_documents)
         VALUES (?1, ?2, ?3, ?4)",
    )
    .bind((
        event.cron.as_str(),
        event.scheduled_time as i64,
        unfinished.len() as i64,
        pending,
    ))
    .run()
    .await?;
    Ok(())
}

/// Mark `job` finished once all its documents are in.
fn finish_if_complete(db: &D1, job: i64) -> D1Statement {
    db.prepare(
        "UPDATE jobs SET finished_at = datetime('now')
         WHERE id = ?1 AND finished_at IS NULL
           AND (SELECT count(*) FROM documents WHERE job_id = ?1) >= total",
    )
    .bind([job])
}

/// The text of a document: a few thousand pseudo-random words, the same
/// every time for the same job and document.
fn document(job: i64, doc: u32) -> String {
    const WORDS: [&str; 16] = [
        "queue",
        "batch",
        "worker",
        "message",
        "retry",
        "ack",
        "cron",
        "trigger",
        "isola",
        "component",
        "wasm",
        "host",
        "guest",
        "binding",
        "document",
        "job",
    ];
    let mut state = (job as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(doc) ^ 0xD1B5;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let count = 2000 + (next() % 2000) as usize;
    let mut text = String::with_capacity(count * 8);
    for i in 0..count {
        if i > 0 {
            text.push(if next() % 12 == 0 { '\n' } else { ' ' });
        }
        text.push_str(WORDS[(next() % WORDS.len() as u64) as usize]);
    }
    text
}

/// Word count and FNV-1a checksum of a document.
fn process(text: &str) -> (i64, u64) {
    let words = text.split_whitespace().count() as i64;
    let checksum = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (words, checksum)
}

/// Whether a query failed because the tables are not there yet (they are
/// created by the first job or the first cron run).
fn is_missing_table(error: &isola_sdk::Error) -> bool {
    matches!(
        error.downcast_ref::<BindingError>(),
        Some(BindingError::Backend(message)) if message.contains("no such table")
    )
}

fn error(status: u16, message: impl Into<String>) -> Result<Response> {
    Ok(Response::json(&json!({ "error": message.into() }))?.with_status(status))
}
