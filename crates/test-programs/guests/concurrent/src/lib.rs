//! Waits on several things at once, to show the SDK's async is concurrent
//! (the last path segment picks the behaviour):
//!
//! - `/fan-out?upstream=U&n=N`: fetch `U/item/0` … `U/item/{N-1}` together
//!   (`join_all`); answer `count=` (the 200s), `elapsed_ms=` and the first
//!   error, if any
//! - `/pair?upstream=U`: two fetches with `futures::join!`, same answer
//! - `/wait-until?upstream=U&n=N&mode=fetch|sleep&ms=M`: respond, then run N
//!   `wait_until` tasks; task i fetches `U/bg/i` (`fetch`), or sleeps M ms
//!   and then fetches `U/slept/i` (`sleep`)
//! - `/sleep?ms=M&n=N`: N sleeps of M ms together; answer `elapsed_ms=`

use std::time::{Duration, Instant};

use futures::future::join_all;
use isola_sdk::{Ctx, Env, Request, Response, Result, fetch};

#[isola_sdk::fetch]
async fn handle(req: Request, _env: Env, ctx: Ctx) -> Result<Response> {
    let upstream = req.query_param("upstream").unwrap_or_default();
    let number = |name: &str, default: u64| -> u64 {
        req.query_param(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let action = format!("/{}", req.path().rsplit('/').next().unwrap_or_default());
    match action.as_str() {
        "/fan-out" => {
            let started = Instant::now();
            let fetches = (0..number("n", 10)).map(|i| fetch(format!("{upstream}/item/{i}")));
            let results = join_all(fetches).await;
            Ok(report(started, results))
        }
        "/pair" => {
            let started = Instant::now();
            let (a, b) = futures::join!(
                fetch(format!("{upstream}/pair/a")),
                fetch(format!("{upstream}/pair/b"))
            );
            Ok(report(started, vec![a, b]))
        }
        "/wait-until" => {
            let sleep = req.query_param("mode").as_deref() == Some("sleep");
            let ms = number("ms", 300);
            for i in 0..number("n", 5) {
                let upstream = upstream.clone();
                ctx.wait_until(async move {
                    if sleep {
                        isola_sdk::sleep(Duration::from_millis(ms)).await;
                        fetch(format!("{upstream}/slept/{i}")).await?;
                    } else {
                        fetch(format!("{upstream}/bg/{i}")).await?;
                    }
                    Ok(())
                });
            }
            Ok(Response::text("responded\n"))
        }
        "/sleep" => {
            let started = Instant::now();
            let ms = Duration::from_millis(number("ms", 100));
            join_all((0..number("n", 10)).map(|_| isola_sdk::sleep(ms))).await;
            Ok(Response::text(format!(
                "elapsed_ms={}\n",
                started.elapsed().as_millis()
            )))
        }
        other => Ok(Response::text(format!("unknown path {other}\n")).with_status(404)),
    }
}

fn report(started: Instant, results: Vec<Result<isola_sdk::FetchResponse>>) -> Response {
    let elapsed = started.elapsed().as_millis();
    let count = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status() == 200))
        .count();
    let error = results
        .iter()
        .find_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
        .unwrap_or_else(|| "none".into());
    Response::text(format!(
        "count={count}\nelapsed_ms={elapsed}\nerror={error}\n"
    ))
}
