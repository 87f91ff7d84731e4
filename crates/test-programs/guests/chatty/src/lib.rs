//! Writes to stdout and stderr, and fails on request:
//! `/print` logs two lines and answers 200, `/fail` returns an `Err`,
//! `/panic` panics, `/sandbox` reports what of the host it can see.

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
        "/sandbox" => {
            let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            let fs = match std::fs::read_dir("/") {
                Ok(entries) => format!("{} entries", entries.count()),
                Err(_) => "no access".to_owned(),
            };
            let cwd = std::fs::read_to_string("Cargo.toml").map_or("no access", |_| "readable");
            Ok(Response::text(format!(
                "env: {}\nfs /: {fs}\nfs .: {cwd}\n",
                env.join(" ")
            )))
        }
        other => Ok(Response::text(format!(
            "try /print, /fail, /panic or /sandbox, not {other}\n"
        ))),
    }
}
