//! Durable Objects' storage: each object has its own keys and values, its
//! own SQL database (for classes created by `new_sqlite_classes`) and one
//! alarm, as `ctx.storage` has them in Workers.
//!
//! [`DurableStore`] hands out an [`ObjectStorage`] per object. Its
//! [`DurableStore::object`] checks the namespace and id and puts
//! Workers' limits (key and value sizes, 128 keys a call, list options, the
//! SQL API only for SQLite classes) in front of what the backend returns,
//! so every backend enforces them identically. The embedded backend is
//! [`sqlite`]: one SQLite file per object; [`postgres`] keeps each object
//! in a schema of one PostgreSQL database that several nodes share.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{BindingError, Result};
use crate::sql::Value;

pub mod postgres;
pub mod sqlite;

/// The longest key, in UTF-8 bytes (Workers: 2 KiB).
pub const MAX_KEY_BYTES: usize = 2048;
/// The most keys one `get`, `put` or `delete` takes (Workers: 128).
pub const MAX_KEYS_PER_CALL: usize = 128;
/// The largest value of a class created by `new_classes` (Workers: 128 KiB).
pub const MAX_VALUE_BYTES: usize = 128 * 1024;
/// The largest value of a class created by `new_sqlite_classes` (Workers:
/// 2 MB; 2 MiB here).
pub const MAX_SQLITE_VALUE_BYTES: usize = 2 * 1024 * 1024;
/// Tables (and indexes, views, triggers) whose name starts with this,
/// in any case, belong to the storage itself: the SQL API may not name
/// them, as Workers keeps `_cf_` for its own.
pub const RESERVED_SQL_PREFIX: &str = "_isola_";

/// An object's alarm, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    /// The class's storage namespace (`<worker>/<class>`).
    pub namespace: String,
    /// The object's id: 64 lowercase hex digits.
    pub id: String,
    /// When it goes off, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// `list` as Workers has it. Bounds compare keys as UTF-8 bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// The first key that may be listed (inclusive).
    pub start: Option<String>,
    /// Only keys after this one (exclusive); not together with `start`.
    pub start_after: Option<String>,
    /// Only keys before this one (exclusive).
    pub end: Option<String>,
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Last key first.
    pub reverse: bool,
    /// At most this many entries (at least 1); all of them when `None`.
    pub limit: Option<u32>,
}

/// What one [`ObjectStorage::sql_exec`] returned: the last statement's rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cursor {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// Approximate, as Workers bills it: see the backend.
    pub rows_read: u64,
    /// Rows inserted, updated or deleted by all the statements, triggers
    /// included.
    pub rows_written: u64,
}

/// The storage of every Durable Object of a process.
#[async_trait]
pub trait DurableStore: Send + Sync {
    /// The storage of object `id` (64 lowercase hex digits) of `namespace`
    /// (`<worker>/<class>`: one or two segments of ASCII letters, digits,
    /// `_` and `-`, joined by `/`), whose class was created by
    /// `new_sqlite_classes` when `sqlite`. Both names are checked here, and
    /// the storage returned enforces Workers' limits in front of the
    /// backend's. Cheap: no I/O, the database is opened on first use.
    fn object(&self, namespace: &str, id: &str, sqlite: bool) -> Result<Arc<dyn ObjectStorage>> {
        check_namespace(namespace)?;
        check_id(id)?;
        Ok(Arc::new(Checked {
            inner: self.open_object(namespace, id)?,
            sqlite,
        }))
    }

    /// [`DurableStore::object`] with the names already checked and no
    /// limits in front: what each backend implements. Two calls for the
    /// same object while the first's storage lives must share its state
    /// (open transactions), as the runtime may ask more than once.
    fn open_object(&self, namespace: &str, id: &str) -> Result<Arc<dyn ObjectStorage>>;

    /// Every alarm set, earliest first (the runtime's alarm scheduler loads
    /// them at start and whenever they change).
    async fn alarms(&self) -> Result<Vec<Alarm>>;
}

