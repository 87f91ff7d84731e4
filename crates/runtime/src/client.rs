//! The outbound HTTP client every worker of a process shares, for guests'
//! `fetch` and for pass-through: keep-alive connections pooled per origin,
//! HTTP/2 to TLS origins that offer it (ALPN), TLS session resumption, and
//! a cap on the connections open to one origin.
//!
//! Each new connection is dialed to an address resolved once and checked:
//! when only `*` allowed a host, every address it resolves to must be
//! public, and the connection goes to one of those very addresses, so a
//! DNS answer cannot change in between (no rebinding window); the TLS
//! certificate is verified against the host name (SNI). Connections run in
//! tasks of their own, so their I/O and TLS are never charged to a guest.
//!
//! hyper-util's pooled client (the one reqwest is built on) does the
//! pooling, HTTP/1.1 and HTTP/2; `hyper-rustls` does TLS and ALPN. Only the
//! resolving and dialing are ours ([`Dialer`]), because the check must sit
//! between the two.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::{Error, WasiBody};

use crate::outbound::is_public;

/// How the shared client pools and caps its connections.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// An idle pooled connection is closed after this long.
    pub idle_timeout: Duration,
    /// Most connections open to one origin (scheme, host, port) at once;
    /// a request past it waits for one to be free.
    pub max_connections_per_origin: usize,
    /// Giving up on a TCP connect (or TLS handshake) after this long.
    pub connect_timeout: Duration,
    /// PEM certificates trusted besides the public web's roots (an
    /// internal CA, a test's).
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            idle_timeout: Duration::from_secs(90),
            max_connections_per_origin: 256,
            connect_timeout: Duration::from_secs(10),
            extra_roots: Vec::new(),
        }
    }
}

/// Looks up a host's addresses. The system resolver in production; a test
/// can answer as a rebinding DNS server would.
pub(crate) trait Resolve: Send + Sync + 'static {
    fn resolve(
        &self,
        host: String,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;
}

/// The system's resolver (`getaddrinfo`, on tokio's blocking pool).
struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(
        &self,
        host: String,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

type Https = hyper_rustls::HttpsConnector<Dialer>;

/// The process's outbound client: one pool for hosts the worker named in
/// `allowed_outbound_hosts` (any address), one for hosts only `*` allowed
/// (public addresses only), so a connection is never shared across the two.
pub(crate) struct OutboundClient {
    named: Client<Https, WasiBody>,
    public_only: Client<Https, WasiBody>,
}

static SHARED: OnceLock<OutboundClient> = OnceLock::new();

/// The certificates of a PEM file (`outbound_ca_file`); one at least.
pub fn parse_pem_certificates(
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

/// Set the shared client's settings; only the first call (before any
/// request) counts. Returns whether it did.
pub fn configure_client(settings: ClientSettings) -> bool {
    SHARED
        .set(OutboundClient::new(&settings, Arc::new(SystemResolver)))
        .is_ok()
}

impl OutboundClient {
    /// The process's client, made with default settings if nobody
    /// configured it.
    pub fn shared() -> &'static OutboundClient {
        SHARED.get_or_init(|| {
            OutboundClient::new(&ClientSettings::default(), Arc::new(SystemResolver))
        })
    }

    pub(crate) fn new(settings: &ClientSettings, resolver: Arc<dyn Resolve>) -> Self {
        let tls = tls_config(&settings.extra_roots);
        let caps = Arc::new(OriginCaps {
            max: settings.max_connections_per_origin.max(1),
            origins: Mutex::default(),
        });
        let client = |public_only| {
            let dialer = Dialer {
                resolver: resolver.clone(),
                public_only,
                caps: caps.clone(),
                connect_timeout: settings.connect_timeout,
            };
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(dialer);
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(settings.idle_timeout)
                .pool_max_idle_per_host(settings.max_connections_per_origin)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .build(https)
        };
        OutboundClient {
            named: client(false),
            public_only: client(true),
        }
    }

    /// Send `request` (an absolute URI) and return the response head; its
    /// body streams from the connection's task. `public_only`: the host
    /// was allowed by `*` alone.
    pub async fn send(
        &self,
        request: http::Request<WasiBody>,
        public_only: bool,
        first_byte_timeout: Duration,
        between_bytes_timeout: Duration,
    ) -> Result<http::Response<WasiBody>, Error> {
        let client = if public_only {
            &self.public_only
        } else {
            &self.named
        };
        let response = tokio::time::timeout(first_byte_timeout, client.request(request))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)?
            .map_err(error_code)?;
        Ok(response.map(|body| {
            body_with_timeout(body, between_bytes_timeout)
                .map_err(|e| match e {
                    BodyTimeout::Timeout => Error::ConnectionReadTimeout,
                    BodyTimeout::Hyper(e) if e.is_timeout() => Error::HttpResponseTimeout,
                    BodyTimeout::Hyper(e) => Error::Hyper(e),
                })
                .boxed_unsync()
        }))
    }
}

