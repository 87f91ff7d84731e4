//! Durable Objects on several nodes: each object is owned by one node at a
//! time, and the other nodes forward its events to the owner.
//!
//! Ownership is a lease in the shared [`LeaseStore`], named
//! `do:<namespace>:<id>` and held by the owner's advertised URL. Before an
//! object's event runs, the node holds the lease: when it gets it (or has
//! it already) the event runs here, in the object's live instance; when
//! another node holds it, the event goes to that node over HTTP
//! (`POST <owner>/__isola/object`, the event in `isola-forward-*` headers,
//! the cluster's shared secret in [`SECRET_HEADER`]) and the owner's
//! response streams back. An owner renews the lease while the object is
//! live (the idle sweeper of `objects`) and releases it when the object is
//! evicted; an owner that dies holds it until its ttl runs out, and then
//! the next node to get an event for the object takes it over, with its
//! storage (shared, in PostgreSQL) intact.
//!
//! A process may hold one lease for several cells (the objects of two
//! generations of workers, during a reload), so the leases this node holds
//! are counted here, per key, and each is given back only when its last
//! cell lets go. Taking, renewing and giving back one key are serialised,
//! so a release never undoes a hold made after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use isola_backends::lease::{Held, LeaseStore};

use super::forward::{FORWARD_PREFIX, ForwardedEvent, METHOD, URI};
use crate::body::{Body, BodyError};

/// How long an owner's lease lasts without renewal: how long an object of
/// a node that died stays unreachable.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// The path of the internal listener that takes forwarded events.
pub const FORWARD_PATH: &str = "/__isola/object";

/// The header carrying the cluster's shared secret.
pub const SECRET_HEADER: &str = "isola-cluster-secret";

/// How many times one event may be forwarded: once by the node it arrived
/// at, and once more by an owner that lost the object meanwhile.
pub const MAX_HOPS: u32 = 2;

/// Headers that belong to one connection, not to the message.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "host",
];

/// This node's part in a cluster: the shared leases, the URL other nodes
/// reach its internal listener at, and the secret nodes show each other.
pub struct Placement {
    leases: Arc<dyn LeaseStore>,
    node: String,
    secret: String,
    ttl: Duration,
    /// The leases this process holds, by key.
    claims: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Claim>>>>,
    /// The last tenure given out.
    tenures: std::sync::atomic::AtomicU64,
    client: Client<HttpConnector, Body>,
}

/// One lease this process holds (or is taking or giving back).
#[derive(Default)]
struct Claim {
    /// Cells that count on it.
    cells: u32,
    /// When it runs out unless renewed (measured from before the renewal
    /// was sent); `None` when it is not held.
    until: Option<Instant>,
    /// A new number whenever the lease is taken anew rather than extended:
    /// a cell of an older tenure may have missed another node's events, so
    /// its instance must not serve again.
    tenure: u64,
}

/// Where an object's events run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// This node holds the lease (now counted for one more cell), in this
    /// tenure.
    Here(u64),
    /// The node at this URL does.
    Elsewhere(String),
}

impl Placement {
    /// `node` is the URL other nodes reach this node's internal listener
    /// at (`http://10.0.0.5:8790`), and the name its leases are held by.
    pub fn new(
        leases: Arc<dyn LeaseStore>,
        node: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Placement {
            leases,
            node: node.into().trim_end_matches('/').to_owned(),
            secret: secret.into(),
            ttl: DEFAULT_LEASE_TTL,
            claims: Mutex::default(),
            tenures: std::sync::atomic::AtomicU64::new(0),
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .build(connector),
        }
    }

