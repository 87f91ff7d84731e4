//! Write Isola workers in Rust.
//!
//! ```ignore
//! use isola_sdk::{Ctx, Env, Request, Response, Result};
//!
//! #[isola_sdk::fetch]
//! async fn fetch(req: Request, env: Env, _ctx: Ctx) -> Result<Response> {
//!     let greeting = env.var("GREETING").unwrap_or_else(|| "hello".into());
//!     Ok(Response::text(format!("{greeting} from {}\n", req.path())))
//! }
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2 --release` and serve the
//! `.wasm` with `isola run`. The result is a plain `wasi:http/proxy`
//! component that also imports `isola:worker`.
//!
//! Returning `Err` logs the error (with its chain) to the request's log and
//! fails the request: the client gets a 500 `x-isola-error: exception`.
//!
//! # Concurrency
//!
//! The SDK's async is concurrent: futures that wait for the host (a
//! [`fetch()`] and its response body, [`Request::bytes`], [`sleep`]) let the
//! others run, and when none can go on the guest blocks in
//! `wasi:io/poll` until one can, costing no CPU time. Ten fetches awaited
//! together (`futures::join!`, `join_all`) take as long as the slowest, and
//! `ctx.wait_until` tasks run side by side. Binding calls (KV, D1, R2,
//! queues, caches) and the iterator APIs ([`Request::body_chunks`],
//! [`Response::stream`]) still block the whole guest while they wait.
//!
//! # Bindings
//!
//! The bindings configured for the worker are opened by name from [`Env`],
//! with the shape of the Workers API:
//!
//! | config | Rust | module |
//! |---|---|---|
//! | `kv_namespaces` | `env.kv("KV")?` | [`kv`] |
//! | `d1_databases` | `env.d1("DB")?` | [`d1`] |
//! | `r2_buckets` | `env.bucket("BUCKET")?` | [`r2`] |
//! | `analytics_engine_datasets` | `env.analytics("EVENTS")?` | [`analytics`] |
//! | `queues.producers` | `env.queue("JOBS")?` | [`queue`] |
//! | (always there) | `caches::default()?`, `caches::open("name")?` | [`caches`] |
//! | `services` | `env.service("AUTH")` | [`Service`] |
//! | `durable_objects.bindings` | `env.durable_object("COUNTER")` | [`durable`] |
//!
//! Their calls fail with an [`anyhow::Error`] holding a [`BindingError`]
//! (`Invalid`, `SubrequestLimit` or `Backend`) that a handler can
//! `downcast_ref` to answer each case differently. Every call counts
//! against the request's subrequest budget, as in Workers.
//!
//! # Other handlers
//!
//! Besides `fetch`, a worker may handle cron triggers and queue batches:
//!
//! ```ignore
//! #[isola_sdk::scheduled]
//! async fn scheduled(event: ScheduledEvent, env: Env, ctx: Ctx) -> Result<()> {
//!     println!("{} fired at {}", event.cron, event.scheduled_time);
//!     Ok(())
//! }
//!
//! #[isola_sdk::queue]
//! async fn queue(batch: MessageBatch, env: Env, ctx: Ctx) -> Result<()> {
//!     for message in &batch.messages {
//!         println!("{}: {}", message.id, message.text()?);
//!     }
//!     Ok(())
//! }
//! ```
//!
//! Each attribute makes the component export that handler
//! (`isola:worker/scheduled`, `isola:worker/queue-consumer`); a worker
//! without it does not, and the host then does not offer it that trigger.
//! `ctx.wait_until` work finishes before the handler's call returns.
//!
//! # Durable Objects
//!
//! A worker defines a Durable Object class by implementing
//! [`DurableObject`] and registering it with `#[isola_sdk::durable_object]`;
//! other code reaches an object through a stub (see [`durable`]):
//!
//! ```ignore
//! #[isola_sdk::durable_object]
//! struct Counter { state: ObjectState }
//!
//! impl DurableObject for Counter {
//!     fn new(state: ObjectState, _env: Env) -> Self {
//!         Counter { state }
//!     }
//!     async fn fetch(&mut self, _req: Request) -> Result<Response> {
//!         let storage = self.state.storage();
//!         let count = storage.get_json::<u64>("count").await?.unwrap_or(0) + 1;
//!         storage.put_json("count", &count).await?;
//!         Ok(Response::text(count.to_string()))
//!     }
//! }
//!
//! #[isola_sdk::fetch]
//! async fn fetch(req: Request, env: Env, _ctx: Ctx) -> Result<Response> {
//!     let stub = env.durable_object("COUNTER").get_by_name(req.path())?;
//!     Ok(stub.fetch("/").await?.into())
//! }
//! ```

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "isola:worker/imports",
    });
}

