//! A worker's other handlers: `scheduled` (cron) and `queue` (a consumer's
//! batch). Each run gets a fresh instance with the worker's limits — the CPU
//! budget of `triggers.cpu_ms` when set — and ends with one access line
//! (method `SCHEDULED` or `QUEUE`, the cron expression or queue as path).

use std::sync::Arc;
use std::time::Duration;

use crate::backtrace::Backtrace;
use crate::failure::{Failure, GuestError};
use crate::instance::ActiveTask;
use crate::report::{Metered, Report, within_limits};
use crate::request::{RequestId, RequestInfo};
use crate::services::ServiceCalls;
use crate::worker::Worker;

use crate::generated::{queue_world, scheduled_world};
use queue_world::exports::isola::worker::queue_consumer as wit_queue;
use scheduled_world::exports::isola::worker::scheduled as wit_scheduled;

/// A message handed to a queue consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueMessage {
    pub id: String,
    pub body: Vec<u8>,
    pub content_type: String,
    /// When it was sent, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Deliveries so far, this one included.
    pub attempts: u32,
}

/// What the consumer decided for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageOutcome {
    Ack,
    /// Deliver again after this many seconds (`None`: the consumer's
    /// configured delay).
    Retry(Option<u32>),
}

/// A scheduled run or queue batch that failed as a whole.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {cause}", failure.reason())]
pub struct TriggerError {
    pub failure: Failure,
    pub cause: String,
    /// The guest's stack when it trapped.
    pub backtrace: Option<Backtrace>,
}

impl TriggerError {
    /// The backtrace as the log prints it: one frame a line, or `none`.
    pub fn backtrace_text(&self) -> String {
        Backtrace::text(self.backtrace.as_ref())
    }
}

impl From<GuestError> for TriggerError {
    fn from(e: GuestError) -> Self {
        TriggerError {
            failure: e.failure,
            cause: e.cause,
            backtrace: e.backtrace,
        }
    }
}

/// How a trigger run went, with its id (also in its access line).
pub struct TriggerRun<T> {
    pub id: RequestId,
    pub result: Result<T, TriggerError>,
}

impl Worker {
    /// The component exports the `scheduled` handler.
    pub fn handles_scheduled(&self) -> bool {
        self.inner.scheduled.is_some()
    }

    /// The component exports the `queue` handler.
    pub fn handles_queue(&self) -> bool {
        self.inner.queue.is_some()
    }

    /// Run the `scheduled` handler for a firing of `cron` due at
    /// `scheduled_time_ms` (milliseconds since the Unix epoch).
    pub async fn scheduled(&self, cron: &str, scheduled_time_ms: u64) -> TriggerRun<()> {
        let Some(pre) = self.inner.scheduled.clone() else {
            return self.not_exported("scheduled");
        };
        let event = wit_scheduled::ScheduledEvent {
            cron: cron.to_owned(),
            scheduled_time: scheduled_time_ms,
        };
        self.run_trigger("SCHEDULED", cron.to_owned(), move |mut store| async move {
            let result = async {
                let instance = pre.instantiate_async(&mut store).await?;
                instance
                    .isola_worker_scheduled()
                    .call_handle(&mut store, &event)
                    .await
            }
            .await;
            (result, store)
        })
        .await
        .and_then_guest(|r| {
            r.map_err(|message| TriggerError {
                failure: Failure::Exception,
                cause: format!("the scheduled handler failed: {message}"),
                backtrace: None,
            })
        })
    }

    /// Hand a batch of `queue` to the consumer; one outcome per message,
    /// in order (a shorter answer retries the rest).
    pub async fn queue(
        &self,
        queue: &str,
        messages: Vec<QueueMessage>,
    ) -> TriggerRun<Vec<MessageOutcome>> {
        let Some(pre) = self.inner.queue.clone() else {
            return self.not_exported("queue");
        };
        let count = messages.len();
        let batch = wit_queue::MessageBatch {
            queue: queue.to_owned(),
            messages: messages
                .into_iter()
                .map(|m| wit_queue::Message {
                    id: m.id,
                    body: m.body,
                    content_type: m.content_type,
                    timestamp: m.timestamp_ms,
                    attempts: m.attempts,
                })
                .collect(),
        };
        self.run_trigger("QUEUE", queue.to_owned(), move |mut store| async move {
            let result = async {
                let instance = pre.instantiate_async(&mut store).await?;
                instance
                    .isola_worker_queue_consumer()
                    .call_handle(&mut store, &batch)
                    .await
            }
            .await;
            (result.map(Ok), store)
        })
        .await
        .and_then_guest(|outcomes: Result<Vec<wit_queue::Outcome>, String>| {
            let outcomes = outcomes.expect("no guest error for queue");
            let mut answered: Vec<MessageOutcome> = outcomes
                .into_iter()
                .take(count)
                .map(|o| match o {
                    wit_queue::Outcome::Ack => MessageOutcome::Ack,
                    wit_queue::Outcome::Retry(delay) => MessageOutcome::Retry(delay),
                })
                .collect();
            answered.resize(count, MessageOutcome::Retry(None));
            Ok(answered)
        })
    }

