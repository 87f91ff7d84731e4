//! The SDK's executor: tasks polled only when woken, and a reactor over
//! `wasi:io` pollables.
//!
//! A future that waits for the host ([`wait_for`]: a fetch's response, a
//! body stream, a timer) registers its pollable here with the task's waker
//! and returns `Pending`. When no task can make progress the executor calls
//! `wasi:io/poll.poll` once with every registered pollable: the guest
//! blocks in the host, costing no CPU, until one is ready, and the tasks
//! waiting on those are woken. So ten fetches awaited together (`join!`,
//! `join_all`) take one round-trip, and `wait_until` tasks overlap.
//!
//! Why not `wstd`, which does the same: its types are the SDK's (its
//! `wasip2` is what `wasi` 0.14 re-exports), but depending on it would add
//! a dozen crates (`syn` among them, which the SDK's macros avoid) to every
//! worker's build and lockfile for the couple of hundred lines used here,
//! and its `block_on` differs from the one this SDK has always exported: it
//! panics when nested (a guest may call `isola_sdk::block_on` inside a
//! handler, e.g. in a [`Response::stream`](crate::Response::stream)
//! iterator) and when the root future is pending on something that is not a
//! pollable and wakes nobody, which this SDK has always polled again.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use wasi::io::poll::Pollable;

/// A future waiting for a pollable, and the waker of its task.
struct Waiting {
    pollable: Rc<Pollable>,
    waker: Waker,
}

/// The pollables some task is waiting for, by registration number.
#[derive(Default)]
struct Reactor {
    next: u64,
    waiting: BTreeMap<u64, Waiting>,
}

thread_local! {
    static REACTOR: RefCell<Reactor> = RefCell::default();
    /// Always ready: added to a poll that must not block.
    static NOW: Pollable = wasi::clocks::monotonic_clock::subscribe_duration(0);
}

/// Wait until `pollable` is ready, letting other tasks run meanwhile.
pub(crate) fn wait_for(pollable: Pollable) -> WaitFor {
    WaitFor {
        pollable: Rc::new(pollable),
        key: None,
    }
}

/// See [`wait_for`]. Owns the pollable: it is dropped with the future,
/// before the resource it was subscribed to.
pub(crate) struct WaitFor {
    pollable: Rc<Pollable>,
    /// The registration with the reactor, while pending.
    key: Option<u64>,
}

impl WaitFor {
    fn deregister(&mut self) {
        if let Some(key) = self.key.take() {
            // Dropped outside the borrow: a waker's drop may run anything.
            let removed = REACTOR.try_with(|r| r.borrow_mut().waiting.remove(&key));
            drop(removed);
        }
    }
}

impl Future for WaitFor {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.pollable.ready() {
            this.deregister();
            return Poll::Ready(());
        }
        let replaced = REACTOR.with(|r| {
            let mut reactor = r.borrow_mut();
            match this.key.and_then(|key| reactor.waiting.get_mut(&key)) {
                Some(waiting) if waiting.waker.will_wake(cx.waker()) => None,
                Some(waiting) => Some(std::mem::replace(&mut waiting.waker, cx.waker().clone())),
                None => {
                    let key = reactor.next;
                    reactor.next += 1;
                    let waiting = Waiting {
                        pollable: this.pollable.clone(),
                        waker: cx.waker().clone(),
                    };
                    reactor.waiting.insert(key, waiting);
                    this.key = Some(key);
                    None
                }
            }
        });
        drop(replaced);
        Poll::Pending
    }
}

impl Drop for WaitFor {
    fn drop(&mut self) {
        self.deregister();
    }
}

/// Wait for `duration` without holding up the worker's other tasks (fetches
/// awaited together, other `wait_until` work) and without using CPU time:
/// the host wakes the worker when the timer is due.
pub async fn sleep(duration: Duration) {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    wait_for(wasi::clocks::monotonic_clock::subscribe_duration(nanos)).await
}

/// Poll the registered pollables, blocking in the host until one is ready
/// when `block`, and wake the tasks waiting on those that are. False when
/// nothing is registered (there is nothing to wait for).
fn react(block: bool) -> bool {
    let registered: Vec<(u64, Rc<Pollable>)> = REACTOR.with(|r| {
        let reactor = r.borrow();
        let waiting = reactor.waiting.iter();
        waiting.map(|(key, w)| (*key, w.pollable.clone())).collect()
    });
    if registered.is_empty() {
        return false;
    }
    let ready = NOW.with(|now| {
        let mut list: Vec<&Pollable> = registered.iter().map(|(_, p)| &**p).collect();
        if !block {
            list.push(now);
        }
        wasi::io::poll::poll(&list)
    });
    let woken: Vec<Waiting> = REACTOR.with(|r| {
        let mut reactor = r.borrow_mut();
        ready
            .iter()
            .filter_map(|&i| registered.get(i as usize))
            .filter_map(|(key, _)| reactor.waiting.remove(key))
            .collect()
    });
    for waiting in woken {
        waiting.waker.wake();
    }
    true
}

/// A task's wake-up call: sets its flag, which the executor checks.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Flag {
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

pub(crate) type Task<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

struct Slot<'a> {
    future: Task<'a>,
    flag: Arc<Flag>,
    waker: Waker,
}

impl<'a> Slot<'a> {
    fn new(future: Task<'a>) -> Self {
        let flag = Arc::new(Flag(AtomicBool::new(true)));
        Slot {
            future,
            waker: Waker::from(flag.clone()),
            flag,
        }
    }
}

/// Run `tasks` together until all are done, adding those `more` hands out
/// (checked after each round) as they come.
pub(crate) fn run<'a>(tasks: Vec<Task<'a>>, mut more: impl FnMut() -> Vec<Task<'a>>) {
    let mut slots: Vec<Slot<'a>> = tasks.into_iter().map(Slot::new).collect();
    loop {
        slots.retain_mut(|slot| {
            if !slot.flag.take() {
                return true;
            }
            let mut cx = Context::from_waker(&slot.waker);
            slot.future.as_mut().poll(&mut cx).is_pending()
        });
        slots.extend(more().into_iter().map(Slot::new));
        if slots.is_empty() {
            return;
        }
        if slots.iter().any(|slot| slot.flag.is_set()) {
            // Some task can go on: only let those whose pollables are
            // ready join it, without waiting.
            react(false);
        } else if !react(true) {
            // Every task is pending and none waits for the host: some
            // future is pending on something the SDK does not know, without
            // arranging a wake-up. Poll them all again, as this SDK always
            // has, rather than hang.
            for slot in &slots {
                slot.flag.0.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Drive a future to completion on this (single) thread. Futures waiting
/// for the host block in `wasi:io/poll` until one of them can go on, so
/// waiting costs no CPU time.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut output = None;
    run(
        vec![Box::pin(async {
            output = Some(future.await);
        })],
        Vec::new,
    );
    output.expect("the task ran to completion")
}