/// One object's storage (`ctx.storage`). The runtime runs one event of an
/// object at a time; the storage serializes its calls anyway.
///
/// A write outside a transaction is durable when the call returns; inside
/// one, when the outermost [`ObjectStorage::commit`] returns.
#[async_trait]
pub trait ObjectStorage: Send + Sync {
    /// The stored entries among `keys` (at most 128), in `keys`' order; a
    /// key named twice comes once.
    async fn get(&self, keys: Vec<String>) -> Result<Vec<(String, Vec<u8>)>>;
    /// Store every entry (at most 128) at once: all of them or none. A key
    /// named twice keeps its last value.
    async fn put(&self, entries: Vec<(String, Vec<u8>)>) -> Result<()>;
    /// Delete `keys` (at most 128); how many of them existed.
    async fn delete(&self, keys: Vec<String>) -> Result<u32>;
    /// Entries in key order (see [`ListOptions`]).
    async fn list(&self, options: ListOptions) -> Result<Vec<(String, Vec<u8>)>>;
    /// Delete every key and all SQL data, not the alarm. Open
    /// transactions are rolled back first (Workers offers no `deleteAll`
    /// inside a transaction).
    async fn delete_all(&self) -> Result<()>;

    /// Open a transaction; one opened inside another is a savepoint of it.
    async fn begin(&self) -> Result<()>;
    /// Commit the innermost open transaction (into the enclosing one, if
    /// any); [`BindingError::Invalid`] if none is open.
    async fn commit(&self) -> Result<()>;
    /// Undo the innermost open transaction; [`BindingError::Invalid`] if
    /// none is open.
    async fn rollback(&self) -> Result<()>;
    /// Roll back whatever transactions are still open (the runtime calls
    /// this when a run ends).
    async fn end_run(&self) -> Result<()>;

    /// Run `query` (one or more statements separated by `;`) on the
    /// object's database, binding `params` to the `?`s of the statements
    /// in order; the cursor holds the last statement's rows. For classes
    /// created by `new_sqlite_classes` only.
    async fn sql_exec(&self, query: String, params: Vec<Value>) -> Result<Cursor>;
    /// The database's size in bytes (0 before the first write).
    async fn database_size(&self) -> Result<u64>;

    /// When the alarm goes off, in milliseconds since the Unix epoch.
    async fn get_alarm(&self) -> Result<Option<u64>>;
    /// Set (or move) the alarm. Inside a transaction, it takes effect when
    /// the outermost transaction commits, and a rollback undoes it.
    async fn set_alarm(&self, time_ms: u64) -> Result<()>;
    /// Clear the alarm (transactional like [`ObjectStorage::set_alarm`]).
    async fn delete_alarm(&self) -> Result<()>;
}

/// The storage [`DurableStore::object`] returns: Workers' limits, checked
/// before the backend sees a call.
struct Checked {
    inner: Arc<dyn ObjectStorage>,
    sqlite: bool,
}

#[async_trait]
impl ObjectStorage for Checked {
    async fn get(&self, keys: Vec<String>) -> Result<Vec<(String, Vec<u8>)>> {
        check_keys(&keys)?;
        self.inner.get(keys).await
    }

    async fn put(&self, entries: Vec<(String, Vec<u8>)>) -> Result<()> {
        check_entries(&entries, self.sqlite)?;
        self.inner.put(entries).await
    }

    async fn delete(&self, keys: Vec<String>) -> Result<u32> {
        check_keys(&keys)?;
        self.inner.delete(keys).await
    }

    async fn list(&self, options: ListOptions) -> Result<Vec<(String, Vec<u8>)>> {
        check_list(&options)?;
        self.inner.list(options).await
    }

    async fn delete_all(&self) -> Result<()> {
        self.inner.delete_all().await
    }

    async fn begin(&self) -> Result<()> {
        self.inner.begin().await
    }

    async fn commit(&self) -> Result<()> {
        self.inner.commit().await
    }

    async fn rollback(&self) -> Result<()> {
        self.inner.rollback().await
    }

    async fn end_run(&self) -> Result<()> {
        self.inner.end_run().await
    }

    async fn sql_exec(&self, query: String, params: Vec<Value>) -> Result<Cursor> {
        if !self.sqlite {
            return Err(invalid(
                "the SQL API needs a class created by `new_sqlite_classes`".into(),
            ));
        }
        check_sql(&query)?;
        self.inner.sql_exec(query, params).await
    }

