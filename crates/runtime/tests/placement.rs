//! Durable Objects on two "nodes" in one process: two workers loaded from
//! the `durable-storage` guest, each with its own [`Placement`] and a tiny
//! internal listener, sharing leases (in memory, so a test can move one)
//! and the objects' storage (one state directory). Real HTTP between them.
//! (Two real `isola serve` nodes on Redis and PostgreSQL are tested in
//! `tests/e2e/durable_cluster.rs`.)

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use isola_backends::lease::{Held, LeaseStore};
use isola_config::{DurableObjectBinding, DurableObjectClass};
use isola_runtime::{
    Backends, BodyError, EngineOptions, ForwardedEvent, IsolaEngine, Placement, RequestContext,
    Services, Worker, WorkerRun,
};

const SECRET: &str = "placement-test-secret";

/// Leases in memory, shared by the nodes; a test may hand one to anyone.
#[derive(Default)]
struct MemoryLeases {
    held: Mutex<HashMap<String, (String, Instant)>>,
}

impl MemoryLeases {
    /// Give `key` to `holder`, as if its holder's lease had run out and
    /// `holder` had taken it.
    fn hand_over(&self, key: &str, holder: &str) {
        let until = Instant::now() + Duration::from_secs(60);
        self.held
            .lock()
            .unwrap()
            .insert(key.to_owned(), (holder.to_owned(), until));
    }

    fn holder(&self, key: &str) -> Option<String> {
        let held = self.held.lock().unwrap();
        held.get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(holder, _)| holder.clone())
    }
}

#[async_trait]
impl LeaseStore for MemoryLeases {
    async fn acquire(&self, _key: &str, _ttl: Duration) -> isola_backends::Result<bool> {
        Ok(true)
    }

    async fn hold(&self, key: &str, holder: &str, ttl: Duration) -> isola_backends::Result<Held> {
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
        }
        Ok(())
    }
}

/// One node: its worker, the registry that places it, its URL.
struct Node {
    worker: Worker,
    _services: Arc<Services>,
    url: String,
    _listener: tokio::task::JoinHandle<()>,
}

/// The `durable-storage` guest as worker `store`, its `Store` class bound
/// as `STORE`.
fn run() -> WorkerRun {
    let mut run = WorkerRun::default();
    run.limits.cpu_ms = 1000;
    run.durable_objects = vec![DurableObjectBinding {
        binding: "STORE".into(),
        class_name: "Store".into(),
        worker: "store".into(),
        namespace: "store/Store".into(),
        sqlite: true,
    }];
    run.durable_object_classes = vec![DurableObjectClass {
        class_name: "Store".into(),
        namespace: "store/Store".into(),
        sqlite: true,
    }];
    run
}

