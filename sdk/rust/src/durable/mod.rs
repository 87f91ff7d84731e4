//! Durable Objects: named objects, each with one live instance at a time
//! and its own transactional storage (`durable_objects.bindings`).
//!
//! # Defining a class
//!
//! Implement [`DurableObject`] and register the type with
//! `#[isola_sdk::durable_object]` (on the struct or on its `impl` block);
//! the class name is the type's name unless given with
//! `#[isola_sdk::durable_object(class_name = "Counter")]`. The worker also
//! needs a `#[isola_sdk::fetch]` handler: requests to the worker itself go
//! there, each object's events to its class.
//!
//! ```ignore
//! use isola_sdk::{DurableObject, Env, ObjectState, Request, Response, Result};
//!
//! #[isola_sdk::durable_object]
//! struct Counter {
//!     state: ObjectState,
//!     count: Option<u64>,
//! }
//!
//! impl DurableObject for Counter {
//!     fn new(state: ObjectState, _env: Env) -> Self {
//!         Counter { state, count: None }
//!     }
//!
//!     async fn fetch(&mut self, _req: Request) -> Result<Response> {
//!         let storage = self.state.storage();
//!         let count = match self.count {
//!             Some(count) => count,
//!             None => storage.get_json("count").await?.unwrap_or(0),
//!         } + 1;
//!         storage.put_json("count", &count).await?;
//!         self.count = Some(count);
//!         Ok(Response::text(count.to_string()))
//!     }
//! }
//! ```
//!
//! with, in `isola.toml`:
//!
//! ```toml
//! durable_objects = { bindings = [{ name = "COUNTER", class_name = "Counter" }] }
//! migrations = [{ tag = "v1", new_sqlite_classes = ["Counter"] }]
//! ```
//!
//! # The live instance
//!
//! Each object runs in a wasm instance of its own, which stays alive
//! between the object's events until it has been idle for
//! `durable_object_idle_s`. The SDK makes the object's value (`T::new`) on
//! its first event in an instance and keeps it, so fields of `self` (a
//! cached count, a connection table) persist from one event to the next.
//! The host delivers an object's events one at a time, in order, so
//! `&mut self` is never shared. An instance may still be reset at any time
//! (idle eviction, a trap, a limit, a restart): state that must survive
//! goes to [`Storage`]. A `fetch` that returns `Err` traps like a worker's
//! `fetch` handler (the caller gets a 500) and so resets the instance.
//!
//! # Reaching an object
//!
//! ```ignore
//! let counters = env.durable_object("COUNTER");
//! let stub = counters.get(&counters.id_from_name("room-1")?);
//! let response = stub.fetch(OutboundRequest::post("/increment", "")).await?;
//! ```
//!
//! A stub's `fetch` is an outbound request to
//! `http://<binding>.object.isola.internal/<path>` carrying the object's id
//! (and name) in `isola-object-id` / `isola-object-name` headers, which the
//! host strips; it counts as a subrequest.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use wasi::http::types::{IncomingRequest, ResponseOutparam};

use crate::bindings::isola::worker::durable_object as wit;
use crate::d1::{D1Row, D1Value};
use crate::error::check;
use crate::wire::percent_encode;

use crate::{
    Ctx, Env, FetchResponse, HeaderName, HeaderValue, Method, OutboundRequest, Request, Response,
    Result, anyhow, block_on, fetch, path_of, run_background,
};

/// A value in an SQL row or bound to a placeholder (the type D1 uses).
pub type SqlValue = D1Value;
/// One row of an [`SqlCursor`] (the type D1 uses).
pub type SqlRow = D1Row;

mod storage;
pub use storage::{ListOptions, SqlCursor, SqlStorage, Storage, Transaction, now_ms};

