//! `isola:worker/kv`: Workers KV namespaces.

use std::collections::HashMap;

use isola_backends::{self as backend, Backends};
use isola_config::WorkerRun;
use wasmtime::component::{Linker, Resource};

use super::handles::KvHandle;
use super::{CallResult, HasView, HostView, View, add_types, call, unbound};
use crate::generated::isola::worker::kv;

/// The KV namespaces a worker has bound, by binding name.
pub struct KvCtx {
    namespaces: HashMap<String, backend::kv::KvNamespace>,
}

impl KvCtx {
    pub fn new(run: &WorkerRun, backends: &Backends) -> Self {
        KvCtx {
            namespaces: run
                .kv_namespaces
                .iter()
                .map(|kv| {
                    let namespace = backend::kv::KvNamespace::new(backends.kv.clone(), &kv.id);
                    (kv.binding.clone(), namespace)
                })
                .collect(),
        }
    }
}

/// Add `isola:worker/kv` to `linker`.
pub fn add_to_linker<T: HostView<KvCtx> + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    add_types::<T, KvCtx>(linker)?;
    kv::add_to_linker::<T, HasView<KvCtx>>(linker, T::view)
}

impl kv::Host for View<'_, KvCtx> {}

impl kv::HostNamespace for View<'_, KvCtx> {
    async fn open(&mut self, binding: String) -> CallResult<Resource<KvHandle>> {
        let Some(namespace) = self.ctx.namespaces.get(&binding).cloned() else {
            return Ok(Err(unbound("KV namespace", &binding)));
        };
        Ok(Ok(self.table.push(KvHandle(namespace))?))
    }

    async fn get(
        &mut self,
        this: Resource<KvHandle>,
        key: String,
    ) -> CallResult<Option<kv::Value>> {
        let namespace = self.table.get(&this)?.0.clone();
        let result: CallResult<_> = call!(self, namespace.get(&key));
        Ok(result?.map(|value| {
            value.map(|v| kv::Value {
                data: v.data,
                metadata: v.metadata,
            })
        }))
    }

    async fn put(
        &mut self,
        this: Resource<KvHandle>,
        key: String,
        value: Vec<u8>,
        options: kv::PutOptions,
    ) -> CallResult<()> {
        let namespace = self.table.get(&this)?.0.clone();
        let options = backend::kv::PutOptions {
            expiration_ttl: options.expiration_ttl,
            expiration: options.expiration,
            metadata: options.metadata,
        };
        call!(self, namespace.put(&key, value, options))
    }

    async fn delete(&mut self, this: Resource<KvHandle>, key: String) -> CallResult<()> {
        let namespace = self.table.get(&this)?.0.clone();
        call!(self, namespace.delete(&key))
    }

    async fn list(
        &mut self,
        this: Resource<KvHandle>,
        options: kv::ListOptions,
    ) -> CallResult<kv::ListResult> {
        let namespace = self.table.get(&this)?.0.clone();
        let options = backend::kv::ListOptions {
            prefix: options.prefix,
            limit: options.limit,
            cursor: options.cursor,
        };
        let result: CallResult<_> = call!(self, namespace.list(options));
        Ok(result?.map(|list| kv::ListResult {
            keys: list
                .keys
                .into_iter()
                .map(|k| kv::Key {
                    name: k.name,
                    expiration: k.expiration,
                    metadata: k.metadata,
                })
                .collect(),
            list_complete: list.list_complete,
            cursor: list.cursor,
        }))
    }

    async fn drop(&mut self, this: Resource<KvHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}
