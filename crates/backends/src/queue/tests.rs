//! The queue suite, run against the embedded backend and Redis Streams.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use super::*;

use super::sqlite::{SqliteQueues, now_ms};

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
        let prefix = isola_test_services::unique("q");
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
    let url = isola_test_services::shared_redis().url();
    let conn = crate::remote::redis_connection(&url).await.unwrap();
    Arc::new(Prefixed {
        inner: Arc::new(super::redis::RedisQueues::new(conn)),
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
