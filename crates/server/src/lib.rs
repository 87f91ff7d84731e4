//! Isola's HTTP front end and the life of a serving process.
//!
//! [`serve`] loads the workers ([`load`]), opens the listeners and swaps a
//! new generation of workers in on reload ([`lifecycle`]). A [`Server`]
//! accepts HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) on one
//! listener; the [`App`] gives every request an id (`x-request-id`) and
//! routes it to a worker by Wrangler-style patterns ([`router`]). On
//! shutdown the server stops accepting and lets in-flight requests finish.
//! A node of a cluster (`[cluster]`) also opens the internal listener
//! ([`cluster`]) that takes the events of the Durable Objects it owns.

pub mod admin;
mod app;
pub mod cluster;
pub mod lifecycle;
mod listener;
pub mod load;
pub mod profiles;
pub mod router;
pub mod telemetry;
pub mod triggers;

pub use app::{App, Generation, REQUEST_ID_HEADER};
pub use isola_runtime::Backends;
pub use lifecycle::{LiveHandle, Mode, ServeOptions, serve};
pub use listener::{Server, shutdown_signal};
pub use load::{
    Progress, backends_for, compile_components, engine_for, load_workers, outbound_client_for,
};
pub use router::Router;
pub use telemetry::{Telemetry, TelemetryLayer};
pub use triggers::Triggers;
