//! What starts a worker besides a request: `queues.consumers` and
//! `triggers` (`crons`, and their CPU budget `cpu_ms`).

use std::collections::HashMap;
use std::ops::RangeInclusive;

use toml::Spanned;

use super::checks::{check_queue_name, positive};
use crate::error::{Faults, WorkerKeys};
use crate::model::{CronSchedule, QueueConsumer};
use crate::raw::{RawConsumer, RawTriggers};

/// `queues.consumers` of the worker `worker`; `owners` names each queue's
/// consumer so far (a queue has at most one).
pub(super) fn parse_consumers(
    keys: WorkerKeys,
    consumers: &[RawConsumer],
    worker: &str,
    owners: &mut HashMap<String, String>,
    faults: &mut Faults,
) -> Vec<QueueConsumer> {
    consumers
        .iter()
        .map(|entry| {
            match check_queue_name(&entry.queue) {
                Err(m) => faults.push(keys.fault(entry.queue.span(), "queues.consumers", m)),
                Ok(()) => {
                    if let Some(other) =
                        owners.insert(entry.queue.get_ref().clone(), worker.to_owned())
                    {
                        faults.push(keys.fault(
                            entry.queue.span(),
                            "queues.consumers",
                            format!(
                                "queue `{}` already has a consumer: worker `{other}`",
                                entry.queue.get_ref()
                            ),
                        ));
                    }
                }
            }
            parse_consumer(keys, entry, faults)
        })
        .collect()
}

/// One consumer's settings, with Wrangler's defaults and ranges.
fn parse_consumer(keys: WorkerKeys, entry: &RawConsumer, faults: &mut Faults) -> QueueConsumer {
    if let Some(dlq) = &entry.dead_letter_queue {
        if let Err(m) = check_queue_name(dlq) {
            faults.push(keys.fault(dlq.span(), "queues.consumers", m));
        } else if dlq.get_ref() == entry.queue.get_ref() {
            faults.push(keys.fault(
                dlq.span(),
                "queues.consumers",
                "a queue cannot be its own dead letter queue",
            ));
        }
    }
    let mut ranged = |value: &Option<Spanned<u64>>,
                      default: u64,
                      range: RangeInclusive<u64>,
                      what: &str| match value {
        None => default,
        Some(v) if range.contains(v.get_ref()) => *v.get_ref(),
        Some(v) => {
            faults.push(keys.fault(
                v.span(),
                "queues.consumers",
                format!(
                    "{what} must be between {} and {}",
                    range.start(),
                    range.end()
                ),
            ));
            default
        }
    };
    QueueConsumer {
        queue: entry.queue.get_ref().clone(),
        max_batch_size: ranged(&entry.max_batch_size, 10, 1..=100, "max_batch_size") as u32,
        max_batch_timeout: ranged(&entry.max_batch_timeout, 5, 0..=60, "max_batch_timeout"),
        max_retries: ranged(&entry.max_retries, 3, 0..=100, "max_retries") as u32,
        dead_letter_queue: entry
            .dead_letter_queue
            .as_ref()
            .map(|d| d.get_ref().clone()),
        max_concurrency: ranged(&entry.max_concurrency, 1, 1..=250, "max_concurrency") as u32,
        retry_delay: ranged(&entry.retry_delay, 0, 0..=43_200, "retry_delay"),
    }
}

/// `triggers.crons` and `triggers.cpu_ms`.
pub(super) fn parse_triggers(
    keys: WorkerKeys,
    triggers: &RawTriggers,
    faults: &mut Faults,
) -> (Vec<CronSchedule>, Option<u64>) {
    let crons = triggers
        .crons
        .iter()
        .filter_map(|expression| {
            faults.ok(CronSchedule::parse(expression.get_ref())
                .map_err(|m| keys.fault(expression.span(), "triggers.crons", m)))
        })
        .collect();
    let cpu_ms = triggers
        .cpu_ms
        .as_ref()
        .and_then(|ms| faults.ok(positive(ms, keys.key("triggers.cpu_ms"))));
    (crons, cpu_ms)
}
