//! Isola's HTTP front end.
//!
//! A [`Server`] accepts HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) on
//! one listener, gives every request an id (`x-request-id`), routes it to a
//! worker by Wrangler-style patterns, and on shutdown stops accepting and
//! lets in-flight requests finish.

pub mod router;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use isola_config::WorkerConfig;
use isola_engine::IsolaEngine;
use isola_runtime::{Body, LoadError, RequestId, Worker, full_body};
use tokio::net::TcpListener;

pub use router::Router;

/// Header carrying the request id on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Load (compile or fetch from the cache) every worker, in parallel.
/// Workers sharing a component compile it once.
pub fn load_workers(
    engine: &IsolaEngine,
    configs: &[WorkerConfig],
) -> Result<Vec<Worker>, LoadError> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = configs
            .iter()
            .map(|config| scope.spawn(move || Worker::load(engine, config)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker loading panicked"))
            .collect()
    })
}

/// The workers and how requests reach them.
pub struct App {
    workers: Vec<Worker>,
    router: Router,
}

impl App {
    /// `configs[i]` describes `workers[i]`; its routes lead to it.
    pub fn new(workers: Vec<Worker>, configs: &[WorkerConfig]) -> Self {
        let router = Router::new(
            configs
                .iter()
                .enumerate()
                .flat_map(|(i, c)| c.routes.iter().map(move |r| (r.clone(), i))),
        );
        App { workers, router }
    }

    /// Serve one request: route it, run it, stamp it with its id.
    pub async fn handle(
        &self,
        mut request: http::Request<Incoming>,
        peer: SocketAddr,
    ) -> http::Response<Body> {
        let started = Instant::now();
        let id = RequestId::generate();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            });
        let worker = self
            .router
            .route(host.as_deref(), &path)
            .map(|i| &self.workers[i]);
        let mut response = match worker {
            Some(worker) => {
                request.extensions_mut().insert(id.clone());
                worker.handle(request).await
            }
            None => http::Response::builder()
                .status(http::StatusCode::NOT_FOUND)
                .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(full_body("no worker is routed for this URL\n"))
                .expect("valid 404 response"),
        };
        response.headers_mut().insert(
            REQUEST_ID_HEADER,
            http::HeaderValue::from_str(id.as_str()).expect("request ids are hex"),
        );
        tracing::info!(
            target: "isola::access",
            request_id = %id,
            worker = %worker.map_or("-", Worker::name),
            %peer,
            %method,
            path = %path,
            status = response.status().as_u16(),
            wall_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
        response
    }
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
    /// How long shutdown waits for in-flight requests before giving up.
    pub shutdown_grace: Duration,
}

impl Server {
    pub async fn bind(addr: SocketAddr, app: App) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Server {
            listener,
            app: Arc::new(app),
            shutdown_grace: Duration::from_secs(30),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` resolves, then stop accepting and wait for the
    /// open connections' in-flight requests (up to `shutdown_grace`).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let graceful = GracefulShutdown::new();
        let builder = auto::Builder::new(TokioExecutor::new());
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let app = self.app.clone();
            let service = hyper::service::service_fn(move |request| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(request, peer).await) }
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, "connection ended with an error: {e}");
                }
            });
        }
        drop(self.listener);
        tracing::info!("shutting down: waiting for in-flight requests");
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections closed"),
            () = tokio::time::sleep(self.shutdown_grace) => {
                tracing::warn!("shutdown grace period over; closing remaining connections");
            }
        }
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
