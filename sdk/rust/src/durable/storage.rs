//! An object's storage: keys and values, transactions, SQL and its alarm
//! (`ctx.storage` in Workers).

use std::cell::Cell;
use std::ops::Deref;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bindings::isola::worker::durable_object_storage as wit_storage;
use crate::d1::{D1Params, D1Row, D1Value};
use crate::error::check;
use anyhow::Context as _;

use super::{SqlRow, SqlValue};
use crate::Result;

/// The storage of the object the running event is delivered to: keys and
/// values, SQL and one alarm, in one SQLite database per object.
///
/// A write outside a transaction is durable when its call returns; inside
/// [`Storage::transaction`], when the transaction commits. Values are bytes;
/// the `_json` methods store JSON. Calls are not subrequests. Outside an
/// object's event every call fails with `Invalid`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Storage {
    pub(super) _private: (),
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