/// rustls with the web's roots (and `extra` ones), ALPN set by
/// hyper-rustls, and its default in-memory session cache for resumption.
fn tls_config(extra: &[rustls::pki_types::CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    for cert in extra {
        if let Err(e) = roots.add(cert.clone()) {
            tracing::warn!("an extra outbound root certificate is unusable: {e}");
        }
    }
    // rustls has two crypto providers in this build (other crates enable
    // ring): name the one to use.
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("aws-lc-rs supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// The wasi-http error code for a failed request.
fn error_code(error: hyper_util::client::legacy::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<DialError>() {
            return refused.code();
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return Error::TlsCertificateError;
        }
        source = cause.source();
    }
    if error.is_connect() {
        return Error::ConnectionRefused;
    }
    Error::InternalError(Some(format!("{error:#}")))
}

/// Why a connection was not made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    #[error("the host resolves to nothing")]
    NotFound,
    #[error("the host resolves to a loopback or private address, which `*` does not cover")]
    Prohibited,
    #[error("connecting timed out")]
    Timeout,
    #[error("the URL has no host")]
    NoHost,
    #[error("connecting failed: {0}")]
    Io(#[from] std::io::Error),
}

impl DialError {
    fn code(&self) -> Error {
        match self {
            DialError::NotFound => Error::DestinationNotFound,
            DialError::Prohibited => Error::DestinationIpProhibited,
            DialError::Timeout => Error::ConnectionTimeout,
            DialError::NoHost => Error::HttpRequestUriInvalid,
            DialError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Error::ConnectionRefused
            }
            DialError::Io(_) => Error::DestinationUnavailable,
        }
    }
}

/// Resolves once, checks, and dials the checked address, within the
/// origin's connection cap.
#[derive(Clone)]
pub(crate) struct Dialer {
    resolver: Arc<dyn Resolve>,
    public_only: bool,
    caps: Arc<OriginCaps>,
    connect_timeout: Duration,
}

impl tower_service::Service<http::Uri> for Dialer {
    type Response = Dialed;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Dialed, DialError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let dialer = self.clone();
        Box::pin(async move { dialer.dial(uri).await })
    }
}

impl Dialer {
    async fn dial(self, uri: http::Uri) -> Result<Dialed, DialError> {
        let host = uri.host().ok_or(DialError::NoHost)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let origin = format!("{}://{host}:{port}", if https { "https" } else { "http" });
        let addresses = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => self.resolver.resolve(host.clone(), port).await?,
        };
        if addresses.is_empty() {
            return Err(DialError::NotFound);
        }
        if self.public_only && !addresses.iter().all(|a| is_public(a.ip())) {
            tracing::warn!(target: "isola::outbound", %origin, "denied: `*` does not cover loopback or private addresses; name the host in allowed_outbound_hosts");
            return Err(DialError::Prohibited);
        }
        let permit = self.caps.acquire(&origin).await;
        let connect = async {
            let mut last = None;
            for address in &addresses {
                match tokio::net::TcpStream::connect(address).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = Some(e),
                }
            }
            Err(DialError::Io(last.expect("at least one address")))
        };
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| DialError::Timeout)??;
        let _ = stream.set_nodelay(true);
        Ok(Dialed {
            io: TokioIo::new(stream),
            _permit: permit,
        })
    }
}

/// A dialed TCP connection, holding its origin's connection slot.
pub(crate) struct Dialed {
    io: TokioIo<tokio::net::TcpStream>,
    _permit: OwnedSemaphorePermit,
}

impl Connection for Dialed {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Dialed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Dialed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// A semaphore per origin: a connection holds a permit until it closes.
struct OriginCaps {
    max: usize,
    origins: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl OriginCaps {
    async fn acquire(&self, origin: &str) -> OwnedSemaphorePermit {
        let semaphore = self
            .origins
            .lock()
            .expect("origin caps lock")
            .entry(origin.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.max)))
            .clone();
        semaphore
            .acquire_owned()
            .await
            .expect("origin semaphores are never closed")
    }
}

