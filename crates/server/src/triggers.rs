//! Cron triggers and queue consumers: the loops that call a worker's
//! `scheduled` and `queue` handlers. Each firing and each batch gets an id
//! and one `isola::trigger` log line with its outcome.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use isola_backends::lease::LeaseStore;
use isola_backends::queue::{Delivery, QueueStore};
use isola_config::{CronSchedule, QueueConsumer, WorkerConfig};
use isola_runtime::{MessageOutcome, QueueMessage, Worker};
use tokio::task::JoinHandle;

/// How often an idle consumer looks for new messages. Polling keeps the
/// backend interface small (no cross-process notification) and costs one
/// indexed SQLite read per interval.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Added to a batch's lease beyond its batch timeout and `wall_ms`.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// The running trigger loops; stopped when dropped or by [`Triggers::stop`].
pub struct Triggers {
    tasks: Vec<JoinHandle<()>>,
}

impl Triggers {
    /// Start a cron loop per `triggers.crons` entry and `max_concurrency`
    /// consumer loops per `queues.consumers` entry. `workers[i]` is
    /// described by `configs[i]`. Each cron firing runs only where
    /// `leases` grants it: on this node alone with the embedded backends,
    /// on exactly one node of a cluster sharing a Redis queue backend.
    pub async fn start(
        workers: &[Worker],
        configs: &[WorkerConfig],
        queues: Arc<dyn QueueStore>,
        leases: Arc<dyn LeaseStore>,
        state_dir: &Path,
    ) -> Triggers {
        let mut tasks = Vec::new();
        // A single node: leases left by a previous process are void. (A
        // shared queue backend releases nothing here: other nodes' leases
        // are live, and a dead node's run out.)
        match queues.release_all_leases().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(target: "isola::trigger", released = n,
                "messages in flight when the host last stopped will be delivered again"),
            Err(e) => tracing::error!(target: "isola::trigger", "cannot release old leases: {e}"),
        }
        let ledger = Arc::new(CronLedger::load(state_dir.join("cron-state.json")));
        for (worker, config) in workers.iter().zip(configs) {
            for cron in &config.crons {
                // Sharing the firings with other nodes, this one cannot
                // tell which were missed by the whole cluster.
                if !leases.is_shared() {
                    ledger.report_missed(worker.name(), cron);
                }
                tasks.push(tokio::spawn(cron_loop(
                    worker.clone(),
                    cron.clone(),
                    ledger.clone(),
                    leases.clone(),
                )));
            }
            for consumer in &config.queue_consumers {
                for _ in 0..consumer.max_concurrency {
                    tasks.push(tokio::spawn(consumer_loop(
                        worker.clone(),
                        consumer.clone(),
                        queues.clone(),
                    )));
                }
            }
        }
        Triggers { tasks }
    }

    /// Stop firing and consuming. A batch cut off here is delivered again
    /// later (its messages stay leased, then are released).
    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Triggers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// When each cron last fired, kept in `cron-state.json` so a restart can
/// tell which firings it missed.
struct CronLedger {
    path: PathBuf,
    last: Mutex<BTreeMap<String, u64>>,
}

impl CronLedger {
    fn load(path: PathBuf) -> Self {
        let last = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        CronLedger {
            path,
            last: Mutex::new(last),
        }
    }

    fn key(worker: &str, cron: &CronSchedule) -> String {
        format!("{worker} {}", cron.expression)
    }

    /// Log the firings that fell in the downtime; they are not replayed.
    fn report_missed(&self, worker: &str, cron: &CronSchedule) {
        let Some(&last) = self
            .last
            .lock()
            .expect("ledger lock")
            .get(&Self::key(worker, cron))
        else {
            return;
        };
        let Some(since) = chrono::DateTime::from_timestamp_millis(last as i64) else {
            return;
        };
        let now = chrono::Utc::now();
        let missed = cron
            .schedule
            .iter_after(since)
            .take_while(|t| *t < now)
            .take(10_000)
            .count();
        if missed > 0 {
            tracing::warn!(target: "isola::trigger", worker, cron = %cron.expression, missed,
                last_fired = %since.to_rfc3339(),
                "firings missed while the host was down are not replayed");
        }
    }

