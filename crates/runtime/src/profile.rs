//! A CPU profile of one request, on demand: [`Worker::profile_next`] arms
//! the worker's next requests (optionally only those under a path), and
//! each such request runs with wasmtime's guest profiler sampling its wasm
//! stack every few epoch ticks. The profile, in the Firefox profiler's
//! format, goes to the request's [`ProfileSink`].
//!
//! A request that is not profiled pays one atomic load. A profiled one pays
//! for the profiler's set-up (symbols of every module of the component) and
//! for each sample (a stack walk); its wall limit still holds, checked at
//! each sample instead of by the epoch deadline.
//!
//! [`Worker::profile_next`]: crate::Worker::profile_next

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use isola_engine::{EPOCH_TICK, FineTicks, IsolaEngine};
use wasmtime::{GuestProfiler, Store, Trap, UpdateDeadline};

use crate::request::RequestId;
use crate::state::HostState;

/// Where finished profiles go (the server writes them under its state dir).
pub type ProfileSink = Arc<dyn Fn(RequestProfile) + Send + Sync>;

/// Which requests of a worker to profile, and how.
#[derive(Clone)]
pub struct ProfileRequest {
    /// How many of the next matching requests.
    pub count: u32,
    /// Only requests whose path starts with this.
    pub path_prefix: Option<String>,
    /// Time between samples, rounded up to whole epoch ticks
    /// ([`EPOCH_TICK`]).
    pub interval: Duration,
    pub sink: ProfileSink,
}

/// One profiled request.
pub struct RequestProfile {
    pub worker: Arc<str>,
    pub request_id: RequestId,
    pub method: String,
    pub path: String,
    /// Stacks sampled.
    pub samples: u64,
    /// The profile, as the Firefox profiler (profiler.firefox.com) opens it.
    pub json: Vec<u8>,
}

/// A worker's armed profile requests.
#[derive(Default)]
pub(crate) struct Profiling {
    /// Requests still to profile: the fast path reads only this.
    remaining: AtomicU32,
    armed: std::sync::Mutex<Option<ProfileRequest>>,
}

/// One request's claim on an armed profile.
pub(crate) struct Claim {
    interval: Duration,
    sink: ProfileSink,
}

impl Profiling {
    /// Profile the next `request.count` matching requests, replacing what
    /// was armed before.
    pub fn arm(&self, request: ProfileRequest) {
        let mut armed = self.armed.lock().expect("profiling lock");
        self.remaining.store(request.count, Ordering::Release);
        *armed = (request.count > 0).then_some(request);
    }

    /// Requests still to be profiled.
    pub fn remaining(&self) -> u32 {
        self.remaining.load(Ordering::Acquire)
    }

    /// Take one of the armed profiles for a request to `path`, if one is
    /// armed and the path matches.
    pub fn claim(&self, path: &str) -> Option<Claim> {
        if self.remaining.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut armed = self.armed.lock().expect("profiling lock");
        let request = armed.as_ref()?;
        if request
            .path_prefix
            .as_deref()
            .is_some_and(|prefix| !path.starts_with(prefix))
        {
            return None;
        }
        let claim = Claim {
            interval: request.interval,
            sink: request.sink.clone(),
        };
        let left = self.remaining.load(Ordering::Acquire).saturating_sub(1);
        self.remaining.store(left, Ordering::Release);
        if left == 0 {
            *armed = None;
        }
        Some(claim)
    }
}

/// A profiler running in a store (see [`start`]). Dropped, it finishes
/// the profile and hands it to its sink: however the run ends (a trap, a
/// limit that drops the guest's task, the end of the handler), the
/// profile of what ran is kept.
pub(crate) struct ActiveProfile {
    profiler: Option<GuestProfiler>,
    /// The ticker wakes at every tick while the profile samples.
    _fine_ticks: FineTicks,
    samples: u64,
    sink: ProfileSink,
    worker: Arc<str>,
    request_id: RequestId,
    method: String,
    path: String,
}

