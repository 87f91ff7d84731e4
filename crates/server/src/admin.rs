//! The admin listener (`[server] admin`): operator endpoints kept off the
//! public listener.
//!
//! - `GET /healthz`: the process is up (200).
//! - `GET /readyz`: 200 once every worker is compiled and loaded, else 503;
//!   503 too while requests are being refused as overloaded.
//! - `GET /metrics`: Prometheus text format (see [`crate::telemetry`]).
//! - `GET /tail[?worker=NAME][&status=5xx,404,ok,error]`: live request and
//!   guest log events as Server-Sent Events (one JSON object per `data:`).
//! - `POST /reload`: re-read the config and swap it in (what SIGHUP does).
//! - `POST /__scheduled?cron=…[&worker=…]`: fire a worker's scheduled
//!   handler now (Wrangler's `/__scheduled`).
//! - `POST /profile?worker=NAME[&path=/x][&count=N][&interval_ms=M]`:
//!   profile the worker's next N requests (under `/x`), sampling every M
//!   ms (see [`crate::profiles`]). `GET /profiles[?worker=NAME]` lists the
//!   profiles kept (JSON), `GET /profiles/<file>` is one, in the Firefox
//!   profiler's format.
//!
//! With `admin_token` set, every call needs `authorization: Bearer <token>`;
//! off loopback the token is required.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// `/readyz` says overloaded while a refusal is this recent.
const OVERLOAD_WINDOW: Duration = Duration::from_secs(1);
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use isola_backends::queue::QueueStore;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use crate::app::App;
use crate::profiles::{MAX_COUNT, MAX_INTERVAL_MS, ProfileStore};
use crate::telemetry::TailEvent;

/// Re-reads the config and installs it; `Ok` says what was loaded, `Err`
/// why the old config keeps serving.
pub type Reloader =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// What the admin listener serves.
pub struct AdminOptions {
    pub app: Arc<App>,
    /// Required when binding off loopback.
    pub token: Option<String>,
    /// `POST /reload`; 404 without it.
    pub reloader: Option<Reloader>,
    /// For the queue depth gauge of consumed queues.
    pub queues: Option<Arc<dyn QueueStore>>,
    /// Where per-request profiles are kept.
    pub profiles: ProfileStore,
}

pub struct Admin {
    listener: TcpListener,
    state: Arc<State>,
}

struct State {
    options: AdminOptions,
}

/// How often an idle tail stream gets a comment line.
const KEEPALIVE: Duration = Duration::from_secs(15);

type Response = http::Response<BoxBody<Bytes, Infallible>>;

fn text(status: u16, body: impl Into<String>) -> Response {
    http::Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.into())).boxed())
        .expect("a valid response")
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

