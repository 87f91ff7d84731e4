//! The `ctx` half of `fetch(request, env, ctx)`, by path (last segment):
//!
//! - `/wait-until?upstream=U&delay=MS`: respond, then (in waitUntil) sleep
//!   and fetch `U/background`
//! - `/wait-until-many?upstream=U`: three waitUntil tasks, the middle fails
//! - `/wait-until-forever`: waitUntil work that outlives any wall limit
//! - `/pass-through?mode=trap|error|none|ok`: ask for pass-through, then fail
//!   that way (or succeed)
//! - `/stream?chunks=N&delay=MS`: a body produced chunk by chunk
//! - `/big?mb=N`: an N MiB body, as fast as the client takes it
//! - `/hash`: read the body as it streams; answer its length and FNV-1a hash
//! - `/info`: the request info, one `key=value` a line
//! - `/auth` → `/tenant` → `/app`: a middleware chain over service bindings
//!   `TENANT` and `APP`, passing `user` and `tenant` as ctx locals
//! - `/loop`: call service binding `SELF` at `/loop`, forever

use std::time::Duration;

use isola_sdk::{Ctx, Env, Request, Response, Result, bail, fetch};

#[isola_sdk::fetch]
async fn handle(mut req: Request, env: Env, ctx: Ctx) -> Result<Response> {
    let param = |name: &str| -> Option<String> {
        req.query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let number =
        |name: &str, default: u64| param(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    let action = format!("/{}", req.path().rsplit('/').next().unwrap_or_default());
    match action.as_str() {
        "/wait-until" => {
            let upstream = param("upstream").unwrap_or_default();
            let delay = number("delay", 300);
            ctx.wait_until(async move {
                std::thread::sleep(Duration::from_millis(delay));
                fetch(format!("{upstream}/background")).await?;
                Ok(())
            });
            Ok(Response::text("responded\n"))
        }
        "/wait-until-many" => {
            let upstream = param("upstream").unwrap_or_default();
            let first = upstream.clone();
            ctx.wait_until(async move {
                fetch(format!("{first}/a")).await?;
                Ok(())
            });
            ctx.wait_until(async { bail!("background failure on purpose") });
            ctx.wait_until(async move {
                fetch(format!("{upstream}/c")).await?;
                Ok(())
            });
            Ok(Response::text("responded\n"))
        }
        "/wait-until-forever" => {
            ctx.wait_until(async {
                std::thread::sleep(Duration::from_secs(60));
                Ok(())
            });
            Ok(Response::text("responded\n"))
        }
        "/pass-through" => {
            let mode = param("mode").unwrap_or_default();
            if mode != "none" {
                ctx.pass_through_on_exception();
            }
            match mode.as_str() {
                "trap" | "none" => panic!("the worker broke"),
                "error" => bail!("the worker returned an error"),
                _ => Ok(Response::text("handled by the worker\n")),
            }
        }
        "/stream" => {
            let (chunks, delay) = (number("chunks", 3), number("delay", 200));
            Ok(Response::stream((0..chunks).map(move |i| {
                if i > 0 {
                    std::thread::sleep(Duration::from_millis(delay));
                }
                format!("chunk {i}\n").into_bytes()
            })))
        }
        "/big" => {
            let chunk = vec![b'z'; 64 * 1024];
            let chunks = number("mb", 1) * 16;
            Ok(Response::stream((0..chunks).map(move |_| chunk.clone())))
        }
        "/hash" => {
            let (mut length, mut hash) = (0u64, 0xcbf2_9ce4_8422_2325u64);
            for chunk in req.body_chunks() {
                let chunk = chunk?;
                length += chunk.len() as u64;
                for byte in chunk {
                    hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
                }
            }
            Ok(Response::text(format!("bytes={length} fnv={hash:016x}\n")))
        }
        "/info" => {
            let info = req.cf();
            let show = |v: Option<String>| v.unwrap_or_else(|| "none".into());
            Ok(Response::text(format!(
                "client={}\nprotocol={}\ntls={}\nrequest_id={}\ncolo={}\ncountry={}\n",
                show(info.client_address),
                info.protocol,
                show(info.tls_version),
                info.request_id,
                show(info.colo),
                show(info.country),
            )))
        }
        "/auth" => {
            let Some(user) = req.header("x-user").map(str::to_owned) else {
                return Ok(Response::text("who are you?\n").with_status(401));
            };
            ctx.set_local("user", &user);
            forward(&env, "TENANT", "/tenant").await
        }
        "/tenant" => {
            let Some(user) = ctx.get_local("user") else {
                return Ok(Response::text("missing local `user`\n").with_status(400));
            };
            ctx.set_local("tenant", &format!("tenant-of-{user}"));
            // A local too large for any header travels just as well.
            ctx.set_local("big", &"x".repeat(64 * 1024));
            forward(&env, "APP", "/app").await
        }
        "/app" => {
            let (Some(user), Some(tenant)) = (ctx.get_local("user"), ctx.get_local("tenant"))
            else {
                return Ok(Response::text("missing local `user` or `tenant`\n").with_status(400));
            };
            let big = ctx.get_local("big").map_or(0, |b| b.len());
            Ok(Response::text(format!(
                "user={user} tenant={tenant} big={big} protocol={} id={}\n",
                req.cf().protocol,
                ctx.request_id()
            )))
        }
        "/loop" => forward(&env, "SELF", "/loop").await,
        other => Ok(Response::text(format!("unknown path {other}\n")).with_status(404)),
    }
}

/// Call a service binding and relay its answer.
async fn forward(env: &Env, binding: &str, path: &str) -> Result<Response> {
    let response = env.service(binding).fetch(path).await?;
    let mut relayed =
        Response::new(response.bytes().to_vec()).with_status(response.status().as_u16());
    if let Some(reason) = response
        .headers()
        .get("x-isola-error")
        .and_then(|v| v.to_str().ok())
    {
        relayed = relayed.with_header("x-isola-error", reason);
    }
    Ok(relayed)
}