    async fn database_size(&self) -> Result<u64> {
        self.inner.database_size().await
    }

    async fn get_alarm(&self) -> Result<Option<u64>> {
        self.inner.get_alarm().await
    }

    async fn set_alarm(&self, time_ms: u64) -> Result<()> {
        // Backends store it as a signed 64-bit integer.
        if i64::try_from(time_ms).is_err() {
            return Err(invalid(format!("the alarm time {time_ms} is too large")));
        }
        self.inner.set_alarm(time_ms).await
    }

    async fn delete_alarm(&self) -> Result<()> {
        self.inner.delete_alarm().await
    }
}

fn invalid(message: String) -> BindingError {
    BindingError::Invalid(message)
}

/// `<worker>/<class>`: the segments become directory names (embedded) or
/// part of a schema name (PostgreSQL), so only `[A-Za-z0-9_-]`.
fn check_namespace(namespace: &str) -> Result<()> {
    let segments: Vec<&str> = namespace.split('/').collect();
    let valid = segments.len() <= 2
        && segments.iter().all(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if valid {
        Ok(())
    } else {
        Err(invalid(format!(
            "Durable Object namespace {namespace:?} must be one or two segments of letters, \
             digits, '_' and '-', joined by '/'"
        )))
    }
}

/// An id is a file name (embedded), so exactly 64 lowercase hex digits.
fn check_id(id: &str) -> Result<()> {
    let valid = id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if valid {
        Ok(())
    } else {
        Err(invalid(format!(
            "Durable Object id {:?} is not 64 lowercase hex digits",
            shorten(id)
        )))
    }
}

/// `s`, cut to its first 32 characters for an error message.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(32) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(invalid("a Durable Object storage key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "the key {:?} is {} bytes; the limit is {MAX_KEY_BYTES}",
            shorten(key),
            key.len()
        )));
    }
    Ok(())
}

fn check_count(n: usize, what: &str) -> Result<()> {
    if n > MAX_KEYS_PER_CALL {
        return Err(invalid(format!(
            "{n} {what} in one call; the limit is {MAX_KEYS_PER_CALL}"
        )));
    }
    Ok(())
}

fn check_keys(keys: &[String]) -> Result<()> {
    check_count(keys.len(), "keys")?;
    keys.iter().try_for_each(|k| check_key(k))
}

fn check_entries(entries: &[(String, Vec<u8>)], sqlite: bool) -> Result<()> {
    check_count(entries.len(), "entries")?;
    let (limit, class) = if sqlite {
        (
            MAX_SQLITE_VALUE_BYTES,
            "2 MiB, for a class created by `new_sqlite_classes`",
        )
    } else {
        (
            MAX_VALUE_BYTES,
            "128 KiB, for a class created by `new_classes`",
        )
    };
    for (key, value) in entries {
        check_key(key)?;
        if value.len() > limit {
            return Err(invalid(format!(
                "the value of key {:?} is {} bytes; the limit is {limit} ({class})",
                shorten(key),
                value.len()
            )));
        }
    }
    Ok(())
}

fn check_list(options: &ListOptions) -> Result<()> {
    if options.start.is_some() && options.start_after.is_some() {
        return Err(invalid(
            "list: `start` and `startAfter` cannot be given together".into(),
        ));
    }
    if options.limit == Some(0) {
        return Err(invalid("list: `limit` must be at least 1".into()));
    }
    Ok(())
}

/// Refuses SQL that names the storage's own tables, before any backend
/// parses it. Deliberately textual (a string literal mentioning the prefix
/// is refused too): it also catches what an authorizer cannot see, such
/// as the new name in `ALTER TABLE … RENAME TO`.
fn check_sql(query: &str) -> Result<()> {
    let reserved = query
        .as_bytes()
        .windows(RESERVED_SQL_PREFIX.len())
        .any(|w| w.eq_ignore_ascii_case(RESERVED_SQL_PREFIX.as_bytes()));
    if reserved {
        return Err(invalid(format!(
            "the SQL mentions `{RESERVED_SQL_PREFIX}`: names starting with it are reserved for \
             the storage's own tables"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
