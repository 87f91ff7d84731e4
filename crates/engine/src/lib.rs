//! The process-wide wasmtime [`Engine`] of Isola, its on-disk compile cache and
//! the epoch ticker that bounds wall-clock time.
//!
//! One [`IsolaEngine`] serves every worker of a process: fuel and epoch
//! interruption are on, instances come from a pooling allocator with
//! copy-on-write memory images, and components are compiled once and then
//! loaded from `<cache_dir>/<sha256>-<engine hash>.cwasm` by `mmap`.
//! Cranelift's incremental cache (`<cache_dir>/incremental/`) lets components
//! that share code (every JS worker carries the same engine) share its
//! compiled functions.

mod adapt;
mod cache;
mod incremental;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use cache::{CacheOutcome, CacheStats, CompileCache, LoadedComponent};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// What one epoch stands for: wall-clock deadlines and a profiled
/// request's sampling interval are counted in these ticks. The ticker keeps
/// the epoch at the milliseconds since it started, but it wakes only every
/// [`COARSE_TICKS`] of them (adding as many at once) unless a profile is
/// running ([`FineTicks`]): a thread waking a thousand times a second cost
/// an idle server 2% of a core, and a busy one a preemption of its worker
/// every millisecond. Wall deadlines are backstops to the tokio timers
/// that bound a run (a fuel-metered guest yields about every millisecond),
/// so 10 ms of slack costs them nothing.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Ticks the ticker adds per wake when no profile needs every one.
const COARSE_TICKS: u64 = 10;

/// Profiles running, process-wide: while any is, the ticker wakes every tick.
static FINE_TICK_USERS: AtomicUsize = AtomicUsize::new(0);

/// While held, the epoch ticker wakes at every [`EPOCH_TICK`] (a profile
/// samples at tick boundaries). The ticker notices within a coarse step.
pub struct FineTicks(());

impl FineTicks {
    pub fn hold() -> FineTicks {
        FINE_TICK_USERS.fetch_add(1, Ordering::Relaxed);
        FineTicks(())
    }
}

impl Drop for FineTicks {
    fn drop(&mut self) {
        FINE_TICK_USERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Errors from building the engine or loading a component.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a WebAssembly file")]
    NotWasm { path: PathBuf },
    /// A core module that is not a WASI preview 1 module Isola can make
    /// into a component (see `adapt`).
    #[error(
        "{path}: is a core WebAssembly module, not a component, and cannot be made one ({reason}); build for wasm32-wasip2 or wrap it with `wasm-tools component new`"
    )]
    CoreModule { path: PathBuf, reason: String },
    #[error("{path}: invalid component: {reason}")]
    Compile { path: PathBuf, reason: String },
    #[error("compile cache {path}: {source}")]
    CacheDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the wasmtime engine: {0}")]
    Engine(String),
}

/// Sizing of the engine's instance pool.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Where compiled components are cached.
    pub cache_dir: PathBuf,
    /// Most component instances alive at once (in-flight requests, roughly).
    pub max_instances: u32,
    /// Largest linear memory any instance may grow to, in bytes.
    pub max_memory_bytes: usize,
    /// Meter wasm execution with fuel (the CPU limit). Only benchmarks that
    /// measure fuel's cost turn it off.
    pub consume_fuel: bool,
    /// Dirtied bytes of each linear memory reset in place and kept
    /// resident when an instance ends (see `engine_config`).
    pub keep_resident_bytes: usize,
    /// How long a run waits for one of the `max_instances` slots before it
    /// is refused as overloaded.
    pub queue_timeout: Duration,
    /// Remember each component file's last compiled wasm and artifact, and
    /// when the file's next component differs from it only in its core
    /// modules' data (a JS worker's edit: a new Wizer snapshot of the same
    /// engine), make its artifact from the last one's machine code instead
    /// of compiling (see `cache`). `isola dev` sets it; it keeps a copy of
    /// each component's wasm in memory.
    pub reuse_code: bool,
}

