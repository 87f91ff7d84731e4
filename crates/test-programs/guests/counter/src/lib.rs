//! Counts the requests its instance has served. Isola gives every request a
//! fresh instance, so the answer must always be 1.

use std::sync::atomic::{AtomicU64, Ordering};

use isola_sdk::{Ctx, Env, Request, Response, Result};

static SERVED: AtomicU64 = AtomicU64::new(0);

#[isola_sdk::fetch]
async fn fetch(_req: Request, _env: Env, _ctx: Ctx) -> Result<Response> {
    let n = SERVED.fetch_add(1, Ordering::SeqCst) + 1;
    Ok(Response::text(n.to_string()))
}
