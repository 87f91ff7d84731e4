//! Isola's HTTP front end.
//!
//! A [`Server`] accepts HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) on
//! one listener, gives every request an id (`x-request-id`), routes it to a
//! worker by Wrangler-style patterns, and on shutdown stops accepting and
//! lets in-flight requests finish.

pub mod admin;
mod app;
mod listener;
mod load;
pub mod router;
pub mod telemetry;
pub mod triggers;

pub use app::{App, Generation};
pub use isola_runtime::Backends;
pub use listener::{Server, shutdown_signal};
pub use load::load_workers;
pub use router::Router;
pub use telemetry::{Telemetry, TelemetryLayer};
pub use triggers::Triggers;

/// Header carrying the request id on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
