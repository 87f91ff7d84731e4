//! The classic edge proxy: fetch from the origin, add a header, answer, and
//! do the bookkeeping after the client has its response (waitUntil).

use isola_sdk::{Ctx, Env, OutboundRequest, Request, Response, Result, fetch};

#[isola_sdk::fetch]
async fn handle(req: Request, env: Env, ctx: Ctx) -> Result<Response> {
    let origin = env
        .var("ORIGIN_URL")
        .unwrap_or_else(|| "http://127.0.0.1:8787".into());
    // `/proxy/a/b?c` is fetched from `{ORIGIN_URL}/a/b?c`.
    let path = req.path().strip_prefix("/proxy").unwrap_or(req.path());
    let path = if path.is_empty() { "/" } else { path };
    let url = match req.query() {
        Some(query) => format!("{origin}{path}?{query}"),
        None => format!("{origin}{path}"),
    };
    let upstream = fetch(OutboundRequest::get(url.as_str())).await?;

    let mut response =
        Response::new(upstream.bytes().to_vec()).with_status(upstream.status().as_u16());
    if let Some(content_type) = upstream.headers().get("content-type") {
        response = response.with_header("content-type", content_type.to_str()?);
    }
    let response = response
        .with_header("x-foo", "bar")
        .with_header("x-proxied-from", &url);

    // After the response: report the hit, if a collector is configured.
    let collector = env.var("HITS_URL");
    let (status, request_id) = (upstream.status().as_u16(), ctx.request_id());
    ctx.wait_until(async move {
        let line = format!("proxied {url} -> {status} (request {request_id})");
        match collector {
            Some(collector) => {
                fetch(OutboundRequest::post(collector.as_str(), line)).await?;
            }
            None => println!("{line}"),
        }
        Ok(())
    });
    Ok(response)
}
