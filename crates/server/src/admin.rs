//! The admin listener (`[server] admin`): operator endpoints kept off the
//! public listener. `GET /healthz`, and `POST /__scheduled?cron=…[&worker=…]`
//! to fire a worker's scheduled handler now (Wrangler's `/__scheduled`).
//! With `admin_token` set, every call needs `authorization: Bearer <token>`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use isola_runtime::Worker;
use tokio::net::TcpListener;

/// A worker the admin listener can fire, with its configured crons.
pub struct Schedulable {
    pub worker: Worker,
    pub crons: Vec<String>,
}

pub struct Admin {
    listener: TcpListener,
    state: Arc<State>,
}

struct State {
    workers: Vec<Schedulable>,
    token: Option<String>,
}

type Response = http::Response<Full<Bytes>>;

fn text(status: u16, body: impl Into<String>) -> Response {
    http::Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.into())))
        .expect("a valid response")
}

impl Admin {
    pub async fn bind(
        addr: SocketAddr,
        workers: Vec<Schedulable>,
        token: Option<String>,
    ) -> std::io::Result<Admin> {
        Ok(Admin {
            listener: TcpListener::bind(addr).await?,
            state: Arc::new(State { workers, token }),
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
                    async move { Ok::<_, std::convert::Infallible>(state.handle(request).await) }
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
        if let Some(token) = &self.token {
            let expected = format!("Bearer {token}");
            let given = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if given != Some(expected.as_bytes()) {
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
        match (request.method(), request.uri().path()) {
            (&http::Method::GET, "/healthz") => text(200, "ok\n"),
            (&http::Method::POST, "/__scheduled") => {
                self.scheduled(param("worker"), param("cron")).await
            }
            (_, "/__scheduled") => text(405, "use POST\n"),
            _ => text(404, "not found\n"),
        }
    }

    async fn scheduled(&self, worker: Option<String>, cron: Option<String>) -> Response {
        let candidates: Vec<&Schedulable> = self
            .workers
            .iter()
            .filter(|s| s.worker.handles_scheduled())
            .filter(|s| worker.as_deref().is_none_or(|w| w == s.worker.name()))
            .collect();
        let target = match candidates.as_slice() {
            [one] => *one,
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
        let Some(cron) = cron.or_else(|| target.crons.first().cloned()) else {
            return text(400, "add ?cron=EXPR (the worker has no triggers.crons)\n");
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        match crate::triggers::fire(&target.worker, &cron, now_ms).await {
            Ok(()) => text(200, format!("ok: {} ran `{cron}`\n", target.worker.name())),
            Err(e) => text(500, format!("the scheduled handler failed: {e}\n")),
        }
    }
}
