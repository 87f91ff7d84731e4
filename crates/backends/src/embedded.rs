//! What the embedded backends share: SQLite files opened on first use, and
//! blocking work (SQLite, the filesystem) run off the async worker threads.

use std::path::Path;
use std::sync::Arc;

use crate::error::{BindingError, Result, backend_err};
use crate::util::lock;

/// Run blocking work (SQLite, filesystem) off the async worker threads.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BindingError::Backend(format!("blocking task failed: {e}")))?
}

/// Opens (creating) a read-write SQLite file the way every embedded backend
/// wants it: WAL so readers never block the writer, `synchronous=NORMAL`
/// (in WAL mode a committed transaction survives a process crash; only an
/// OS crash or power loss can lose the last few commits, never corrupt the
/// file), and a busy timeout so a second process sharing the state dir waits
/// for the write lock instead of failing at once.
pub(crate) fn open_sqlite(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // journal_mode returns the resulting mode as a row.
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
    Ok(conn)
}

/// An SQLite connection opened, and its schema set up, on first use.
///
/// A server whose workers bind no KV namespace, queue, bucket or dataset
/// never touches those files: opening the four embedded stores at start-up
/// (WAL, pragmas, schema) was ~2 ms of a ~12 ms start to the first 200, and
/// created files in the state dir for bindings nobody had. Callers are on
/// the blocking pool, so opening here blocks nothing async. A failed open
/// is returned to its caller and the next call tries again.
pub(crate) struct LazyConn {
    path: std::path::PathBuf,
    setup: fn(&rusqlite::Connection) -> rusqlite::Result<()>,
    conn: std::sync::Mutex<Option<rusqlite::Connection>>,
}

impl LazyConn {
    /// `setup` runs once, after [`open_sqlite`], on the new connection.
    pub(crate) fn new(
        path: &Path,
        setup: fn(&rusqlite::Connection) -> rusqlite::Result<()>,
    ) -> Self {
        LazyConn {
            path: path.to_owned(),
            setup,
            conn: std::sync::Mutex::new(None),
        }
    }

    /// Run `f` on the connection, holding it alone, opening it first.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T>,
    ) -> Result<T> {
        let mut slot = lock(&self.conn);
        let conn = match &mut *slot {
            Some(conn) => conn,
            empty => empty.insert(self.open()?),
        };
        f(conn)
    }

    /// [`LazyConn::with`] on the blocking pool, where SQLite's I/O belongs.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        F: FnOnce(&mut rusqlite::Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let this = self.clone();
        blocking(move || this.with(f)).await
    }

    /// Whether the file exists (it does once the connection is open).
    pub(crate) fn exists(&self) -> bool {
        self.path.exists()
    }

    fn open(&self) -> Result<rusqlite::Connection> {
        let opened = || {
            if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(backend_err)?;
            }
            let conn = open_sqlite(&self.path).map_err(backend_err)?;
            (self.setup)(&conn).map_err(backend_err)?;
            Ok(conn)
        };
        opened().map_err(|e: BindingError| {
            BindingError::Backend(format!("cannot open {}: {e}", self.path.display()))
        })
    }
}

/// SQLite's plan for `sql` with `params` bound, its steps joined by "; ",
/// for tests that check a statement seeks in an index instead of scanning
/// or sorting.
#[cfg(test)]
pub(crate) fn query_plan(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> String {
    conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap()
        .query_map(params, |row| row.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect::<Vec<_>>()
        .join("; ")
}
