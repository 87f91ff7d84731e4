//! The embedded queue backend: one SQLite file, `queues.sqlite`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, TransactionBehavior, params};

use super::{Delivery, OutgoingMessage, QueueStore, validate};
use crate::embedded::LazyConn;
use crate::error::{Result, backend_err};

/// Milliseconds since the Unix epoch.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

/// `d` in whole milliseconds, saturating (SQLite stores INTEGER as i64).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A fresh message id: 128 random bits as 32 hex characters.
fn new_id() -> rusqlite::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| {
        rusqlite::Error::ToSqlConversionFailure(
            format!("no randomness for a message id: {e}").into(),
        )
    })?;
    Ok(crate::util::hex(&bytes))
}

/// The lease query: the oldest visible messages of `?1` at `?2`, at most
/// `?3`. It walks `messages_fifo` in send order, reading `visible_at` from
/// the index itself, and stops after `?3` hits: no sort of the whole backlog,
/// and only the in-flight or delayed messages ahead of the first visible ones
/// are skipped.
const LEASE_SQL: &str = "SELECT seq, id, body, content_type, timestamp_ms, attempts
     FROM messages INDEXED BY messages_fifo
     WHERE queue = ?1 AND visible_at <= ?2
     ORDER BY timestamp_ms, seq LIMIT ?3";

/// The embedded backend: `queues.sqlite`, WAL mode, one table for all
/// queues.
///
/// Durability: `synchronous=FULL` (not the `NORMAL` the other embedded
/// backends use). Either survives a process crash once a commit returned,
/// since in WAL mode the commit is in the OS's page cache by then; `FULL`
/// also fsyncs the WAL on every commit, so a `send` that returned survives
/// an OS crash or power loss too. A lost send is a lost message, which
/// at-least-once delivery does not allow; the price is one fsync per call
/// (per batch for consumers, who lease and ack in batches).
///
/// Each row's `visible_at` (ms since the epoch) says when it may be leased;
/// `leased` says whether that time was set by a lease (to be released at
/// start-up) rather than by a send or retry delay (to be kept).
///
/// One connection behind a mutex, as in [`crate::kv::sqlite::SqliteKv`]; every write
/// is an IMMEDIATE transaction, so even a second process on the same file
/// cannot lease a message twice.
pub struct SqliteQueues {
    conn: Arc<LazyConn>,
}

impl SqliteQueues {
    /// Messages of `queue` leased and not yet acked, retried or
    /// dead-lettered (a consumer holds them, or held them when it died).
    pub async fn in_flight(&self, queue: &str) -> Result<u64> {
        let queue = queue.to_owned();
        self.with_conn(move |conn| {
            conn.prepare_cached("SELECT count(*) FROM messages WHERE queue = ?1 AND leased")?
                .query_row([queue], |row| row.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
        })
        .await
    }

    /// The store in `path`, which is opened (and created) on first use.
    pub fn open(path: &std::path::Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(backend_err)?;
        }
        Ok(SqliteQueues {
            conn: Arc::new(LazyConn::new(path, create_schema)),
        })
    }

    async fn with_tx<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&rusqlite::Transaction<'_>, i64) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.conn
            .run(|conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(backend_err)?;
                // Read the clock once the write lock is held, so timestamps
                // follow commit order.
                let value = f(&tx, now_ms()).map_err(backend_err)?;
                tx.commit().map_err(backend_err)?;
                Ok(value)
            })
            .await
    }

    async fn with_conn<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.conn.run(|conn| f(conn).map_err(backend_err)).await
    }
}

fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "PRAGMA synchronous=FULL;
         CREATE TABLE IF NOT EXISTS messages (
             seq INTEGER PRIMARY KEY,
             id TEXT NOT NULL UNIQUE,
             queue TEXT NOT NULL,
             body BLOB NOT NULL,
             content_type TEXT NOT NULL,
             timestamp_ms INTEGER NOT NULL,
             attempts INTEGER NOT NULL DEFAULT 0,
             visible_at INTEGER NOT NULL,
             leased INTEGER NOT NULL DEFAULT 0
         );
         CREATE INDEX IF NOT EXISTS messages_fifo
             ON messages (queue, timestamp_ms, seq, visible_at);
         CREATE INDEX IF NOT EXISTS messages_visible ON messages (queue, visible_at);
         CREATE INDEX IF NOT EXISTS messages_leased ON messages (visible_at) WHERE leased;",
    )
}