    /// Leases that last `ttl` (10 s by default).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// This node's URL.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether `headers` carry the cluster's secret (compared in constant
    /// time).
    pub fn authorized(&self, headers: &http::HeaderMap) -> bool {
        let given = headers
            .get(SECRET_HEADER)
            .map_or(&b""[..], |v| v.as_bytes());
        let expected = self.secret.as_bytes();
        given.len() == expected.len()
            && given
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    fn slot(&self, key: &str) -> Arc<tokio::sync::Mutex<Claim>> {
        self.claims
            .lock()
            .expect("claims lock")
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// Forget `key`'s slot when nothing counts on it (called with the slot
    /// locked, so no one is between taking it and counting).
    fn forget_if_unused(&self, key: &str, claim: &Claim) {
        if claim.cells == 0 {
            let mut claims = self.claims.lock().expect("claims lock");
            if let Some(slot) = claims.get(key)
                // Only the caller's clone and the map's: no one waits on it.
                && Arc::strong_count(slot) <= 2
            {
                claims.remove(key);
            }
        }
    }

    /// Take (or extend) `key`'s lease for one more cell of this node, or
    /// say which node holds it.
    pub(crate) async fn claim(&self, key: &str) -> isola_backends::Result<Owner> {
        let slot = self.slot(key);
        let mut claim = slot.lock().await;
        let sent = Instant::now();
        let held = self.leases.hold(key, &self.node, self.ttl).await;
        let owner = match held {
            Ok(Held::Mine) => {
                if claim.until.is_none_or(|until| until <= sent) {
                    claim.tenure = 1 + self
                        .tenures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                claim.cells += 1;
                claim.until = Some(sent + self.ttl);
                Ok(Owner::Here(claim.tenure))
            }
            Ok(Held::Theirs(other)) => {
                if claim.cells > 0 {
                    claim.until = None;
                }
                Ok(Owner::Elsewhere(other))
            }
            Err(e) => Err(e),
        };
        self.forget_if_unused(key, &claim);
        owner
    }

    /// One cell no longer counts on `key`'s lease; the last one gives it
    /// back.
    pub(crate) async fn unclaim(&self, key: &str) {
        let slot = self.slot(key);
        let mut claim = slot.lock().await;
        claim.cells = claim.cells.saturating_sub(1);
        if claim.cells == 0 {
            claim.until = None;
            if let Err(e) = self.leases.release(key, &self.node).await {
                tracing::warn!(lease = %key, "giving back a Durable Object's lease failed (it runs out by itself): {e}");
            }
        }
        self.forget_if_unused(key, &claim);
    }

    /// Whether this node still holds `key`'s lease in `tenure`, renewing
    /// it first when less than `ahead` of it is left. A renewal that fails
    /// leaves it held until it would run out; once lost (run out, or taken
    /// by another node) it stays lost for that tenure.
    pub(crate) async fn renew(&self, key: &str, tenure: u64, ahead: Duration) -> bool {
        let slot = self.slot(key);
        let mut claim = slot.lock().await;
        let now = Instant::now();
        let held = match claim.until {
            _ if claim.tenure != tenure || claim.cells == 0 => false,
            None => false,
            Some(until) if until <= now => {
                claim.until = None;
                false
            }
            Some(until) if until > now + ahead => true,
            Some(until) => {
                let result =
                    tokio::time::timeout(self.ttl / 4, self.leases.hold(key, &self.node, self.ttl))
                        .await;
                let held = match result {
                    Ok(Ok(Held::Mine)) => {
                        claim.until = Some(now + self.ttl);
                        true
                    }
                    Ok(Ok(Held::Theirs(other))) => {
                        tracing::warn!(lease = %key, owner = %other,
                            "this node lost a Durable Object's lease; the object moves there");
                        false
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(lease = %key, "renewing a Durable Object's lease failed: {e}");
                        until > Instant::now()
                    }
                    Err(_) => {
                        tracing::warn!(lease = %key, "renewing a Durable Object's lease timed out");
                        until > Instant::now()
                    }
                };
                if !held {
                    claim.until = None;
                }
                held
            }
        };
        self.forget_if_unused(key, &claim);
        held
    }

    /// How long before the lease runs out the idle sweeper renews it.
    pub(crate) fn renew_ahead(&self) -> Duration {
        self.ttl / 2
    }

    /// How much of the lease must be left for an event to run without
    /// renewing it first.
    pub(crate) fn run_ahead(&self) -> Duration {
        self.ttl / 4
    }

    /// Give back every lease this node holds (at shutdown, once its
    /// requests are done), so other nodes take its objects at once.
    pub async fn release_all(&self) {
        let keys: Vec<String> = self
            .claims
            .lock()
            .expect("claims lock")
            .keys()
            .cloned()
            .collect();
        for key in keys {
            let slot = self.slot(&key);
            let mut claim = slot.lock().await;
            if claim.cells > 0 {
                claim.cells = 0;
                claim.until = None;
                if let Err(e) = self.leases.release(&key, &self.node).await {
                    tracing::warn!(lease = %key, "giving back a Durable Object's lease failed: {e}");
                }
            }
        }
    }

    /// Leases this node holds now.
    pub fn held(&self) -> usize {
        let slots: Vec<_> = self
            .claims
            .lock()
            .expect("claims lock")
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .filter(|slot| slot.try_lock().map_or(true, |claim| claim.cells > 0))
            .count()
    }

    /// Send `request`, an event for the object of `worker` that `owner`
    /// holds, to `owner`; its response head within `timeout`.
    pub(crate) async fn forward<B>(
        &self,
        owner: &str,
        request: http::Request<B>,
        event: &ForwardedEvent,
        timeout: Duration,
    ) -> Result<http::Response<Body>, String>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        let url = format!("{}{FORWARD_PATH}", owner.trim_end_matches('/'));
        let (parts, body) = request.into_parts();
        let mut forwarded = http::Request::post(&url)
            .body(body.map_err(Into::into).boxed_unsync())
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        let headers = forwarded.headers_mut();
        for (name, value) in &parts.headers {
            if !is_ours(name.as_str()) {
                headers.append(name.clone(), value.clone());
            }
        }
        let text = |value: &str| {
            http::HeaderValue::from_str(value).map_err(|_| format!("`{value}` is not a header"))
        };
        headers.insert(SECRET_HEADER, text(&self.secret)?);
        headers.insert(METHOD, text(parts.method.as_str())?);
        headers.insert(URI, text(&parts.uri.to_string())?);
        event.write(headers)?;
        let response = tokio::time::timeout(timeout, self.client.request(forwarded))
            .await
            .map_err(|_| format!("{owner} did not answer within {} s", timeout.as_secs()))?
            .map_err(|e| format!("{owner} is unreachable: {}", error_chain(&e)))?;
        let (mut parts, body) = response.into_parts();
        for name in HOP_BY_HOP {
            parts.headers.remove(name);
        }
        Ok(http::Response::from_parts(
            parts,
            body.map_err(BodyError::Hyper).boxed_unsync(),
        ))
    }
}

/// `error` and its causes, one after another.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Headers the cluster uses, which the request it forwards must not carry
/// through (a guest may have set them), nor hop-by-hop ones.
pub(super) fn is_ours(name: &str) -> bool {
    name.starts_with(FORWARD_PREFIX) || name == SECRET_HEADER || HOP_BY_HOP.contains(&name)
}

/// The lease key of object `id` of `namespace`.
pub(crate) fn lease_key(namespace: &str, id: &str) -> String {
    format!("do:{namespace}:{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;

    /// Leases in memory, shared by the "nodes" of a test, with a clock of
    /// their own.
    #[derive(Default)]
    struct MemoryLeases {
        held: Mutex<HashMap<String, (String, Instant)>>,
        releases: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl LeaseStore for MemoryLeases {
        async fn acquire(&self, _key: &str, _ttl: Duration) -> isola_backends::Result<bool> {
            unreachable!("cron leases are not used here")
        }

        async fn hold(
            &self,
            key: &str,
            holder: &str,
            ttl: Duration,
        ) -> isola_backends::Result<Held> {
            let mut held = self.held.lock().unwrap();
            let now = Instant::now();
            match held.get(key) {
                Some((other, until)) if *until > now && other != holder => {
                    Ok(Held::Theirs(other.clone()))
                }
                _ => {
                    held.insert(key.to_owned(), (holder.to_owned(), now + ttl));
                    Ok(Held::Mine)
                }
            }
        }

        async fn release(&self, key: &str, holder: &str) -> isola_backends::Result<()> {
            let mut held = self.held.lock().unwrap();
            if held.get(key).is_some_and(|(h, _)| h == holder) {
                held.remove(key);
                self.releases.lock().unwrap().push(key.to_owned());
            }
            Ok(())
        }
    }

    fn two_nodes(ttl: Duration) -> (Arc<MemoryLeases>, Placement, Placement) {
        let leases = Arc::new(MemoryLeases::default());
        let a = Placement::new(leases.clone(), "http://a:1/", "s3cret-s3cret-s3cret").with_ttl(ttl);
        let b = Placement::new(leases.clone(), "http://b:1", "s3cret-s3cret-s3cret").with_ttl(ttl);
        (leases, a, b)
    }

    #[tokio::test]
    async fn one_node_owns_a_key_until_its_last_cell_lets_go() {
        let (leases, a, b) = two_nodes(Duration::from_secs(10));
        assert_eq!(a.node(), "http://a:1");
        let key = lease_key("w/Counter", "00ff");
        assert_eq!(key, "do:w/Counter:00ff");
        let Owner::Here(first) = a.claim(&key).await.unwrap() else {
            panic!("A takes a free lease")
        };
        assert_eq!(
            b.claim(&key).await.unwrap(),
            Owner::Elsewhere("http://a:1".into())
        );
        assert_eq!((a.held(), b.held()), (1, 0));
        // A second cell of A (another generation's) counts on it too, in
        // the same tenure.
        assert_eq!(a.claim(&key).await.unwrap(), Owner::Here(first));
        a.unclaim(&key).await;
        assert_eq!(
            b.claim(&key).await.unwrap(),
            Owner::Elsewhere("http://a:1".into())
        );
        assert!(leases.releases.lock().unwrap().is_empty());
        // The last one gives it back; B takes it.
        a.unclaim(&key).await;
        assert_eq!(*leases.releases.lock().unwrap(), vec![key.clone()]);
        assert_eq!(a.held(), 0);
        assert!(matches!(b.claim(&key).await.unwrap(), Owner::Here(_)));
        assert_eq!(
            a.claim(&key).await.unwrap(),
            Owner::Elsewhere("http://b:1".into())
        );
        // A's stale unclaim (nothing counted) leaves B's lease alone.
        a.unclaim(&key).await;
        assert_eq!(
            a.claim(&key).await.unwrap(),
            Owner::Elsewhere("http://b:1".into())
        );
        b.release_all().await;
        assert_eq!(b.held(), 0);
        // Taken anew: a new tenure.
        let Owner::Here(second) = a.claim(&key).await.unwrap() else {
            panic!("B gave it back")
        };
        assert_ne!(second, first);
    }

    #[tokio::test]
    async fn a_lease_is_renewed_ahead_of_its_end_and_lost_for_good_once_taken() {
        let (leases, a, b) = two_nodes(Duration::from_millis(400));
        let key = lease_key("w/Counter", "01");
        assert!(
            !a.renew(&key, 1, a.renew_ahead()).await,
            "not claimed: not held"
        );
        let Owner::Here(tenure) = a.claim(&key).await.unwrap() else {
            panic!("A takes a free lease")
        };
        // Renewed ahead of its end, A keeps it past several ttls.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            assert!(a.renew(&key, tenure, a.renew_ahead()).await);
            assert_eq!(
                b.claim(&key).await.unwrap(),
                Owner::Elsewhere("http://a:1".into())
            );
        }
        // Another tenure's cell is not the holder.
        assert!(!a.renew(&key, tenure + 1, a.renew_ahead()).await);
        // Without renewals it runs out, B takes it, and A finds it lost.
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(matches!(b.claim(&key).await.unwrap(), Owner::Here(_)));
        assert!(!a.renew(&key, tenure, a.run_ahead()).await);
        // Lost for good, even once B lets it go: A's cell may have missed
        // B's events.
        b.unclaim(&key).await;
        assert_eq!(leases.releases.lock().unwrap().len(), 1);
        assert!(!a.renew(&key, tenure, Duration::ZERO).await);
        // A new claim is a new tenure.
        let Owner::Here(next) = a.claim(&key).await.unwrap() else {
            panic!("B gave it back")
        };
        assert_ne!(next, tenure);
        assert!(a.renew(&key, next, Duration::ZERO).await);
        assert!(!a.renew(&key, tenure, Duration::ZERO).await);
        // A cell of the lost tenure letting go leaves the lease held.
        a.unclaim(&key).await;
        assert_eq!(leases.releases.lock().unwrap().len(), 1);
        a.unclaim(&key).await;
        assert_eq!(leases.releases.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_lease_that_ran_out_unrenewed_is_lost_even_if_no_one_took_it() {
        let (_, a, _) = two_nodes(Duration::from_millis(200));
        let key = lease_key("w/Counter", "02");
        let Owner::Here(tenure) = a.claim(&key).await.unwrap() else {
            panic!("A takes a free lease")
        };
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!a.renew(&key, tenure, a.renew_ahead()).await);
        assert!(!matches!(a.claim(&key).await.unwrap(), Owner::Here(t) if t == tenure));
    }

    #[test]
    fn only_the_shared_secret_is_authorized() {
        let (_, a, _) = two_nodes(DEFAULT_LEASE_TTL);
        let mut headers = http::HeaderMap::new();
        assert!(!a.authorized(&headers));
        for wrong in [
            "",
            "s3cret",
            "s3cret-s3cret-s3creT",
            "s3cret-s3cret-s3cret-",
        ] {
            headers.insert(SECRET_HEADER, http::HeaderValue::from_str(wrong).unwrap());
            assert!(!a.authorized(&headers), "{wrong:?}");
        }
        headers.insert(
            SECRET_HEADER,
            http::HeaderValue::from_static("s3cret-s3cret-s3cret"),
        );
        assert!(a.authorized(&headers));
    }
}
