//! The public listener: HTTP/1.1 and HTTP/2 (cleartext, prior knowledge)
//! on one socket, each request handed to the [`App`]; on shutdown it stops
//! accepting and lets in-flight requests and guest work finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::app::App;

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
    /// How long shutdown waits for in-flight requests before giving up.
    pub shutdown_grace: Duration,
}

impl Server {
    pub async fn bind(addr: SocketAddr, app: impl Into<Arc<App>>) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        let app = app.into();
        Ok(Server {
            listener,
            shutdown_grace: app.shutdown_grace,
            app,
        })
    }

    /// The app this server serves (to reload it).
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` resolves, then stop accepting and wait, up to
    /// `shutdown_grace` in all, for in-flight requests and for the work
    /// guests do after responding (waitUntil).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // hyper answers 431 itself beyond these; the exact limit is checked
        // per request in `App::handle`.
        builder
            .http1()
            .max_buf_size(64 * 1024)
            .timer(TokioTimer::new())
            .header_read_timeout(self.app.header_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(64 * 1024);
        tokio::pin!(shutdown);
        // A connection holds a slot until it closes; at the cap, new ones
        // wait in the kernel's accept queue. Idle ones are closed by the
        // header timeout, so they cannot hold the slots for long.
        let slots = Arc::new(tokio::sync::Semaphore::new(self.app.max_connections));
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.expect("never closed"),
                () = &mut shutdown => break,
            };
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
            let header_timeout = app.header_timeout;
            let service = hyper::service::service_fn(move |request| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(request, peer).await) }
            });
            let (builder, watcher) = (builder.clone(), graceful.watcher());
            tokio::spawn(async move {
                let _slot = slot;
                // hyper's header timeout starts with the first byte: a client
                // that sends nothing at all is closed here, after the same
                // time, so it cannot hold its connection slot.
                // (`readable()` may report a fresh socket ready; a peek waits
                // for a byte.)
                let mut first = [0u8; 1];
                if !matches!(
                    tokio::time::timeout(header_timeout, stream.peek(&mut first)).await,
                    Ok(Ok(1..))
                ) {
                    return;
                }
                let connection = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                if let Err(e) = watcher.watch(connection).await {
                    tracing::debug!(%peer, "connection ended with an error: {e}");
                }
            });
        }
        drop(self.listener);
        tracing::info!("shutting down: waiting for in-flight requests");
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections closed"),
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!("shutdown grace period over; closing remaining connections");
            }
        }
        // Background work (waitUntil) outlives its response; give it the
        // rest of the grace period.
        while self.app.active_tasks() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match self.app.active_tasks() {
            0 => tracing::info!("all guest work finished"),
            cut => tracing::warn!(
                "shutdown grace period over: cutting {cut} guest task(s) still running (waitUntil work)"
            ),
        }
        Ok(())
    }
}

/// Installs SIGINT and SIGTERM handlers now (call it before announcing the
/// server, so an early signal is not fatal) and resolves on either.
/// Must be called inside a tokio runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    })
}
