//! Run wasm components as Isola does: each request (or call) in a fresh
//! instance, under fuel, an epoch deadline and a memory cap.
//!
//! This is Isola's embedding API, and the one crate an embedder needs (the
//! engine, config and backend types are re-exported here).
//!
//! - **Workers** serve HTTP: load a [`Worker`] once from an [`IsolaEngine`],
//!   a component and a [`WorkerRun`] (its env, limits and outbound rules),
//!   then call [`Worker::handle`] with any `http::Request`. Every call gets
//!   a new `Store` and instance made from the pre-instantiated component,
//!   with the worker's limits armed; nothing a guest does survives its
//!   request. The answer carries the response and the request's
//!   [`Outcome`].
//! - **Plugins** export a world of the embedder's own: see [`plugin`].
//! - **Host capabilities** (`env`, KV, SQL, blob, cache, analytics,
//!   queues) are in [`host`], one module each, in wasmtime's style.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use isola_runtime::{Backends, EngineOptions, IsolaEngine, RequestContext, Worker, WorkerRun};
//! use http_body_util::{BodyExt, Empty};
//!
//! let engine = IsolaEngine::new(&EngineOptions::new(".isola/cache"))?;
//! // Where KV, SQL, blob and analytics state lives; a cache of 64 MiB.
//! let backends = Backends::embedded(".isola".as_ref(), 64 << 20)?;
//! let run = WorkerRun::default();
//! let worker = Worker::load(&engine, "hello", &run, "hello.wasm".as_ref(), &backends)?;
//! let request = http::Request::get("http://localhost/").body(Empty::<bytes::Bytes>::new())?;
//! let handled = worker.handle(request, RequestContext::default()).await;
//! let body = handled.response.into_body().collect().await?.to_bytes();
//! let outcome = handled.outcome.await;
//! println!("{} in {:?} of CPU", outcome.status.unwrap_or(0), outcome.cpu);
//! # Ok(()) }
//! ```

mod backtrace;
mod body;
mod client;
mod coalesce;
mod failure;
mod generated;
mod guest_log;
mod handlers;
pub mod host;
mod http_batch;
mod instance;
mod limits;
mod linker;
mod load_error;
mod meter;
mod objects;
mod outbound;
mod pass_through;
pub mod plugin;
mod profile;
mod registry;
mod report;
mod request;
mod services;
mod source_map;
mod state;
mod triggers;
mod worker;

pub use backtrace::{Backtrace, Frame};
pub use body::{Body, BodyError, full_body};
pub use client::{ClientSettings, configure_client, parse_pem_certificates};
pub use failure::{ERROR_HEADER, Failure, Limit, error_response};
pub use handlers::Handler;
pub use limits::DEFAULT_FUEL_PER_MS;
pub use load_error::LoadError;
pub use objects::forward::ForwardedEvent;
pub use objects::placement::{DEFAULT_LEASE_TTL, FORWARD_PATH, MAX_HOPS, Placement, SECRET_HEADER};
pub use objects::{
    OBJECT_HOST_SUFFIX, OBJECT_ID_HEADER, OBJECT_NAME_HEADER, ObjectAddress, ObjectEvent,
};
pub use pass_through::REPLAY_BUFFER_LIMIT;
pub use profile::{ProfileRequest, ProfileSink, RequestProfile};
pub use registry::Services;
pub use report::{Observer, Outcome, PendingOutcome, RunError};
pub use request::{RequestContext, RequestId, RequestInfo, protocol_name};
pub use services::{MAX_CALL_DEPTH, SERVICE_HOST_SUFFIX};
pub use triggers::{MessageOutcome, QueueMessage, TriggerError, TriggerRun};
pub use worker::{Handled, Worker};

/// What an embedder configures, re-exported so that one crate is enough.
pub use isola_backends::{Backends, BindingError};
pub use isola_config::{
    AnalyticsBinding, D1Binding, KvBinding, Limits, OutboundRule, QueueProducer, R2Binding, Secret,
    ServiceBinding, WorkerRun,
};
pub use isola_engine::{CacheOutcome, EngineError, EngineOptions, IsolaEngine, LoadedComponent};
/// The wasmtime this crate runs on, for `bindgen!` of a plugin's world
/// (`wasmtime_crate: isola_runtime::wasmtime`).
pub use wasmtime;