/// What a profiled request is, for its profile.
pub(crate) struct Subject<'a> {
    pub worker: &'a Arc<str>,
    pub request_id: &'a RequestId,
    pub method: &'a http::Method,
    pub path: &'a str,
}

/// Run `store`'s guest under the profiler: a sample every `claim.interval`
/// of wall time spent in wasm, and a wall-limit trap once `wall` has passed
/// (the epoch deadline that would enforce it now drives the sampling).
pub(crate) fn start(
    store: &mut Store<HostState>,
    component: &wasmtime::component::Component,
    subject: Subject<'_>,
    claim: Claim,
    wall: Duration,
) -> wasmtime::Result<()> {
    let ticks = IsolaEngine::ticks_for(claim.interval);
    let interval = EPOCH_TICK * u32::try_from(ticks).unwrap_or(u32::MAX);
    let profiler = GuestProfiler::new_component(
        store.engine(),
        subject.worker,
        interval,
        component.clone(),
        std::iter::empty(),
    )?;
    store.data_mut().run.profile = Some(Box::new(ActiveProfile {
        profiler: Some(profiler),
        _fine_ticks: FineTicks::hold(),
        samples: 0,
        sink: claim.sink,
        worker: subject.worker.clone(),
        request_id: subject.request_id.clone(),
        method: subject.method.to_string(),
        path: subject.path.to_owned(),
    }));
    let deadline = Instant::now() + wall;
    store.epoch_deadline_callback(move |mut store| {
        if Instant::now() >= deadline {
            return Err(Trap::Interrupt.into());
        }
        if let Some(mut active) = store.data_mut().run.profile.take() {
            if let Some(profiler) = active.profiler.as_mut() {
                profiler.sample(&store, interval);
                active.samples += 1;
            }
            store.data_mut().run.profile = Some(active);
        }
        Ok(UpdateDeadline::Continue(ticks))
    });
    store.set_epoch_deadline(ticks);
    Ok(())
}

/// End the profile `store` ran under, if it ran under one: the profile
/// goes to its sink, and the store's epoch deadline traps again (a kept
/// instance's next run is not sampled).
pub(crate) fn finish(store: &mut Store<HostState>) {
    if let Some(active) = store.data_mut().run.profile.take() {
        drop(active);
        store.epoch_deadline_trap();
    }
}

impl Drop for ActiveProfile {
    fn drop(&mut self) {
        let Some(profiler) = self.profiler.take() else {
            return;
        };
        let mut json = Vec::new();
        if let Err(e) = profiler.finish(&mut json) {
            tracing::warn!(worker = %self.worker, request_id = %self.request_id,
                "writing the profile failed: {e:#}");
            return;
        }
        (self.sink)(RequestProfile {
            worker: self.worker.clone(),
            request_id: self.request_id.clone(),
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
            samples: self.samples,
            json,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(count: u32, prefix: Option<&str>) -> ProfileRequest {
        ProfileRequest {
            count,
            path_prefix: prefix.map(str::to_owned),
            interval: Duration::from_millis(1),
            sink: Arc::new(|_| {}),
        }
    }

    #[test]
    fn claims_count_down_and_match_the_prefix() {
        let profiling = Profiling::default();
        assert!(profiling.claim("/").is_none());
        profiling.arm(request(2, Some("/api")));
        assert!(profiling.claim("/other").is_none());
        assert_eq!(profiling.remaining(), 2);
        assert!(profiling.claim("/api/x").is_some());
        assert!(profiling.claim("/api").is_some());
        assert!(profiling.claim("/api").is_none());
        assert_eq!(profiling.remaining(), 0);
        // Arming again replaces what was armed.
        profiling.arm(request(5, None));
        profiling.arm(request(1, None));
        assert!(profiling.claim("/anything").is_some());
        assert!(profiling.claim("/anything").is_none());
    }
}
