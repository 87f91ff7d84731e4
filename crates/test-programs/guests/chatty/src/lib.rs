//! Writes to stdout and stderr, and fails on request:
//! `/print` logs two lines and answers 200, `/fail` returns an `Err`,
//! `/panic` panics.

use isola_sdk::{Ctx, Env, Request, Response, Result, bail};

#[isola_sdk::fetch]
async fn fetch(req: Request, _env: Env, ctx: Ctx) -> Result<Response> {
    match req.path() {
        "/print" => {
            println!("to stdout from {}", ctx.request_id());
            eprintln!("to stderr, no newline at the end");
            Ok(Response::text("printed\n"))
        }
        "/fail" => bail!("the database is on fire"),
        "/panic" => panic!("guest panicked on purpose"),
        other => Ok(Response::text(format!(
            "try /print, /fail or /panic, not {other}\n"
        ))),
    }
}
