//! The app: the current generation of workers, swapped whole on reload,
//! and what happens to one request (size checks, routing, the worker, the
//! request id and the access line).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use isola_config::{ServerConfig, WorkerConfig};
use isola_runtime::{
    Body, BodyError, Observer, Outcome, Placement, RequestContext, RequestId, RequestInfo,
    Services, Worker, error_response, full_body,
};

use crate::router::Router;
use crate::telemetry::{self, Telemetry};

/// Header carrying the request id on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// One loaded config: the workers, how requests reach them, and the
/// request limits. Requests hold the generation they started on, so a reload
/// never changes a request halfway.
pub struct Generation {
    /// 1 for the first load, +1 per reload.
    pub id: u64,
    workers: Vec<Worker>,
    configs: Vec<WorkerConfig>,
    /// Keeps the service-binding registry alive (workers hold weak refs).
    _services: Arc<Services>,
    router: Router,
    max_header_bytes: usize,
    max_body_bytes: u64,
    colo: Option<String>,
    country: Option<String>,
    trusted_client_ip_header: Option<http::HeaderName>,
}

impl Generation {
    /// `configs[i]` describes `workers[i]`; its routes lead to it.
    fn new(
        id: u64,
        workers: Vec<Worker>,
        configs: &[WorkerConfig],
        server: &ServerConfig,
        placement: Option<Arc<Placement>>,
    ) -> Self {
        let router = Router::new(
            configs
                .iter()
                .enumerate()
                .flat_map(|(i, c)| c.routes.iter().map(move |r| (r.clone(), i))),
        );
        Generation {
            id,
            _services: Services::with_placement(&workers, placement),
            workers,
            configs: configs.to_vec(),
            router,
            max_header_bytes: server.max_header_bytes,
            max_body_bytes: server.max_body_bytes,
            colo: server.colo.clone(),
            country: server.country.clone(),
            // Validated by the config as a header name.
            trusted_client_ip_header: server
                .trusted_client_ip_header
                .as_deref()
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
        }
    }

    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    /// `configs()[i]` describes `workers()[i]`.
    pub fn configs(&self) -> &[WorkerConfig] {
        &self.configs
    }
}

/// The current [`Generation`] (none until the first load, in `isola dev`),
/// swapped atomically by [`App::install`].
pub struct App {
    current: ArcSwapOption<Generation>,
    /// Workers of replaced generations whose guest tasks were still running
    /// (kept so shutdown waits for them too).
    retired: Mutex<Vec<Worker>>,
    pub(crate) header_timeout: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) max_connections: usize,
    telemetry: Arc<Telemetry>,
    /// On a node of a cluster: where each Durable Object runs.
    placement: std::sync::OnceLock<Arc<Placement>>,
}

impl App {
    /// `configs[i]` describes `workers[i]`; its routes lead to it.
    pub fn new(workers: Vec<Worker>, configs: &[WorkerConfig], server: &ServerConfig) -> Self {
        let app = App::empty(server, Arc::new(Telemetry::new()));
        app.install(workers, configs, server);
        app
    }

    /// An app with no workers yet: it answers 503 `not-ready` until the
    /// first [`App::install`].
    pub fn empty(server: &ServerConfig, telemetry: Arc<Telemetry>) -> Self {
        telemetry.set_ready(false, 0);
        App {
            current: ArcSwapOption::empty(),
            retired: Mutex::new(Vec::new()),
            header_timeout: Duration::from_millis(server.header_timeout_ms),
            shutdown_grace: Duration::from_millis(server.shutdown_grace_ms),
            max_connections: server.max_connections as usize,
            telemetry,
            placement: std::sync::OnceLock::new(),
        }
    }

    /// Make this app a node of a cluster: the Durable Objects of every
    /// generation installed from now on run where `placement` says. Only
    /// the first call counts.
    pub fn set_placement(&self, placement: Arc<Placement>) {
        let _ = self.placement.set(placement);
    }

    /// The cluster this app is a node of, if any.
    pub fn placement(&self) -> Option<&Arc<Placement>> {
        self.placement.get()
    }

    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Serve `workers` from now on; requests already running finish on the
    /// generation they started with. Returns the new generation's id.
    /// (`listen`, `header_timeout_ms` and `shutdown_grace_ms` of `server`
    /// are fixed at start.)
    pub fn install(
        &self,
        workers: Vec<Worker>,
        configs: &[WorkerConfig],
        server: &ServerConfig,
    ) -> u64 {
        let id = self.current.load().as_ref().map_or(1, |g| g.id + 1);
        for worker in &workers {
            worker.observe(self.telemetry.clone());
        }
        let next = Arc::new(Generation::new(
            id,
            workers,
            configs,
            server,
            self.placement.get().cloned(),
        ));
        if let Some(old) = self.current.swap(Some(next)) {
            let mut retired = self.retired.lock().expect("retired lock");
            retired.retain(|w| w.active_tasks() > 0);
            retired.extend(old.workers.iter().filter(|w| w.active_tasks() > 0).cloned());
        }
        self.telemetry.set_ready(true, id);
        id
    }

    /// The generation serving new requests.
    pub fn current(&self) -> Option<Arc<Generation>> {
        self.current.load_full()
    }

    /// Ready when a generation is loaded (every worker compiled and loaded).
    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    /// Guest tasks still running across all workers, of every generation.
    pub fn active_tasks(&self) -> usize {
        let current: usize = self
            .current()
            .map_or(0, |g| g.workers.iter().map(Worker::active_tasks).sum());
        let mut retired = self.retired.lock().expect("retired lock");
        retired.retain(|w| w.active_tasks() > 0);
        current + retired.iter().map(Worker::active_tasks).sum::<usize>()
    }