pub mod analytics;
pub mod caches;
pub mod d1;
pub mod durable;
mod error;
mod handlers;
pub mod kv;
mod outbound;
pub mod queue;
pub mod r2;
mod runtime;
mod wire;

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;

pub use anyhow::{Context as _, Error, Result, anyhow, bail};
pub use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
pub use isola_sdk_macros::{durable_object, fetch, queue, scheduled};
use wasi::http::types::{
    IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam, Scheme,
};
use wasi::io::streams::StreamError;

pub use analytics::{DataPoint, Dataset};
pub use caches::{Cache, CacheKey};
pub use d1::{D1, D1ExecResult, D1Meta, D1Params, D1Result, D1Row, D1Statement, D1Value};
pub use durable::{AlarmInfo, DurableObject, DurableObjectNamespace, ObjectId, ObjectState, Stub};
pub use error::BindingError;
pub use handlers::ScheduledEvent;
pub use kv::{Kv, KvKey, KvList, KvListOptions, KvPutOptions, KvValue};
pub use outbound::{FetchResponse, OutboundRequest, fetch};
pub use queue::{Message, MessageBatch, Queue, QueueMessage, QueueSendOptions};
pub use r2::{
    Bucket, R2Body, R2HttpMetadata, R2ListOptions, R2Object, R2ObjectBody, R2Objects, R2PutBody,
    R2PutOptions, R2Range, R2Upload,
};
pub use runtime::{block_on, sleep};
pub use wire::percent_decode;
use wire::{decode_query, fields, header_map, write_all};

/// The worker's environment: vars, secrets and bindings.
#[derive(Clone, Copy, Debug, Default)]
pub struct Env {
    _private: (),
}

impl Env {
    /// A var or secret configured for this worker.
    ///
    /// Vars are also WASI environment variables, so `std::env::var` works.
    pub fn var(&self, name: &str) -> Option<String> {
        bindings::isola::worker::env::var(name)
    }

    /// The KV namespace bound as `binding` in `kv_namespaces`.
    pub fn kv(&self, binding: &str) -> Result<Kv> {
        Kv::open(binding)
    }

    /// The D1 database bound as `binding` in `d1_databases`.
    pub fn d1(&self, binding: &str) -> Result<D1> {
        D1::open(binding)
    }

    /// The R2 bucket bound as `binding` in `r2_buckets`.
    pub fn bucket(&self, binding: &str) -> Result<Bucket> {
        Bucket::open(binding)
    }

    /// The Analytics Engine dataset bound as `binding` in
    /// `analytics_engine_datasets`.
    pub fn analytics(&self, binding: &str) -> Result<Dataset> {
        Dataset::open(binding)
    }

    /// The queue bound as `binding` in `queues.producers`.
    pub fn queue(&self, binding: &str) -> Result<Queue> {
        Queue::open(binding)
    }

    /// The worker bound as `binding` in this worker's `services`.
    pub fn service(&self, binding: &str) -> Service {
        Service {
            binding: binding.to_owned(),
        }
    }

    /// The Durable Object namespace bound as `binding` in
    /// `durable_objects.bindings`. An unknown binding is reported by the
    /// namespace's first call.
    pub fn durable_object(&self, binding: &str) -> DurableObjectNamespace {
        DurableObjectNamespace::new(binding)
    }
}