/// A Durable Object class: the code of every object of the class.
///
/// Register the implementing type with `#[isola_sdk::durable_object]`.
/// See the [module documentation](self).
pub trait DurableObject: Sized + 'static {
    /// Make the object's value on its first event in a new instance.
    /// Storage may be read here (e.g. to load a cache).
    fn new(state: ObjectState, env: Env) -> Self;

    /// Answer a request from a [`Stub::fetch`]. An `Err` traps the
    /// instance (the caller gets a 500) and so resets it.
    fn fetch(&mut self, req: Request) -> impl Future<Output = Result<Response>>;

    /// The object's alarm went off (see [`Storage::set_alarm`]). `Ok` ends
    /// the alarm (unless this run set a new one); `Err` makes the host try
    /// again after 2 s, 4 s, 8 s... (six retries at most), with
    /// [`AlarmInfo::retry_count`] counting the failed tries. The default
    /// fails: a class that sets alarms must implement it.
    fn alarm(&mut self, alarm: AlarmInfo) -> impl Future<Output = Result<()>> {
        let _ = alarm;
        std::future::ready(Err(anyhow!(
            "this Durable Object class has no alarm handler (implement DurableObject::alarm)"
        )))
    }
}

/// About an alarm run: see [`DurableObject::alarm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlarmInfo {
    /// Failed tries before this one (0 on the first).
    pub retry_count: u32,
}

impl AlarmInfo {
    /// Whether an earlier try of this alarm failed.
    pub fn is_retry(&self) -> bool {
        self.retry_count > 0
    }
}

/// What a run delivers to its object; see [`current`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectEvent {
    /// A request from a stub's `fetch`.
    Fetch,
    /// The object's alarm.
    Alarm(AlarmInfo),
}

/// The object the running request serves and the event it delivers, or
/// `None` when the request is not an object's. Only needed by a worker
/// that handles its objects' events itself instead of registering a
/// [`DurableObject`] class.
pub fn current() -> Option<(ObjectState, ObjectEvent)> {
    let (object, event) = wit::current()?;
    Some((ObjectState::from_wit(object), event_of(event)))
}

fn event_of(event: wit::Event) -> ObjectEvent {
    match event {
        wit::Event::Fetch => ObjectEvent::Fetch,
        wit::Event::Alarm(retry_count) => ObjectEvent::Alarm(AlarmInfo { retry_count }),
    }
}

/// A Durable Object namespace: the objects of the class a binding names;
/// see [`Env::durable_object`](crate::Env::durable_object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurableObjectNamespace {
    binding: String,
}

impl DurableObjectNamespace {
    pub(crate) fn new(binding: &str) -> Self {
        DurableObjectNamespace {
            binding: binding.to_owned(),
        }
    }

    /// The binding's name, as configured.
    pub fn binding(&self) -> &str {
        &self.binding
    }

    /// The id of the object called `name`: the same for the same name,
    /// every time, on every node.
    pub fn id_from_name(&self, name: &str) -> Result<ObjectId> {
        Ok(ObjectId {
            id: check(wit::id_from_name(&self.binding, name))?,
            name: Some(name.to_owned()),
        })
    }

    /// A new, random object id.
    pub fn new_unique_id(&self) -> Result<ObjectId> {
        Ok(ObjectId {
            id: check(wit::new_unique_id(&self.binding))?,
            name: None,
        })
    }

    /// An id given as text (from [`ObjectId::to_string`]); an `Invalid`
    /// error unless it is 64 hex digits made for this namespace.
    pub fn id_from_string(&self, id: &str) -> Result<ObjectId> {
        Ok(ObjectId {
            id: check(wit::id_from_string(&self.binding, id))?,
            name: None,
        })
    }

    /// A stub for the object `id`: sending it requests reaches the object
    /// (creating it on first use).
    pub fn get(&self, id: &ObjectId) -> Stub {
        Stub {
            binding: self.binding.clone(),
            id: id.clone(),
        }
    }

    /// The stub of the object called `name`: `get(&id_from_name(name)?)`.
    pub fn get_by_name(&self, name: &str) -> Result<Stub> {
        Ok(self.get(&self.id_from_name(name)?))
    }
}

/// An object's id: 64 lowercase hex digits. Two ids are equal when their
/// digits are (an id made from a name equals the same id parsed from
/// text).
#[derive(Clone, Debug)]
pub struct ObjectId {
    id: String,
    name: Option<String>,
}