#[async_trait]
impl QueueStore for SqliteQueues {
    async fn send(&self, queue: &str, messages: Vec<OutgoingMessage>) -> Result<()> {
        validate(&messages)?;
        let queue = queue.to_owned();
        self.with_tx(move |tx, now| {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (id, queue, body, content_type, timestamp_ms, visible_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for m in messages {
                insert.execute(params![
                    new_id()?,
                    queue,
                    m.body,
                    m.content_type,
                    now,
                    now.saturating_add(millis(m.delay))
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn lease(&self, queue: &str, max: usize, lease: Duration) -> Result<Vec<Delivery>> {
        if max == 0 {
            return Ok(vec![]);
        }
        let queue = queue.to_owned();
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        self.with_tx(move |tx, now| {
            let picked = tx
                .prepare_cached(LEASE_SQL)?
                .query_map(params![queue, now, max], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        Delivery {
                            id: row.get(1)?,
                            body: row.get(2)?,
                            content_type: row.get(3)?,
                            timestamp_ms: row.get::<_, i64>(4)?.max(0) as u64,
                            attempts: row.get::<_, u32>(5)?.saturating_add(1),
                        },
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let until = now.saturating_add(millis(lease));
            let mut update = tx.prepare_cached(
                "UPDATE messages SET visible_at = ?2, attempts = ?3, leased = 1 WHERE seq = ?1",
            )?;
            for (seq, d) in &picked {
                update.execute(params![seq, until, d.attempts])?;
            }
            Ok(picked.into_iter().map(|(_, d)| d).collect())
        })
        .await
    }

    async fn ack(&self, queue: &str, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let (queue, ids) = (queue.to_owned(), ids.to_vec());
        self.with_tx(move |tx, _| {
            let mut delete =
                tx.prepare_cached("DELETE FROM messages WHERE id = ?1 AND queue = ?2")?;
            for id in ids {
                delete.execute(params![id, queue])?;
            }
            Ok(())
        })
        .await
    }

    /// An id that is not (or no longer) in `queue` is ignored.
    async fn retry(&self, queue: &str, id: &str, delay: Duration) -> Result<()> {
        let (queue, id) = (queue.to_owned(), id.to_owned());
        self.with_tx(move |tx, now| {
            tx.prepare_cached(
                "UPDATE messages SET visible_at = ?3, leased = 0 WHERE id = ?1 AND queue = ?2",
            )?
            .execute(params![id, queue, now.saturating_add(millis(delay))])?;
            Ok(())
        })
        .await
    }

    /// The message keeps its id, body, content type, timestamp and attempts
    /// (one UPDATE, so the move is atomic). An id that is not (or no longer)
    /// in `queue` is ignored.
    async fn dead_letter(&self, queue: &str, id: &str, dead_letter_queue: &str) -> Result<()> {
        let (queue, id, dlq) = (
            queue.to_owned(),
            id.to_owned(),
            dead_letter_queue.to_owned(),
        );
        self.with_tx(move |tx, now| {
            tx.prepare_cached(
                "UPDATE messages SET queue = ?3, visible_at = ?4, leased = 0
                 WHERE id = ?1 AND queue = ?2",
            )?
            .execute(params![id, queue, dlq, now])?;
            Ok(())
        })
        .await
    }

    async fn depth(&self, queue: &str) -> Result<u64> {
        let queue = queue.to_owned();
        self.with_conn(move |conn| {
            conn.prepare_cached("SELECT count(*) FROM messages WHERE queue = ?1")?
                .query_row([queue], |row| row.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
        })
        .await
    }

    async fn next_visible(&self, queue: &str) -> Result<Option<SystemTime>> {
        let queue = queue.to_owned();
        let at = self
            .with_conn(move |conn| {
                conn.prepare_cached("SELECT min(visible_at) FROM messages WHERE queue = ?1")?
                    .query_row([queue], |row| row.get::<_, Option<i64>>(0))
            })
            .await?;
        Ok(at.map(|ms| UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)))
    }

    async fn release_all_leases(&self) -> Result<u64> {
        // Nothing was ever sent: no need to create the file to learn that.
        if !self.conn.exists() {
            return Ok(0);
        }
        self.with_tx(|tx, now| {
            let released = tx
                .prepare_cached(
                    "UPDATE messages SET visible_at = ?1, leased = 0
                     WHERE leased AND visible_at > ?1",
                )?
                .execute([now])?;
            Ok(released as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn open(dir: &tempfile::TempDir) -> Arc<SqliteQueues> {
        Arc::new(SqliteQueues::open(&dir.path().join("queues.sqlite")).unwrap())
    }

    fn msg(body: &str) -> OutgoingMessage {
        OutgoingMessage {
            body: body.as_bytes().to_vec(),
            content_type: "text".into(),
            delay: Duration::ZERO,
        }
    }

    fn delayed(body: &str, delay: Duration) -> OutgoingMessage {
        OutgoingMessage { delay, ..msg(body) }
    }

    fn bodies(ds: &[Delivery]) -> Vec<String> {
        ds.iter()
            .map(|d| String::from_utf8(d.body.clone()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn release_all_leases_keeps_delays() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&dir);
        q.send("a", vec![msg("leased1"), msg("leased2"), msg("retried")])
            .await
            .unwrap();
        q.send("a", vec![delayed("delayed", MINUTE)]).await.unwrap();
        q.send("b", vec![msg("leased3")]).await.unwrap();
        let got = q.lease("a", 10, MINUTE).await.unwrap();
        assert_eq!(bodies(&got), ["leased1", "leased2", "retried"]);
        q.retry("a", &got[2].id, MINUTE).await.unwrap();
        q.lease("b", 10, MINUTE).await.unwrap();
        assert!(q.lease("a", 10, MINUTE).await.unwrap().is_empty());

        assert_eq!(q.release_all_leases().await.unwrap(), 3);
        let got = q.lease("a", 10, MINUTE).await.unwrap();
        assert_eq!(bodies(&got), ["leased1", "leased2"]);
        assert!(got.iter().all(|d| d.attempts == 2));
        assert_eq!(
            bodies(&q.lease("b", 10, MINUTE).await.unwrap()),
            ["leased3"]
        );
        assert_eq!(q.depth("a").await.unwrap(), 4);
        // The delayed and retried messages kept their delays.
        let next = q.next_visible("a").await.unwrap().unwrap();
        assert!(next > SystemTime::now() + Duration::from_secs(50));
        assert_eq!(q.release_all_leases().await.unwrap(), 3);
        assert_eq!(q.release_all_leases().await.unwrap(), 0);
    }

    /// "fsync on every commit" (docs/guides/triggers.md): the store's own connection runs
    /// with `synchronous=FULL` in WAL mode, in which SQLite syncs the WAL
    /// at each commit (`NORMAL`, the other embedded stores' setting, syncs
    /// only at checkpoints). Checked on the connection the sends went
    /// through, and the WAL mode on the file itself.
    #[tokio::test]
    async fn commits_are_synced_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&dir);
        q.send("q", vec![msg("a")]).await.unwrap();
        let (synchronous, journal) = q
            .with_conn(|conn| {
                let synchronous =
                    conn.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))?;
                let journal =
                    conn.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))?;
                Ok((synchronous, journal))
            })
            .await
            .unwrap();
        // 2 is FULL (0 OFF, 1 NORMAL, 3 EXTRA).
        assert_eq!(synchronous, 2);
        assert_eq!(journal, "wal");
        let file = rusqlite::Connection::open(dir.path().join("queues.sqlite")).unwrap();
        let journal: String = file
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal", "WAL is a property of the file");
    }

    #[test]
    fn lease_and_next_visible_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&dir);
        q.conn
            .with(|conn| {
                let lease = crate::embedded::query_plan(conn, LEASE_SQL, params!["q", 0, 10]);
                assert!(lease.contains("messages_fifo (queue=?)"), "{lease}");
                assert!(!lease.contains("TEMP B-TREE"), "no sort: {lease}");
                let next_sql = "SELECT min(visible_at) FROM messages WHERE queue = ?1";
                let next = crate::embedded::query_plan(conn, next_sql, params!["q"]);
                assert!(next.contains("messages_visible"), "{next}");
                let release_sql =
                    "UPDATE messages SET visible_at = ?1, leased = 0 WHERE leased AND visible_at > ?1";
                let release = crate::embedded::query_plan(conn, release_sql, params![0]);
                assert!(release.contains("messages_leased"), "{release}");
                Ok(())
            })
            .unwrap();
    }

    #[tokio::test]
    async fn messages_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let sent = {
            let q = open(&dir);
            q.send("q", vec![msg("a"), msg("b")]).await.unwrap();
            q.lease("q", 1, MINUTE).await.unwrap()
            // Dropped without any explicit close or checkpoint.
        };
        let q = open(&dir);
        assert_eq!(q.depth("q").await.unwrap(), 2);
        assert_eq!(bodies(&q.lease("q", 10, MINUTE).await.unwrap()), ["b"]);
        assert_eq!(q.release_all_leases().await.unwrap(), 2);
        let got = q.lease("q", 10, MINUTE).await.unwrap();
        assert_eq!(bodies(&got), ["a", "b"]);
        assert_eq!(got[0].id, sent[0].id);
        assert_eq!(got[0].attempts, 2);
    }

    /// Sends in a child process that then aborts (no unwinding, close or
    /// checkpoint), and leases the message here. The child is this same test,
    /// run by the test binary with `ISOLA_QUEUE_CRASH_DIR` set.
    #[test]
    fn messages_survive_a_crash() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        if let Ok(dir) = std::env::var("ISOLA_QUEUE_CRASH_DIR") {
            let q = SqliteQueues::open(&std::path::Path::new(&dir).join("queues.sqlite")).unwrap();
            rt.block_on(q.send("q", vec![msg("durable")])).unwrap();
            std::process::abort();
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "queue::sqlite::tests::messages_survive_a_crash",
                "--nocapture",
            ])
            .env("ISOLA_QUEUE_CRASH_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child must have aborted");
        let q = open(&dir);
        let got = rt.block_on(q.lease("q", 10, MINUTE)).unwrap();
        assert_eq!(bodies(&got), ["durable"]);
    }
}
