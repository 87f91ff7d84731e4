//! `isola:worker/durable-object` and `isola:worker/durable-object-storage`:
//! a worker's Durable Object namespaces (ids; stubs are outbound requests,
//! see `objects`), and the storage of the object a run serves.
//!
//! Storage calls are not subrequests (as in Workers); they reach the
//! object's own database, which only its one live instance uses.

use std::collections::HashMap;
use std::sync::Arc;

use isola_backends::durable::{ListOptions, ObjectStorage};
use isola_config::{DurableObjectBinding, WorkerRun};
use wasmtime::component::Linker;

use super::{CallResult, Error, HasView, HostView, View, add_types, unbound};
use crate::generated::isola::worker::{
    durable_object as wit, durable_object_storage as wit_storage, sql,
};
use crate::objects::{CurrentObject, ObjectEvent, alarms, id};

/// A worker's Durable Object namespace bindings, by binding name.
pub struct DurableCtx {
    namespaces: Arc<HashMap<String, DurableObjectBinding>>,
}

impl DurableCtx {
    pub fn new(run: &WorkerRun) -> Self {
        DurableCtx {
            namespaces: Arc::new(
                run.durable_objects
                    .iter()
                    .map(|b| (b.binding.clone(), b.clone()))
                    .collect(),
            ),
        }
    }
}

/// What one run's calls see: the worker's namespaces, and the object the
/// run serves, if it serves one.
pub struct ObjectRunCtx {
    pub(crate) namespaces: Arc<HashMap<String, DurableObjectBinding>>,
    pub(crate) current: Option<CurrentObject>,
}

impl ObjectRunCtx {
    pub(crate) fn new(durable: &DurableCtx, current: Option<CurrentObject>) -> Self {
        ObjectRunCtx {
            namespaces: durable.namespaces.clone(),
            current,
        }
    }
}

/// Add both interfaces to `linker`.
pub fn add_to_linker<T: HostView<ObjectRunCtx> + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    add_types::<T, ObjectRunCtx>(linker)?;
    wit::add_to_linker::<T, HasView<ObjectRunCtx>>(linker, T::view)?;
    wit_storage::add_to_linker::<T, HasView<ObjectRunCtx>>(linker, T::view)
}

impl View<'_, ObjectRunCtx> {
    fn namespace(&self, binding: &str) -> Result<&DurableObjectBinding, Error> {
        self.ctx
            .namespaces
            .get(binding)
            .ok_or_else(|| unbound("Durable Object namespace", binding))
    }

    fn current(&self) -> Result<&CurrentObject, Error> {
        self.ctx.current.as_ref().ok_or_else(|| {
            Error::Invalid(
                "ctx.storage is only available in a Durable Object's run (this run serves no object)"
                    .into(),
            )
        })
    }

    fn storage(&self) -> Result<Arc<dyn ObjectStorage>, Error> {
        Ok(self.current()?.storage.clone())
    }
}

impl wit::Host for View<'_, ObjectRunCtx> {
    fn current(&mut self) -> Option<(wit::Object, wit::Event)> {
        let current = self.ctx.current.as_ref()?;
        let event = match current.event {
            ObjectEvent::Fetch => wit::Event::Fetch,
            ObjectEvent::Alarm { retry_count } => wit::Event::Alarm(retry_count),
        };
        Some((
            wit::Object {
                class_name: current.address.class_name.clone(),
                id: current.address.id.clone(),
                name: current.address.name.clone(),
            },
            event,
        ))
    }

    fn id_from_name(&mut self, binding: String, name: String) -> Result<String, Error> {
        Ok(id::from_name(&self.namespace(&binding)?.namespace, &name))
    }

    fn new_unique_id(&mut self, binding: String) -> Result<String, Error> {
        id::unique(&self.namespace(&binding)?.namespace).map_err(Error::Backend)
    }

    fn id_from_string(&mut self, binding: String, text: String) -> Result<String, Error> {
        id::parse(&self.namespace(&binding)?.namespace, &text).map_err(Error::Invalid)
    }
}

/// Run a storage call on the current object, translating its error.
macro_rules! storage_call {
    ($view:expr, |$storage:ident| $body:expr) => {{
        let $storage = match $view.storage() {
            Ok(storage) => storage,
            Err(e) => return Ok(Err(e)),
        };
        Ok($body.await.map_err(|e| $view.guest_error(e)))
    }};
}

type Entries = Vec<(String, Vec<u8>)>;

impl wit_storage::Host for View<'_, ObjectRunCtx> {
    async fn get(&mut self, keys: Vec<String>) -> CallResult<Entries> {
        storage_call!(self, |storage| storage.get(keys))
    }

    async fn put(&mut self, entries: Entries) -> CallResult<()> {
        storage_call!(self, |storage| storage.put(entries))
    }

    async fn delete(&mut self, keys: Vec<String>) -> CallResult<u32> {
        storage_call!(self, |storage| storage.delete(keys))
    }

    async fn list(&mut self, options: wit_storage::ListOptions) -> CallResult<Entries> {
        let options = ListOptions {
            start: options.start,
            start_after: options.start_after,
            end: options.end,
            prefix: options.prefix,
            reverse: options.reverse,
            limit: options.limit,
        };
        storage_call!(self, |storage| storage.list(options))
    }

    async fn delete_all(&mut self) -> CallResult<()> {
        storage_call!(self, |storage| storage.delete_all())
    }

    async fn begin(&mut self) -> CallResult<()> {
        storage_call!(self, |storage| storage.begin())
    }

    async fn commit(&mut self) -> CallResult<()> {
        // An alarm set inside the transaction is stored by its commit.
        let result = storage_call!(self, |storage| storage.commit());
        alarms::ring();
        result
    }

    async fn rollback(&mut self) -> CallResult<()> {
        storage_call!(self, |storage| storage.rollback())
    }

    async fn sql_exec(
        &mut self,
        query: String,
        params: Vec<sql::Value>,
    ) -> CallResult<wit_storage::Cursor> {
        let params = params.into_iter().map(super::sql::value_in).collect();
        let result: CallResult<_> = storage_call!(self, |storage| storage.sql_exec(query, params));
        Ok(result?.map(|cursor| wit_storage::Cursor {
            columns: cursor.columns,
            rows: cursor
                .rows
                .into_iter()
                .map(|row| row.into_iter().map(super::sql::value_out).collect())
                .collect(),
            rows_read: cursor.rows_read,
            rows_written: cursor.rows_written,
        }))
    }

    async fn database_size(&mut self) -> CallResult<u64> {
        storage_call!(self, |storage| storage.database_size())
    }

    async fn get_alarm(&mut self) -> CallResult<Option<u64>> {
        let firing = self.ctx.current.as_ref().and_then(|c| c.alarm_firing);
        let result: CallResult<Option<u64>> = storage_call!(self, |storage| storage.get_alarm());
        // While its alarm runs, an object sees no alarm set (unless it set
        // a new one), as in Workers.
        Ok(result?.map(|at| at.filter(|at| Some(*at) != firing)))
    }

    async fn set_alarm(&mut self, scheduled_time: u64) -> CallResult<()> {
        let result = storage_call!(self, |storage| storage.set_alarm(scheduled_time));
        alarms::ring();
        result
    }

    async fn delete_alarm(&mut self) -> CallResult<()> {
        let result = storage_call!(self, |storage| storage.delete_alarm());
        alarms::ring();
        result
    }
}