impl ObjectId {
    /// The id's hex digits.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The name the id was made from, when it is known: for an id from
    /// [`DurableObjectNamespace::id_from_name`], and inside the object
    /// once a caller has used its name.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl PartialEq for ObjectId {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for ObjectId {}

impl Hash for ObjectId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

/// Sends requests to one object; see [`DurableObjectNamespace::get`].
#[derive(Clone, Debug)]
pub struct Stub {
    binding: String,
    id: ObjectId,
}

impl Stub {
    /// The id of the object this stub reaches.
    pub fn id(&self) -> &ObjectId {
        &self.id
    }

    /// The object's name, if the stub was made from one.
    pub fn name(&self) -> Option<&str> {
        self.id.name()
    }

    /// Send a request to the object; its class's [`DurableObject::fetch`]
    /// answers. Only the path and query of the request's URL matter
    /// (`/increment?by=2`, or a full URL whose host is ignored). Requests
    /// to one object are handled one at a time, in the order they arrive.
    pub async fn fetch(&self, request: impl Into<OutboundRequest>) -> Result<FetchResponse> {
        let mut request = request.into();
        let path = path_of(&request.url);
        request.url = format!(
            "http://{}.object.isola.internal{path}",
            self.binding.to_ascii_lowercase()
        );
        request.headers.insert(
            HeaderName::from_static("isola-object-id"),
            HeaderValue::from_str(&self.id.id)?,
        );
        let name_header = HeaderName::from_static("isola-object-name");
        match &self.id.name {
            Some(name) => {
                let value = HeaderValue::from_str(&percent_encode(name))?;
                request.headers.insert(name_header, value);
            }
            None => {
                request.headers.remove(name_header);
            }
        }
        fetch(request).await
    }
}

/// The object an event is delivered to, given to [`DurableObject::new`]:
/// its id, class and storage. Cloning it is cheap.
#[derive(Clone, Debug)]
pub struct ObjectState {
    inner: Rc<StateInner>,
}

#[derive(Debug)]
struct StateInner {
    class_name: String,
    id: String,
    name: RefCell<Option<String>>,
}

impl ObjectState {
    fn from_wit(object: wit::Object) -> Self {
        ObjectState {
            inner: Rc::new(StateInner {
                class_name: object.class_name,
                id: object.id,
                name: RefCell::new(object.name),
            }),
        }
    }

    /// Remember the object's name once an event brings it.
    fn learn_name(&self, name: Option<String>) {
        if name.is_some() {
            *self.inner.name.borrow_mut() = name;
        }
    }

    /// The object's id, with its name once one is known (a caller
    /// that used [`DurableObjectNamespace::id_from_name`] brings it; an
    /// alarm does not).
    pub fn id(&self) -> ObjectId {
        ObjectId {
            id: self.inner.id.clone(),
            name: self.inner.name.borrow().clone(),
        }
    }

    /// The class as configured (`class_name`).
    pub fn class_name(&self) -> &str {
        &self.inner.class_name
    }

    /// The object's own storage.
    pub fn storage(&self) -> Storage {
        Storage { _private: () }
    }

