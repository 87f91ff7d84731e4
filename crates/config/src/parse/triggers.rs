//! What starts a worker besides a request: `queues.consumers` and
//! `triggers` (`crons`, and their CPU budget `cpu_ms`).

use std::collections::HashMap;
use std::ops::RangeInclusive;

use toml::Spanned;

use super::checks::{check_queue_name, positive};
use crate::error::{Fault, WorkerKeys};
use crate::model::{CronSchedule, QueueConsumer};
use crate::raw::{RawConsumer, RawTriggers};

/// `queues.consumers` of the worker `worker`; `owners` names each queue's
/// consumer so far (a queue has at most one).
pub(super) fn parse_consumers(
    keys: WorkerKeys,
    consumers: &[RawConsumer],
    worker: &str,
    owners: &mut HashMap<String, String>,
) -> Result<Vec<QueueConsumer>, Fault> {
    consumers
        .iter()
        .map(|entry| {
            check_queue_name(&entry.queue)
                .map_err(|m| keys.fault(entry.queue.span(), "queues.consumers", m))?;
            if let Some(other) = owners.insert(entry.queue.get_ref().clone(), worker.to_owned()) {
                return Err(keys.fault(
                    entry.queue.span(),
                    "queues.consumers",
                    format!(
                        "queue `{}` already has a consumer: worker `{other}`",
                        entry.queue.get_ref()
                    ),
                ));
            }
            parse_consumer(keys, entry)
        })
        .collect()
}

/// One consumer's settings, with Wrangler's defaults and ranges.
fn parse_consumer(keys: WorkerKeys, entry: &RawConsumer) -> Result<QueueConsumer, Fault> {
    let ranged = |value: &Option<Spanned<u64>>,
                  default: u64,
                  range: RangeInclusive<u64>,
                  what: &str| match value {
        None => Ok(default),
        Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => Err(keys.fault(
            v.span(),
            "queues.consumers",
            format!(
                "{what} must be between {} and {}",
                range.start(),
                range.end()
            ),
        )),
    };
    let dead_letter_queue = match &entry.dead_letter_queue {
        Some(dlq) => {
            check_queue_name(dlq).map_err(|m| keys.fault(dlq.span(), "queues.consumers", m))?;
            if dlq.get_ref() == entry.queue.get_ref() {
                return Err(keys.fault(
                    dlq.span(),
                    "queues.consumers",
                    "a queue cannot be its own dead letter queue",
                ));
            }
            Some(dlq.get_ref().clone())
        }
        None => None,
    };
    Ok(QueueConsumer {
        queue: entry.queue.get_ref().clone(),
        max_batch_size: ranged(&entry.max_batch_size, 10, 1..=100, "max_batch_size")? as u32,
        max_batch_timeout: ranged(&entry.max_batch_timeout, 5, 0..=60, "max_batch_timeout")?,
        max_retries: ranged(&entry.max_retries, 3, 0..=100, "max_retries")? as u32,
        dead_letter_queue,
        max_concurrency: ranged(&entry.max_concurrency, 1, 1..=250, "max_concurrency")? as u32,
        retry_delay: ranged(&entry.retry_delay, 0, 0..=43_200, "retry_delay")?,
    })
}

/// `triggers.crons` and `triggers.cpu_ms`.
pub(super) fn parse_triggers(
    keys: WorkerKeys,
    triggers: &RawTriggers,
) -> Result<(Vec<CronSchedule>, Option<u64>), Fault> {
    let crons = triggers
        .crons
        .iter()
        .map(|expression| {
            CronSchedule::parse(expression.get_ref())
                .map_err(|m| keys.fault(expression.span(), "triggers.crons", m))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cpu_ms = match &triggers.cpu_ms {
        Some(ms) => Some(positive(ms, keys.key("triggers.cpu_ms"))?),
        None => None,
    };
    Ok((crons, cpu_ms))
}