    fn record(&self, worker: &str, cron: &CronSchedule, at_ms: u64) {
        let text = {
            let mut last = self.last.lock().expect("ledger lock");
            last.insert(Self::key(worker, cron), at_ms);
            serde_json::to_vec_pretty(&*last).expect("a map of numbers serialises")
        };
        // Written atomically; losing it only loses the missed-firing report.
        let temp = self.path.with_extension("json.tmp");
        if let Err(e) =
            std::fs::write(&temp, text).and_then(|()| std::fs::rename(&temp, &self.path))
        {
            tracing::warn!(target: "isola::trigger", "cannot record the cron state: {e}");
        }
    }
}

/// How long a firing's lease is kept: until the next firing (so a node
/// whose clock lags cannot run it again), at least a minute, at most a day.
fn lease_ttl(cron: &CronSchedule, due: chrono::DateTime<chrono::Utc>) -> Duration {
    let next = cron
        .schedule
        .find_next_occurrence(&due, false)
        .ok()
        .and_then(|next| (next - due).to_std().ok())
        .unwrap_or_default();
    next.clamp(Duration::from_secs(60), Duration::from_secs(24 * 3600))
}

async fn cron_loop(
    worker: Worker,
    cron: CronSchedule,
    ledger: Arc<CronLedger>,
    leases: Arc<dyn LeaseStore>,
) {
    loop {
        let now = chrono::Utc::now();
        let next = match cron.schedule.find_next_occurrence(&now, false) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(target: "isola::trigger", worker = worker.name(), cron = %cron.expression,
                    "the schedule has no next firing: {e}");
                return;
            }
        };
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        let due_ms = next.timestamp_millis() as u64;
        ledger.record(worker.name(), &cron, due_ms);
        // One lease per firing: worker, expression and scheduled time.
        let key = format!("cron:{}:{}:{due_ms}", worker.name(), cron.expression);
        match leases.acquire(&key, lease_ttl(&cron, next)).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(target: "isola::trigger", worker = worker.name(), cron = %cron.expression,
                    due_ms, "another node runs this firing");
                continue;
            }
            Err(e) => {
                // Running it without the lease could run it twice.
                tracing::error!(target: "isola::trigger", worker = worker.name(), cron = %cron.expression,
                    due_ms, "firing skipped: cannot take its lease: {e}");
                continue;
            }
        }
        // Each firing runs on its own, so a slow one does not delay the next.
        let worker = worker.clone();
        let expression = cron.expression.clone();
        tokio::spawn(async move { fire(&worker, &expression, due_ms).await });
    }
}

/// Run one firing and log its outcome; `Ok` when the handler succeeded.
pub async fn fire(worker: &Worker, cron: &str, due_ms: u64) -> Result<(), String> {
    let run = worker.scheduled(cron, due_ms).await;
    match &run.result {
        Ok(()) => {
            tracing::info!(target: "isola::trigger", kind = "scheduled", id = %run.id,
                worker = worker.name(), cron, due_ms, outcome = "ok", "scheduled run finished");
            Ok(())
        }
        Err(e) => {
            tracing::error!(target: "isola::trigger", kind = "scheduled", id = %run.id,
                worker = worker.name(), cron, due_ms, outcome = e.failure.reason(),
                backtrace = e.backtrace_text().as_str(),
                "scheduled run failed: {}", e.cause);
            Err(format!("{} ({})", e.cause, run.id))
        }
    }
}

