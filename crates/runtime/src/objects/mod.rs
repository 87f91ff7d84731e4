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
//!
//! On several nodes (`placement`), an object's events run only on the node
//! that holds its lease: [`Objects::admit`] says where, and the idle
//! sweeper renews the leases of live objects and gives back those of
//! evicted ones.

pub(crate) mod alarms;
pub(crate) mod forward;
pub(crate) mod id;
pub(crate) mod placement;
pub(crate) mod serve;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use isola_backends::durable::{DurableStore, ObjectStorage};
use isola_config::DurableObjectClass;

use crate::failure::{Failure, GuestError};
use crate::worker::Reusable;
use placement::{Owner, Placement};

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

/// An event for an object, as the worker takes it.
#[derive(Clone, Debug)]
pub(crate) struct ObjectCall {
    pub address: ObjectAddress,
    pub event: ObjectEvent,
    /// For an alarm, the time it was set for.
    pub alarm_firing: Option<u64>,
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
    /// The cluster this node is part of, if any (set once, by the
    /// embedder, before the first event).
    placement: OnceLock<Arc<Placement>>,
}

/// One object: its live instance, if it has one, behind the gate that
/// lets one event in at a time.
pub(crate) struct Cell {
    live: Arc<tokio::sync::Mutex<Option<Reusable>>>,
    last_used: Mutex<Instant>,
    storage: Arc<dyn ObjectStorage>,
    /// On several nodes: the object's lease key, and the tenure of this
    /// node's lease the cell was made in.
    lease: Option<(String, u64)>,
    /// The cell still counts on its lease (until it is evicted or lost).
    counted: AtomicBool,
    /// The lease was lost while the cell lived: its instance may have
    /// missed events another node ran, and it serves no more.
    lost: AtomicBool,
}

/// Where an object's event runs.
pub(crate) enum Admission {
    /// Here, in this cell (held, so it is not evicted before its turn).
    Here(Arc<Cell>),
    /// On the node at this URL, which holds the object's lease.
    Elsewhere(String),
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

impl Cell {
    fn new(storage: Arc<dyn ObjectStorage>, lease: Option<(String, u64)>) -> Self {
        Cell {
            live: Arc::default(),
            last_used: Mutex::new(Instant::now()),
            storage,
            counted: AtomicBool::new(lease.is_some()),
            lease,
            lost: AtomicBool::new(false),
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
            placement: OnceLock::new(),
        }
    }

    /// Run this node's objects as part of a cluster (only the first call
    /// counts).
    pub fn place(&self, placement: Arc<Placement>) {
        let _ = self.placement.set(placement);
    }

    pub fn placement(&self) -> Option<&Arc<Placement>> {
        self.placement.get()
    }

    /// The class named `class_name`.
    pub fn class(&self, class_name: &str) -> Option<&DurableObjectClass> {
        self.classes.get(class_name)
    }

    /// The class whose objects are stored in `namespace`.
    pub fn class_in(&self, namespace: &str) -> Option<&DurableObjectClass> {
        self.classes.values().find(|c| c.namespace == namespace)
    }

    /// Where `address`'s next event runs: here (in its cell, which the
    /// caller holds until the event has had its turn), or on the node that
    /// holds the object's lease.
    pub async fn admit(self: &Arc<Self>, address: &ObjectAddress) -> Result<Admission, GuestError> {
        let Some(class) = self.classes.get(&address.class_name) else {
            return Err(GuestError::message(
                Failure::Exception,
                format!(
                    "this worker defines no Durable Object class `{}`",
                    address.class_name
                ),
            ));
        };
        self.sweep_idle_objects();
        let key = (address.class_name.clone(), address.id.clone());
        let storage = || {
            self.store
                .object(&class.namespace, &address.id, class.sqlite)
                .map_err(|e| GuestError::message(Failure::Backend, e.to_string()))
        };
        let Some(placement) = self.placement() else {
            let mut cells = self.cells.lock().expect("objects lock");
            if let Some(cell) = cells.get(&key) {
                return Ok(Admission::Here(cell.clone()));
            }
            let cell = Arc::new(Cell::new(storage()?, None));
            cells.insert(key, cell.clone());
            return Ok(Admission::Here(cell));
        };
        let lease = placement::lease_key(&class.namespace, &address.id);
        loop {
            let existing = self.cells.lock().expect("objects lock").get(&key).cloned();
            if let Some(cell) = existing {
                let tenure = cell.lease.as_ref().map_or(0, |(_, tenure)| *tenure);
                if placement.renew(&lease, tenure, placement.run_ahead()).await {
                    return Ok(Admission::Here(cell));
                }
                self.lose(&key, &cell);
                continue;
            }
            let claimed = placement.claim(&lease).await.map_err(|e| {
                GuestError::message(
                    Failure::Backend,
                    format!("the Durable Object's lease cannot be read: {e}"),
                )
            })?;
            let tenure = match claimed {
                Owner::Here(tenure) => tenure,
                Owner::Elsewhere(owner) => return Ok(Admission::Elsewhere(owner)),
            };
            let storage = match storage() {
                Ok(storage) => storage,
                Err(e) => {
                    self.unclaim_later(placement, lease);
                    return Err(e);
                }
            };
            let mut cells = self.cells.lock().expect("objects lock");
            match cells.get(&key).cloned() {
                // Another event claimed it meanwhile, in this tenure: its
                // cell counts for both.
                Some(cell) if cell.lease.as_ref().is_some_and(|(_, t)| *t == tenure) => {
                    drop(cells);
                    self.unclaim_later(placement, lease);
                    return Ok(Admission::Here(cell));
                }
                Some(stale) => {
                    stale.lost.store(true, Ordering::Release);
                    if stale.counted.swap(false, Ordering::AcqRel) {
                        self.unclaim_later(placement, lease.clone());
                    }
                }
                None => {}
            }
            let cell = Arc::new(Cell::new(storage, Some((lease, tenure))));
            cells.insert(key, cell.clone());
            return Ok(Admission::Here(cell));
        }
    }

