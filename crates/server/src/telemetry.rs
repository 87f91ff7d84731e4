//! Metrics and live tail.
//!
//! Every run ends with one typed [`Outcome`]: the runtime tells it to the
//! [`Observer`] of its worker (this telemetry) when the guest is completely
//! done, waitUntil work included; the front end makes one for requests no
//! worker saw. The metrics and the tail's request events come from it. Guest
//! output becomes `isola::guest` events tagged with the request id, which
//! [`TelemetryLayer`] holds for the request's tail event, whatever the log
//! filter says.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use isola_runtime::{CacheOutcome, Failure, Limit, Observer, Outcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};

/// Guest lines kept per request for tail subscribers; later ones are counted.
const MAX_LINES_PER_REQUEST: usize = 100;
/// Requests whose guest lines are held for tail subscribers at once.
const MAX_PENDING_REQUESTS: usize = 1024;
/// Tail events buffered per subscriber; a slower subscriber skips events.
const TAIL_BUFFER: usize = 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    worker: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    worker: String,
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~65 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

fn instantiation_histogram() -> Histogram {
    // 10 µs .. ~80 ms
    Histogram::new(exponential_buckets(0.00001, 2.0, 14))
}

/// One event for `isola tail`: a finished request (with the guest lines it
/// printed) or a finished trigger run.
#[derive(Clone, Debug)]
pub struct TailEvent {
    pub worker: String,
    /// The response status; `None` for trigger runs.
    pub status: Option<u16>,
    /// The event as one JSON object.
    pub json: Arc<str>,
}

