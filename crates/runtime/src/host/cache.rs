//! `isola:worker/cache`: the Cache API (`caches.default`, `caches.open`).

use std::sync::Arc;

use bytes::Bytes;
use isola_backends::{self as backend, Backends};
use wasmtime::component::{Linker, Resource};

use super::handles::CacheHandle;
use super::{CallResult, Error, HasView, HostView, View, add_types, call};
use crate::generated::isola::worker::cache;

/// A worker's view of the cache store: its entries are kept under the
/// worker's own scope.
pub struct CacheCtx {
    scope: String,
    store: Arc<dyn backend::cache::CacheStore>,
}

impl CacheCtx {
    /// The cache of the worker (or plugin) named `scope`.
    pub fn new(scope: &str, backends: &Backends) -> Self {
        CacheCtx {
            scope: scope.to_owned(),
            store: backends.cache.clone(),
        }
    }
}

/// Add `isola:worker/cache` to `linker`.
pub fn add_to_linker<T: HostView<CacheCtx> + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    add_types::<T, CacheCtx>(linker)?;
    cache::add_to_linker::<T, HasView<CacheCtx>>(linker, T::view)
}

impl cache::Host for View<'_, CacheCtx> {}

impl cache::HostCache for View<'_, CacheCtx> {
    async fn open(&mut self, name: String) -> CallResult<Resource<CacheHandle>> {
        if name.is_empty() || name.len() > 1024 {
            return Ok(Err(Error::Invalid(
                "a cache name must be 1 to 1024 bytes".into(),
            )));
        }
        Ok(Ok(self.table.push(CacheHandle(name))?))
    }

    async fn match_(
        &mut self,
        this: Resource<CacheHandle>,
        url: String,
        headers: cache::Headers,
    ) -> CallResult<Option<cache::Response>> {
        let name = self.table.get(&this)?.0.clone();
        let (store, scope) = (self.ctx.store.clone(), &self.ctx.scope);
        let result: CallResult<_> = call!(self, store.match_(scope, &name, &url, &headers));
        Ok(result?.map(|hit| {
            hit.map(|r| cache::Response {
                status: r.status,
                headers: r.headers,
                body: r.body.to_vec(),
            })
        }))
    }

    async fn put(
        &mut self,
        this: Resource<CacheHandle>,
        url: String,
        headers: cache::Headers,
        response: cache::Response,
    ) -> CallResult<bool> {
        let name = self.table.get(&this)?.0.clone();
        let response = backend::cache::CachedResponse {
            status: response.status,
            headers: response.headers,
            body: Bytes::from(response.body),
        };
        let (store, scope) = (self.ctx.store.clone(), &self.ctx.scope);
        call!(self, store.put(scope, &name, &url, &headers, response))
    }

    async fn delete(
        &mut self,
        this: Resource<CacheHandle>,
        url: String,
        headers: cache::Headers,
    ) -> CallResult<bool> {
        let name = self.table.get(&this)?.0.clone();
        let (store, scope) = (self.ctx.store.clone(), &self.ctx.scope);
        call!(self, store.delete(scope, &name, &url, &headers))
    }

    async fn drop(&mut self, this: Resource<CacheHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}