    /// Run `work` after the event's response has been sent, as
    /// [`Ctx::wait_until`] does.
    pub fn wait_until(&self, work: impl Future<Output = Result<()>> + 'static) {
        Ctx::default().wait_until(work);
    }
}

// ---------------------------------------------------------------------------
// Dispatch: which class gets an object's event, and the live objects.

/// Runs one event on a class's object.
type Runner = fn(IncomingRequest, ResponseOutparam, wit::Object, wit::Event);
/// Hands an object's event to its class, or gives a request that is not an
/// object's back.
type Router = fn(IncomingRequest, ResponseOutparam) -> Option<(IncomingRequest, ResponseOutparam)>;

/// An object's state and value, kept between its events.
type Live = (ObjectState, Box<dyn Any>);

thread_local! {
    static CLASSES: RefCell<Vec<(String, Runner)>> = const { RefCell::new(Vec::new()) };
    /// Set by the first registration. Through this pointer only, the
    /// incoming handler reaches `isola:worker/durable-object`: a worker
    /// that registers no class does not import it.
    static ROUTER: Cell<Option<Router>> = const { Cell::new(None) };
    /// Each object's state and value, by `class/id`, between its events.
    static LIVE: RefCell<HashMap<String, Live>> = RefCell::new(HashMap::new());
}

/// Register `T` as the Durable Object class `class_name`: this instance's
/// events for objects of that class go to `T`. `#[isola_sdk::durable_object]`
/// calls this when the instance starts; call it yourself only for a type
/// the attribute cannot name (a generic one), before any event arrives
/// (e.g. from a static constructor). Registering a name again replaces it.
pub fn register<T: DurableObject>(class_name: &str) {
    CLASSES.with(|classes| {
        let mut classes = classes.borrow_mut();
        classes.retain(|(name, _)| name != class_name);
        classes.push((class_name.to_owned(), run::<T>));
    });
    ROUTER.with(|router| router.set(Some(dispatch)));
}

/// Called by the incoming handler first: `None` when an object's class
/// took the request.
pub(crate) fn route(
    request: IncomingRequest,
    out: ResponseOutparam,
) -> Option<(IncomingRequest, ResponseOutparam)> {
    match ROUTER.with(Cell::get) {
        Some(router) => router(request, out),
        None => Some((request, out)),
    }
}

fn dispatch(
    request: IncomingRequest,
    out: ResponseOutparam,
) -> Option<(IncomingRequest, ResponseOutparam)> {
    let Some((object, event)) = wit::current() else {
        return Some((request, out));
    };
    let runner = CLASSES.with(|classes| {
        let classes = classes.borrow();
        classes
            .iter()
            .find(|(name, _)| *name == object.class_name)
            .map(|(_, runner)| *runner)
    });
    match runner {
        Some(run) => run(request, out, object, event),
        None => {
            let registered: Vec<String> =
                CLASSES.with(|classes| classes.borrow().iter().map(|(n, _)| n.clone()).collect());
            let message = format!(
                "no Durable Object class `{}` is registered in this worker (registered: {}); \
                 put #[isola_sdk::durable_object] on the type implementing DurableObject",
                object.class_name,
                registered.join(", ")
            );
            eprintln!("{message}");
            drop(request);
            if let Err(error) = Response::text(format!("{message}\n"))
                .with_status(500)
                .send(out, false)
            {
                eprintln!("answering the object's event failed: {error:?}");
            }
        }
    }
    None
}

/// Run one event on the object of class `T` that `object` names, making
/// its value first if this instance has none yet.
fn run<T: DurableObject>(
    request: IncomingRequest,
    out: ResponseOutparam,
    object: wit::Object,
    event: wit::Event,
) {
    let key = format!("{}/{}", object.class_name, object.id);
    let class = object.class_name.clone();
    let taken = LIVE.with(|live| live.borrow_mut().remove(&key));
    let (state, mut value) = match taken {
        Some((state, value)) if value.is::<T>() => {
            state.learn_name(object.name);
            (state, value)
        }
        _ => {
            let state = ObjectState::from_wit(object);
            let value: Box<dyn Any> = Box::new(T::new(state.clone(), Env::default()));
            (state, value)
        }
    };
    let this = value
        .downcast_mut::<T>()
        .expect("the object's value has its class's type");
    let outcome = Request::from_wasi(request).and_then(|request| match event_of(event) {
        ObjectEvent::Fetch => {
            let head = request.method() == Method::HEAD;
            let response = block_on(this.fetch(request))?;
            response.send(out, head)
        }
        ObjectEvent::Alarm(info) => {
            drop(request);
            let response = match block_on(this.alarm(info)) {
                Ok(()) => Response::empty(204),
                Err(error) => {
                    eprintln!("{class} alarm handler failed: {error:?}");
                    Response::text(format!("alarm failed: {error:#}\n")).with_status(500)
                }
            };
            response.send(out, false)
        }
    });
    LIVE.with(|live| live.borrow_mut().insert(key, (state, value)));
    if outcome.is_ok() {
        run_background();
    }
    if let Err(error) = outcome {
        // As a worker's fetch handler: log the chain and trap; the host
        // answers 500 and resets the instance (never the storage).
        eprintln!("{class} fetch handler failed: {error:?}");
        panic!("Durable Object fetch handler returned an error");
    }
}
