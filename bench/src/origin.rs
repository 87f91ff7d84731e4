//! The proxy benchmark's origin: a small keep-alive HTTP/1.1 server on
//! loopback, in this process, that counts the connections it accepts and
//! the requests it answers (the figures of "origin connections per 1,000
//! requests"). It runs on one thread of its own, pinned to the client core
//! beside `wrk` when the run pins, so that the server under test keeps its
//! core to itself.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::load::CLIENT_CORE;

/// What the origin answers to every request.
pub const BODY: &str = "Hello from the origin!\n";

/// Connections and requests so far.
#[derive(Default)]
struct Counts {
    connections: AtomicU64,
    requests: AtomicU64,
}

/// A running origin; it stops when the process ends (a benchmark run).
pub struct Origin {
    pub addr: SocketAddr,
    counts: Arc<Counts>,
}

/// The origin's counters at one moment; subtract two for a run's share.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    pub connections: u64,
    pub requests: u64,
}

impl std::ops::Sub for Tally {
    type Output = Tally;
    fn sub(self, earlier: Tally) -> Tally {
        Tally {
            connections: self.connections - earlier.connections,
            requests: self.requests - earlier.requests,
        }
    }
}

impl Tally {
    /// Connections opened per 1,000 requests answered.
    pub fn per_thousand(&self) -> f64 {
        if self.requests == 0 {
            f64::NAN
        } else {
            self.connections as f64 * 1000.0 / self.requests as f64
        }
    }
}

impl Origin {
    /// Start the origin on a free loopback port (on [`CLIENT_CORE`] when
    /// `pin`).
    pub fn start(pin: bool) -> Origin {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("the origin's port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking socket");
        let addr = listener.local_addr().expect("the origin's address");
        let counts = Arc::new(Counts::default());
        let served = counts.clone();
        std::thread::Builder::new()
            .name("origin".into())
            .spawn(move || {
                if pin {
                    pin_this_thread();
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the origin's runtime");
                runtime.block_on(serve(listener, served));
            })
            .expect("the origin's thread");
        Origin { addr, counts }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn tally(&self) -> Tally {
        Tally {
            connections: self.counts.connections.load(Ordering::Relaxed),
            requests: self.counts.requests.load(Ordering::Relaxed),
        }
    }
}

async fn serve(listener: std::net::TcpListener, counts: Arc<Counts>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        counts.connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let counts = counts.clone();
        tokio::spawn(async move {
            let service = service_fn(|_request| {
                counts.requests.fetch_add(1, Ordering::Relaxed);
                async {
                    // Cacheable, so that the seed proxy's cache.put stores it.
                    let response = http::Response::builder()
                        .header("content-type", "text/plain")
                        .header("cache-control", "public, max-age=60")
                        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
                        .expect("a valid response");
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Pin the calling thread to [`CLIENT_CORE`] with `taskset -p` on its
/// thread id (no libc binding needed); left unpinned if that fails.
fn pin_this_thread() {
    let Ok(link) = std::fs::read_link("/proc/thread-self") else {
        return;
    };
    let Some(tid) = link.file_name().map(|t| t.to_string_lossy().into_owned()) else {
        return;
    };
    let _ = Command::new("taskset")
        .args(["-p", "-c", CLIENT_CORE, &tid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
