//! `isola tail`, `isola profile` and `isola reload`: clients of a running
//! server's admin listener.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use isola_config::Config;
use isola_server::profiles::ProfileEntry;
use serde_json::Value;

/// Where the admin listener is and the token it wants: flags first, then
/// the config's `[server] admin` and `admin_token`, then
/// `$ISOLA_ADMIN_TOKEN`.
pub struct Target {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl Target {
    pub fn resolve(config: &Path, admin: Option<&str>, token: Option<String>) -> Result<Target> {
        let loaded = if admin.is_none() || token.is_none() {
            match Config::load(config) {
                Ok(c) => Some(c),
                Err(e) if admin.is_none() => {
                    return Err(anyhow::Error::new(e).context("give --admin ADDR or a config"));
                }
                Err(_) => None,
            }
        } else {
            None
        };
        let addr = match admin {
            Some(a) => a
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .parse()
                .with_context(|| format!("--admin {a}: not an address such as 127.0.0.1:8788"))?,
            None => loaded
                .as_ref()
                .and_then(|c| c.server.admin)
                .with_context(|| {
                    format!(
                        "{} has no [server] admin address; give --admin",
                        config.display()
                    )
                })?,
        };
        let token = token
            .or_else(|| {
                loaded
                    .as_ref()
                    .and_then(|c| c.server.admin_token.as_ref().map(|t| t.expose().to_owned()))
            })
            .or_else(|| std::env::var("ISOLA_ADMIN_TOKEN").ok());
        Ok(Target { addr, token })
    }

    async fn request(
        &self,
        method: http::Method,
        path_and_query: &str,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("cannot reach the admin listener at {}", self.addr))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = http::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(http::header::HOST, self.addr.to_string());
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        Ok(sender
            .send_request(request.body(Empty::<Bytes>::new())?)
            .await?)
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `POST /reload`: prints the outcome; an error when the server kept its
/// old config.
pub fn reload(target: &Target) -> Result<()> {
    runtime()?.block_on(async {
        let response = target.request(http::Method::POST, "/reload").await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let body = String::from_utf8_lossy(&body);
        if !status.is_success() {
            bail!("{} ({status})", body.trim());
        }
        println!("{}", body.trim());
        Ok(())
    })
}

/// What `isola profile` asks for.
pub struct ProfileArgs {
    pub worker: String,
    pub path: Option<String>,
    pub count: u32,
    pub interval_ms: u64,
    pub out: std::path::PathBuf,
    pub timeout: std::time::Duration,
}

/// `POST /profile`, then wait for the worker's next `count` profiles
/// (`GET /profiles`) and write each one into `out`.
pub fn profile(target: &Target, args: &ProfileArgs) -> Result<()> {
    runtime()?.block_on(async {
        let body = |response: http::Response<hyper::body::Incoming>| async move {
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        };
        let worker_query = form_urlencoded::Serializer::new(String::new())
            .append_pair("worker", &args.worker)
            .finish();
        let list = || async {
            let (_, listed) = body(
                target
                    .request(http::Method::GET, &format!("/profiles?{worker_query}"))
                    .await?,
            )
            .await?;
            serde_json::from_slice::<Vec<ProfileEntry>>(&listed).context("a malformed profile list")
        };
        // Profiles already kept are not this run's.
        let before = list().await?;
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("worker", &args.worker)
            .append_pair("count", &args.count.to_string())
            .append_pair("interval_ms", &args.interval_ms.to_string());
        if let Some(path) = &args.path {
            query.append_pair("path", path);
        }
        let (status, armed) = body(
            target
                .request(http::Method::POST, &format!("/profile?{}", query.finish()))
                .await?,
        )
        .await?;
        let armed = String::from_utf8_lossy(&armed);
        if !status.is_success() {
            bail!("{} ({status})", armed.trim());
        }
        eprintln!("{} (^C to stop)", armed.trim());
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("cannot create {}", args.out.display()))?;
        let deadline = tokio::time::Instant::now() + args.timeout;
        let mut saved = 0;
        let mut seen: std::collections::HashSet<String> =
            before.into_iter().map(|p| p.file).collect();
        while saved < args.count {
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{saved} of {} profile(s) after {} s: the worker had fewer matching requests",
                    args.count,
                    args.timeout.as_secs()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let listed = list().await?;
            // Oldest first, so that files are written in request order.
            for entry in listed.into_iter().rev() {
                if saved == args.count || !seen.insert(entry.file.clone()) {
                    continue;
                }
                let (status, json) = body(
                    target
                        .request(http::Method::GET, &format!("/profiles/{}", entry.file))
                        .await?,
                )
                .await?;
                if !status.is_success() {
                    bail!("GET /profiles/{}: {status}", entry.file);
                }
                let path = args.out.join(&entry.file);
                std::fs::write(&path, &json)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!(
                    "{} {} {} ({} samples)",
                    path.display(),
                    entry.method,
                    entry.path,
                    entry.samples
                );
                saved += 1;
            }
        }
        Ok(())
    })
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Pretty,
    Json,
}

/// `GET /tail`: print events until the server goes away or ^C.
pub fn tail(
    target: &Target,
    worker: Option<&str>,
    status: Option<&str>,
    format: Format,
) -> Result<()> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(worker) = worker {
        query.append_pair("worker", worker);
    }
    if let Some(status) = status {
        query.append_pair("status", status);
    }
    let path = format!("/tail?{}", query.finish());
    runtime()?.block_on(async {
        let response = target.request(http::Method::GET, &path).await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.into_body().collect().await?.to_bytes();
            bail!("{} ({status})", String::from_utf8_lossy(&body).trim());
        }
        let mut body = response.into_body();
        let mut buffer = Vec::new();
        let mut data = String::new();
        while let Some(frame) = body.frame().await {
            let Ok(chunk) = frame?.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&chunk);
            while let Some(newline) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=newline).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                if line.is_empty() {
                    if !data.is_empty() {
                        print_event(&data, format)?;
                        data.clear();
                    }
                } else if let Some(payload) = line.strip_prefix("data:") {
                    data.push_str(payload.trim_start());
                } else if line == ": tailing" {
                    eprintln!("tailing {} (connected; ^C to stop)", target.addr);
                } else if let Some(comment) = line.strip_prefix(": ")
                    && comment != "keepalive"
                {
                    eprintln!("{comment}");
                }
            }
        }
        eprintln!("the server closed the tail");
        Ok(())
    })
}

