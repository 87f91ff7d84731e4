//! Durable Objects: the objects of the classes a worker defines, each with
//! one live instance that serves its events one at a time, in arrival
//! order, and keeps its state between them until it has been idle for
//! `durable_object_idle` (the one place where Isola keeps an instance
//! alive by design). A trap or a limit resets the instance, never the
//! object's storage.
//!
//! A caller reaches an object through its namespace binding by sending a
//! request to `http://<binding>.object.isola.internal/…` with the object's
//! id in [`OBJECT_ID_HEADER`] (see `outbound` and `registry`); the alarm
//! scheduler (`alarms`) delivers alarms the same way, as an event.

pub(crate) mod alarms;
pub(crate) mod id;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use isola_backends::durable::{DurableStore, ObjectStorage};
use isola_config::DurableObjectClass;

use crate::failure::{Failure, GuestError};
use crate::worker::Reusable;

/// The host of an object-binding URL ends with this.
pub const OBJECT_HOST_SUFFIX: &str = ".object.isola.internal";
/// The header naming the object a stub's request is for.
pub const OBJECT_ID_HEADER: &str = "isola-object-id";
/// The header carrying the name an id was made from (percent-encoded).
pub const OBJECT_NAME_HEADER: &str = "isola-object-name";

/// Which object an event is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectAddress {
    /// The class, as the worker that defines it names it.
    pub class_name: String,
    /// 64 lowercase hex digits, checked against the class's namespace.
    pub id: String,
    /// The name the id was made from, when the caller said.
    pub name: Option<String>,
}

/// What a run delivers to its object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectEvent {
    /// A request from a stub's `fetch`.
    Fetch,
    /// The object's alarm, after `retry_count` failed tries.
    Alarm { retry_count: u32 },
}

/// The object a run serves, as its host calls see it.
#[derive(Clone)]
pub(crate) struct CurrentObject {
    pub address: ObjectAddress,
    pub event: ObjectEvent,
    pub storage: Arc<dyn ObjectStorage>,
    /// For an alarm run, the time it was set for: `getAlarm` answers none
    /// for it while it runs, as in Workers.
    pub alarm_firing: Option<u64>,
}

/// The live objects of one worker's classes.
pub(crate) struct Objects {
    /// Class name → the class (its namespace, whether SQL is on).
    classes: HashMap<String, DurableObjectClass>,
    pub(crate) store: Arc<dyn DurableStore>,
    idle: Duration,
    cells: Mutex<HashMap<(String, String), Arc<Cell>>>,
    sweeping: std::sync::Once,
}

/// One object: its live instance, if it has one, behind the gate that
/// lets one event in at a time.
struct Cell {
    live: Arc<tokio::sync::Mutex<Option<Reusable>>>,
    last_used: Mutex<Instant>,
    storage: Arc<dyn ObjectStorage>,
}

/// An event's turn at its object: held from before the instance is made
/// until the guest is done, so no other event of the object interleaves.
///
/// Dropping the turn ends it, however the run ended (a limit drops the
/// guest's future mid-call): a transaction the guest left open is rolled
/// back before the next event gets in.
pub(crate) struct Turn {
    live: Option<tokio::sync::OwnedMutexGuard<Option<Reusable>>>,
    cell: Arc<Cell>,
}

impl Turn {
    /// The object's live instance, if it has one.
    pub fn take_live(&mut self) -> Option<Reusable> {
        self.live.as_mut().and_then(|live| live.take())
    }

    /// Keep `instance` for the object's next event.
    pub fn keep(&mut self, instance: Reusable) {
        if let Some(live) = self.live.as_mut() {
            **live = Some(instance);
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(live) = self.live.take() else {
            return;
        };
        *self.cell.last_used.lock().expect("object lock") = Instant::now();
        let storage = self.cell.storage.clone();
        let end = async move {
            if let Err(e) = storage.end_run().await {
                tracing::error!("rolling back a Durable Object's open transaction failed: {e}");
            }
            drop(live);
        };
        // Without a runtime (a test dropping its last worker) nothing runs
        // after this anyway.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn(end));
        }
    }
}

