//! Guests' outbound HTTP through the process's shared client: pooled
//! connections reused across fetches and requests, HTTP/2 to a TLS origin
//! that offers it, and `*` refusing loopback addresses. Its own test binary:
//! the shared client is configured once per process, here to trust the
//! test's CA.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use isola_runtime::{
    Backends, ClientSettings, EngineOptions, IsolaEngine, OutboundRule, RequestContext, Worker,
    WorkerRun,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The test CA's certificate, and a certificate for `localhost` it signed
/// with its key; the shared client trusts the CA.
struct Pki {
    leaf: CertificateDer<'static>,
    leaf_key: Vec<u8>,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Isola test CA");
        let ca = ca.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        assert!(isola_runtime::configure_client(ClientSettings {
            extra_roots: vec![ca.der().clone()],
            ..ClientSettings::default()
        }));
        Pki {
            leaf: leaf.der().clone(),
            leaf_key: leaf_key.serialize_der(),
        }
    })
}

/// What an origin saw: connections accepted, and each request's version.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    versions: Mutex<Vec<http::Version>>,
}

/// An origin on 127.0.0.1 answering `ok` over HTTP/1.1 and HTTP/2 (TLS with
/// ALPN when `tls`), keeping connections alive. Returns its port.
async fn origin(tls: bool) -> (u16, Arc<Seen>) {
    slow_origin(tls, Duration::ZERO).await
}

/// [`origin`], answering each request after `delay`.
async fn slow_origin(tls: bool, delay: Duration) -> (u16, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let acceptor = tls.then(|| {
        let pki = pki();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.leaf.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.leaf_key.clone())),
        )
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    let state = seen.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            state.connections.fetch_add(1, Ordering::SeqCst);
            let (state, acceptor) = (state.clone(), acceptor.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    state.versions.lock().unwrap().push(request.version());
                    async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from("ok"))))
                    }
                });
                let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = match acceptor {
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(socket).await else {
                            return;
                        };
                        server.serve_connection(TokioIo::new(stream), service).await
                    }
                    None => server.serve_connection(TokioIo::new(socket), service).await,
                };
            });
        }
    });
    (port, seen)
}

/// The `limits` test guest, allowed to reach `allowed`.
fn fetcher(state: &Path, allowed: &str) -> Worker {
    let engine = IsolaEngine::new(&EngineOptions::new(state.join("cache"))).unwrap();
    let backends = Backends::embedded(state, 1 << 20).unwrap();
    let run = WorkerRun {
        allowed_outbound_hosts: vec![OutboundRule::parse(allowed).unwrap()],
        ..WorkerRun::default()
    };
    let component = Path::new(isola_test_programs::LIMITS);
    Worker::load(&engine, "fetcher", &run, component, &backends).unwrap()
}

