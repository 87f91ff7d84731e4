//! A JavaScript worker that forwards the incoming request (issue 28):
//! every form of `fetch(request)` for every method and body shape, through
//! `outbound_override` and through an allowed origin, on fresh and reused
//! instances; the origin must get the method, the headers and the exact
//! body bytes, and a large upload must stream. Also: the Promise-returning
//! Workers APIs report failures as rejections, never synchronous throws.
//!
//! One module (`tests/js/proxy.js`) serves every case; its path picks the
//! form. It is built twice (fresh, `--instance-reuse`) and compiled once
//! into the shared compile cache before any test serves it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, Once};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::js::shared_cache;
use crate::support::{Project, Server, client, run_isola, stderr_of};

/// What the origin saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    bytes: u64,
    fnv: u64,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// An origin that hashes each request body as it streams in, remembers
/// what it saw, and answers `origin ok` with an `x-origin` header.
struct Origin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    async fn start() -> Origin {
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let method = request.method().to_string();
                            let path = request.uri().to_string();
                            let headers = request
                                .headers()
                                .iter()
                                .map(|(n, v)| {
                                    (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                                })
                                .collect();
                            let mut body = request.into_body();
                            let (mut bytes, mut hash) = (0u64, FNV_START);
                            while let Some(frame) = body.frame().await {
                                if let Ok(data) = frame.expect("request body").into_data() {
                                    bytes += data.len() as u64;
                                    hash = fnv(hash, &data);
                                }
                            }
                            log.lock().unwrap().push(Seen {
                                method,
                                path,
                                headers,
                                bytes,
                                fnv: hash,
                            });
                            let mut response = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(b"origin ok"),
                            ));
                            response
                                .headers_mut()
                                .insert("x-origin", "yes".parse().unwrap());
                            Ok::<_, Infallible>(response)
                        }
                    },
                );
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin { addr, seen, task }
    }

    /// The request that came for `path`.
    fn got(&self, path: &str) -> Seen {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .find(|s| s.path == path)
            .cloned()
            .unwrap_or_else(|| panic!("{path} never reached the origin"))
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn proxy_js() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/js/proxy.js")
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

/// The host name the override route forwards to (`outbound_override`
/// sends it to the origin, keeping the name).
const OVERRIDE_HOST: &str = "origin.test";

/// Four workers on one module: `/o` (fresh, through `outbound_override`),
/// `/a` (fresh, the origin allowed by its loopback address), and `/or`,
/// `/ar` the same with `instance_reuse`; plus `auth` behind the service
/// binding.
fn config(origin: SocketAddr) -> String {
    let main = proxy_js();
    let bindings = "cpu_ms = 60000\nwall_ms = 120000\n\
         kv_namespaces = [{ binding = \"KV\", id = \"proxy-kv\" }]\n\
         d1_databases = [{ binding = \"DB\", database_name = \"proxy\" }]\n\
         r2_buckets = [{ binding = \"BUCKET\", bucket_name = \"proxy-files\" }]\n\
         queues.producers = [{ binding = \"JOBS\", queue = \"proxy-jobs\" }]\n\
         services = [{ binding = \"AUTH\", service = \"auth\" }]\n";
    let mut config = format!(
        "[server]\ncache_dir = {:?}\nmax_body_mb = 300\n\n",
        shared_cache().display().to_string()
    );
    for (name, reuse, outbound) in [
        (
            "o",
            false,
            format!(
                "allowed_outbound_hosts = [\"http://{OVERRIDE_HOST}\"]\noutbound_override = \"http://{origin}\"\n"
            ),
        ),
        (
            "a",
            false,
            format!("allowed_outbound_hosts = [\"http://{origin}\"]\n"),
        ),
        (
            "or",
            true,
            format!(
                "allowed_outbound_hosts = [\"http://{OVERRIDE_HOST}\"]\noutbound_override = \"http://{origin}\"\n"
            ),
        ),
        (
            "ar",
            true,
            format!("allowed_outbound_hosts = [\"http://{origin}\"]\n"),
        ),
    ] {
        config.push_str(&format!(
            "[[worker]]\nname = \"proxy-{name}\"\nmain = {main:?}\nroutes = [\"/{name}/*\"]\n{}{outbound}{bindings}\n",
            if reuse { "instance_reuse = 100\n" } else { "" },
        ));
    }
    config.push_str(&format!(
        "[[worker]]\nname = \"auth\"\nmain = {main:?}\nroutes = []\n"
    ));
    config
}

/// Build and compile both builds of the module once, before any test
/// serves it.
fn warm_up() {
    static WARM: Once = Once::new();
    WARM.call_once(|| {
        let project = Project::new(&config("127.0.0.1:9".parse().unwrap()));
        let output = run_isola(&["compile", project.config().to_str().unwrap()]);
        assert!(
            output.status.success(),
            "building the proxy worker failed:\n{}",
            stderr_of(&output)
        );
    });
}

async fn serve() -> (Origin, Project, Server) {
    warm_up();
    let origin = Origin::start().await;
    let project = Project::new(&config(origin.addr));
    let server = project.serve();
    (origin, project, server)
}

/// The Host header a route's client sends: the request's own URL is what
/// `fetch(request)` forwards to.
fn host_for(route: &str, origin: SocketAddr) -> String {
    if route.starts_with('o') {
        OVERRIDE_HOST.to_owned()
    } else {
        origin.to_string()
    }
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    Empty,
    Small,
    /// 10 MiB with a Content-Length.
    Large,
    /// Chunked transfer encoding, in uneven chunks.
    Chunked,
}

fn body_of(shape: Shape) -> Vec<u8> {
    let len = match shape {
        Shape::Empty => 0,
        // Not UTF-8, and a NUL: bytes must arrive as sent.
        Shape::Small => return b"caf\xe9 \x00\xff small body".to_vec(),
        Shape::Large => 10 << 20,
        Shape::Chunked => 3 << 20,
    };
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Send `method path` with `body` as `shape` to the server with `host` as
/// its Host header; returns the status and the response head and body.
async fn send(
    server: &Server,
    host: &str,
    method: &str,
    path: &str,
    shape: Shape,
    body: &[u8],
) -> (u16, String) {
    if let Shape::Chunked = shape {
        return send_chunked(server.addr, host, method, path, body).await;
    }
    let mut request = client()
        .request(method.parse().unwrap(), server.url(path))
        .header("host", host)
        .header("x-test", "t1")
        .header("content-type", "application/octet-stream");
    if !matches!(shape, Shape::Empty) || method != "GET" && method != "HEAD" {
        request = request.body(body.to_vec());
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let mut head = String::new();
    for (name, value) in response.headers() {
        head.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
    }
    let text = response.text().await.unwrap_or_default();
    (status, format!("{head}\n{text}"))
}

/// reqwest here has no streaming bodies: a chunked upload is written by
/// hand, in chunks of 7 KiB + 13 bytes.
async fn send_chunked(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nx-test: t1\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(7 * 1024 + 13) {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        stream.write_all(chunk).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response.to_lowercase())
}

const FORMS: &[&str] = &[
    "direct", "url", "new", "headers", "copy", "clone", "init", "seed",
];

/// Every form × method × body shape through `route`; returns the failures.
async fn matrix(server: &Server, origin: &Origin, route: &str) -> Vec<String> {
    let host = host_for(route, origin.addr);
    let mut failures = Vec::new();
    let mut n = 0;
    for form in FORMS {
        for method in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] {
            let shapes: &[Shape] = if method == "GET" || method == "HEAD" {
                &[Shape::Empty]
            } else {
                &[Shape::Empty, Shape::Small, Shape::Large, Shape::Chunked]
            };
            for &shape in shapes {
                n += 1;
                let case = format!("{route} {form} {method} {shape:?}");
                let path = format!("/{route}/{form}/{n}");
                let body = body_of(shape);
                let (status, reply) = send(server, &host, method, &path, shape, &body).await;
                if let Err(why) = check(origin, &path, form, method, shape, &body, status, &reply) {
                    failures.push(format!("{case}: {why}"));
                }
            }
        }
    }
    failures
}

#[allow(clippy::too_many_arguments)]
fn check(
    origin: &Origin,
    path: &str,
    form: &str,
    method: &str,
    shape: Shape,
    body: &[u8],
    status: u16,
    reply: &str,
) -> Result<(), String> {
    let short = |s: &str| s.chars().take(300).collect::<String>();
    if status != 200 {
        return Err(format!("status {status}: {}", short(reply)));
    }
    if !reply.contains("x-origin: yes") {
        return Err(format!("not the origin's response: {}", short(reply)));
    }
    if method != "HEAD" && !reply.contains("origin ok") {
        return Err(format!("body: {}", short(reply)));
    }
    if form == "seed" && !reply.contains("x-a: b") {
        return Err(format!("no x-a header: {}", short(reply)));
    }
    let seen = origin.got(path);
    if seen.method != method {
        return Err(format!("origin got {}", seen.method));
    }
    if seen.header("x-test") != Some("t1") {
        return Err(format!("origin got headers {:?}", seen.headers));
    }
    if (form == "headers" || form == "init") && seen.header("x-proxied") != Some("yes") {
        return Err(format!("no x-proxied header: {:?}", seen.headers));
    }
    if !body.is_empty() && seen.header("content-type") != Some("application/octet-stream") {
        return Err(format!("origin got headers {:?}", seen.headers));
    }
    if let Shape::Small | Shape::Large = shape
        && seen.header("content-length") != Some(&body.len().to_string())
    {
        return Err(format!("origin got headers {:?}", seen.headers));
    }
    if (seen.bytes, seen.fnv) != (body.len() as u64, fnv(FNV_START, body)) {
        return Err(format!(
            "origin got {} bytes (fnv {:x}), sent {}",
            seen.bytes,
            seen.fnv,
            body.len()
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_instance_forwards_the_incoming_request_in_every_form() {
    let (origin, _project, server) = serve().await;
    let mut failures = matrix(&server, &origin, "o").await;
    failures.extend(matrix(&server, &origin, "a").await);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The seed pattern's cache put of a POST rejects inside waitUntil and
    // is only logged.
    server.wait_for_log(
        "waitUntil task failed: TypeError: Cannot cache response to non-GET request.",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_instance_forwards_the_incoming_request_in_every_form() {
    let (origin, _project, server) = serve().await;
    let mut failures = matrix(&server, &origin, "or").await;
    failures.extend(matrix(&server, &origin, "ar").await);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    server.wait_for_log(
        "waitUntil task failed: TypeError: Cannot cache response to non-GET request.",
    );
}

/// POST `total` bytes to `route`'s `fetch(request)`; returns how much the
/// host's RSS grew at its peak, in MiB, and checks that the origin got
/// every byte.
async fn upload(server: &Server, origin: &Origin, route: &str, total: usize) -> u64 {
    let rss_before = rss_kib(server.pid());
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let path = format!("/{route}/direct/upload-{total}");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {total}\r\nconnection: close\r\n\r\n",
        host_for(route, origin.addr)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut hash, mut peak) = (FNV_START, rss_before);
    for i in 0..total / chunk.len() {
        stream.write_all(&chunk).await.unwrap();
        hash = fnv(hash, &chunk);
        if i % 64 == 0 {
            peak = peak.max(rss_kib(server.pid()));
        }
    }
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    peak = peak.max(rss_kib(server.pid()));
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let seen = origin.got(&path);
    assert_eq!((seen.bytes, seen.fnv), (total as u64, hash));
    assert_eq!(
        seen.header("content-length"),
        Some(total.to_string().as_str())
    );
    peak.saturating_sub(rss_before) / 1024
}

/// A 200 MiB upload through `fetch(request)` streams, as for Rust guests:
/// the host's RSS grows by far less than the body (a fresh JS instance's
/// heap grows by some tens of MiB of garbage however long the body; a body
/// held whole anywhere would add 200 MiB).
async fn large_upload_streams(route: &str) {
    let (origin, _project, server) = serve().await;
    let small = upload(&server, &origin, route, 16 << 20).await;
    let large = upload(&server, &origin, route, 200 << 20).await;
    assert!(
        large < 100,
        "host RSS grew {large} MiB for a 200 MiB upload through {route} ({small} MiB for 16 MiB)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_200_mib_upload_streams_through_fetch_request_on_a_fresh_instance() {
    large_upload_streams("a").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_200_mib_upload_streams_through_fetch_request_on_a_reused_instance() {
    large_upload_streams("ar").await;
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One failing call per binding kind (see `failing` in proxy.js) and the
/// error its promise must reject with.
const REJECTIONS: &[(&str, &str)] = &[
    (
        "kv",
        "TypeError: expected a string, ArrayBuffer, ArrayBufferView, Blob or ReadableStream",
    ),
    (
        "kv-host",
        "TypeError: KV key is 4096 bytes; the limit is 512",
    ),
    ("d1", "BackendError: near \"SELEC\": syntax error"),
    (
        "d1-first",
        "Error: D1_COLUMN_NOTFOUND: Column not found (missing)",
    ),
    (
        "d1-batch",
        "TypeError: D1 batch: every item must be a statement from prepare()",
    ),
    ("d1-exec", "BackendError: near \"NOT\": syntax error"),
    ("r2", "RangeError: "),
    ("r2-body", "TypeError: "),
    (
        "cache",
        "TypeError: Cannot cache response to non-GET request.",
    ),
    (
        "cache-url",
        "TypeError: URL constructor: http://[ is not a valid URL.",
    ),
    ("cache-clone", "TypeError: "),
    ("queue", "TypeError: unknown contentType \"bogus\""),
    (
        "service",
        "TypeError: URL constructor: http://[ is not a valid URL.",
    ),
    (
        "service-init",
        "TypeError: Request constructor: HEAD or GET Request cannot have a body",
    ),
    (
        "fetch",
        "TypeError: URL constructor: http://[ is not a valid URL.",
    ),
    (
        "fetch-none",
        "TypeError: fetch: At least 1 argument required",
    ),
    (
        "fetch-used",
        "TypeError: fetch: the request's body has already been used",
    ),
    ("fetch-refused", "TypeError: NetworkError"),
    (
        "fetch-init",
        "TypeError: Request constructor: HEAD or GET Request cannot have a body",
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn promise_returning_apis_reject_instead_of_throwing() {
    let (_origin, _project, server) = serve().await;
    let client = client();
    let mut failures = Vec::new();
    for route in ["a", "ar"] {
        for (kind, error) in REJECTIONS {
            let response = client
                .get(server.url(&format!("/{route}/async/{kind}")))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            if status != 200 || !body.starts_with(&format!("rejected: {error}")) {
                failures.push(format!("{route} {kind}: {status} {body}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A refused host is logged by the host, not hidden.
    server.wait_for_log("denied: not in allowed_outbound_hosts");
}