impl Objects {
    /// The objects of `classes`, stored in `store`, evicted after `idle`.
    pub fn new(
        classes: &[DurableObjectClass],
        store: Arc<dyn DurableStore>,
        idle: Duration,
    ) -> Self {
        Objects {
            classes: classes
                .iter()
                .map(|c| (c.class_name.clone(), c.clone()))
                .collect(),
            store,
            idle,
            cells: Mutex::default(),
            sweeping: std::sync::Once::new(),
        }
    }

    /// The class whose objects are stored in `namespace`.
    pub fn class_in(&self, namespace: &str) -> Option<&DurableObjectClass> {
        self.classes.values().find(|c| c.namespace == namespace)
    }

    /// Wait for `address`'s turn (events queue in arrival order); its
    /// storage comes with it.
    pub async fn turn(
        self: &Arc<Self>,
        address: &ObjectAddress,
    ) -> Result<(Turn, Arc<dyn ObjectStorage>), GuestError> {
        let Some(class) = self.classes.get(&address.class_name) else {
            return Err(GuestError::message(
                Failure::Exception,
                format!(
                    "this worker defines no Durable Object class `{}`",
                    address.class_name
                ),
            ));
        };
        let cell = {
            let mut cells = self.cells.lock().expect("objects lock");
            let key = (address.class_name.clone(), address.id.clone());
            match cells.get(&key) {
                Some(cell) => cell.clone(),
                None => {
                    let storage = self
                        .store
                        .object(&class.namespace, &address.id, class.sqlite)
                        .map_err(|e| GuestError::message(Failure::Backend, e.to_string()))?;
                    let cell = Arc::new(Cell {
                        live: Arc::default(),
                        last_used: Mutex::new(Instant::now()),
                        storage,
                    });
                    cells.insert(key, cell.clone());
                    cell
                }
            }
        };
        self.sweep_idle_objects();
        let live = cell.live.clone().lock_owned().await;
        let storage = cell.storage.clone();
        let turn = Turn {
            live: Some(live),
            cell,
        };
        Ok((turn, storage))
    }

    /// Objects with a live instance (or one being made).
    pub fn live_objects(&self) -> usize {
        self.cells.lock().expect("objects lock").len()
    }

    /// Start the task that evicts idle objects (once, on first use, when
    /// there is a runtime to run it).
    fn sweep_idle_objects(self: &Arc<Self>) {
        self.sweeping.call_once(|| {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let objects = Arc::downgrade(self);
            let every = (self.idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
            runtime.spawn(sweep(objects, every));
        });
    }

    /// Evict the object unused the longest, of those with no event waiting
    /// or running; whether there was one.
    pub fn evict_least_recently_used(&self) -> bool {
        let evicted = {
            let mut cells = self.cells.lock().expect("objects lock");
            // Not one whose last turn is still ending (its gate is held).
            let oldest = cells
                .iter()
                .filter(|(_, cell)| Arc::strong_count(cell) == 1 && cell.live.try_lock().is_ok())
                .min_by_key(|(_, cell)| *cell.last_used.lock().expect("object lock"))
                .map(|(key, _)| key.clone());
            let Some(key) = oldest else {
                return false;
            };
            let cell = cells.remove(&key).expect("the key was just found");
            let live: Option<Reusable> = cell.live.try_lock().ok().and_then(|mut live| live.take());
            drop(cell);
            live
        };
        drop(evicted);
        true
    }

    /// Evict every object idle for longer than `idle` and not in use.
    fn evict_idle(&self) {
        let mut evicted = Vec::new();
        {
            let mut cells = self.cells.lock().expect("objects lock");
            // Holding the map's lock, no new event can find these cells; a
            // cell only the map holds has no event waiting or running.
            cells.retain(|_, cell| {
                if Arc::strong_count(cell) > 1 {
                    return true;
                }
                let idle = cell.last_used.lock().expect("object lock").elapsed() >= self.idle;
                match cell.live.try_lock() {
                    Ok(mut live) if idle => {
                        evicted.push(live.take());
                        false
                    }
                    _ => true,
                }
            });
        }
        // Dropping instances (and their pool slots) outside the lock.
        drop(evicted);
    }
}

async fn sweep(objects: Weak<Objects>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(objects) = objects.upgrade() else {
            return;
        };
        objects.evict_idle();
    }
}