/// The path and query of `url`, a full URL (whose scheme and host are
/// dropped) or a path (`/check`, `check?x=1`), always starting with `/`.
fn path_of(url: &str) -> String {
    let path = match url.split_once("://") {
        Some((_, rest)) => rest.find(['/', '?']).map_or("/", |i| &rest[i..]).to_owned(),
        None => url.to_owned(),
    };
    if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    }
}

/// Another worker, reached in-process through a service binding.
#[derive(Clone, Debug)]
pub struct Service {
    binding: String,
}

impl Service {
    /// Send a request to the bound worker. Only the path and query of the
    /// request's URL matter (`/check`, or a full URL whose host is ignored).
    /// The call counts as a subrequest; `ctx` locals set so far go with it.
    pub async fn fetch(&self, request: impl Into<OutboundRequest>) -> Result<FetchResponse> {
        let mut request = request.into();
        let path = path_of(&request.url);
        request.url = format!("http://{}.service.isola.internal{path}", self.binding);
        fetch(request).await
    }
}

/// The request's context.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctx {
    _private: (),
}

impl Ctx {
    /// The id the host gave this request (also sent as `x-request-id`).
    pub fn request_id(&self) -> String {
        bindings::isola::worker::ctx::request_id()
    }

    /// If this handler fails before responding, let the host forward the
    /// request to the worker's configured origin instead.
    pub fn pass_through_on_exception(&self) {
        bindings::isola::worker::ctx::pass_through_on_exception()
    }

    /// Run `work` after the response has been sent (it still counts against
    /// the worker's wall-clock limit). Call it as often as needed: the
    /// futures run concurrently (while one waits for a fetch or a timer the
    /// others go on), and one that fails is logged without stopping the
    /// others.
    pub fn wait_until(&self, work: impl Future<Output = Result<()>> + 'static) {
        BACKGROUND.with(|background| background.borrow_mut().push(Box::pin(work)));
    }

    /// A request-scoped value set here or by a worker that called this one
    /// through a service binding.
    pub fn get_local(&self, key: &str) -> Option<String> {
        bindings::isola::worker::ctx::get_local(key)
    }

    /// Set a request-scoped value; workers this request reaches through
    /// service bindings from now on see it.
    pub fn set_local(&self, key: &str, value: &str) {
        bindings::isola::worker::ctx::set_local(key, value)
    }

    /// A JSON value from [`Ctx::get_local`].
    #[cfg(feature = "json")]
    pub fn get_local_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.get_local(key)
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(Into::into)
    }

    /// Set a JSON value with [`Ctx::set_local`].
    #[cfg(feature = "json")]
    pub fn set_local_json<T: serde::Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        self.set_local(key, &serde_json::to_string(value)?);
        Ok(())
    }
}

type Background = Pin<Box<dyn Future<Output = Result<()>>>>;

thread_local! {
    static BACKGROUND: RefCell<Vec<Background>> = const { RefCell::new(Vec::new()) };
}

/// Run every `wait_until` future concurrently until all are done
/// (allSettled). Work registered by background work joins the set.
fn run_background() {
    let take = || -> Vec<runtime::Task<'static>> {
        let work = BACKGROUND.with(|b| std::mem::take(&mut *b.borrow_mut()));
        work.into_iter()
            .map(|work| -> runtime::Task<'static> {
                Box::pin(async move {
                    if let Err(error) = work.await {
                        eprintln!("waitUntil task failed: {error:?}");
                    }
                })
            })
            .collect()
    };
    runtime::run(take(), take);
}

/// What the host knows about the request beyond the HTTP message: the
/// `request.cf` of Workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    pub client_address: Option<String>,
    /// `HTTP/1.1`, `HTTP/2`, or `internal` for service-binding calls.
    pub protocol: String,
    pub tls_version: Option<String>,
    pub request_id: String,
    pub colo: Option<String>,
    pub country: Option<String>,
}

/// An incoming HTTP request.
pub struct Request {
    method: Method,
    url: String,
    path_with_query: String,
    headers: HeaderMap,
    body: Option<IncomingBody>,
}

