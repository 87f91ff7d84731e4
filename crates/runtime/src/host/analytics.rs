//! `isola:worker/analytics`: Workers Analytics Engine datasets.

use std::collections::HashMap;
use std::sync::Arc;

use isola_backends::{self as backend, Backends};
use isola_config::WorkerRun;
use wasmtime::component::{Linker, Resource};

use super::handles::DatasetHandle;
use super::{CallResult, HasView, HostView, View, add_types, call, unbound};
use crate::generated::isola::worker::analytics;

/// The datasets a worker has bound (binding name → dataset) and the sink
/// their data points go to.
pub struct AnalyticsCtx {
    datasets: HashMap<String, String>,
    sink: Arc<dyn backend::analytics::AnalyticsSink>,
}

impl AnalyticsCtx {
    pub fn new(run: &WorkerRun, backends: &Backends) -> Self {
        AnalyticsCtx {
            datasets: run
                .analytics_engine_datasets
                .iter()
                .map(|a| (a.binding.clone(), a.dataset.clone()))
                .collect(),
            sink: backends.analytics.clone(),
        }
    }
}

/// Add `isola:worker/analytics` to `linker`.
pub fn add_to_linker<T: HostView<AnalyticsCtx> + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    add_types::<T, AnalyticsCtx>(linker)?;
    analytics::add_to_linker::<T, HasView<AnalyticsCtx>>(linker, T::view)
}

impl analytics::Host for View<'_, AnalyticsCtx> {}

impl analytics::HostDataset for View<'_, AnalyticsCtx> {
    async fn open(&mut self, binding: String) -> CallResult<Resource<DatasetHandle>> {
        let Some(dataset) = self.ctx.datasets.get(&binding).cloned() else {
            return Ok(Err(unbound("analytics dataset", &binding)));
        };
        Ok(Ok(self.table.push(DatasetHandle(dataset))?))
    }

    async fn write_data_point(
        &mut self,
        this: Resource<DatasetHandle>,
        point: analytics::DataPoint,
    ) -> CallResult<()> {
        let dataset = self.table.get(&this)?.0.clone();
        let point = backend::analytics::DataPoint {
            blobs: point.blobs,
            doubles: point.doubles,
            indexes: point.indexes,
        };
        if let Err(e) = backend::analytics::validate(&point) {
            return Ok(Err(self.guest_error(e)));
        }
        let sink = self.ctx.sink.clone();
        call!(self, sink.write(&dataset, point))
    }

    async fn drop(&mut self, this: Resource<DatasetHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}
