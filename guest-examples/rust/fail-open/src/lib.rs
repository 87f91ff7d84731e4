//! Fail open: if this worker breaks, the request goes to the origin as if
//! the worker were not there (`ctx.pass_through_on_exception()`).

use isola_sdk::{Ctx, Env, Request, Response, Result, bail};

#[isola_sdk::fetch]
async fn handle(mut req: Request, _env: Env, ctx: Ctx) -> Result<Response> {
    ctx.pass_through_on_exception();
    // Some risky enrichment: it only understands JSON objects.
    let body = req.text().await?;
    if req.method() == "POST" && !body.trim_start().starts_with('{') {
        bail!("cannot enrich a body that is not a JSON object");
    }
    if req.query() == Some("crash") {
        panic!("the enrichment crashed");
    }
    Ok(Response::text(format!(
        "enriched by the worker: {} {} ({} bytes)\n",
        req.method(),
        req.path(),
        body.len()
    )))
}
