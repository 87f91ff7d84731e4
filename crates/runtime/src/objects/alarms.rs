//! Durable Object alarms: each object may set one alarm; when it is due,
//! the object gets an `alarm` event (through its gate, like any event). A
//! failed alarm run (a trap, a limit, an answer other than 2xx) is tried
//! again after 2, 4, 8… seconds, at most [`MAX_RETRIES`] times, as in
//! Workers; a success clears the alarm unless the handler set a new one.
//!
//! Alarms live in the store (`DurableStore::alarms`), so they fire after a
//! restart too; the scheduler keeps nothing of its own but the retry
//! counts. A process that crashes during an alarm run fires it again on
//! start: alarms are delivered at least once.
//!
//! On several nodes sharing the store, every node's scheduler sees every
//! alarm, and each delivers only the alarms of objects it owns (or takes
//! over, when no node holds the object's lease): one node runs each
//! firing. An alarm is run only if it is still set for the time it was
//! read with, so a firing another node delivered is not run again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::BodyExt;
use isola_backends::durable::{Alarm, DurableStore};

use super::{ObjectAddress, ObjectCall, ObjectEvent};
use crate::registry::Services;

/// Retries of a failing alarm before it is given up (Workers: 6).
pub const MAX_RETRIES: u32 = 6;

/// The longest the scheduler sleeps without looking at the store again:
/// another process sharing the state dir may have set an alarm.
const RESCAN: Duration = Duration::from_secs(30);

