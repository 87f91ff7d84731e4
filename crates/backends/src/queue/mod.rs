//! Queues: durable messages for producers (`send`, `send_batch`) and the
//! primitives a consumer loop needs (lease, ack, retry, dead-letter).
//! Embedded backend: one SQLite file, `queues.sqlite`.
//!
//! Delivery is at least once: a leased message that is neither acked nor
//! retried before its lease ends (a crash, a hung consumer) is delivered
//! again.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, TransactionBehavior, params};

use crate::embedded::LazyConn;
use crate::error::{BindingError, Result, backend_err};

/// Largest message body, as in Workers.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// Most messages in one `send_batch`, as in Workers.
pub const MAX_BATCH_MESSAGES: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    pub body: Vec<u8>,
    pub content_type: String,
    /// Not visible to consumers before this has passed.
    pub delay: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: String,
    pub body: Vec<u8>,
    pub content_type: String,
    /// When it was sent, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Deliveries so far, this one included.
    pub attempts: u32,
}

#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Store all messages or none (validated by [`validate`]).
    async fn send(&self, queue: &str, messages: Vec<OutgoingMessage>) -> Result<()>;
    /// Take up to `max` visible messages, oldest first, hiding them for
    /// `lease`; each one's `attempts` goes up by one.
    async fn lease(&self, queue: &str, max: usize, lease: Duration) -> Result<Vec<Delivery>>;
    /// Remove acked messages.
    async fn ack(&self, queue: &str, ids: &[String]) -> Result<()>;
    /// Make a message visible again after `delay`.
    async fn retry(&self, queue: &str, id: &str, delay: Duration) -> Result<()>;
    /// Move a message to `dead_letter_queue`, keeping its attempts, visible
    /// there at once.
    async fn dead_letter(&self, queue: &str, id: &str, dead_letter_queue: &str) -> Result<()>;
    /// Messages stored for `queue`, leased or not.
    async fn depth(&self, queue: &str) -> Result<u64>;
    /// When the next message of `queue` becomes visible (now if one is), or
    /// `None` when the queue is empty. Consumers sleep until then.
    async fn next_visible(&self, queue: &str) -> Result<Option<std::time::SystemTime>>;
    /// At start-up of a single-node host: every lease belongs to a process
    /// that is gone, so make those messages visible now. Returns how many.
    async fn release_all_leases(&self) -> Result<u64>;
}

/// Check a batch against Workers' limits (size per message, batch length).
pub fn validate(messages: &[OutgoingMessage]) -> Result<()> {
    if messages.is_empty() {
        return Err(invalid(
            "a batch holds at least 1 message; this one is empty".into(),
        ));
    }
    if messages.len() > MAX_BATCH_MESSAGES {
        return Err(invalid(format!(
            "a batch holds at most {MAX_BATCH_MESSAGES} messages; this one has {}",
            messages.len()
        )));
    }
    for (i, m) in messages.iter().enumerate() {
        if m.body.len() > MAX_MESSAGE_BYTES {
            return Err(invalid(format!(
                "queue message {i} is {} bytes; the limit is {MAX_MESSAGE_BYTES}",
                m.body.len()
            )));
        }
        if m.content_type.is_empty() {
            return Err(invalid(format!(
                "queue message {i} has an empty content type"
            )));
        }
    }
    Ok(())
}