impl Request {
    fn from_wasi(request: IncomingRequest) -> Result<Self> {
        let method = match request.method() {
            wasi::http::types::Method::Get => Method::GET,
            wasi::http::types::Method::Head => Method::HEAD,
            wasi::http::types::Method::Post => Method::POST,
            wasi::http::types::Method::Put => Method::PUT,
            wasi::http::types::Method::Delete => Method::DELETE,
            wasi::http::types::Method::Connect => Method::CONNECT,
            wasi::http::types::Method::Options => Method::OPTIONS,
            wasi::http::types::Method::Trace => Method::TRACE,
            wasi::http::types::Method::Patch => Method::PATCH,
            wasi::http::types::Method::Other(other) => Method::from_bytes(other.as_bytes())?,
        };
        let scheme = match request.scheme() {
            Some(Scheme::Https) => "https".to_owned(),
            Some(Scheme::Other(other)) => other,
            Some(Scheme::Http) | None => "http".to_owned(),
        };
        let authority = request.authority().unwrap_or_default();
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".into());
        let headers = header_map(&request.headers())?;
        let body = request
            .consume()
            .map_err(|()| anyhow!("request body already consumed"))?;
        Ok(Request {
            method,
            url: format!("{scheme}://{authority}{path_with_query}"),
            path_with_query,
            headers,
            body: Some(body),
        })
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Client address, protocol, TLS version, colo and country.
    pub fn cf(&self) -> RequestInfo {
        let info = bindings::isola::worker::request_info::get();
        RequestInfo {
            client_address: info.client_address,
            protocol: info.protocol,
            tls_version: info.tls_version,
            request_id: info.request_id,
            colo: info.colo,
            country: info.country,
        }
    }

    /// The full URL, e.g. `http://example.com/a/b?c=d`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The path without the query, e.g. `/a/b`.
    pub fn path(&self) -> &str {
        self.path_with_query
            .split_once('?')
            .map_or(&self.path_with_query, |(path, _)| path)
    }

    /// The query string without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.path_with_query.split_once('?').map(|(_, q)| q)
    }

    /// The query's `name=value` pairs, percent-decoded (`+` is a space).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query()
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (decode_query(name), decode_query(value))
            })
            .collect()
    }

    /// The first value of the query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find_map(|(n, value)| (n == name).then_some(value))
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// A header's value as text, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body, chunk by chunk, as it arrives: large uploads need not fit
    /// in memory. A second call yields nothing.
    pub fn body_chunks(&mut self) -> BodyChunks {
        BodyChunks::new(self.body.take())
    }

    /// The whole body. Other tasks run while it arrives.
    pub async fn bytes(&mut self) -> Result<Vec<u8>> {
        let mut chunks = self.body_chunks();
        let mut all = Vec::new();
        while let Some(chunk) = chunks.next_async().await {
            all.extend_from_slice(&chunk?);
        }
        Ok(all)
    }

    /// The whole body as UTF-8 text.
    pub async fn text(&mut self) -> Result<String> {
        Ok(String::from_utf8(self.bytes().await?)?)
    }

    /// The whole body parsed as JSON.
    #[cfg(feature = "json")]
    pub async fn json<T: serde::de::DeserializeOwned>(&mut self) -> Result<T> {
        Ok(serde_json::from_slice(&self.bytes().await?)?)
    }
}

/// The chunks of a request body; see [`Request::body_chunks`].
pub struct BodyChunks {
    // Field order matters: the stream must be dropped before its body.
    stream: Option<wasi::io::streams::InputStream>,
    _body: Option<IncomingBody>,
}

impl BodyChunks {
    fn new(body: Option<IncomingBody>) -> Self {
        let stream = body.as_ref().and_then(|b| b.stream().ok());
        BodyChunks {
            stream,
            _body: body,
        }
    }