    /// Wait for `cell`'s turn (events queue in arrival order); its storage
    /// comes with it. `None` when the cell's lease was lost meanwhile: it
    /// serves no more (the object has moved).
    pub async fn turn(cell: Arc<Cell>) -> Option<(Turn, Arc<dyn ObjectStorage>)> {
        let live = cell.live.clone().lock_owned().await;
        if cell.lost.load(Ordering::Acquire) {
            return None;
        }
        let storage = cell.storage.clone();
        let turn = Turn {
            live: Some(live),
            cell,
        };
        Some((turn, storage))
    }

    /// `cell`'s lease was lost: it leaves the map, its instance goes, and
    /// it no longer counts on the lease.
    fn lose(&self, key: &(String, String), cell: &Arc<Cell>) {
        cell.lost.store(true, Ordering::Release);
        let dropped = {
            let mut cells = self.cells.lock().expect("objects lock");
            if cells.get(key).is_some_and(|c| Arc::ptr_eq(c, cell)) {
                cells.remove(key);
            }
            cell.live.try_lock().ok().and_then(|mut live| live.take())
        };
        drop(dropped);
        self.let_go(cell);
    }

    /// A cell that left the map stops counting on its lease.
    fn let_go(&self, cell: &Cell) {
        if let (Some(placement), Some((lease, _))) = (self.placement(), &cell.lease)
            && cell.counted.swap(false, Ordering::AcqRel)
        {
            self.unclaim_later(placement, lease.clone());
        }
    }

    fn unclaim_later(&self, placement: &Arc<Placement>, lease: String) {
        let placement = placement.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn(async move { placement.unclaim(&lease).await }));
        }
    }

    /// Renew the leases of the live objects that need it; evict those
    /// whose lease was lost.
    async fn renew_leases(self: &Arc<Self>) {
        let Some(placement) = self.placement().cloned() else {
            return;
        };
        let cells: Vec<((String, String), Arc<Cell>)> = self
            .cells
            .lock()
            .expect("objects lock")
            .iter()
            .map(|(key, cell)| (key.clone(), cell.clone()))
            .collect();
        let placement = &placement;
        let renewals = cells.into_iter().map(|(key, cell)| async move {
            let (lease, tenure) = cell.lease.clone().unwrap_or_default();
            let held = placement
                .renew(&lease, tenure, placement.renew_ahead())
                .await;
            (key, cell, held)
        });
        let mut renewals = futures_util::stream::iter(renewals).buffer_unordered(32);
        while let Some((key, cell, held)) = renewals.next().await {
            if !held {
                tracing::warn!(object = %key.1, class = %key.0,
                    "this node no longer holds the Durable Object's lease: its instance is dropped");
                self.lose(&key, &cell);
            }
        }
    }

    /// Objects with a live instance (or one being made).
    pub fn live_objects(&self) -> usize {
        self.cells.lock().expect("objects lock").len()
    }

    /// Start the task that evicts idle objects and renews the leases of
    /// live ones (once, on first use, when there is a runtime to run it).
    fn sweep_idle_objects(self: &Arc<Self>) {
        self.sweeping.call_once(|| {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let objects = Arc::downgrade(self);
            // Often enough, too, to renew a lease several times before it
            // would run out.
            let lease = self.placement().map_or(Duration::MAX, |p| p.ttl() / 8);
            let every = (self.idle / 4)
                .min(lease)
                .clamp(Duration::from_millis(50), Duration::from_secs(1));
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
            (cell, live)
        };
        self.let_go(&evicted.0);
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
                        evicted.push((cell.clone(), live.take()));
                        false
                    }
                    _ => true,
                }
            });
        }
        // Dropping instances (and their pool slots) outside the lock.
        for (cell, _) in &evicted {
            self.let_go(cell);
        }
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
        objects.renew_leases().await;
    }
}