/// Process-wide metrics and the tail broadcast.
pub struct Telemetry {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<WorkerLabels>,
    cpu: HistogramFamily<WorkerLabels>,
    instantiation: HistogramFamily<WorkerLabels>,
    limits: Family<LimitLabels, Counter>,
    compile_cache: Family<CacheLabels, Counter>,
    in_flight: Gauge,
    guest_tasks: Gauge,
    queue_depth: Family<QueueLabels, Gauge>,
    ready: Gauge,
    generation: Gauge,
    reloads: Family<CacheLabels, Counter>,
    overloaded: Family<WorkerLabels, Counter>,
    /// When a request was last refused as overloaded (ms since the Unix
    /// epoch; 0: never).
    last_overload_ms: std::sync::atomic::AtomicU64,
    tail: broadcast::Sender<TailEvent>,
    pending: Mutex<HashMap<String, Vec<Value>>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: HistogramFamily<WorkerLabels> =
            Family::new_with_constructor(latency_histogram);
        let cpu: HistogramFamily<WorkerLabels> = Family::new_with_constructor(latency_histogram);
        let instantiation: HistogramFamily<WorkerLabels> =
            Family::new_with_constructor(instantiation_histogram);
        let limits = Family::<LimitLabels, Counter>::default();
        let compile_cache = Family::<CacheLabels, Counter>::default();
        let in_flight = Gauge::<i64, AtomicI64>::default();
        let guest_tasks = Gauge::<i64, AtomicI64>::default();
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        let ready = Gauge::<i64, AtomicI64>::default();
        let generation = Gauge::<i64, AtomicI64>::default();
        let reloads = Family::<CacheLabels, Counter>::default();
        let overloaded = Family::<WorkerLabels, Counter>::default();
        registry.register(
            "isola_overloaded",
            "Requests refused with 503 overloaded: every instance slot stayed busy for queue_timeout_ms",
            overloaded.clone(),
        );
        registry.register(
            "isola_requests",
            "Requests finished, by worker and response status",
            requests.clone(),
        );
        registry.register(
            "isola_request_duration_seconds",
            "Wall-clock time of a request, until the guest is done (waitUntil included)",
            duration.clone(),
        );
        registry.register(
            "isola_request_cpu_seconds",
            "Thread CPU time a request's guest used",
            cpu.clone(),
        );
        registry.register(
            "isola_instantiation_seconds",
            "Time to make a request's fresh instance",
            instantiation.clone(),
        );
        registry.register(
            "isola_limit_hits",
            "Requests cut by a limit, by worker and limit (cpu-limit, wall-limit, memory-limit)",
            limits.clone(),
        );
        registry.register(
            "isola_compile_cache",
            "Component loads by outcome: hit (disk or memory) or miss (compiled)",
            compile_cache.clone(),
        );
        registry.register(
            "isola_requests_in_flight",
            "Requests accepted whose response has not been fully sent",
            in_flight.clone(),
        );
        registry.register(
            "isola_guest_tasks",
            "Guest tasks still running, waitUntil work after the response included",
            guest_tasks.clone(),
        );
        registry.register(
            "isola_queue_depth",
            "Messages waiting or leased, by consumed queue",
            queue_depth.clone(),
        );
        registry.register(
            "isola_ready",
            "1 when every worker is compiled and loaded",
            ready.clone(),
        );
        registry.register(
            "isola_config_generation",
            "The loaded config generation (1 at start, +1 per successful reload)",
            generation.clone(),
        );
        registry.register(
            "isola_reloads",
            "Reloads by outcome (ok or failed)",
            reloads.clone(),
        );
        Telemetry {
            registry,
            requests,
            duration,
            cpu,
            instantiation,
            limits,
            compile_cache,
            in_flight,
            guest_tasks,
            queue_depth,
            ready,
            generation,
            reloads,
            overloaded,
            last_overload_ms: Default::default(),
            tail: broadcast::channel(TAIL_BUFFER).0,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Count one component load.
    pub fn record_load(&self, outcome: CacheOutcome) {
        let outcome = match outcome {
            CacheOutcome::Memory | CacheOutcome::Disk => "hit",
            CacheOutcome::Compiled => "miss",
        };
        self.compile_cache
            .get_or_create(&CacheLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn record_reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&CacheLabels {
                outcome: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
    }

    /// Whether a request was refused as overloaded within the last
    /// `window` (what `/readyz` reports).
    pub(crate) fn overloaded_within(&self, window: std::time::Duration) -> bool {
        let last = self
            .last_overload_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        last != 0 && unix_ms().saturating_sub(last) <= window.as_millis() as u64
    }

    pub(crate) fn set_ready(&self, ready: bool, generation: u64) {
        self.ready.set(i64::from(ready));
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    pub(crate) fn set_guest_tasks(&self, tasks: usize) {
        self.guest_tasks
            .set(i64::try_from(tasks).unwrap_or(i64::MAX));
    }

    pub(crate) fn set_queue_depth(&self, queue: &str, depth: u64) {
        self.queue_depth
            .get_or_create(&QueueLabels {
                queue: queue.into(),
            })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Counts a request as in flight until the guard is dropped.
    pub(crate) fn in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.inc();
        InFlight(self.clone())
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Receive tail events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TailEvent> {
        self.tail.subscribe()
    }

    fn tailing(&self) -> bool {
        self.tail.receiver_count() > 0
    }

    /// Counts a finished run, and sends its tail event with the lines it
    /// logged when someone is tailing.
    fn on_access(&self, outcome: &Outcome) {
        let worker: String = if outcome.worker.is_empty() {
            "-".into()
        } else {
            outcome.worker.to_string()
        };
        let status = outcome.status;
        self.requests
            .get_or_create(&RequestLabels {
                worker: worker.clone(),
                status: status.map_or_else(|| "0".into(), |s| s.to_string()),
            })
            .inc();
        let labels = WorkerLabels { worker };
        self.duration
            .get_or_create(&labels)
            .observe(outcome.wall.as_secs_f64());
        self.cpu
            .get_or_create(&labels)
            .observe(outcome.cpu.as_secs_f64());
        if !outcome.instantiate.is_zero() {
            self.instantiation
                .get_or_create(&labels)
                .observe(outcome.instantiate.as_secs_f64());
        }
        if outcome.failure == Some(Failure::Overloaded) {
            self.overloaded.get_or_create(&labels).inc();
            self.last_overload_ms
                .store(unix_ms(), std::sync::atomic::Ordering::Relaxed);
        }
        let limit = outcome.limit.map(Limit::as_str);
        if let Some(limit) = limit {
            self.limits
                .get_or_create(&LimitLabels {
                    worker: labels.worker.clone(),
                    limit: limit.to_owned(),
                })
                .inc();
        }
        let request_id = outcome.request_id.as_str();
        let logs = self.take_pending(request_id);
        if !self.tailing() {
            return;
        }
        let worker = labels.worker;
        let millis = |d: std::time::Duration| (d.as_nanos() as f64 / 1e3).round() / 1e3;
        let event = json!({
            "type": "request",
            "time": now(),
            "request_id": request_id,
            "worker": worker,
            "client": outcome.client.map_or_else(|| "-".to_owned(), |c| c.to_string()),
            "method": outcome.method.as_str(),
            "path": outcome.path,
            "status": status,
            "cpu_ms": millis(outcome.cpu),
            "wall_ms": millis(outcome.wall),
            "fuel": outcome.fuel,
            "subrequests": outcome.subrequests,
            "limit": limit,
            "error": outcome.failure.map(|failure| failure_json(failure, outcome)),
            "logs": logs,
        });
        let _ = self.tail.send(TailEvent {
            worker,
            status,
            json: event.to_string().into(),
        });
    }

    fn on_guest_line(&self, fields: &Fields) {
        if !self.tailing() {
            return;
        }
        let Some(request_id) = fields.text("request_id") else {
            return;
        };
        let line = json!({
            "time": now(),
            "stream": fields.text("stream"),
            "message": fields.text("message"),
        });
        self.hold_line(request_id, line);
    }

    /// A runtime warning or error about a request: its message, with the
    /// limit when it names one. A failure's cause and frames come with the
    /// request's event (`error`), not here.
    fn on_host_line(&self, fields: &Fields) {
        let Some(request_id) = fields.text("request_id") else {
            return;
        };
        let mut message = fields.text("message").unwrap_or_default().to_owned();
        if let Some(reason) = fields.text("reason") {
            message = format!("{message} [{reason}]");
        }
        let line = json!({ "time": now(), "stream": "host", "message": message });
        self.hold_line(request_id, line);
    }

    /// Keep `line` for the tail event of `request_id`.
    fn hold_line(&self, request_id: &str, line: serde_json::Value) {
        let mut pending = self.pending.lock().expect("tail lock");
        if pending.len() >= MAX_PENDING_REQUESTS && !pending.contains_key(request_id) {
            // Lines of runs that never finished (or never report): drop them
            // rather than grow without bound.
            pending.clear();
        }
        let lines = pending.entry(request_id.to_owned()).or_default();
        if lines.len() < MAX_LINES_PER_REQUEST {
            lines.push(line);
        } else if lines.len() == MAX_LINES_PER_REQUEST {
            lines.push(json!({"stream": "host", "message": "further lines left out of the tail"}));
        }
    }

    fn on_trigger(&self, fields: &Fields) {
        let Some(id) = fields.text("id") else {
            return;
        };
        let logs = self.take_pending(id);
        if !self.tailing() {
            return;
        }
        let worker = fields.text("worker").unwrap_or("-").to_owned();
        let mut event = serde_json::Map::new();
        event.insert("type".into(), "trigger".into());
        event.insert("time".into(), now().into());
        for (name, value) in &fields.values {
            let value = match value {
                FieldValue::Number(n) => json!(n),
                FieldValue::Text(t) => json!(t),
            };
            event.insert((*name).to_owned(), value);
        }
        event.insert("logs".into(), Value::Array(logs));
        let _ = self.tail.send(TailEvent {
            worker,
            status: None,
            json: Value::Object(event).to_string().into(),
        });
    }

    fn take_pending(&self, request_id: &str) -> Vec<Value> {
        self.pending
            .lock()
            .expect("tail lock")
            .remove(request_id)
            .unwrap_or_default()
    }
}

/// A failed run for `isola tail`: why the host answered, what the guest did
/// (a trap's message, with the Rust panic that led to it) and where (the
/// guest's frames, innermost first, with source lines when it has DWARF).
fn failure_json(failure: Failure, outcome: &Outcome) -> Value {
    let error = outcome.error.as_ref();
    let frames: Vec<Value> = error
        .and_then(|e| e.backtrace.as_ref())
        .map(|trace| {
            trace
                .frames
                .iter()
                .map(|f| json!({"function": f.function, "location": f.location}))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "reason": failure.reason(),
        "limit": failure.limit().map(Limit::as_str),
        "cause": error.map(|e| e.cause.as_str()),
        "frames": frames,
    })
}

/// Now, in Unix milliseconds (0 before 1970).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Every finished run of every worker: the server makes the telemetry
/// the observer of each worker it loads.
impl Observer for Telemetry {
    fn finished(&self, outcome: &Outcome) {
        self.on_access(outcome);
    }
}

/// Decrements the in-flight gauge when dropped.
pub(crate) struct InFlight(Arc<Telemetry>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// Feeds [`Telemetry`] from `isola::guest`, runtime warnings and
/// `isola::trigger` events. Add it to the subscriber without the log
/// level filter, so metrics do not depend on `ISOLA_LOG`.
pub struct TelemetryLayer(pub Arc<Telemetry>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for TelemetryLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let target = event.metadata().target();
        if !target.starts_with("isola") {
            return;
        }
        match target {
            "isola::guest" if self.0.tailing() => {
                let mut fields = Fields::default();
                event.record(&mut fields);
                self.0.on_guest_line(&fields);
            }
            // Why a request failed (the cause, the guest's stack or
            // backtrace) is the runtime's warning or error with the
            // request's id: the tail shows it among the request's lines.
            runtime
                if (runtime == "isola_runtime" || runtime.starts_with("isola_runtime::"))
                    && self.0.tailing()
                    && *event.metadata().level() <= tracing::Level::WARN =>
            {
                let mut fields = Fields::default();
                event.record(&mut fields);
                self.0.on_host_line(&fields);
            }
            "isola::trigger" => {
                let mut fields = Fields::default();
                event.record(&mut fields);
                // Only the lines that end a run carry its id and outcome.
                if fields.text("outcome").is_some() {
                    self.0.on_trigger(&fields);
                }
            }
            _ => {}
        }
    }
}

#[derive(Debug)]
enum FieldValue {
    Number(f64),
    Text(String),
}

/// An event's fields by name.
#[derive(Default, Debug)]
struct Fields {
    values: BTreeMap<&'static str, FieldValue>,
}

impl Fields {
    fn insert(&mut self, field: &Field, value: impl FnOnce() -> FieldValue) {
        self.values.insert(field.name(), value());
    }

    fn text(&self, name: &str) -> Option<&str> {
        match self.values.get(name)? {
            FieldValue::Text(t) => Some(t),
            FieldValue::Number(_) => None,
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.insert(field, || {
            let mut text = String::new();
            let _ = write!(text, "{value:?}");
            FieldValue::Text(text)
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, || FieldValue::Text(value.to_owned()));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, || FieldValue::Number(value as f64));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, || FieldValue::Number(value as f64));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field, || FieldValue::Number(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, || FieldValue::Text(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isola_runtime::RequestId;
    use std::time::Duration;
    use tracing_subscriber::layer::SubscriberExt;

    fn outcome(id: &str, status: u16, limit: Option<Limit>) -> Outcome {
        Outcome {
            worker: "app".into(),
            request_id: RequestId::from(id),
            method: http::Method::GET,
            path: "/x".into(),
            client: None,
            status: Some(status),
            failure: None,
            limit,
            cpu: Duration::from_micros(12_500),
            wall: Duration::from_micros(500),
            instantiate: Duration::from_micros(200),
            drop: Duration::ZERO,
            fuel: 10,
            subrequests: 0,
            error: None,
        }
    }

    #[test]
    fn outcomes_move_the_metrics_and_reach_tail_subscribers_with_their_lines() {
        let telemetry = Arc::new(Telemetry::new());
        let subscriber = tracing_subscriber::registry().with(TelemetryLayer(telemetry.clone()));
        let mut tail = telemetry.subscribe();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "isola::guest", worker = "app", request_id = "r1", stream = "stdout", "hello");
        });
        telemetry.finished(&outcome("r1", 503, Some(Limit::Cpu)));
        let text = telemetry.encode();
        for expected in [
            "isola_requests_total{worker=\"app\",status=\"503\"} 1",
            "isola_limit_hits_total{worker=\"app\",limit=\"cpu-limit\"} 1",
            "isola_request_duration_seconds_count{worker=\"app\"} 1",
            "isola_instantiation_seconds_count{worker=\"app\"} 1",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        let event = tail.try_recv().expect("a tail event");
        assert_eq!(event.status, Some(503));
        assert_eq!(event.worker, "app");
        let json: Value = serde_json::from_str(&event.json).unwrap();
        assert_eq!(json["path"], "/x");
        assert_eq!(json["cpu_ms"], 12.5);
        assert_eq!(json["limit"], "cpu-limit");
        assert_eq!(json["logs"][0]["message"], "hello");
        assert_eq!(json["logs"][0]["stream"], "stdout");
    }

    #[test]
    fn outcomes_move_the_metrics_without_tail_subscribers() {
        let telemetry = Telemetry::new();
        telemetry.finished(&outcome("a", 200, None));
        telemetry.finished(&outcome("b", 503, Some(Limit::Memory)));
        let text = telemetry.encode();
        for expected in [
            "isola_requests_total{worker=\"app\",status=\"200\"} 1",
            "isola_requests_total{worker=\"app\",status=\"503\"} 1",
            "isola_limit_hits_total{worker=\"app\",limit=\"memory-limit\"} 1",
            "isola_request_duration_seconds_count{worker=\"app\"} 2",
            "isola_request_duration_seconds_sum{worker=\"app\"} 0.001",
            "isola_request_cpu_seconds_count{worker=\"app\"} 2",
            "isola_instantiation_seconds_count{worker=\"app\"} 2",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
    }
}