    /// The next chunk, as [`Iterator::next`], but waiting for it with the
    /// executor, so other tasks run meanwhile.
    pub(crate) async fn next_async(&mut self) -> Option<Result<Vec<u8>>> {
        loop {
            let result = self.stream.as_ref()?.read(64 * 1024);
            match result {
                Ok(chunk) if chunk.is_empty() => {
                    runtime::wait_for(self.stream.as_ref()?.subscribe()).await
                }
                result => return self.chunk(result),
            }
        }
    }

    fn chunk(&mut self, result: Result<Vec<u8>, StreamError>) -> Option<Result<Vec<u8>>> {
        match result {
            Ok(chunk) => Some(Ok(chunk)),
            Err(StreamError::Closed) => {
                self.stream = None;
                None
            }
            Err(StreamError::LastOperationFailed(e)) => {
                self.stream = None;
                Some(Err(anyhow!("reading the body: {}", e.to_debug_string())))
            }
        }
    }
}

impl Iterator for BodyChunks {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let result = self.stream.as_ref()?.blocking_read(64 * 1024);
            match result {
                Ok(chunk) if chunk.is_empty() => continue,
                result => return self.chunk(result),
            }
        }
    }
}

enum ResponseBody {
    Bytes(Vec<u8>),
    Chunks(Box<dyn Iterator<Item = Result<Vec<u8>>>>),
}

/// An outgoing HTTP response.
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: ResponseBody,
}

impl Response {
    /// A 200 response with these bytes as its body.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Response {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: ResponseBody::Bytes(body.into()),
        }
    }

    /// A 200 `text/plain; charset=utf-8` response.
    pub fn text(body: impl Into<String>) -> Self {
        Self::new(body.into()).with_header("content-type", "text/plain; charset=utf-8")
    }

    /// A 200 `application/json` response.
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self> {
        Ok(Self::new(serde_json::to_vec(value)?).with_header("content-type", "application/json"))
    }

    /// A 200 response whose body is produced chunk by chunk: the client gets
    /// the head (and each chunk) while later chunks are still being made.
    pub fn stream(chunks: impl IntoIterator<Item = Vec<u8>> + 'static) -> Self {
        Self::try_stream(chunks.into_iter().map(Ok))
    }

    /// Like [`Response::stream`], for chunks that can fail to be made (an
    /// R2 object body, a request body): on an error the response is cut off
    /// and the handler fails, so the client sees a broken response rather
    /// than a short one.
    pub fn try_stream(chunks: impl IntoIterator<Item = Result<Vec<u8>>> + 'static) -> Self {
        Response {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: ResponseBody::Chunks(Box::new(chunks.into_iter())),
        }
    }

    /// An empty response with this status.
    pub fn empty(status: u16) -> Self {
        Self::new(Vec::new()).with_status(status)
    }

    /// Panics if `status` is not a valid HTTP status code.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = StatusCode::from_u16(status).expect("a valid HTTP status code");
        self
    }

    /// Panics if the name or value is not a valid header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
            HeaderValue::from_str(value).expect("a valid header value"),
        );
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    /// A header's value as text, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body, when it is held in memory; `None` for a streamed body
    /// ([`Response::stream`]), which exists only as it is sent.
    pub fn body(&self) -> Option<&[u8]> {
        match &self.body {
            ResponseBody::Bytes(bytes) => Some(bytes),
            ResponseBody::Chunks(_) => None,
        }
    }

    /// The body's chunks, for a consumer that takes any response (a
    /// buffered body is one chunk).
    pub(crate) fn into_chunks(self) -> Box<dyn Iterator<Item = Result<Vec<u8>>>> {
        match self.body {
            ResponseBody::Bytes(bytes) => Box::new(std::iter::once(Ok(bytes))),
            ResponseBody::Chunks(chunks) => chunks,
        }
    }

    /// Send the response. For a HEAD request (`head`) no body is written,
    /// whatever the handler gave: the headers may still say how long the
    /// GET body would be (`content-length`), which wasi-http would otherwise
    /// hold against the empty body.
    fn send(self, out: ResponseOutparam, head: bool) -> Result<()> {
        let fields = fields(&self.headers).context("response")?;
        let response = OutgoingResponse::new(fields);
        response
            .set_status_code(self.status.as_u16())
            .map_err(|()| anyhow!("bad status {}", self.status))?;
        let body = response
            .body()
            .map_err(|()| anyhow!("response body taken twice"))?;
        ResponseOutparam::set(out, Ok(response));
        if head {
            return match OutgoingBody::finish(body, None) {
                Ok(()) | Err(wasi::http::types::ErrorCode::HttpResponseBodySize(_)) => Ok(()),
                Err(e) => Err(anyhow!("finishing the response: {e:?}")),
            };
        }
        {
            let stream = body
                .write()
                .map_err(|()| anyhow!("response body stream taken twice"))?;
            let write =
                |bytes: &[u8]| write_all(&stream, bytes).context("writing the response body");
            match self.body {
                ResponseBody::Bytes(bytes) => write(&bytes)?,
                ResponseBody::Chunks(chunks) => {
                    for chunk in chunks {
                        write(&chunk.context("producing the response body")?)?;
                    }
                }
            }
        }
        OutgoingBody::finish(body, None).map_err(|e| anyhow!("finishing the response: {e:?}"))?;
        Ok(())
    }
}

