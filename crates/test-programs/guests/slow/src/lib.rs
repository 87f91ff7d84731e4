//! Sleeps `?ms=N` milliseconds (default 1000) before answering, to have a
//! request in flight on purpose.

use std::time::Duration;

use isola_sdk::{Ctx, Env, Request, Response, Result};

#[isola_sdk::fetch]
async fn fetch(req: Request, _env: Env, _ctx: Ctx) -> Result<Response> {
    let ms: u64 = req
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
        .map(str::parse)
        .transpose()?
        .unwrap_or(1000);
    std::thread::sleep(Duration::from_millis(ms));
    Ok(Response::text(format!("slept {ms} ms\n")))
}