/// `GET /fetch?url=…&n=…` on the guest: it fetches `url` `n` times, one
/// after another, and reports how many succeeded and the first error.
async fn fetch(worker: &Worker, url: &str, n: u32) -> String {
    let request = http::Request::get(format!("http://test/fetch?url={url}&n={n}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let handled = worker.handle(request, RequestContext::default()).await;
    assert_eq!(handled.response.status(), 200);
    let body = handled.response.into_body().collect().await.unwrap();
    String::from_utf8(body.to_bytes().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_to_an_origin_are_pooled_across_fetches_and_requests() {
    pki();
    let state = tempfile::tempdir().unwrap();
    let (port, seen) = origin(false).await;
    let url = format!("http://127.0.0.1:{port}");
    let worker = fetcher(state.path(), &url);
    for _ in 0..3 {
        let answer = fetch(&worker, &format!("{url}/x"), 10).await;
        assert!(answer.starts_with("ok=10\nerror=none\n"), "{answer}");
    }
    // Thirty fetches in three requests (three fresh instances), one by one:
    // one connection, kept alive between them.
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    assert!(
        seen.versions
            .lock()
            .unwrap()
            .iter()
            .all(|v| *v == http::Version::HTTP_11)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_origin_that_offers_h2_is_fetched_over_http2() {
    pki();
    let state = tempfile::tempdir().unwrap();
    let (port, seen) = origin(true).await;
    let url = format!("https://localhost:{port}");
    let worker = fetcher(state.path(), &url);
    let answer = fetch(&worker, &format!("{url}/y"), 5).await;
    assert!(answer.starts_with("ok=5\nerror=none\nbody=ok"), "{answer}");
    assert_eq!(
        seen.versions.lock().unwrap().as_slice(),
        [http::Version::HTTP_2; 5]
    );
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_for_another_name_is_refused() {
    pki();
    let state = tempfile::tempdir().unwrap();
    let (port, seen) = origin(true).await;
    // The certificate names `localhost`, not 127.0.0.1.
    let url = format!("https://127.0.0.1:{port}");
    let worker = fetcher(state.path(), &url);
    let answer = fetch(&worker, &format!("{url}/z"), 1).await;
    assert!(answer.starts_with("ok=0\n"), "{answer}");
    assert!(seen.versions.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wildcard_does_not_reach_loopback_addresses() {
    pki();
    let state = tempfile::tempdir().unwrap();
    let (port, seen) = origin(false).await;
    let worker = fetcher(state.path(), "*");
    for host in ["127.0.0.1", "localhost"] {
        let answer = fetch(&worker, &format!("http://{host}:{port}/"), 1).await;
        assert!(answer.starts_with("ok=0\n"), "{host}: {answer}");
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_fetches_fit_in_ten_milliseconds_of_cpu() {
    sequential_fetches_fit_in_ten_milliseconds_of_cpu(200, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_fetches_to_a_slow_origin_fit_in_ten_milliseconds_of_cpu() {
    // Each wake after a 20 ms wait finds the guest's memory gone cold from
    // the caches; by the clock alone that cost ~100 µs a fetch on a 2-core
    // VM (11 ms for 100), which is the machine's doing, not the guest's:
    // its wasm is charged at most five times what its fuel stands for.
    sequential_fetches_fit_in_ten_milliseconds_of_cpu(100, Duration::from_millis(20)).await;
}

/// `n` fetches one after another, each answered after `delay`, under
/// `cpu_ms = 10`.
async fn sequential_fetches_fit_in_ten_milliseconds_of_cpu(n: u32, delay: Duration) {
    pki();
    let state = tempfile::tempdir().unwrap();
    let (port, _seen) = slow_origin(false, delay).await;
    let url = format!("http://127.0.0.1:{port}");
    let engine = IsolaEngine::new(&EngineOptions::new(state.path().join("cache"))).unwrap();
    let backends = Backends::embedded(state.path(), 1 << 20).unwrap();
    let mut run = WorkerRun {
        allowed_outbound_hosts: vec![OutboundRule::parse(&url).unwrap()],
        ..WorkerRun::default()
    };
    run.limits.cpu_ms = 10;
    run.limits.subrequests = 1000;
    let component = Path::new(isola_test_programs::LIMITS);
    let worker = Worker::load(&engine, "fetcher", &run, component, &backends).unwrap();
    let request = http::Request::get(format!("http://test/fetch?url={url}/&n={n}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let handled = worker.handle(request, RequestContext::default()).await;
    let status = handled.response.status();
    let timing = handled.response.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = handled
        .response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let outcome = handled.outcome.await;
    // The connection's work runs in the client's tasks, and awaiting and
    // reading each response is the host's: what is charged is the guest's
    // own work, far under the budget.
    assert_eq!(
        status,
        200,
        "{}: {outcome:?}",
        String::from_utf8_lossy(&body)
    );
    assert!(body.starts_with(format!("ok={n}\n").as_bytes()));
    assert_eq!((outcome.limit, outcome.subrequests), (None, n));
    let charged = outcome.cpu.as_secs_f64() * 1e3;
    // (6.8 ms in the unoptimised test build at a load of 20 on 2 cores.)
    assert!(charged < 10.0, "{outcome:?}");
    // Server-Timing told what was charged by the time the head was sent
    // (all the fetches, then the body), as the access line does at the end.
    let told: f64 = timing
        .strip_prefix("cpu;dur=")
        .and_then(|rest| rest.split(',').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("{timing}"));
    assert!(
        told > 0.0 && told <= charged + 0.001,
        "{timing}, {outcome:?}"
    );
}