impl From<String> for Response {
    fn from(text: String) -> Self {
        Response::text(text)
    }
}

impl From<&str> for Response {
    fn from(text: &str) -> Self {
        Response::text(text)
    }
}

#[doc(hidden)]
pub mod __private {
    pub use wasi;
    pub use wasi::exports::http::incoming_handler::Guest as IncomingHandler;
    pub use wasi::http::types::{IncomingRequest, ResponseOutparam};

    pub use crate::handlers::{
        QueueGuest, ScheduledGuest, WitMessageBatch, WitOutcome, WitScheduledEvent, queue_bindings,
        run_queue, run_scheduled, scheduled_bindings,
    };

    use super::*;

    /// Run a `fetch` handler for one request, or, when the request is a
    /// Durable Object's event and the worker registered classes, the
    /// object's handler.
    pub fn serve<F, Fut>(request: IncomingRequest, out: ResponseOutparam, handler: F)
    where
        F: FnOnce(Request, Env, Ctx) -> Fut,
        Fut: Future<Output = Result<Response>>,
    {
        let Some((request, out)) = crate::durable::route(request, out) else {
            return;
        };
        let outcome = Request::from_wasi(request).and_then(|request| {
            let head = request.method() == Method::HEAD;
            let response = block_on(handler(request, Env::default(), Ctx::default()))?;
            response.send(out, head)
        });
        if outcome.is_ok() {
            // The response is complete; now the work it left for later.
            run_background();
        }
        if let Err(error) = outcome {
            // Log the whole chain, then trap: the host turns the trap into a
            // 500 (or a pass-through to the origin) and logs it too.
            eprintln!("fetch handler failed: {error:?}");
            panic!("fetch handler returned an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{decode_query, path_of, percent_decode, wire::percent_encode};

    #[test]
    fn percent_encoding_round_trips() {
        assert_eq!(percent_encode("room-1_a.b~"), "room-1_a.b~");
        assert_eq!(percent_encode("a b/c%é"), "a%20b%2Fc%25%C3%A9");
        for text in ["", "plain", "a b/c%é?&=+", "日本"] {
            assert_eq!(percent_decode(&percent_encode(text)), text);
        }
    }

    #[test]
    fn paths_of_urls() {
        assert_eq!(path_of("http://x.internal/a/b?c=d"), "/a/b?c=d");
        assert_eq!(path_of("https://host"), "/");
        assert_eq!(path_of("http://host?x=1"), "/?x=1");
        assert_eq!(path_of("/increment?by=2"), "/increment?by=2");
        assert_eq!(path_of("check"), "/check");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c+d"), "a/b c+d");
        assert_eq!(decode_query("a%2Fb%20c+d"), "a/b c d");
        assert_eq!(percent_decode("%7B%22k%22%3A1%7D"), "{\"k\":1}");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }
}