fn print_event(data: &str, format: Format) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match format {
        Format::Json => writeln!(stdout, "{data}")?,
        Format::Pretty => {
            let event: Value = serde_json::from_str(data).context("a malformed tail event")?;
            write!(stdout, "{}", pretty(&event))?;
        }
    }
    stdout.flush()?;
    Ok(())
}

/// One line per request (`time worker method path status cpu wall`), its
/// guest lines indented below.
fn pretty(event: &Value) -> String {
    let s = |key: &str| match &event[key] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut out = if event["type"] == "request" {
        let mut line = format!(
            "{} {} {} {} {} cpu={}ms wall={}ms",
            s("time"),
            s("worker"),
            s("method"),
            s("path"),
            s("status"),
            s("cpu_ms"),
            s("wall_ms"),
        );
        if let Value::String(limit) = &event["limit"] {
            line.push_str(&format!(" limit={limit}"));
        }
        line.push_str(&format!(" id={}\n", s("request_id")));
        line
    } else {
        format!(
            "{} {} {} {} {}\n",
            s("time"),
            s("worker"),
            s("kind"),
            s("outcome"),
            s("message")
        )
    };
    if let Value::Object(error) = &event["error"] {
        out.push_str(&failure_lines(error));
    }
    if let Some(backtrace) = event["backtrace"].as_str().filter(|b| *b != "none") {
        for line in backtrace.lines() {
            out.push_str(&format!("  {}\n", line.trim_start()));
        }
    }
    for log in event["logs"].as_array().into_iter().flatten() {
        let stream = log["stream"].as_str().unwrap_or("-");
        let message = log["message"].as_str().unwrap_or("");
        out.push_str(&format!("  {stream}: {message}\n"));
    }
    out
}

