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
use std::ops::Deref;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasi::http::types::{IncomingRequest, ResponseOutparam};

use crate::bindings::isola::worker::durable_object as wit;
use crate::bindings::isola::worker::durable_object_storage as wit_storage;
use crate::d1::{D1Params, D1Row, D1Value};
use crate::error::check;
use crate::wire::percent_encode;
use anyhow::Context as _;

use crate::{
    Ctx, Env, FetchResponse, HeaderName, HeaderValue, Method, OutboundRequest, Request, Response,
    Result, anyhow, block_on, fetch, path_of, run_background,
};

/// A value in an SQL row or bound to a placeholder (the type D1 uses).
pub type SqlValue = D1Value;
/// One row of an [`SqlCursor`] (the type D1 uses).
pub type SqlRow = D1Row;

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

/// The storage of the object the running event is delivered to: keys and
/// values, SQL and one alarm, in one SQLite database per object.
///
/// A write outside a transaction is durable when its call returns; inside
/// [`Storage::transaction`], when the transaction commits. Values are bytes;
/// the `_json` methods store JSON. Calls are not subrequests. Outside an
/// object's event every call fails with `Invalid`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Storage {
    _private: (),
}

impl Storage {
    /// The value stored under `key`, or `None`.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut found = check(wit_storage::get(&[key.to_owned()]))?;
        Ok(found.pop().map(|(_, value)| value))
    }

    /// The value stored under `key` as UTF-8 text, or `None`.
    pub async fn get_text(&self, key: &str) -> Result<Option<String>> {
        self.get(key)
            .await?
            .map(|value| String::from_utf8(value).with_context(|| format!("the value of {key:?}")))
            .transpose()
    }

    /// The value stored under `key` parsed as JSON, or `None`.
    #[cfg(feature = "json")]
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.get(key)
            .await?
            .map(|value| {
                serde_json::from_slice(&value).with_context(|| format!("the value of {key:?}"))
            })
            .transpose()
    }

    /// The stored entries among `keys` (at most 128), in `keys`' order;
    /// missing keys are left out.
    pub async fn get_many<K: AsRef<str>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let keys: Vec<String> = keys.into_iter().map(|k| k.as_ref().to_owned()).collect();
        check(wit_storage::get(&keys))
    }

    /// Store `value` under `key`.
    pub async fn put(&self, key: &str, value: impl AsRef<[u8]>) -> Result<()> {
        check(wit_storage::put(&[(
            key.to_owned(),
            value.as_ref().to_vec(),
        )]))
    }

    /// Store `value` serialized as JSON under `key`.
    #[cfg(feature = "json")]
    pub async fn put_json<T: serde::Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        self.put(key, serde_json::to_vec(value)?).await
    }

    /// Store every entry (at most 128) at once: all or none.
    pub async fn put_many<K: Into<String>, V: Into<Vec<u8>>>(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<()> {
        let entries: Vec<(String, Vec<u8>)> = entries
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        check(wit_storage::put(&entries))
    }

    /// Delete `key`; whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        Ok(check(wit_storage::delete(&[key.to_owned()]))? > 0)
    }

    /// Delete `keys` (at most 128); how many existed.
    pub async fn delete_many<K: AsRef<str>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<u32> {
        let keys: Vec<String> = keys.into_iter().map(|k| k.as_ref().to_owned()).collect();
        check(wit_storage::delete(&keys))
    }

    /// Entries in key order (bytewise), as `options` select them.
    pub async fn list(&self, options: ListOptions) -> Result<Vec<(String, Vec<u8>)>> {
        let options = wit_storage::ListOptions {
            start: options.start,
            start_after: options.start_after,
            end: options.end,
            prefix: options.prefix,
            reverse: options.reverse,
            limit: options.limit,
        };
        check(wit_storage::list(&options))
    }

    /// [`Storage::list`] with every value parsed as JSON.
    #[cfg(feature = "json")]
    pub async fn list_json<T: serde::de::DeserializeOwned>(
        &self,
        options: ListOptions,
    ) -> Result<Vec<(String, T)>> {
        self.list(options)
            .await?
            .into_iter()
            .map(|(key, value)| {
                let value = serde_json::from_slice(&value)
                    .with_context(|| format!("the value of {key:?}"))?;
                Ok((key, value))
            })
            .collect()
    }

    /// Delete every key and all SQL data (not the alarm).
    pub async fn delete_all(&self) -> Result<()> {
        check(wit_storage::delete_all())
    }

    /// Run `body` in a transaction: its writes take effect together when it
    /// returns `Ok`, or not at all when it returns `Err` (or calls
    /// [`Transaction::rollback`], or is dropped unfinished). Transactions
    /// nest (the inner ones are savepoints).
    ///
    /// ```ignore
    /// let count = storage
    ///     .transaction(async |txn| {
    ///         let count = txn.get_json::<u64>("count").await?.unwrap_or(0) + 1;
    ///         txn.put_json("count", &count).await?;
    ///         txn.put_json("updated", &now).await?;
    ///         Ok(count)
    ///     })
    ///     .await?;
    /// ```
    ///
    /// The transaction is the object's: while it is open, every storage
    /// call of this event (from any task) is part of it.
    pub async fn transaction<T>(
        &self,
        body: impl AsyncFnOnce(&Transaction) -> Result<T>,
    ) -> Result<T> {
        check(wit_storage::begin()).context("beginning a transaction")?;
        let mut open = OpenTransaction { open: true };
        let txn = Transaction {
            storage: *self,
            rollback: Cell::new(false),
        };
        let result = body(&txn).await;
        open.open = false;
        match result {
            Ok(value) if !txn.rollback.get() => {
                if let Err(error) = check(wit_storage::commit()) {
                    let _ = wit_storage::rollback();
                    return Err(error.context("committing the transaction"));
                }
                Ok(value)
            }
            Ok(value) => {
                check(wit_storage::rollback()).context("rolling back the transaction")?;
                Ok(value)
            }
            Err(error) => {
                if let Err(undo) = check(wit_storage::rollback()) {
                    eprintln!("rolling back a failed transaction failed too: {undo:#}");
                }
                Err(error)
            }
        }
    }

    /// The object's SQL database (`new_sqlite_classes` only).
    pub fn sql(&self) -> SqlStorage {
        SqlStorage { _private: () }
    }

    /// The size of the object's database in bytes.
    pub async fn database_size(&self) -> Result<u64> {
        check(wit_storage::database_size())
    }

    /// When the alarm will go off, in milliseconds since the Unix epoch.
    pub async fn get_alarm(&self) -> Result<Option<u64>> {
        check(wit_storage::get_alarm())
    }

    /// Set (or move) the object's one alarm to `scheduled_time`, in
    /// milliseconds since the Unix epoch; a time in the past goes off at
    /// once. The host then delivers [`DurableObject::alarm`].
    pub async fn set_alarm(&self, scheduled_time: u64) -> Result<()> {
        check(wit_storage::set_alarm(scheduled_time))
    }

    /// Set the alarm to go off `delay` from now.
    pub async fn set_alarm_in(&self, delay: Duration) -> Result<()> {
        let delay = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.set_alarm(now_ms().saturating_add(delay)).await
    }

    /// Cancel the alarm, if one is set.
    pub async fn delete_alarm(&self) -> Result<()> {
        check(wit_storage::delete_alarm())
    }
}