/// How long the scheduler leaves a due alarm it could not deliver, for a
/// reason its delivery does not change, before it looks again: an object
/// another node owns (the owner delivers it meanwhile, or dies and this
/// node takes the object over), an owner or class or storage it could not
/// find. Without it, each try rang the bell that starts the next one at
/// once: a loop of store (and lease) reads, on every other node until the
/// owner had delivered it, for up to a lease's ttl when the owner had died,
/// and for good for an object whose class no loaded worker defines.
const LOOK_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// Rung whenever an alarm is set or deleted in this process, so the
/// scheduler looks again at once. Process-wide: a spurious wake-up costs
/// one read of the alarm index.
static BELL: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Tell the scheduler the alarms changed.
pub(crate) fn ring() {
    BELL.notify_waiters();
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

type Key = (String, String);

#[derive(Default)]
struct Scheduler {
    /// Alarms being delivered now.
    in_flight: Mutex<HashSet<Key>>,
    /// Failed tries of an alarm, with the time its retry was set for.
    retries: Mutex<HashMap<Key, (u32, u64)>>,
    /// Due alarms not delivered for now: the time each was set for, and
    /// when to look at it again ([`LOOK_AGAIN_AFTER`]).
    later: Mutex<HashMap<Key, (u64, u64)>>,
}

impl Scheduler {
    /// When alarm `key`, set for `time_ms`, is to be looked at again, if it
    /// was put off (each scan first forgets the put-offs whose time came).
    fn recheck_at(&self, key: &Key, time_ms: u64) -> Option<u64> {
        let later = self.later.lock().expect("alarms lock");
        later
            .get(key)
            .filter(|(set_for, _)| *set_for == time_ms)
            .map(|(_, at)| *at)
    }

    /// Put off alarm `key`, set for `time_ms`, by [`LOOK_AGAIN_AFTER`].
    fn look_again_later(&self, key: Key, time_ms: u64) {
        let at = unix_ms().saturating_add(LOOK_AGAIN_AFTER.as_millis() as u64);
        self.later
            .lock()
            .expect("alarms lock")
            .insert(key, (time_ms, at));
    }
}

/// Deliver the alarms of `store` to the objects of `services`' workers
/// until `services` is dropped.
pub(crate) async fn run(services: Weak<Services>, store: Arc<dyn DurableStore>) {
    let scheduler = Arc::new(Scheduler::default());
    loop {
        // Armed before reading, so a change made while reading wakes us.
        let bell = BELL.notified();
        tokio::pin!(bell);
        bell.as_mut().enable();
        let alarms = match store.alarms().await {
            Ok(alarms) => alarms,
            Err(e) => {
                tracing::error!("reading the Durable Object alarms failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if services.strong_count() == 0 {
            return;
        }
        let now = unix_ms();
        // Put-off alarms whose time came are looked at below like any
        // other (one that was deleted meanwhile is gone from `alarms`).
        scheduler
            .later
            .lock()
            .expect("alarms lock")
            .retain(|_, (_, at)| *at > now);
        let mut next: Option<u64> = None;
        for alarm in alarms {
            let key = (alarm.namespace.clone(), alarm.id.clone());
            if scheduler
                .in_flight
                .lock()
                .expect("alarms lock")
                .contains(&key)
            {
                continue;
            }
            let due = scheduler
                .recheck_at(&key, alarm.time_ms)
                .unwrap_or(alarm.time_ms);
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            scheduler
                .in_flight
                .lock()
                .expect("alarms lock")
                .insert(key.clone());
            let (services, store, scheduler) = (services.clone(), store.clone(), scheduler.clone());
            tokio::spawn(async move {
                deliver(&services, &store, &scheduler, alarm).await;
                scheduler
                    .in_flight
                    .lock()
                    .expect("alarms lock")
                    .remove(&key);
                ring();
            });
        }
        // Alarms other nodes set ring no bell here; the owner of an object
        // that died leaves its alarms to the others once its lease ran out.
        let rescan = match services
            .upgrade()
            .and_then(|s| s.placement().map(|p| p.ttl()))
        {
            Some(ttl) => RESCAN.min(ttl),
            None => RESCAN,
        };
        let wait = next.map_or(rescan, |at| {
            Duration::from_millis(at.saturating_sub(unix_ms())).min(rescan)
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut bell => {}
        }
    }
}

/// Run `alarm`'s event on its object and settle the alarm by the result.
async fn deliver(
    services: &Weak<Services>,
    store: &Arc<dyn DurableStore>,
    scheduler: &Scheduler,
    alarm: Alarm,
) {
    let Some(services) = services.upgrade() else {
        return;
    };
    let key = (alarm.namespace.clone(), alarm.id.clone());
    let Some((worker, class)) = services.class_of_namespace(&alarm.namespace) else {
        tracing::warn!(namespace = %alarm.namespace, id = %alarm.id,
            "an alarm is set for an object whose class no loaded worker defines; it waits");
        scheduler.look_again_later(key, alarm.time_ms);
        return;
    };
    let storage = match store.object(&alarm.namespace, &alarm.id, class.sqlite) {
        Ok(storage) => storage,
        Err(e) => {
            tracing::error!(namespace = %alarm.namespace, id = %alarm.id, "opening an object for its alarm failed: {e}");
            scheduler.look_again_later(key, alarm.time_ms);
            return;
        }
    };
    let retry_count = scheduler
        .retries
        .lock()
        .expect("alarms lock")
        .get(&key)
        .filter(|(_, at)| *at == alarm.time_ms)
        .map_or(0, |(count, _)| *count);
    let address = ObjectAddress {
        class_name: class.class_name.clone(),
        id: alarm.id.clone(),
        name: None,
    };
    // On several nodes, the owner delivers it (this node, if it takes the
    // object over now).
    if services.placement().is_some() {
        match worker.owns_object(&address).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(worker = %worker.name(), class = %class.class_name, id = %alarm.id,
                    "an alarm is due for an object another node owns; it delivers it");
                scheduler.look_again_later(key, alarm.time_ms);
                return;
            }
            Err(e) => {
                tracing::error!(worker = %worker.name(), class = %class.class_name, id = %alarm.id,
                    "finding the owner of an object with a due alarm failed: {e}");
                scheduler.look_again_later(key, alarm.time_ms);
                return;
            }
        }
        scheduler.later.lock().expect("alarms lock").remove(&key);
    }
    // Delivered (or moved, or deleted) since the alarms were read.
    match storage.get_alarm().await {
        Ok(Some(at)) if at == alarm.time_ms => {}
        Ok(_) => return,
        Err(e) => {
            tracing::error!(id = %alarm.id, "reading a due alarm failed: {e}");
            return;
        }
    }
    let request = http::Request::post(format!(
        "http://{}.object.isola.internal/__isola/alarm",
        class.class_name.to_ascii_lowercase()
    ))
    .body(http_body_util::Empty::<bytes::Bytes>::new())
    .expect("a valid alarm request");
    let call = ObjectCall {
        address,
        event: ObjectEvent::Alarm { retry_count },
        alarm_firing: Some(alarm.time_ms),
    };
    let Some(handled) = worker
        .handle_object_here(request, crate::RequestContext::default(), call)
        .await
    else {
        // Another node took the object over meanwhile: it delivers it.
        return;
    };
    let status = handled.response.status();
    // Let the response stream out, then wait for the run to be over.
    let _ = handled.response.into_body().collect().await;
    let outcome = handled.outcome.await;
    let succeeded = status.is_success() && outcome.failure.is_none();
    let still_set = matches!(storage.get_alarm().await, Ok(Some(at)) if at == alarm.time_ms);
    if succeeded || retry_count >= MAX_RETRIES {
        scheduler.retries.lock().expect("alarms lock").remove(&key);
        if !succeeded {
            tracing::error!(worker = %worker.name(), class = %class.class_name, id = %alarm.id,
                "the alarm failed {} times; giving it up", retry_count + 1);
        }
        if still_set && let Err(e) = storage.delete_alarm().await {
            tracing::error!(id = %alarm.id, "clearing a delivered alarm failed: {e}");
        }
        return;
    }
    if !still_set {
        // The handler set a new alarm (or deleted it): that one stands.
        scheduler.retries.lock().expect("alarms lock").remove(&key);
        return;
    }
    let delay = Duration::from_secs(2u64 << retry_count.min(10));
    let at = unix_ms().saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
    scheduler
        .retries
        .lock()
        .expect("alarms lock")
        .insert(key, (retry_count + 1, at));
    tracing::warn!(worker = %worker.name(), class = %class.class_name, id = %alarm.id,
        status = status.as_u16(), "the alarm failed; trying again in {} s", delay.as_secs());
    if let Err(e) = storage.set_alarm(at).await {
        tracing::error!(id = %alarm.id, "rescheduling a failed alarm failed: {e}");
    }
}
