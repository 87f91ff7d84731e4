//! The host side of `isola:worker`, one module per capability in
//! wasmtime's style. Each capability has a context type (what it serves,
//! built once per worker and shared by all its instances), implements the
//! generated `Host` traits on [`View`] of that context, and has an
//! `add_to_linker` for any store data that can give such a view
//! ([`HostView`]). The worker's linker composes all of them; a plugin host
//! ([`crate::plugin`]) picks the ones it wants.
//!
//! Every binding call is charged to the call's subrequest budget, and WIT
//! types are translated to the backends' at this boundary.

pub mod analytics;
pub mod blob;
pub mod cache;
pub mod ctx;
pub mod durable;
pub mod env;
pub(crate) mod handles;
pub mod kv;
pub mod queue;
pub mod sql;

use std::marker::PhantomData;

use isola_backends::{Backends, BindingError};
use isola_config::WorkerRun;
use wasmtime::component::{HasData, ResourceTable};

use crate::generated::isola::worker::types;
use crate::outbound::Subrequests;

/// What a capability's host functions see during one call: its context,
/// the store's resource table, and the run's subrequest budget. Only the
/// runtime makes one; store data hands it out through [`HostView`].
pub struct View<'a, C> {
    pub(crate) ctx: &'a C,
    pub(crate) table: &'a mut ResourceTable,
    pub(crate) meter: &'a Subrequests,
}

/// Store data that serves capability `C` (wasmtime's `WasiView` pattern).
/// Isola's worker state and [`crate::plugin::PluginState`] implement it
/// for every capability.
pub trait HostView<C>: Send {
    fn view(&mut self) -> View<'_, C>;
}

/// The `HasData` of [`View`]: how the generated `add_to_linker` functions
/// reach a capability from the store data.
struct HasView<C>(PhantomData<C>);

impl<C: 'static> HasData for HasView<C> {
    type Data<'a> = View<'a, C>;
}

/// Every capability a worker's `env` offers, built once at load from its
/// configuration and the process's backends.
pub struct Capabilities {
    pub env: env::EnvCtx,
    pub kv: kv::KvCtx,
    pub sql: sql::SqlCtx,
    pub blob: blob::BlobCtx,
    pub cache: cache::CacheCtx,
    pub analytics: analytics::AnalyticsCtx,
    pub queue: queue::QueueCtx,
    pub durable: durable::DurableCtx,
}

impl Capabilities {
    /// The capabilities of worker `name` configured by `run`, served by
    /// `backends`. Fails when a binding's store cannot be opened (an SQL
    /// database, say).
    pub fn new(name: &str, run: &WorkerRun, backends: &Backends) -> Result<Self, BindingError> {
        Ok(Capabilities {
            env: env::EnvCtx::new(run),
            kv: kv::KvCtx::new(run, backends),
            sql: sql::SqlCtx::new(run, backends)?,
            blob: blob::BlobCtx::new(run, backends),
            // Cache API entries are kept per worker, so one worker can
            // neither read nor poison another's cache.
            cache: cache::CacheCtx::new(name, backends),
            analytics: analytics::AnalyticsCtx::new(run, backends),
            queue: queue::QueueCtx::new(run, backends),
            durable: durable::DurableCtx::new(run),
        })
    }
}

type Error = types::Error;
/// A host call's result: the outer error traps (a bad handle), the inner
/// one is the guest's to handle.
type CallResult<T> = wasmtime::Result<Result<T, Error>>;

fn unbound(kind: &str, binding: &str) -> Error {
    Error::Invalid(format!("no {kind} is bound as `{binding}` for this worker"))
}

impl<C> View<'_, C> {
    /// Take one call from the run's subrequest budget.
    fn charge(&self) -> Result<(), Error> {
        self.meter.take().map_err(Error::SubrequestLimit)
    }

    /// `error` as the guest sees it; a `backend` one is remembered, so a
    /// request that then fails answers 503 (`backend`), not 500.
    fn guest_error(&self, error: BindingError) -> Error {
        match error {
            BindingError::Invalid(message) => Error::Invalid(message),
            BindingError::Backend(message) => {
                self.meter
                    .backend_failed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Error::Backend(message)
            }
        }
    }
}

impl<C> types::Host for View<'_, C> {}

/// Charge the call, then run it and translate its error.
macro_rules! call {
    ($view:expr, $body:expr) => {{
        if let Err(e) = $view.charge() {
            return Ok(Err(e));
        }
        Ok($body.await.map_err(|e| $view.guest_error(e)))
    }};
}
pub(crate) use call;

/// Add `isola:worker/types` (errors shared by the capabilities), which
/// every capability's `add_to_linker` does.
fn add_types<T, C: 'static>(linker: &mut wasmtime::component::Linker<T>) -> wasmtime::Result<()>
where
    T: HostView<C> + 'static,
{
    types::add_to_linker::<T, HasView<C>>(linker, T::view)
}