impl Admin {
    /// Bind the admin listener. Off loopback it refuses to start without a
    /// token: metrics, tail and reload are not for the open network.
    pub async fn bind(addr: SocketAddr, options: AdminOptions) -> std::io::Result<Admin> {
        if !addr.ip().is_loopback() && options.token.as_deref().is_none_or(str::is_empty) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("the admin listener on {addr} is off loopback: set `admin_token`"),
            ));
        }
        Ok(Admin {
            listener: TcpListener::bind(addr).await?,
            state: Arc::new(State { options }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until the task is dropped; each connection on its own task.
    pub async fn run(self) {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                continue;
            };
            let state = self.state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.handle(request).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

impl State {
    async fn handle<B>(&self, request: http::Request<B>) -> Response {
        if let Some(token) = &self.options.token {
            let expected = format!("Bearer {token}");
            let given = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map_or(&b""[..], |v| v.as_bytes());
            if !same_secret(given, expected.as_bytes()) {
                return text(
                    401,
                    "unauthorized: send `authorization: Bearer <admin_token>`\n",
                );
            }
        }
        let query: Vec<(String, String)> = request
            .uri()
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let app = &self.options.app;
        match (request.method(), request.uri().path()) {
            (&http::Method::GET, "/healthz") => text(200, "ok\n"),
            (&http::Method::GET, "/readyz") => match app.current() {
                // A load balancer should send elsewhere for a moment.
                Some(_) if app.telemetry().overloaded_within(OVERLOAD_WINDOW) => text(
                    503,
                    "not ready: overloaded, requests were refused in the last second\n",
                ),
                Some(generation) => text(
                    200,
                    format!(
                        "ready: generation {}, {} worker(s)\n",
                        generation.id,
                        generation.workers().len()
                    ),
                ),
                None => text(503, "not ready: the workers are not loaded yet\n"),
            },
            (&http::Method::GET, "/metrics") => self.metrics().await,
            (&http::Method::GET, "/tail") => {
                match TailFilter::new(param("worker"), param("status").as_deref()) {
                    Ok(filter) => self.tail(filter),
                    Err(e) => text(400, format!("{e}\n")),
                }
            }
            (&http::Method::POST, "/reload") => match &self.options.reloader {
                Some(reload) => match reload().await {
                    Ok(message) => text(200, format!("{message}\n")),
                    Err(e) => text(
                        500,
                        format!("reload failed, the old config keeps serving: {e}\n"),
                    ),
                },
                None => text(404, "this server has no config file to reload\n"),
            },
            (&http::Method::POST, "/__scheduled") => {
                self.scheduled(param("worker"), param("cron")).await
            }
            (&http::Method::POST, "/profile") => self.arm_profile(&param),
            (&http::Method::GET, "/profiles") => self.list_profiles(param("worker")),
            (&http::Method::GET, path) if path.starts_with("/profiles/") => {
                match self.options.profiles.read(&path["/profiles/".len()..]) {
                    Some(json) => http::Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(json)).boxed())
                        .expect("a valid response"),
                    None => text(404, "no such profile\n"),
                }
            }
            (_, "/__scheduled" | "/reload" | "/profile") => text(405, "use POST\n"),
            (_, "/healthz" | "/readyz" | "/metrics" | "/tail" | "/profiles") => {
                text(405, "use GET\n")
            }
            _ => text(404, "not found\n"),
        }
    }

    /// `POST /profile`: arm a worker of the current generation. A reload
    /// makes new workers, which start unarmed.
    fn arm_profile(&self, param: &dyn Fn(&str) -> Option<String>) -> Response {
        let Some(name) = param("worker") else {
            return text(400, "add ?worker=NAME\n");
        };
        let number = |key: &str, default: u64, max: u64| match param(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| format!("{key}={v}: give a whole number from 1 to {max}\n")),
        };
        let (count, interval_ms) = match (
            number("count", 1, u64::from(MAX_COUNT)),
            number("interval_ms", 1, MAX_INTERVAL_MS),
        ) {
            (Ok(count), Ok(interval)) => (count as u32, interval),
            (Err(e), _) | (_, Err(e)) => return text(400, e),
        };
        let path = param("path").filter(|p| !p.is_empty());
        if path.as_deref().is_some_and(|p| !p.starts_with('/')) {
            return text(400, "path: give a path prefix starting with `/`\n");
        }
        let Some(generation) = self.options.app.current() else {
            return text(503, "not ready: the workers are not loaded yet\n");
        };
        let Some(worker) = generation.workers().iter().find(|w| w.name() == name) else {
            return text(404, format!("no worker `{name}`\n"));
        };
        worker.profile_next(self.options.profiles.request(
            count,
            path.clone(),
            Duration::from_millis(interval_ms),
        ));
        text(
            200,
            format!(
                "armed: the next {count} request(s) of `{name}`{}, sampled every {interval_ms} ms\n",
                path.map(|p| format!(" under {p}")).unwrap_or_default()
            ),
        )
    }

    /// `GET /profiles`: the profiles kept, newest first, as JSON.
    fn list_profiles(&self, worker: Option<String>) -> Response {
        match self.options.profiles.list() {
            Ok(entries) => {
                let entries: Vec<_> = entries
                    .into_iter()
                    .filter(|e| worker.as_deref().is_none_or(|w| w == e.worker))
                    .collect();
                http::Response::builder()
                    .header("content-type", "application/json")
                    .body(
                        Full::new(Bytes::from(
                            serde_json::to_vec(&entries).expect("profile entries serialize"),
                        ))
                        .boxed(),
                    )
                    .expect("a valid response")
            }
            Err(e) => text(500, format!("cannot list the profiles: {e}\n")),
        }
    }

    async fn metrics(&self) -> Response {
        let app = &self.options.app;
        let telemetry = app.telemetry();
        telemetry.set_guest_tasks(app.active_tasks());
        if let (Some(queues), Some(generation)) = (&self.options.queues, app.current()) {
            for consumer in generation.configs().iter().flat_map(|c| &c.queue_consumers) {
                match queues.depth(&consumer.queue).await {
                    Ok(depth) => telemetry.set_queue_depth(&consumer.queue, depth),
                    Err(e) => {
                        tracing::warn!(queue = %consumer.queue, "queue depth for /metrics: {e}")
                    }
                }
            }
        }
        http::Response::builder()
            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(telemetry.encode())).boxed())
            .expect("a valid response")
    }

    fn tail(&self, filter: TailFilter) -> Response {
        let receiver = self.options.app.telemetry().subscribe();
        // A comment first, so the client knows it is subscribed; then one
        // event per finished request; a comment every 15 s keeps proxies
        // (and the detection of a gone client) going.
        let hello = futures_util::stream::once(async {
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b": tailing\n\n")))
        });
        let events = futures_util::stream::unfold(
            (
                receiver,
                filter,
                tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE),
            ),
            |(mut receiver, filter, mut keepalive)| async move {
                loop {
                    let frame = tokio::select! {
                        event = receiver.recv() => match event {
                            Ok(event) if filter.accepts(&event) => {
                                format!("event: {}\ndata: {}\n\n", event_kind(&event), event.json)
                            }
                            Ok(_) => continue,
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                format!(": {n} event(s) skipped (the client is too slow)\n\n")
                            }
                            Err(broadcast::error::RecvError::Closed) => return None,
                        },
                        _ = keepalive.tick() => ": keepalive\n\n".to_owned(),
                    };
                    return Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from(frame))),
                        (receiver, filter, keepalive),
                    ));
                }
            },
        );
        http::Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(BodyExt::boxed(StreamBody::new(
                futures_util::StreamExt::chain(hello, events),
            )))
            .expect("a valid response")
    }

    async fn scheduled(&self, worker: Option<String>, cron: Option<String>) -> Response {
        let Some(generation) = self.options.app.current() else {
            return text(503, "not ready: the workers are not loaded yet\n");
        };
        let candidates: Vec<Schedulable<'_>> = generation
            .workers()
            .iter()
            .zip(generation.configs())
            .filter(|(w, _)| w.handles_scheduled())
            .filter(|(w, _)| worker.as_deref().is_none_or(|name| name == w.name()))
            .map(|(worker, config)| Schedulable {
                worker,
                crons: &config.crons,
            })
            .collect();
        let target = match candidates.as_slice() {
            [one] => one,
            [] => {
                return text(
                    404,
                    match worker {
                        Some(w) => format!("no worker `{w}` with a scheduled handler\n"),
                        None => "no worker has a scheduled handler\n".into(),
                    },
                );
            }
            several => {
                let names: Vec<&str> = several.iter().map(|s| s.worker.name()).collect();
                return text(
                    400,
                    format!(
                        "several workers have a scheduled handler ({}); add ?worker=NAME\n",
                        names.join(", ")
                    ),
                );
            }
        };
        let Some(cron) = cron.or_else(|| target.crons.first().map(|c| c.expression.clone())) else {
            return text(400, "add ?cron=EXPR (the worker has no triggers.crons)\n");
        };
        match crate::triggers::fire(target.worker, &cron, crate::telemetry::unix_ms()).await {
            Ok(()) => text(200, format!("ok: {} ran `{cron}`\n", target.worker.name())),
            Err(e) => text(500, format!("the scheduled handler failed: {e}\n")),
        }
    }
}