impl EngineOptions {
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        EngineOptions {
            cache_dir: cache_dir.into(),
            max_instances: 1000,
            max_memory_bytes: 128 << 20,
            consume_fuel: true,
            keep_resident_bytes: 16 << 20,
            queue_timeout: Duration::from_millis(500),
            reuse_code: false,
        }
    }
}

/// The engine shared by all workers of a process, with its compile cache.
///
/// Cloning is cheap and shares everything.
#[derive(Clone)]
pub struct IsolaEngine {
    engine: Engine,
    consume_fuel: bool,
    cache: std::sync::Arc<CompileCache>,
    slots: InstanceSlots,
}

/// The instance pool's slots, one per instance alive at once: a run holds
/// one from before it instantiates until its instance is dropped, so a run
/// past the pool's size waits for a slot (at most `queue_timeout`) instead
/// of failing to instantiate.
#[derive(Clone)]
pub struct InstanceSlots {
    semaphore: std::sync::Arc<tokio::sync::Semaphore>,
    queue_timeout: Duration,
    size: u32,
}

/// A held instance slot; dropping it frees the slot.
pub type InstanceSlot = tokio::sync::OwnedSemaphorePermit;

impl InstanceSlots {
    /// A slot, once one is free within the queue timeout; `None` when the
    /// pool stayed full that long.
    pub async fn acquire(&self) -> Option<InstanceSlot> {
        self.acquire_within(self.queue_timeout).await
    }

    /// A slot, once one is free within `wait`.
    pub async fn acquire_within(&self, wait: Duration) -> Option<InstanceSlot> {
        let slot = self.semaphore.clone().acquire_owned();
        match tokio::time::timeout(wait, slot).await {
            Ok(Ok(slot)) => Some(slot),
            _ => None,
        }
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// Slots in all (`max_instances`).
    pub fn size(&self) -> u32 {
        self.size
    }

    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout
    }
}