/// Frames shown for a failure: its innermost ones after the panic and
/// runtime machinery, which is where the guest's author looks first.
const SHOWN_FRAMES: usize = 6;

/// `  error: <reason>: <cause>` and the failure's top frames, one a line.
fn failure_lines(error: &serde_json::Map<String, Value>) -> String {
    let reason = error["reason"].as_str().unwrap_or("-");
    let mut out = match error.get("cause").and_then(Value::as_str) {
        Some(cause) => format!("  error: {reason}: {cause}\n"),
        None => format!("  error: {reason}\n"),
    };
    let frames: Vec<&Value> = error
        .get("frames")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let machinery = frames.iter().take_while(|f| is_machinery(f)).count();
    let shown = if machinery == frames.len() {
        0
    } else {
        machinery
    };
    for frame in frames.iter().skip(shown).take(SHOWN_FRAMES) {
        let function = frame["function"].as_str().unwrap_or("?");
        match frame["location"].as_str() {
            Some(location) => out.push_str(&format!("    at {function} ({location})\n")),
            None => out.push_str(&format!("    at {function}\n")),
        }
    }
    let left = frames.len() - shown.min(frames.len());
    if left > SHOWN_FRAMES {
        out.push_str(&format!("    … {} more\n", left - SHOWN_FRAMES));
    }
    out
}

/// A frame of Rust's panic and abort machinery or its standard library,
/// above the guest's own code.
fn is_machinery(frame: &Value) -> bool {
    let function = frame["function"].as_str().unwrap_or("");
    let name = function.split_once('!').map_or(function, |(_, name)| name);
    let in_std_source = frame["location"]
        .as_str()
        .is_some_and(|l| l.starts_with("/rustc/") || l.contains("/library/std/"));
    in_std_source
        || [
            "std::",
            "core::",
            "alloc::",
            "__rust",
            "rust_panic",
            "panic_abort",
            "abort",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_request_lines_carry_status_timing_and_guest_lines() {
        let event = serde_json::json!({
            "type": "request", "time": "2026-01-01T00:00:00.000Z", "worker": "app",
            "method": "GET", "path": "/x", "status": 503, "cpu_ms": 1.5, "wall_ms": 3.0,
            "limit": "cpu", "request_id": "abc",
            "logs": [{"stream": "stdout", "message": "hi"}],
        });
        assert_eq!(
            pretty(&event),
            "2026-01-01T00:00:00.000Z app GET /x 503 cpu=1.5ms wall=3.0ms limit=cpu id=abc\n  stdout: hi\n"
        );
    }

    #[test]
    fn a_failure_shows_its_cause_and_the_guests_frames_past_the_panic_machinery() {
        let frames: Vec<Value> = [
            ("app.wasm!__rust_start_panic", None),
            (
                "app.wasm!std::panicking::begin_panic_handler",
                Some("/rustc/abc/library/std/src/panicking.rs:697:5"),
            ),
            (
                "app.wasm!core::panicking::panic_fmt",
                Some("/rustc/abc/library/core/src/panicking.rs:75:14"),
            ),
            ("app.wasm!app::boom", Some("src/lib.rs:12:5")),
            ("app.wasm!app::fetch", Some("src/lib.rs:20:9")),
        ]
        .iter()
        .map(|(function, location)| serde_json::json!({"function": function, "location": location}))
        .collect();
        let event = serde_json::json!({
            "type": "request", "time": "t", "worker": "app", "method": "GET", "path": "/",
            "status": 500, "cpu_ms": 1.0, "wall_ms": 2.0, "request_id": "abc",
            "error": {"reason": "exception", "limit": null,
                      "cause": "wasm trap: unreachable (panicked at src/lib.rs:12:5: boom)",
                      "frames": frames},
            "logs": [],
        });
        assert_eq!(
            pretty(&event),
            "t app GET / 500 cpu=1.0ms wall=2.0ms id=abc\n\
             \x20 error: exception: wasm trap: unreachable (panicked at src/lib.rs:12:5: boom)\n\
             \x20   at app.wasm!app::boom (src/lib.rs:12:5)\n\
             \x20   at app.wasm!app::fetch (src/lib.rs:20:9)\n"
        );
    }
}
