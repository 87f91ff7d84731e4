use isola_sdk::{Ctx, Env, Request, Response, Result};

#[isola_sdk::fetch]
async fn fetch(mut req: Request, _env: Env, _ctx: Ctx) -> Result<Response> {
    if req.path() == "/" && req.method() == "GET" {
        return Ok(Response::text("Hello from Isola!\n"));
    }
    let path_with_query = match req.query() {
        Some(query) => format!("{}?{query}", req.path()),
        None => req.path().to_owned(),
    };
    let mut echo = format!("{} {path_with_query}\n", req.method()).into_bytes();
    echo.extend(req.bytes().await?);
    Ok(Response::new(echo).with_header("content-type", "text/plain; charset=utf-8"))
}