async fn node(
    engine: &IsolaEngine,
    state: &Path,
    leases: Arc<MemoryLeases>,
    ttl: Duration,
) -> Node {
    let backends = Backends::embedded(state, 1 << 20).unwrap();
    let worker = Worker::load(
        engine,
        "store",
        &run(),
        Path::new(isola_test_programs::DURABLE_STORAGE),
        &backends,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let placement = Arc::new(Placement::new(leases, url.clone(), SECRET).with_ttl(ttl));
    let services = Services::with_placement(std::slice::from_ref(&worker), Some(placement.clone()));
    let serving = worker.clone();
    let listener = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (worker, placement) = (serving.clone(), placement.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let (worker, placement) = (worker.clone(), placement.clone());
                        async move {
                            assert!(
                                placement.authorized(request.headers()),
                                "every forward carries the secret"
                            );
                            let (request, event) = ForwardedEvent::read(request).unwrap();
                            let request = request.map(|b| b.map_err(BodyError::Hyper));
                            Ok::<_, Infallible>(
                                worker.handle_forwarded(request, event).await.response,
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Node {
        worker,
        _services: services,
        url,
        _listener: listener,
    }
}

/// `method path` through `node`'s worker: status, `x-isola-error`, body.
async fn send(node: &Node, method: &str, path: &str, body: &str) -> (u16, Option<String>, String) {
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://test{path}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let handled = node.worker.handle(request, RequestContext::default()).await;
    let status = handled.response.status().as_u16();
    let reason = handled
        .response
        .headers()
        .get(isola_runtime::ERROR_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = handled
        .response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    (status, reason, String::from_utf8_lossy(&body).into_owned())
}

async fn whoami(node: &Node, name: &str) -> serde_json::Value {
    let (status, _, body) = send(node, "GET", &format!("/store/{name}/whoami"), "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Wait until `node` has no live object (its sweeper found the lease
/// gone), for at most `within`.
async fn dropped(node: &Node, within: Duration) {
    let deadline = Instant::now() + within;
    while node.worker.live_objects() > 0 {
        assert!(Instant::now() < deadline, "a node kept an object it lost");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_node_runs_an_object_the_other_forwards_to_it_and_a_lost_lease_moves_it() {
    let state = tempfile::tempdir().unwrap();
    let engine = IsolaEngine::new(&EngineOptions::new(state.path().join("cache"))).unwrap();
    let leases = Arc::new(MemoryLeases::default());
    let ttl = Duration::from_secs(2);
    let a = node(&engine, state.path(), leases.clone(), ttl).await;
    let b = node(&engine, state.path(), leases.clone(), ttl).await;

    // The first event, through A, makes A the owner.
    let first = whoami(&a, "n1").await;
    assert_eq!(first["events"], 1, "{first}");
    let key = format!("do:store/Store:{}", first["id"].as_str().unwrap());
    assert_eq!(leases.holder(&key).as_deref(), Some(a.url.as_str()));

    // Events sent to both, at once, run one at a time in A's one instance.
    let (a_ref, b_ref) = (&a, &b);
    let events: Vec<u64> = futures_util::future::join_all((0..20).map(|i| async move {
        whoami(if i % 2 == 0 { a_ref } else { b_ref }, "n1").await["events"]
            .as_u64()
            .unwrap()
    }))
    .await;
    let mut sorted = events.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (2..=21).collect::<Vec<_>>(),
        "one instance served every event"
    );
    assert_eq!((a.worker.live_objects(), b.worker.live_objects()), (1, 0));
    let (status, _, body) = send(&b, "POST", "/store/n1/put", "colour=blue").await;
    assert_eq!(status, 204, "{body}");

    // The lease outlives its ttl while A keeps renewing it.
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(leases.holder(&key).as_deref(), Some(a.url.as_str()));
    assert_eq!(whoami(&b, "n1").await["events"], 23);

    // B gets the lease (as if A's had run out): A drops its instance
    // within a renewal, and the object goes on at B with its storage.
    leases.hand_over(&key, &b.url);
    dropped(&a, ttl).await;
    let moved = whoami(&a, "n1").await;
    assert_eq!(moved["events"], 1, "a new instance, at B: {moved}");
    assert_eq!((a.worker.live_objects(), b.worker.live_objects()), (0, 1));
    let (status, _, colour) = send(&a, "GET", "/store/n1/get?key=colour", "").await;
    assert_eq!((status, colour.as_str()), (200, "blue"));

    // An owner that names itself otherwise than the nodes know it: A
    // forwards there (to B), B forwards once more (to B), and then gives
    // up.
    leases.hand_over(&key, &format!("{}/", b.url));
    dropped(&b, ttl).await;
    let (status, reason, body) = send(&a, "GET", "/store/n1/whoami", "").await;
    assert_eq!(
        (status, reason.as_deref()),
        (503, Some("object-moved")),
        "{body}"
    );

    // An owner that cannot be reached: 503, to retry.
    leases.hand_over(&key, "http://127.0.0.1:1");
    let (status, reason, body) = send(&b, "GET", "/store/n1/whoami", "").await;
    assert_eq!(
        (status, reason.as_deref()),
        (503, Some("object-owner-unreachable")),
        "{body}"
    );
}