    /// Serve one request: check its size, route it, run it, stamp it with
    /// its id.
    pub async fn handle(
        &self,
        request: http::Request<Incoming>,
        client: SocketAddr,
    ) -> http::Response<Body> {
        let in_flight = self.telemetry.in_flight();
        let started = Instant::now();
        let id = RequestId::generate();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let (mut response, routed) = match self.current() {
            Some(generation) => {
                let (response, worker) = generation.dispatch(request, client, &id).await;
                (response, worker.is_some())
            }
            None => (
                error_response(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "not-ready",
                    "the workers are not loaded yet",
                ),
                false,
            ),
        };
        response.headers_mut().insert(
            REQUEST_ID_HEADER,
            http::HeaderValue::from_str(id.as_str()).expect("request ids are hex"),
        );
        if !routed {
            // Requests that reached a worker are logged and counted by the
            // runtime, with their CPU time and limits, once the guest is done.
            let status = response.status().as_u16();
            let wall = started.elapsed();
            tracing::info!(
                target: "isola::access",
                request_id = %id,
                worker = "-",
                %client,
                %method,
                path = %path,
                status,
                wall_ms = format_args!("{:.3}", wall.as_secs_f64() * 1e3),
                "request"
            );
            self.telemetry.finished(&Outcome {
                worker: "-".into(),
                request_id: id.clone(),
                method,
                path,
                client: Some(client),
                status: Some(status),
                failure: None,
                limit: None,
                cpu: Duration::ZERO,
                wall,
                instantiate: Duration::ZERO,
                drop: Duration::ZERO,
                fuel: 0,
                subrequests: 0,
                error: None,
            });
        }
        // In flight until the body has been sent (or the client went away).
        response.map(move |body| {
            InFlightBody {
                body,
                _in_flight: in_flight,
            }
            .boxed_unsync()
        })
    }
}

/// A response body that holds the in-flight gauge until it is dropped.
/// Unlike `map_frame` it keeps the body's size hint, so hyper can send a
/// complete body with `content-length` in one write.
struct InFlightBody {
    body: Body,
    _in_flight: telemetry::InFlight,
}

impl http_body::Body for InFlightBody {
    type Data = bytes::Bytes;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Generation {
    fn request_info<B>(&self, request: &http::Request<B>, client: SocketAddr) -> RequestInfo {
        let forwarded = self.trusted_client_ip_header.as_ref().and_then(|name| {
            let value = request.headers().get(name)?.to_str().ok()?;
            // `X-Forwarded-For` style lists name the client first.
            value.split(',').next()?.trim().parse().ok()
        });
        RequestInfo {
            client_address: Some(forwarded.unwrap_or(client.ip())),
            protocol: isola_runtime::protocol_name(request.version()).to_owned(),
            tls_version: None,
            colo: self.colo.clone(),
            country: self.country.clone(),
        }
    }

    async fn dispatch(
        &self,
        request: http::Request<Incoming>,
        client: SocketAddr,
        id: &RequestId,
    ) -> (http::Response<Body>, Option<&Worker>) {
        let head_bytes = head_size(&request);
        if head_bytes > self.max_header_bytes {
            let detail = format!(
                "the request head is {head_bytes} bytes; the limit is {}",
                self.max_header_bytes
            );
            return (
                error_response(
                    http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "header-size",
                    &detail,
                ),
                None,
            );
        }
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body_bytes) {
            // Refused before a byte of the body is read.
            let detail = format!(
                "the body is over the limit of {} bytes",
                self.max_body_bytes
            );
            return (
                error_response(http::StatusCode::PAYLOAD_TOO_LARGE, "body-size", &detail),
                None,
            );
        }
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
        let Some(worker) = self
            .router
            .route(host.as_deref(), request.uri().path())
            .map(|i| &self.workers[i])
        else {
            let response = http::Response::builder()
                .status(http::StatusCode::NOT_FOUND)
                .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(full_body("no worker is routed for this URL\n"))
                .expect("valid 404 response");
            return (response, None);
        };

        // A body without a (truthful) length is counted as it streams; once
        // over the limit the guest's read fails and the client gets a 413.
        let too_large = Arc::new(AtomicBool::new(false));
        let flag = too_large.clone();
        let limit = usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX);
        let request = request.map(move |body| {
            Limited::new(body, limit).map_err(move |error| {
                if error.is::<LengthLimitError>() {
                    flag.store(true, Ordering::Relaxed);
                    return BodyError::HttpRequestBodySize(None);
                }
                match error.downcast::<hyper::Error>() {
                    Ok(hyper_error) => BodyError::Hyper(*hyper_error),
                    Err(other) => BodyError::InternalError(Some(other.to_string())),
                }
            })
        });
        let context = RequestContext::default()
            .with_id(id.clone())
            .with_client(client)
            .with_info(self.request_info(&request, client));
        let response = worker.handle(request, context).await.response;
        if too_large.load(Ordering::Relaxed) {
            let detail = format!(
                "the body is over the limit of {} bytes",
                self.max_body_bytes
            );
            return (
                error_response(http::StatusCode::PAYLOAD_TOO_LARGE, "body-size", &detail),
                Some(worker),
            );
        }
        (response, Some(worker))
    }
}

/// Bytes of the request line and headers as sent over HTTP/1.1.
fn head_size<B>(request: &http::Request<B>) -> usize {
    let line = request.method().as_str().len()
        + request
            .uri()
            .path_and_query()
            .map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n".len()
        + 1;
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    line + headers
}
