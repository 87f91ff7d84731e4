//! What a worker is handed with a request besides its HTTP message.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// What travels from a caller to the workers it calls (service bindings).
#[derive(Clone, Debug, Default)]
pub(crate) struct CallContext {
    pub depth: u32,
    pub locals: std::collections::HashMap<String, String>,
}

/// A request's context: its id, its client, `request.cf`. Every part may
/// be left out: `RequestContext::default().with_client(addr)`.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    /// The request's id; a new one when `None`.
    pub id: Option<RequestId>,
    /// The client's address, for the access log and `request-info`.
    pub client: Option<std::net::SocketAddr>,
    /// What guests see as `request.cf`; when `None`, the client address
    /// and the request's HTTP version.
    pub info: Option<RequestInfo>,
    /// Set on service-binding calls: how deep the chain is, and the
    /// caller's locals.
    pub(crate) call: CallContext,
}

impl RequestContext {
    pub fn with_id(mut self, id: RequestId) -> Self {
        self.id = Some(id);
        self
    }

    pub fn with_client(mut self, client: std::net::SocketAddr) -> Self {
        self.client = Some(client);
        self
    }

    pub fn with_info(mut self, info: RequestInfo) -> Self {
        self.info = Some(info);
        self
    }
}

/// What the host knows about a request beyond its HTTP message (the
/// `request.cf` of Workers), given to guests through `request-info`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    pub client_address: Option<std::net::IpAddr>,
    pub protocol: String,
    pub tls_version: Option<String>,
    pub colo: Option<String>,
    pub country: Option<String>,
}

/// How `request-info` names an HTTP version.
pub fn protocol_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The id of a request: chosen by the caller ([`RequestContext::id`]) or
/// made by the worker.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(pub(crate) Arc<str>);

impl RequestId {
    /// A new id, unique within the process and hard to guess across
    /// processes: 16 hex digits mixing a per-process seed with a counter.
    pub fn generate() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let seed = *SEED.get_or_init(|| {
            use std::hash::{BuildHasher, RandomState};
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            RandomState::new().hash_one(nanos ^ u64::from(std::process::id()))
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        RequestId(format!("{:016x}", splitmix64(seed.wrapping_add(n))).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An id of the caller's choosing (the server's, a trace's).
impl From<&str> for RequestId {
    fn from(id: &str) -> Self {
        RequestId(id.into())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A bijective mixer: distinct counters give distinct, scattered ids.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