/// Milliseconds since the Unix epoch, by the host's wall clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Rolls the transaction back if its future is dropped before it ends.
struct OpenTransaction {
    open: bool,
}

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        if self.open {
            let _ = wit_storage::rollback();
        }
    }
}

/// An open transaction, given to [`Storage::transaction`]'s body: every
/// [`Storage`] method, plus [`Transaction::rollback`].
#[derive(Debug)]
pub struct Transaction {
    storage: Storage,
    rollback: Cell<bool>,
}

impl Transaction {
    /// Undo the transaction's writes when its body returns, even if it
    /// returns `Ok`.
    pub fn rollback(&self) {
        self.rollback.set(true);
    }
}

impl Deref for Transaction {
    type Target = Storage;

    fn deref(&self) -> &Storage {
        &self.storage
    }
}

/// Which entries [`Storage::list`] returns: keys from `start` (inclusive)
/// or after `start_after`, up to `end` (exclusive), under `prefix`, at most
/// `limit`, last first when `reverse`. Build one with struct syntax or
/// the builder methods: `ListOptions::new().prefix("user:").limit(10)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    pub start: Option<String>,
    pub start_after: Option<String>,
    pub end: Option<String>,
    pub prefix: Option<String>,
    pub reverse: bool,
    pub limit: Option<u32>,
}