/// Why a response body stopped.
enum BodyTimeout {
    Timeout,
    Hyper(hyper::Error),
}

/// `body`, failing when no frame comes for `between_bytes`.
fn body_with_timeout(
    body: hyper::body::Incoming,
    between_bytes: Duration,
) -> impl http_body::Body<Data = bytes::Bytes, Error = BodyTimeout> + Send + 'static {
    TimedBody {
        body,
        between_bytes,
        deadline: None,
    }
}

struct TimedBody {
    body: hyper::body::Incoming,
    between_bytes: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = BodyTimeout;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BodyTimeout>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.deadline = None;
                Poll::Ready(frame.map(|f| f.map_err(BodyTimeout::Hyper)))
            }
            Poll::Pending => {
                let between = self.between_bytes;
                let deadline = self
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(between)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout::Timeout))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A DNS server that rebinds: its first answer is `first`, every later
    /// one `then`.
    struct Rebinding {
        first: Vec<SocketAddr>,
        then: Vec<SocketAddr>,
        asked: AtomicUsize,
    }

    impl Resolve for Rebinding {
        fn resolve(
            &self,
            _host: String,
            _port: u16,
        ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>> {
            let n = self.asked.fetch_add(1, Ordering::SeqCst);
            let answer = if n == 0 { &self.first } else { &self.then };
            let answer = answer.clone();
            Box::pin(async move { Ok(answer) })
        }
    }

    fn dialer(resolver: Arc<Rebinding>, public_only: bool) -> Dialer {
        Dialer {
            resolver,
            public_only,
            caps: Arc::new(OriginCaps {
                max: 4,
                origins: Mutex::default(),
            }),
            connect_timeout: Duration::from_millis(300),
        }
    }

    #[tokio::test]
    async fn a_rebinding_name_never_reaches_a_loopback_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let loopback = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        // 192.0.2.0/24 is documentation space, not public; 1.1.1.1 is.
        let public: SocketAddr = format!("1.1.1.1:{}", loopback.port()).parse().unwrap();
        let uri: http::Uri = format!("https://rebind.example:{}/", loopback.port())
            .parse()
            .unwrap();

        // Public, then loopback: the one answer that was checked is the one
        // dialed (here unreachable), never the loopback one.
        let resolver = Arc::new(Rebinding {
            first: vec![public],
            then: vec![loopback],
            asked: AtomicUsize::new(0),
        });
        let result = dialer(resolver.clone(), true).dial(uri.clone()).await;
        assert!(result.is_err(), "the public address is not reachable here");
        assert_eq!(resolver.asked.load(Ordering::SeqCst), 1, "resolved once");

        // An answer with a loopback address in it is refused outright.
        let resolver = Arc::new(Rebinding {
            first: vec![public, loopback],
            then: vec![loopback],
            asked: AtomicUsize::new(0),
        });
        let refused = dialer(resolver, true).dial(uri.clone()).await;
        assert!(
            matches!(refused, Err(DialError::Prohibited)),
            "{:?}",
            refused.err()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 0);

        // A host the worker named may be anywhere.
        let resolver = Arc::new(Rebinding {
            first: vec![loopback],
            then: vec![],
            asked: AtomicUsize::new(0),
        });
        assert!(dialer(resolver, false).dial(uri).await.is_ok());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_origin_gets_at_most_its_cap_of_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let resolver = Arc::new(Rebinding {
            first: vec![address],
            then: vec![address],
            asked: AtomicUsize::new(0),
        });
        let dialer = dialer(resolver, false);
        let uri: http::Uri = format!("http://origin.test:{}/", address.port())
            .parse()
            .unwrap();
        let mut open = Vec::new();
        for _ in 0..4 {
            open.push(dialer.clone().dial(uri.clone()).await.unwrap());
        }
        let fifth =
            tokio::time::timeout(Duration::from_millis(200), dialer.clone().dial(uri.clone()));
        assert!(fifth.await.is_err(), "a fifth connection waits for a slot");
        open.pop();
        let fifth = tokio::time::timeout(Duration::from_secs(5), dialer.dial(uri));
        assert!(
            fifth.await.unwrap().is_ok(),
            "a closed connection frees its slot"
        );
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        assert!(parse_pem_certificates(b"not a certificate").is_err());
        assert!(parse_pem_certificates(b"").is_err());
    }
}