async fn consumer_loop(worker: Worker, consumer: QueueConsumer, queues: Arc<dyn QueueStore>) {
    let max = consumer.max_batch_size as usize;
    let batch_timeout = Duration::from_secs(consumer.max_batch_timeout);
    // Long enough to cover the wait for a full batch, the handler's run
    // (cut at `wall_ms`) and settling the batch. It is also how long the
    // messages of a consumer that died stay hidden before another consumer
    // (on any node sharing the queue) gets them again.
    let lease = batch_timeout + Duration::from_millis(worker.limits().wall_ms) + LEASE_MARGIN;
    loop {
        let mut batch = match queues.lease(&consumer.queue, max, lease).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(target: "isola::trigger", queue = %consumer.queue, "cannot read the queue: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.is_empty() {
            tokio::time::sleep(IDLE_POLL).await;
            continue;
        }
        // Wait for the batch to fill, up to `max_batch_timeout` after its
        // first message.
        let deadline = tokio::time::Instant::now() + batch_timeout;
        while batch.len() < max && tokio::time::Instant::now() < deadline {
            tokio::time::sleep_until((tokio::time::Instant::now() + IDLE_POLL).min(deadline)).await;
            match queues
                .lease(&consumer.queue, max - batch.len(), lease)
                .await
            {
                Ok(more) => batch.extend(more),
                Err(e) => {
                    tracing::error!(target: "isola::trigger", queue = %consumer.queue, "cannot read the queue: {e}");
                    break;
                }
            }
        }
        deliver(&worker, &consumer, queues.as_ref(), batch).await;
    }
}

/// Hand one batch to the consumer and settle every message: ack, retry
/// with backoff, or dead-letter once `max_retries` is spent.
async fn deliver(
    worker: &Worker,
    consumer: &QueueConsumer,
    queues: &dyn QueueStore,
    batch: Vec<Delivery>,
) {
    let messages: Vec<QueueMessage> = batch
        .iter()
        .map(|d| QueueMessage {
            id: d.id.clone(),
            body: d.body.clone(),
            content_type: d.content_type.clone(),
            timestamp_ms: d.timestamp_ms,
            attempts: d.attempts,
        })
        .collect();
    let run = worker.queue(&consumer.queue, messages).await;
    let outcomes = match &run.result {
        Ok(outcomes) => outcomes.clone(),
        // A trap or a limit retries the whole batch.
        Err(_) => vec![MessageOutcome::Retry(None); batch.len()],
    };
    let (mut acked, mut retried, mut dead) = (Vec::new(), 0, 0);
    for (delivery, outcome) in batch.iter().zip(outcomes) {
        let settled = match outcome {
            MessageOutcome::Ack => {
                acked.push(delivery.id.clone());
                Ok(())
            }
            MessageOutcome::Retry(_) if delivery.attempts > consumer.max_retries => {
                dead += 1;
                match &consumer.dead_letter_queue {
                    Some(dlq) => queues.dead_letter(&consumer.queue, &delivery.id, dlq).await,
                    None => {
                        tracing::warn!(target: "isola::trigger", queue = %consumer.queue, message = %delivery.id,
                            attempts = delivery.attempts, "message dropped after its last retry (no dead_letter_queue)");
                        queues
                            .ack(&consumer.queue, std::slice::from_ref(&delivery.id))
                            .await
                    }
                }
            }
            MessageOutcome::Retry(delay) => {
                retried += 1;
                let delay = delay
                    .map(u64::from)
                    .unwrap_or_else(|| backoff(consumer, delivery.attempts));
                queues
                    .retry(&consumer.queue, &delivery.id, Duration::from_secs(delay))
                    .await
            }
        };
        if let Err(e) = settled {
            // The lease runs out and the message comes again: at least once.
            tracing::error!(target: "isola::trigger", queue = %consumer.queue, message = %delivery.id,
                "cannot settle the message: {e}");
        }
    }
    if let Err(e) = queues.ack(&consumer.queue, &acked).await {
        tracing::error!(target: "isola::trigger", queue = %consumer.queue, "cannot ack the batch: {e}");
    }
    let attempts = batch.iter().map(|d| d.attempts).max().unwrap_or(0);
    match &run.result {
        Ok(_) => tracing::info!(target: "isola::trigger", kind = "queue", id = %run.id,
            worker = worker.name(), queue = %consumer.queue, messages = batch.len(), acked = acked.len(),
            retried, dead_lettered = dead, attempts, outcome = "ok", "queue batch finished"),
        Err(e) => tracing::error!(target: "isola::trigger", kind = "queue", id = %run.id,
            worker = worker.name(), queue = %consumer.queue, messages = batch.len(), acked = acked.len(),
            retried, dead_lettered = dead, attempts, outcome = e.failure.reason(),
            backtrace = e.backtrace_text().as_str(),
            "queue batch failed, its messages are retried: {}", e.cause),
    }
}

