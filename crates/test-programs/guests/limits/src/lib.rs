//! Misbehaves on request, to test the walls around guests (the last path
//! segment picks the behaviour):
//!
//! - `/spin`: an endless pure-compute loop
//! - `/spin-host`: an endless loop calling into the host
//! - `/compute?ms=N`: burn about N ms of CPU (by the wall clock), then 200
//! - `/checksum?iters=N`: a fixed compute loop returning a checksum
//! - `/memory-bomb`: allocate until refused
//! - `/stack-overflow`: recurse without end
//! - `/unreachable`: execute `unreachable`
//! - `/fetch?url=U&n=N`: fetch U N times; report successes and the first error
//! - `/sleep?ms=N`: sleep N ms (awaiting a host timer), then 200

use std::time::{Duration, Instant};

use isola_sdk::{Ctx, Env, Request, Response, Result, fetch};

#[isola_sdk::fetch]
async fn handle(req: Request, _env: Env, ctx: Ctx) -> Result<Response> {
    let param = |name: &str| -> Option<String> {
        req.query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let number = |name: &str, default: u64| -> u64 {
        param(name).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    // Dispatch on the last segment, so the guest works under any route.
    let action = format!("/{}", req.path().rsplit('/').next().unwrap_or_default());
    match action.as_str() {
        "/spin" => loop {
            std::hint::black_box(());
        },
        "/spin-host" => loop {
            std::hint::black_box(ctx.request_id());
        },
        "/compute" => {
            let until = Instant::now() + Duration::from_millis(number("ms", 50));
            let mut x = 0u64;
            while Instant::now() < until {
                for i in 0..10_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
            }
            Ok(Response::text(format!("computed {x}\n")))
        }
        "/checksum" => Ok(Response::text(format!(
            "{}\n",
            checksum(number("iters", 1_000_000))
        ))),
        "/memory-bomb" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "/stack-overflow" => Ok(Response::text(format!("{}\n", recurse(1)))),
        "/unreachable" => {
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
            #[cfg(not(target_arch = "wasm32"))]
            unreachable!()
        }
        "/fetch" => {
            let url = param("url").unwrap_or_default();
            let n = number("n", 1);
            let (mut ok, mut first_error, mut last_body) = (0, None, String::new());
            for _ in 0..n {
                match fetch(url.as_str()).await {
                    Ok(response) => {
                        ok += 1;
                        last_body = response.text()?;
                    }
                    Err(e) => {
                        first_error.get_or_insert(e.to_string());
                    }
                }
            }
            Ok(Response::text(format!(
                "ok={ok}\nerror={}\nbody={last_body}\n",
                first_error.unwrap_or_else(|| "none".into())
            )))
        }
        "/sleep" => {
            std::thread::sleep(Duration::from_millis(number("ms", 100)));
            Ok(Response::text("slept\n"))
        }
        other => Ok(Response::text(format!("unknown path {other}\n")).with_status(404)),
    }
}

// Never inlined: the profiling test looks for it by name.
#[inline(never)]
fn checksum(iters: u64) -> u64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..iters {
        x ^= i;
        x = x.rotate_left(13).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
    x
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 16]);
    recurse(depth + 1) + frame[3]
}
