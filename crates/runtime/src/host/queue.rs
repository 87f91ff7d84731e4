//! `isola:worker/queue`: Queues producers.

use std::collections::HashMap;
use std::sync::Arc;

use isola_backends::{self as backend, Backends};
use isola_config::WorkerRun;
use wasmtime::component::{Linker, Resource};

use super::handles::ProducerHandle;
use super::{CallResult, HasView, HostView, View, add_types, call, unbound};
use crate::generated::isola::worker::queue;

/// The queues a worker may send to (binding name → queue) and their store.
pub struct QueueCtx {
    queues: HashMap<String, String>,
    store: Arc<dyn backend::queue::QueueStore>,
}

impl QueueCtx {
    pub fn new(run: &WorkerRun, backends: &Backends) -> Self {
        QueueCtx {
            queues: run
                .queue_producers
                .iter()
                .map(|p| (p.binding.clone(), p.queue.clone()))
                .collect(),
            store: backends.queues.clone(),
        }
    }
}

/// Add `isola:worker/queue` to `linker`.
pub fn add_to_linker<T: HostView<QueueCtx> + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    add_types::<T, QueueCtx>(linker)?;
    queue::add_to_linker::<T, HasView<QueueCtx>>(linker, T::view)
}

fn outgoing(body: Vec<u8>, options: queue::SendOptions) -> backend::queue::OutgoingMessage {
    backend::queue::OutgoingMessage {
        body,
        content_type: options
            .content_type
            .unwrap_or_else(|| "application/octet-stream".into()),
        delay: std::time::Duration::from_secs(options.delay_seconds.unwrap_or(0).into()),
    }
}

impl queue::Host for View<'_, QueueCtx> {}

impl View<'_, QueueCtx> {
    async fn send_messages(
        &mut self,
        this: &Resource<ProducerHandle>,
        messages: Vec<backend::queue::OutgoingMessage>,
    ) -> CallResult<()> {
        let queue = self.table.get(this)?.0.clone();
        if let Err(e) = backend::queue::validate(&messages) {
            return Ok(Err(self.guest_error(e)));
        }
        let store = self.ctx.store.clone();
        call!(self, store.send(&queue, messages))
    }
}

impl queue::HostProducer for View<'_, QueueCtx> {
    async fn open(&mut self, binding: String) -> CallResult<Resource<ProducerHandle>> {
        let Some(queue) = self.ctx.queues.get(&binding).cloned() else {
            return Ok(Err(unbound("queue", &binding)));
        };
        Ok(Ok(self.table.push(ProducerHandle(queue))?))
    }

    async fn send(
        &mut self,
        this: Resource<ProducerHandle>,
        body: Vec<u8>,
        options: queue::SendOptions,
    ) -> CallResult<()> {
        self.send_messages(&this, vec![outgoing(body, options)])
            .await
    }

    async fn send_batch(
        &mut self,
        this: Resource<ProducerHandle>,
        messages: Vec<queue::OutgoingMessage>,
    ) -> CallResult<()> {
        let messages = messages
            .into_iter()
            .map(|m| outgoing(m.body, m.options))
            .collect();
        self.send_messages(&this, messages).await
    }

    async fn drop(&mut self, this: Resource<ProducerHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}