    fn not_exported<T>(&self, handler: &str) -> TriggerRun<T> {
        TriggerRun {
            id: RequestId::generate(),
            result: Err(TriggerError {
                failure: Failure::Exception,
                cause: format!(
                    "worker `{}` does not export the {handler} handler",
                    self.name()
                ),
                backtrace: None,
            }),
        }
    }

    /// Run `body` with a fresh store under the trigger limits. `body` gets
    /// the store and gives it back with the guest's result, so fuel and the
    /// memory flag can be read whatever happened.
    async fn run_trigger<T, F, Fut>(
        &self,
        method: &'static str,
        target: String,
        body: F,
    ) -> TriggerRun<Result<T, String>>
    where
        T: Send + 'static,
        F: FnOnce(Metered) -> Fut + Send + 'static,
        Fut: Future<Output = (wasmtime::Result<Result<T, String>>, Metered)> + Send + 'static,
    {
        let inner = &self.inner;
        let id = RequestId::generate();
        let report = Report::new(
            inner.shared.name.clone(),
            id.clone(),
            http::Method::from_bytes(method.as_bytes()).expect("a valid method name"),
            target,
            None,
            inner.observer.get().cloned(),
        );
        let services = ServiceCalls {
            services: inner.services.get().cloned(),
            bindings: inner.bindings.clone(),
            depth: 0,
            locals: Arc::default(),
            request_id: id.clone(),
            info: RequestInfo {
                protocol: method.to_ascii_lowercase(),
                ..RequestInfo::default()
            },
            object_bindings: inner.object_bindings.clone(),
            object: None,
        };
        let fuel = inner
            .trigger_cpu_ms
            .saturating_mul(inner.budget.fuel_yield_interval);
        let admitted = match inner.budget.admit().await {
            Ok(slot) => self
                .new_store(services, self.subrequests(&report), fuel)
                .map(|store| (store, slot)),
            Err(e) => Err(e),
        };
        let (store, slot) = match admitted {
            Ok(admitted) => admitted,
            Err(e) => {
                report.set_failure(e.failure);
                report.set_status(e.failure.status().as_u16());
                return TriggerRun {
                    id,
                    result: Err(e.into()),
                };
            }
        };

        let meter = store.data().run.meter.clone();
        let store = Metered::new(store, fuel, report.clone());
        let guest = async move {
            let (result, store) = body(store).await;
            let memory_limit_hit = store.data().run.memory_limit_hit;
            let panic = store.data().run.panic.get();
            drop(store);
            drop(slot);
            result.map_err(|trap| GuestError::from_trap(trap, memory_limit_hit, false, panic))
        };
        let wall = inner.budget.wall;
        let cpu_limit = Duration::from_millis(inner.trigger_cpu_ms);
        let active = ActiveTask::start(&inner.active);
        let limited = within_limits(guest, meter, report.cpu_ns.clone(), wall, cpu_limit);
        let task = tokio::spawn(async move {
            let _active = active;
            limited.await
        });
        let result = match task.await {
            Ok(result) => result,
            Err(join) => Err(GuestError::message(
                Failure::Exception,
                format!("the guest task failed: {join}"),
            )),
        };
        let result = match result {
            Ok(value) => {
                report.set_status(200);
                Ok(value)
            }
            Err(error) => {
                report.set_failure(error.failure);
                report.set_error(&error);
                report.set_status(error.failure.status().as_u16());
                Err(TriggerError::from(error))
            }
        };
        TriggerRun { id, result }
    }
}

impl<T> TriggerRun<Result<T, String>> {
    /// Turn the guest's own answer into the run's result.
    fn and_then_guest<U>(
        self,
        f: impl FnOnce(Result<T, String>) -> Result<U, TriggerError>,
    ) -> TriggerRun<U> {
        TriggerRun {
            id: self.id,
            result: self.result.and_then(f),
        }
    }
}