/// `retry_delay` doubled for each earlier attempt (capped at 12 hours, as
/// Workers caps delays); 0 keeps retries immediate.
fn backoff(consumer: &QueueConsumer, attempts: u32) -> u64 {
    let doublings = attempts.saturating_sub(1).min(16);
    consumer
        .retry_delay
        .saturating_mul(1 << doublings)
        .min(12 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_retry_delay() {
        let mut consumer = QueueConsumer {
            queue: "q".into(),
            max_batch_size: 10,
            max_batch_timeout: 5,
            max_retries: 3,
            dead_letter_queue: None,
            max_concurrency: 1,
            retry_delay: 0,
        };
        assert_eq!(backoff(&consumer, 3), 0);
        consumer.retry_delay = 5;
        assert_eq!([1, 2, 3, 4].map(|a| backoff(&consumer, a)), [5, 10, 20, 40]);
        assert_eq!(backoff(&consumer, 40), 12 * 3600);
    }
}

#[cfg(test)]
mod proptests {
    use std::collections::BTreeSet;

    use chrono::{DateTime, Datelike, Timelike, Utc};
    use proptest::prelude::*;

    use super::*;

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// A cron field within `lo..=hi`, and the values it selects.
    fn field(lo: u32, hi: u32) -> impl Strategy<Value = (String, BTreeSet<u32>)> {
        let n = lo..=hi;
        let steps = move |from: u32, step: u32| (from..=hi).step_by(step as usize).collect();
        prop_oneof![
            Just(("*".to_owned(), (lo..=hi).collect())),
            n.clone().prop_map(|v| (v.to_string(), BTreeSet::from([v]))),
            (n.clone(), n.clone()).prop_map(|(a, b)| {
                let (a, b) = (a.min(b), a.max(b));
                (format!("{a}-{b}"), (a..=b).collect())
            }),
            proptest::collection::btree_set(n.clone(), 1..4).prop_map(|set| {
                let text: Vec<_> = set.iter().map(u32::to_string).collect();
                (text.join(","), set)
            }),
            (1..=hi).prop_map(move |s| (format!("*/{s}"), steps(lo, s))),
            (n, 1..=hi).prop_map(move |(a, s)| (format!("{a}-{hi}/{s}"), steps(a, s))),
        ]
    }

    /// A schedule as text (five fields, or six with `seconds`), and an
    /// independent test of whether a time matches it.
    #[derive(Debug, Clone)]
    struct Spec {
        seconds: Option<(String, BTreeSet<u32>)>,
        fields: [(String, BTreeSet<u32>); 5],
    }

    impl Spec {
        fn five(&self) -> String {
            let fields: Vec<&str> = self.fields.iter().map(|(t, _)| t.as_str()).collect();
            fields.join(" ")
        }

        fn text(&self) -> String {
            match &self.seconds {
                Some((s, _)) => format!("{s} {}", self.five()),
                None => self.five(),
            }
        }

        fn seconds(&self) -> BTreeSet<u32> {
            self.seconds
                .as_ref()
                .map_or_else(|| BTreeSet::from([0]), |(_, s)| s.clone())
        }

        fn day_matches(&self, day: chrono::NaiveDate) -> bool {
            let [_, _, dom, month, dow] = &self.fields;
            let dom_ok = dom.1.contains(&day.day());
            let dow_ok = dow.1.contains(&day.weekday().num_days_from_sunday());
            // Vixie cron: a restricted day of month or of week decides
            // alone; both restricted, either one will do.
            let day_ok = match (dom.0 == "*", dow.0 == "*") {
                (true, true) => true,
                (true, false) => dow_ok,
                (false, true) => dom_ok,
                (false, false) => dom_ok || dow_ok,
            };
            month.1.contains(&day.month()) && day_ok
        }

        fn matches(&self, t: DateTime<Utc>) -> bool {
            let [minute, hour, ..] = &self.fields;
            self.day_matches(t.date_naive())
                && self.seconds().contains(&t.second())
                && minute.1.contains(&t.minute())
                && hour.1.contains(&t.hour())
        }

        /// The first matching second after `start`, found day by day
        /// within `days` days.
        fn next_after(&self, start: DateTime<Utc>, days: u64) -> Option<DateTime<Utc>> {
            let [minute, hour, ..] = &self.fields;
            let seconds = self.seconds();
            // The first (hour, minute, second) after `after` (inclusive
            // when `None`: the whole day).
            let first = |after: Option<(u32, u32, u32)>| {
                let (h0, m0, s0) = after.unwrap_or((0, 0, 0));
                for &h in hour.1.range(h0..) {
                    let m_from = if h == h0 { m0 } else { 0 };
                    for &m in minute.1.range(m_from..) {
                        let s_from = match after {
                            Some(_) if h == h0 && m == m0 => s0 + 1,
                            _ => 0,
                        };
                        if let Some(&s) = seconds.range(s_from..).next() {
                            return Some((h, m, s));
                        }
                    }
                }
                None
            };
            let mut day = start.date_naive();
            let mut after = Some((start.hour(), start.minute(), start.second()));
            for _ in 0..days {
                if self.day_matches(day)
                    && let Some((h, m, s)) = first(after)
                {
                    return Some(day.and_hms_opt(h, m, s).unwrap().and_utc());
                }
                day = day.succ_opt().unwrap();
                after = None;
            }
            None
        }
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            proptest::option::of(field(0, 59)),
            field(0, 59),
            field(0, 23),
            field(1, 31),
            field(1, 12),
            field(0, 6),
        )
            .prop_map(|(seconds, minute, hour, dom, month, dow)| Spec {
                seconds,
                fields: [minute, hour, dom, month, dow],
            })
    }

    /// A start between 2000 and 2100, to the second.
    fn start() -> impl Strategy<Value = DateTime<Utc>> {
        (946_684_800i64..4_102_444_800).prop_map(|s| DateTime::from_timestamp(s, 0).unwrap())
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn the_next_firing_is_the_first_matching_second(spec in spec(), start in start()) {
            let cron = CronSchedule::parse(&spec.text()).unwrap();
            let Ok(next) = cron.schedule.find_next_occurrence(&start, false) else {
                // Only a day that never comes (the 31st of short months).
                prop_assert!(spec.fields[2].0 != "*" && spec.fields[4].0 == "*");
                prop_assert_eq!(spec.next_after(start, 3653), None);
                return Ok(());
            };
            prop_assert!(next > start);
            prop_assert!(spec.matches(next), "{} fires at {}", spec.text(), next);
            // Nothing in between matches: the first match within ten
            // years, found day by day, is the same.
            match spec.next_after(start, 3653) {
                Some(expected) => prop_assert_eq!(next, expected, "{}", spec.text()),
                None => prop_assert!(next > start + chrono::Duration::days(3650)),
            }
            let ttl = lease_ttl(&cron, next);
            prop_assert!(ttl >= Duration::from_secs(60) && ttl <= Duration::from_secs(24 * 3600));
        }

        #[test]
        fn five_fields_fire_as_six_with_second_zero(spec in spec(), start in start()) {
            let five = CronSchedule::parse(&spec.five()).unwrap();
            let six = CronSchedule::parse(&format!("0 {}", spec.five())).unwrap();
            prop_assert_eq!(
                five.schedule.find_next_occurrence(&start, false).ok(),
                six.schedule.find_next_occurrence(&start, false).ok()
            );
        }

        #[test]
        fn any_accepted_schedule_fires_later_or_never(
            text in proptest::collection::vec(
                proptest::sample::select(
                    &["*", "?", "L", "W", "#", "/", ",", "-", "0", "1", "5", "7", "29", "31", "59", "MON", "FEB", " "][..]
                ),
                0..20,
            ).prop_map(|t| t.concat()),
            start in start(),
        ) {
            if let Ok(cron) = CronSchedule::parse(&text) {
                if let Ok(next) = cron.schedule.find_next_occurrence(&start, false) {
                    prop_assert!(next > start);
                }
                let _ = lease_ttl(&cron, start);
            }
        }
    }
}