fn invalid(message: String) -> BindingError {
    BindingError::Invalid(message)
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
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
/// One connection behind a mutex, as in [`crate::kv::SqliteKv`]; every write
/// is an IMMEDIATE transaction, so even a second process on the same file
/// cannot lease a message twice.
pub struct SqliteQueues {
    conn: Arc<LazyConn>,
}

impl SqliteQueues {
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
    use std::collections::HashSet;

    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn open(dir: &tempfile::TempDir) -> Arc<SqliteQueues> {
        Arc::new(SqliteQueues::open(&dir.path().join("queues.sqlite")).unwrap())
    }

    /// A queue backend under test: the embedded one or Redis Streams. On
    /// the shared Redis, every queue name gets this test's own prefix.
    struct Fixture {
        dir: tempfile::TempDir,
        prefix: Option<String>,
        store: Arc<dyn QueueStore>,
    }

    impl Fixture {
        fn embedded() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = open(&dir);
            Fixture {
                dir,
                prefix: None,
                store,
            }
        }

        async fn distributed() -> Self {
            let prefix = crate::test_services::unique("q");
            Fixture {
                dir: tempfile::tempdir().unwrap(),
                store: redis_store(&prefix).await,
                prefix: Some(prefix),
            }
        }

        fn store(&self) -> Arc<dyn QueueStore> {
            self.store.clone()
        }

        /// Another store on the same data, through its own connection.
        async fn second(&self) -> Arc<dyn QueueStore> {
            match &self.prefix {
                None => open(&self.dir),
                Some(prefix) => redis_store(prefix).await,
            }
        }
    }

    async fn redis_store(prefix: &str) -> Arc<dyn QueueStore> {
        let url = crate::test_services::shared_redis().url();
        let conn = crate::remote::redis_connection(&url).await.unwrap();
        Arc::new(Prefixed {
            inner: Arc::new(crate::redis_queue::RedisQueues::new(conn)),
            prefix: prefix.to_owned(),
        })
    }

    /// Prefixes every queue name, so tests sharing one Redis keep apart.
    struct Prefixed {
        inner: Arc<dyn QueueStore>,
        prefix: String,
    }

    impl Prefixed {
        fn name(&self, queue: &str) -> String {
            format!("{}-{queue}", self.prefix)
        }
    }

    #[async_trait]
    impl QueueStore for Prefixed {
        async fn send(&self, queue: &str, messages: Vec<OutgoingMessage>) -> Result<()> {
            self.inner.send(&self.name(queue), messages).await
        }
        async fn lease(&self, queue: &str, max: usize, lease: Duration) -> Result<Vec<Delivery>> {
            self.inner.lease(&self.name(queue), max, lease).await
        }
        async fn ack(&self, queue: &str, ids: &[String]) -> Result<()> {
            self.inner.ack(&self.name(queue), ids).await
        }
        async fn retry(&self, queue: &str, id: &str, delay: Duration) -> Result<()> {
            self.inner.retry(&self.name(queue), id, delay).await
        }
        async fn dead_letter(&self, queue: &str, id: &str, dlq: &str) -> Result<()> {
            self.inner
                .dead_letter(&self.name(queue), id, &self.name(dlq))
                .await
        }
        async fn depth(&self, queue: &str) -> Result<u64> {
            self.inner.depth(&self.name(queue)).await
        }
        async fn next_visible(&self, queue: &str) -> Result<Option<SystemTime>> {
            self.inner.next_visible(&self.name(queue)).await
        }
        async fn release_all_leases(&self) -> Result<u64> {
            self.inner.release_all_leases().await
        }
    }

    crate::for_each_backend!(
        send_lease_ack_round_trip,
        leases_in_send_order_with_unique_ids,
        an_invalid_message_stores_none_of_the_batch,
        delay_hides_a_message_until_due,
        an_expired_lease_delivers_again,
        retry_makes_visible_after_the_delay,
        dead_letter_moves_the_message_with_its_attempts,
        concurrent_leases_never_share_a_message,
        a_lease_held_by_a_dead_consumer_is_taken_over,
    );

    /// A consumer that leased messages and vanished (no ack, no retry):
    /// another consumer gets them once the lease runs out, with their
    /// attempts counted, and they are then gone for good once acked.
    async fn a_lease_held_by_a_dead_consumer_is_taken_over(f: &Fixture) {
        let (a, b) = (f.store(), f.second().await);
        a.send("q", (0..5).map(|i| msg(&i.to_string())).collect())
            .await
            .unwrap();
        let held = a.lease("q", 3, Duration::from_millis(700)).await.unwrap();
        assert_eq!(bodies(&held), ["0", "1", "2"]);
        drop(a);
        let rest = b.lease("q", 10, MINUTE).await.unwrap();
        assert_eq!(bodies(&rest), ["3", "4"]);
        b.ack("q", &ids(&rest)).await.unwrap();
        assert!(b.lease("q", 10, MINUTE).await.unwrap().is_empty());
        wait_until_visible(b.as_ref(), "q").await;
        let again = b.lease("q", 10, MINUTE).await.unwrap();
        assert_eq!(ids(&again), ids(&held));
        assert!(again.iter().all(|d| d.attempts == 2));
        b.ack("q", &ids(&again)).await.unwrap();
        assert_eq!(b.depth("q").await.unwrap(), 0);
        assert_eq!(b.next_visible("q").await.unwrap(), None);
    }

    #[tokio::test]
    async fn redis_leaves_leases_to_run_out() {
        let f = Fixture::distributed().await;
        let q = f.store();
        q.send("q", vec![msg("a")]).await.unwrap();
        assert_eq!(q.lease("q", 10, MINUTE).await.unwrap().len(), 1);
        // Another node may hold it: nothing is released at start-up.
        assert_eq!(q.release_all_leases().await.unwrap(), 0);
        assert!(q.lease("q", 10, MINUTE).await.unwrap().is_empty());
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

    fn ids(ds: &[Delivery]) -> Vec<String> {
        ds.iter().map(|d| d.id.clone()).collect()
    }

    fn invalid_msg(r: Result<()>) -> String {
        match r {
            Err(BindingError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// Sleeps until `queue`'s next message is due (plus a little).
    async fn wait_until_visible(q: &dyn QueueStore, queue: &str) {
        let at = q.next_visible(queue).await.unwrap().unwrap();
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(wait + Duration::from_millis(20)).await;
    }

    #[test]
    fn validate_enforces_workers_limits() {
        assert!(validate(&[msg("a")]).is_ok());
        assert!(invalid_msg(validate(&[])).contains("empty"));
        let full = vec![msg("x"); MAX_BATCH_MESSAGES];
        assert!(validate(&full).is_ok());
        let over = vec![msg("x"); MAX_BATCH_MESSAGES + 1];
        assert_eq!(
            invalid_msg(validate(&over)),
            "a batch holds at most 100 messages; this one has 101"
        );
        let mut big = msg("");
        big.body = vec![0; MAX_MESSAGE_BYTES];
        assert!(validate(std::slice::from_ref(&big)).is_ok());
        big.body.push(0);
        let m = invalid_msg(validate(&[msg("a"), big]));
        assert!(
            m.contains("131073 bytes") && m.contains("limit is 131072"),
            "{m}"
        );
        let mut untyped = msg("a");
        untyped.content_type.clear();
        assert!(invalid_msg(validate(&[untyped])).contains("content type"));
    }

    async fn send_lease_ack_round_trip(f: &Fixture) {
        let q = f.store();
        let before = now_ms() as u64;
        q.send(
            "jobs",
            vec![OutgoingMessage {
                body: b"{\"n\":1}".to_vec(),
                content_type: "json".into(),
                delay: Duration::ZERO,
            }],
        )
        .await
        .unwrap();
        let after = now_ms() as u64;
        assert_eq!(q.depth("jobs").await.unwrap(), 1);
        assert_eq!(q.depth("other").await.unwrap(), 0);
        assert!(q.lease("other", 10, MINUTE).await.unwrap().is_empty());
        let got = q.lease("jobs", 10, MINUTE).await.unwrap();
        assert_eq!(got.len(), 1);
        let d = &got[0];
        assert_eq!(d.body, b"{\"n\":1}");
        assert_eq!(d.content_type, "json");
        assert_eq!(d.attempts, 1);
        assert!((before..=after).contains(&d.timestamp_ms));
        assert_eq!(d.id.len(), 32);
        assert!(d.id.bytes().all(|b| b.is_ascii_hexdigit()));
        // Leased: still stored, not leasable again.
        assert_eq!(q.depth("jobs").await.unwrap(), 1);
        assert!(q.lease("jobs", 10, MINUTE).await.unwrap().is_empty());
        // Acking in the wrong queue does nothing; unknown ids are fine.
        q.ack("other", &ids(&got)).await.unwrap();
        assert_eq!(q.depth("jobs").await.unwrap(), 1);
        q.ack("jobs", &[d.id.clone(), "nope".into()]).await.unwrap();
        assert_eq!(q.depth("jobs").await.unwrap(), 0);
        assert_eq!(q.next_visible("jobs").await.unwrap(), None);
    }

    async fn leases_in_send_order_with_unique_ids(f: &Fixture) {
        let q = f.store();
        let names: Vec<String> = (0..30).map(|i| format!("m{i:02}")).collect();
        q.send("q", names[..10].iter().map(|n| msg(n)).collect())
            .await
            .unwrap();
        for n in &names[10..] {
            q.send("q", vec![msg(n)]).await.unwrap();
        }
        let mut seen = vec![];
        let mut all_ids = HashSet::new();
        loop {
            let got = q.lease("q", 7, MINUTE).await.unwrap();
            if got.is_empty() {
                break;
            }
            assert!(got.len() <= 7);
            all_ids.extend(ids(&got));
            seen.extend(bodies(&got));
        }
        assert_eq!(seen, names);
        assert_eq!(all_ids.len(), 30);
        assert!(q.lease("q", 0, MINUTE).await.unwrap().is_empty());
    }

    async fn an_invalid_message_stores_none_of_the_batch(f: &Fixture) {
        let q = f.store();
        let mut big = msg("");
        big.body = vec![0; MAX_MESSAGE_BYTES + 1];
        let r = q.send("q", vec![msg("a"), msg("b"), big]).await;
        assert!(matches!(r, Err(BindingError::Invalid(_))), "{r:?}");
        let r = q.send("q", vec![msg("a"); MAX_BATCH_MESSAGES + 1]).await;
        assert!(matches!(r, Err(BindingError::Invalid(_))), "{r:?}");
        assert_eq!(q.depth("q").await.unwrap(), 0);
        assert!(q.lease("q", 100, MINUTE).await.unwrap().is_empty());
    }

    async fn delay_hides_a_message_until_due(f: &Fixture) {
        let q = f.store();
        let sent = SystemTime::now();
        q.send(
            "q",
            vec![delayed("late", Duration::from_millis(1500)), msg("now")],
        )
        .await
        .unwrap();
        let got = q.lease("q", 10, MINUTE).await.unwrap();
        assert_eq!(bodies(&got), ["now"]);
        q.ack("q", &ids(&got)).await.unwrap();
        assert!(q.lease("q", 10, MINUTE).await.unwrap().is_empty());
        assert_eq!(q.depth("q").await.unwrap(), 1);
        let due = q.next_visible("q").await.unwrap().unwrap();
        let delay = due.duration_since(sent).unwrap();
        // `due` is in whole milliseconds, `sent` is not.
        assert!(
            (Duration::from_millis(1499)..Duration::from_millis(2500)).contains(&delay),
            "{delay:?}"
        );
        wait_until_visible(q.as_ref(), "q").await;
        let got = q.lease("q", 10, MINUTE).await.unwrap();
        assert_eq!(bodies(&got), ["late"]);
        assert_eq!(got[0].attempts, 1);
    }

    async fn an_expired_lease_delivers_again(f: &Fixture) {
        let q = f.store();
        q.send("q", vec![msg("a")]).await.unwrap();
        let first = q.lease("q", 10, Duration::from_millis(1000)).await.unwrap();
        assert_eq!(first[0].attempts, 1);
        assert!(q.lease("q", 10, MINUTE).await.unwrap().is_empty());
        let due = q.next_visible("q").await.unwrap().unwrap();
        assert!(due > SystemTime::now());
        wait_until_visible(q.as_ref(), "q").await;
        let second = q.lease("q", 10, MINUTE).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].id, first[0].id);
        assert_eq!(second[0].timestamp_ms, first[0].timestamp_ms);
        assert_eq!(second[0].attempts, 2);
    }

    async fn retry_makes_visible_after_the_delay(f: &Fixture) {
        let q = f.store();
        q.send("q", vec![msg("a"), msg("b")]).await.unwrap();
        let got = q.lease("q", 10, MINUTE).await.unwrap();
        // Immediate retry: visible at once, attempts kept.
        q.retry("q", &got[0].id, Duration::ZERO).await.unwrap();
        // Delayed retry.
        q.retry("q", &got[1].id, Duration::from_millis(1500))
            .await
            .unwrap();
        // Unknown id: ignored.
        q.retry("q", "nope", Duration::ZERO).await.unwrap();
        let again = q.lease("q", 10, MINUTE).await.unwrap();
        assert_eq!(bodies(&again), ["a"]);
        assert_eq!(again[0].attempts, 2);
        q.ack("q", &ids(&again)).await.unwrap();
        assert!(q.lease("q", 10, MINUTE).await.unwrap().is_empty());
        wait_until_visible(q.as_ref(), "q").await;
        let again = q.lease("q", 10, MINUTE).await.unwrap();
        assert_eq!(bodies(&again), ["b"]);
        assert_eq!(again[0].attempts, 2);
    }

    async fn dead_letter_moves_the_message_with_its_attempts(f: &Fixture) {
        let q = f.store();
        q.send(
            "q",
            vec![OutgoingMessage {
                body: vec![1, 2, 3],
                content_type: "bytes".into(),
                delay: Duration::ZERO,
            }],
        )
        .await
        .unwrap();
        let first = q.lease("q", 1, Duration::ZERO).await.unwrap();
        let second = q.lease("q", 1, MINUTE).await.unwrap();
        assert_eq!(second[0].attempts, 2);
        q.dead_letter("q", &second[0].id, "dlq").await.unwrap();
        assert_eq!(q.depth("q").await.unwrap(), 0);
        assert_eq!(q.depth("dlq").await.unwrap(), 1);
        let dead = q.lease("dlq", 10, MINUTE).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].body, [1, 2, 3]);
        assert_eq!(dead[0].content_type, "bytes");
        assert_eq!(dead[0].timestamp_ms, first[0].timestamp_ms);
        // Two deliveries in `q`, this is the third.
        assert_eq!(dead[0].attempts, 3);
        // Already moved: a second dead_letter from `q` does nothing.
        q.dead_letter("q", &second[0].id, "elsewhere")
            .await
            .unwrap();
        assert_eq!(q.depth("dlq").await.unwrap(), 1);
        assert_eq!(q.depth("elsewhere").await.unwrap(), 0);
    }

    async fn concurrent_leases_never_share_a_message(f: &Fixture) {
        // Two stores on one file or server (two connections), as two
        // processes would.
        let stores = [f.store(), f.second().await];
        for batch in 0..2 {
            let msgs = (0..100).map(|i| msg(&format!("{}", batch * 100 + i)));
            stores[0].send("q", msgs.collect()).await.unwrap();
        }
        let tasks: Vec<_> = (0..4)
            .map(|t| {
                let q = stores[t % 2].clone();
                tokio::spawn(async move {
                    let mut got = vec![];
                    loop {
                        let batch = q.lease("q", 10, MINUTE).await.unwrap();
                        if batch.is_empty() {
                            return got;
                        }
                        assert!(batch.len() <= 10);
                        got.extend(batch);
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let mut all = vec![];
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        assert_eq!(all.len(), 200);
        let unique: HashSet<_> = all.iter().map(|d| d.id.clone()).collect();
        assert_eq!(unique.len(), 200);
        let mut bodies: Vec<u32> = bodies(&all).iter().map(|b| b.parse().unwrap()).collect();
        bodies.sort_unstable();
        assert_eq!(bodies, (0..200).collect::<Vec<_>>());
        assert!(all.iter().all(|d| d.attempts == 1));
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
                "queue::tests::messages_survive_a_crash",
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