/// A worker that may run scheduled handlers, with its configured crons.
struct Schedulable<'a> {
    worker: &'a isola_runtime::Worker,
    crons: &'a [isola_config::CronSchedule],
}

fn event_kind(event: &TailEvent) -> &'static str {
    if event.status.is_some() {
        "request"
    } else {
        "trigger"
    }
}

/// Which tail events a subscriber wants.
#[derive(Debug, Default)]
pub struct TailFilter {
    worker: Option<String>,
    /// Any of these; empty = all.
    statuses: Vec<StatusFilter>,
}

#[derive(Debug, PartialEq)]
enum StatusFilter {
    Exact(u16),
    /// `5xx`: the hundreds digit.
    Class(u16),
    /// Below 400.
    Ok,
    /// 400 and above.
    Error,
}

impl TailFilter {
    /// `status` is a comma-separated list of `404`, `5xx`, `ok`, `error`.
    pub fn new(worker: Option<String>, status: Option<&str>) -> Result<TailFilter, String> {
        let statuses = status
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let lower = s.to_ascii_lowercase();
                match lower.as_str() {
                    "ok" => Ok(StatusFilter::Ok),
                    "error" => Ok(StatusFilter::Error),
                    class if class.len() == 3 && class.ends_with("xx") => class[..1]
                        .parse()
                        .ok()
                        .filter(|d| (1..=5).contains(d))
                        .map(StatusFilter::Class)
                        .ok_or_else(|| format!("bad status filter `{s}`")),
                    code => code
                        .parse()
                        .ok()
                        .filter(|c| (100..=599).contains(c))
                        .map(StatusFilter::Exact)
                        .ok_or_else(|| {
                            format!("bad status filter `{s}` (use 404, 5xx, ok or error)")
                        }),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(TailFilter {
            worker: worker.filter(|w| !w.is_empty()),
            statuses,
        })
    }

    pub fn accepts(&self, event: &TailEvent) -> bool {
        if self.worker.as_ref().is_some_and(|w| *w != event.worker) {
            return false;
        }
        if self.statuses.is_empty() {
            return true;
        }
        // Trigger runs have no status: a status filter leaves them out.
        let Some(status) = event.status else {
            return false;
        };
        self.statuses.iter().any(|f| match f {
            StatusFilter::Exact(code) => status == *code,
            StatusFilter::Class(class) => status / 100 == *class,
            StatusFilter::Ok => status < 400,
            StatusFilter::Error => status >= 400,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(worker: &str, status: Option<u16>) -> TailEvent {
        TailEvent {
            worker: worker.into(),
            status,
            json: "{}".into(),
        }
    }

    #[test]
    fn tail_filters_by_worker_and_status() {
        let all = TailFilter::new(None, None).unwrap();
        assert!(all.accepts(&event("a", Some(200))));
        assert!(all.accepts(&event("a", None)));

        let errors = TailFilter::new(Some("a".into()), Some("5xx,404")).unwrap();
        assert!(errors.accepts(&event("a", Some(503))));
        assert!(errors.accepts(&event("a", Some(404))));
        assert!(!errors.accepts(&event("a", Some(200))));
        assert!(!errors.accepts(&event("a", Some(403))));
        assert!(!errors.accepts(&event("b", Some(500))));
        assert!(!errors.accepts(&event("a", None)));

        let ok = TailFilter::new(None, Some("ok")).unwrap();
        assert!(ok.accepts(&event("x", Some(302))));
        assert!(!ok.accepts(&event("x", Some(400))));
        let error = TailFilter::new(None, Some("ERROR")).unwrap();
        assert!(error.accepts(&event("x", Some(400))));

        for bad in ["6xx", "abc", "99", "0xx"] {
            assert!(TailFilter::new(None, Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"Bearer abc", b"Bearer abc"));
        assert!(!same_secret(b"Bearer abd", b"Bearer abc"));
        assert!(!same_secret(b"Bearer ab", b"Bearer abc"));
    }
}
