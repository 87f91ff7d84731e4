//! A run's budget, armed on its store: fuel for CPU time, an epoch deadline
//! for wall time, and the memory limiter.

use std::time::Duration;

use isola_config::{Limits, WorkerRun};
use std::sync::Arc;

use isola_engine::{InstanceSlot, InstanceSlots, IsolaEngine};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{CallHook, ResourceLimiter, Store};

use crate::failure::{Failure, GuestError};
use crate::meter::HasRunState;

/// Fuel granted per millisecond of `cpu_ms` (`[server] fuel_per_ms`
/// overrides it). Calibrated on the development machine with
/// the Fuel section of `bench/run` (8.4–8.8 M): a compute-bound guest
/// burns this much fuel per millisecond of thread CPU time.
pub const DEFAULT_FUEL_PER_MS: u64 = 8_500_000;

/// What each run of a worker (or plugin) may spend.
pub(crate) struct Budget {
    pub limits: Limits,
    /// Fuel of one run (`cpu_ms` worth).
    pub fuel: u64,
    /// Fuel between yields to the async executor, so that a spinning guest
    /// lets other runs on its thread go on (about a millisecond of CPU).
    pub fuel_yield_interval: u64,
    pub wall: Duration,
    /// `wall` in epoch ticks.
    pub wall_ticks: u64,
    /// Whether the engine meters fuel at all.
    pub consume_fuel: bool,
    /// The engine's instance slots, which every run takes one of.
    pub slots: InstanceSlots,
    /// This worker's own cap on its instances (`instance_cap`), if any.
    pub own: Option<Arc<Semaphore>>,
}

/// A run's place in the instance pool: the engine's slot and, for a capped
/// worker, one of its own. Dropping it frees both.
pub(crate) struct Slot {
    _pool: InstanceSlot,
    _own: Option<OwnedSemaphorePermit>,
}

impl Budget {
    pub fn new(run: &WorkerRun, engine: &IsolaEngine) -> Self {
        let fuel_per_ms = run.fuel_per_ms.unwrap_or(DEFAULT_FUEL_PER_MS);
        let wall = Duration::from_millis(run.limits.wall_ms);
        Budget {
            limits: run.limits,
            fuel: run.limits.cpu_ms.saturating_mul(fuel_per_ms),
            fuel_yield_interval: fuel_per_ms,
            wall,
            wall_ticks: IsolaEngine::ticks_for(wall),
            consume_fuel: engine.consumes_fuel(),
            slots: engine.slots().clone(),
            own: (run.instance_cap > 0)
                .then(|| Arc::new(Semaphore::new(run.instance_cap as usize))),
        }
    }

    /// Whether a new instance would have to wait for a slot: the pool, or
    /// this worker's share of it, is all taken.
    pub fn full(&self) -> bool {
        self.slots.available() == 0
            || self
                .own
                .as_ref()
                .is_some_and(|own| own.available_permits() == 0)
    }

    /// A slot of the instance pool for a new instance, or the `overloaded`
    /// failure when none frees within the queue timeout.
    pub async fn admit(&self) -> Result<Slot, GuestError> {
        let queue_timeout = self.slots.queue_timeout();
        let waited = std::time::Instant::now();
        let own = match &self.own {
            Some(own) => tokio::time::timeout(queue_timeout, own.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
                .map(Some),
            None => Some(None),
        };
        let pool = match own {
            Some(own) => self
                .slots
                .acquire_within(queue_timeout.saturating_sub(waited.elapsed()))
                .await
                .map(|pool| Slot {
                    _pool: pool,
                    _own: own,
                }),
            None => None,
        };
        pool.ok_or_else(|| {
            GuestError::message(
                Failure::Overloaded,
                format!(
                    "overloaded: all {} instance slots stayed busy for {} ms (server.max_instances, server.queue_timeout_ms)",
                    self.slots.size(),
                    self.slots.queue_timeout().as_millis()
                ),
            )
        })
    }

    /// A store for `data` with the memory limiter on, fuel yields set and
    /// the CPU meter of `data` told every crossing between wasm and the
    /// host; [`arm`](Self::arm) it before each run.
    pub fn store<S: ResourceLimiter + HasRunState + Send + 'static>(
        &self,
        engine: &wasmtime::Engine,
        mut data: S,
    ) -> wasmtime::Result<Store<S>> {
        let meter = data.run_state().meter.clone();
        let mut store = Store::new(engine, data);
        store.limiter(|state| state as &mut dyn ResourceLimiter);
        let consume_fuel = self.consume_fuel;
        if consume_fuel {
            // Wasm's clocked time is capped by its fuel
            // (`fuel_yield_interval` is a millisecond's worth); the hook
            // tells the meter what is left whenever wasm stops running,
            // the only time it changes besides arming.
            meter.cap_wasm_by_fuel(self.fuel_yield_interval);
            store.fuel_async_yield_interval(Some(self.fuel_yield_interval))?;
        }
        store.call_hook(move |store, crossing| {
            if consume_fuel
                && matches!(
                    crossing,
                    CallHook::CallingHost | CallHook::ReturningFromWasm
                )
            {
                meter.fuel_left(store.get_fuel().unwrap_or(0));
            }
            meter.hook(crossing);
            Ok(())
        });
        Ok(store)
    }

    /// Give `store` `fuel` (when fuel is on) and a wall deadline of
    /// `wall_ms` from now.
    pub fn arm<S: HasRunState>(&self, store: &mut Store<S>, fuel: u64) -> wasmtime::Result<()> {
        if self.consume_fuel {
            store.set_fuel(fuel)?;
            store.data_mut().run_state().meter.armed(fuel);
        }
        store.set_epoch_deadline(self.wall_ticks);
        Ok(())
    }
}