impl ListOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn start(mut self, key: impl Into<String>) -> Self {
        self.start = Some(key.into());
        self
    }

    pub fn start_after(mut self, key: impl Into<String>) -> Self {
        self.start_after = Some(key.into());
        self
    }

    pub fn end(mut self, key: impl Into<String>) -> Self {
        self.end = Some(key.into());
        self
    }

    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    pub fn reverse(mut self, reverse: bool) -> Self {
        self.reverse = reverse;
        self
    }

    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// The object's SQLite database; see [`Storage::sql`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SqlStorage {
    _private: (),
}

impl SqlStorage {
    /// Run `query` (one or more `;`-separated statements; `params` bind the
    /// `?` / `?NNN` placeholders of the last) and return the last
    /// statement's rows: `sql.exec("SELECT * FROM t WHERE id = ?", [id])`,
    /// `sql.exec("CREATE TABLE ...", ())`.
    pub async fn exec(&self, query: &str, params: impl D1Params) -> Result<SqlCursor> {
        let params: Vec<_> = params
            .into_params()
            .into_iter()
            .map(D1Value::into_wit)
            .collect();
        let cursor = check(wit_storage::sql_exec(query, &params))?;
        Ok(SqlCursor {
            columns: cursor.columns.into(),
            rows: cursor
                .rows
                .into_iter()
                .map(|row| row.into_iter().map(D1Value::from_wit).collect())
                .collect(),
            rows_read: cursor.rows_read,
            rows_written: cursor.rows_written,
        })
    }

    /// The size of the object's database in bytes.
    pub async fn database_size(&self) -> Result<u64> {
        check(wit_storage::database_size())
    }
}

/// What [`SqlStorage::exec`] returned: the last statement's rows.
#[derive(Clone, Debug, PartialEq)]
pub struct SqlCursor {
    columns: Rc<[String]>,
    rows: Vec<Vec<SqlValue>>,
    rows_read: u64,
    rows_written: u64,
}

impl SqlCursor {
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The rows, each a map of column names to values.
    pub fn rows(&self) -> Vec<SqlRow> {
        self.rows
            .iter()
            .map(|values| D1Row::new(self.columns.clone(), values.clone()))
            .collect()
    }

    /// The rows as arrays of values, in column order.
    pub fn raw(&self) -> &[Vec<SqlValue>] {
        &self.rows
    }

    pub fn into_raw(self) -> Vec<Vec<SqlValue>> {
        self.rows
    }

    /// The rows deserialized from JSON objects of column names to values
    /// (see [`D1Row::deserialize`]).
    #[cfg(feature = "json")]
    pub fn results<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.rows().iter().map(D1Row::deserialize).collect()
    }

    /// The one row, deserialized; an error unless there is exactly one.
    #[cfg(feature = "json")]
    pub fn one<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        match self.rows.len() {
            1 => self.rows()[0].deserialize(),
            n => anyhow::bail!("expected exactly one row, got {n}"),
        }
    }

    /// Rows the statements scanned or returned.
    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    /// Rows the statements inserted, updated or deleted.
    pub fn rows_written(&self) -> u64 {
        self.rows_written
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