impl IsolaEngine {
    /// Build the engine and start its epoch ticker thread, which stops by
    /// itself once the last clone of the engine is dropped.
    pub fn new(options: &EngineOptions) -> Result<Self, EngineError> {
        let mut config = engine_config(options);
        let incremental = options.cache_dir.join("incremental");
        config
            .enable_incremental_compilation(std::sync::Arc::new(
                incremental::IncrementalCache::new(incremental),
            ))
            .map_err(|e| EngineError::Engine(format!("{e:#}")))?;
        let engine = Engine::new(&config).map_err(|e| EngineError::Engine(format!("{e:#}")))?;
        // The vendored wasmtime's switch for tests (vendor/README.md): said
        // once per engine, so a test can see that it took effect, and so can
        // whoever set it by mistake in production.
        if wasmtime::isola_upstream_func_refs() {
            tracing::warn!(
                "ISOLA_WASMTIME_UPSTREAM_FUNC_REFS=1: wasmtime looks function \
                 addresses up on every use, as upstream does (for tests)"
            );
        }
        let mut cache = CompileCache::open(&engine, &options.cache_dir)?;
        cache.reuse_code(options.reuse_code);
        spawn_epoch_ticker(&engine);
        Ok(IsolaEngine {
            engine,
            consume_fuel: options.consume_fuel,
            cache: std::sync::Arc::new(cache),
            slots: InstanceSlots {
                semaphore: std::sync::Arc::new(tokio::sync::Semaphore::new(
                    options.max_instances as usize,
                )),
                queue_timeout: options.queue_timeout,
                size: options.max_instances,
            },
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The instance pool's slots, shared by every worker of this engine.
    pub fn slots(&self) -> &InstanceSlots {
        &self.slots
    }

    /// Whether wasm execution is metered with fuel.
    pub fn consumes_fuel(&self) -> bool {
        self.consume_fuel
    }

    pub fn cache(&self) -> &CompileCache {
        &self.cache
    }

    /// Read, validate and compile (or load from the cache) a component file.
    pub fn load_component(&self, path: impl Into<PathBuf>) -> Result<LoadedComponent, EngineError> {
        self.cache.load_file(&self.engine, path.into())
    }

    /// Number of epoch ticks covering `duration`, rounded up, at least one.
    pub fn ticks_for(duration: Duration) -> u64 {
        let tick = EPOCH_TICK.as_nanos();
        (duration.as_nanos().div_ceil(tick) as u64).max(1)
    }
}

fn engine_config(options: &EngineOptions) -> Config {
    let mut config = Config::new();
    config.consume_fuel(options.consume_fuel);
    config.epoch_interruption(true);
    config.memory_init_cow(true);
    // Keep a component's DWARF (when it has any) in the compiled artifact,
    // and so in the compile cache, so that a trap's frames name their source
    // lines. Components without DWARF pay nothing; one with line tables
    // pays only in artifact size, and the lookup happens only on a trap.
    config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
    // `ISOLA_PERF_MAP=1` has wasmtime write /tmp/perf-<pid>.map, so that
    // `perf report` names the guests' wasm functions (wasmtime's
    // `--profile=perfmap`). For profiling only; it costs nothing otherwise.
    if std::env::var_os("ISOLA_PERF_MAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }

    let n = options.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        // Components made by wit-component hold a few core instances
        // (the program plus small shims) and usually one memory.
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_memory_size(options.max_memory_bytes);
    // Reset a finished instance's memory by rewriting only the pages it
    // dirtied (found with Linux's PAGEMAP_SCAN, 6.7+) and keep them
    // resident, instead of madvise-ing them away and faulting them back in
    // on the next request. Measured with `isola-bench --bin micro`: a Rust
    // hello's instantiate + handle + drop went from ~70 to ~30 µs, a JS
    // hello's from ~1.7 to ~1.0 ms. The cost is RSS: each warm slot keeps up
    // to this much of what its last instance dirtied. wasmtime's scan gave
    // up after 32 dirty regions until 48.0.11, too few for a JS instance
    // (Isola's vendored copy took 1024: a JS hello from ~0.8 to ~0.5 ms);
    // 48.0.11 resumes it until the budget is spent (vendor/README.md).
    //
    // What stays resident is bounded by the slots traffic has used, each
    // keeping less than keep_resident_bytes: the vendored wasmtime keeps
    // nothing of an instance that dirtied that much or more (a memory bomb
    // would otherwise pin 16 MiB in every slot it reached; a hello keeps
    // 0.1-0.5 MiB; vendor/README.md, change 4). Capping wasmtime's warm free
    // slots (100 by default) at 16 was tried to lower that and made it
    // worse: the soak (bench/soak) grew to 376 MiB instead of 165, as new
    // instances went to cold slots instead of reusing warm ones, and
    // those keep their pages just the same.
    pool.pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(options.keep_resident_bytes)
        .table_keep_resident(64 << 10);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("isola-epoch".into())
        .spawn(move || {
            // The epoch follows the wall clock: each wake adds the ticks
            // due since the last, however long the sleep really was. After
            // a long stall (a suspended process) the count resumes from now
            // rather than firing the missed ticks at once.
            let started = std::time::Instant::now();
            let mut done: u64 = 0;
            while let Some(engine) = weak.upgrade() {
                let due = ticks_since(started);
                if due.saturating_sub(done) > 100 {
                    done = due;
                }
                for _ in done..due {
                    engine.increment_epoch();
                }
                done = due;
                drop(engine);
                let step = if FINE_TICK_USERS.load(Ordering::Relaxed) > 0 {
                    1
                } else {
                    COARSE_TICKS
                };
                let tick_ns = EPOCH_TICK.as_nanos() as u64;
                let wake_at = started + Duration::from_nanos((done + step).saturating_mul(tick_ns));
                if let Some(wait) = wake_at.checked_duration_since(std::time::Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        })
        .expect("spawning the epoch ticker thread");
}

/// Whole ticks since `started`.
fn ticks_since(started: std::time::Instant) -> u64 {
    (started.elapsed().as_nanos() / EPOCH_TICK.as_nanos()) as u64
}
