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
use std::sync::{Arc, Mutex, Once};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::js::shared_cache;
use crate::support::{Project, Server, client, js_fixture, rss_kib, run_isola, stderr_of};

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
    js_fixture("proxy.js")
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
    // docs/guides/javascript-workers.md: "a 200 MiB upload grows the
    // host's memory by under 100 MiB".
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

/// `Response.clone()` on the proxy path streams both branches (issue 29,
/// point 4): the canonical proxy worker
///
/// ```js
/// const r = await fetch(origin); ctx.waitUntil(<read r.clone()>); return r;
/// ```
///
/// with bodies larger than the worker's `memory_mb`. The client must get
/// the whole body while the clone is read, the clone must see the same
/// bytes, and the guest must never hold the body: the shim's tee keeps at
/// most `TEE_HIGH_WATER` (1 MiB) plus a chunk for the slower branch, and
/// the faster one waits. Before, the shim read a cloned response whole
/// before sending it (`memory-limit` for anything near `memory_mb`).
///
/// The worker ([`WORKER`]) is built from source twice (fresh instances,
/// `--instance-reuse`) and compiled once into the shared compile cache
/// before any test serves it. The origin is a hyper server here that
/// streams the body, and that holds the slow clone's progress reports a
/// while, noting how much of the body the client had by then.
mod clone_streams {
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, LazyLock, Mutex, Once};
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use http_body_util::BodyExt;
    use http_body_util::combinators::BoxBody;

    use crate::js::shared_cache;
    use crate::support::{Project, Server, run_isola, stderr_of};

    /// The worker. Paths are `/<route>/<mode>/<id>?mib=N`; `<route>` only
    /// picks the worker (`fresh`, `reused`).
    /// - `fast`: the clone is read to the end as fast as it comes.
    /// - `slow` (`&every=M`): the clone's reader stops every M MiB to report
    ///   how far it got (`GET <origin>/progress/<id>?n=`), which the origin
    ///   answers only after [`HOLD`]: the clone is the slower branch.
    /// - `cache`: `ctx.waitUntil(caches.default.put(request, r.clone()))`; a
    ///   later request for the same URL is served from the cache (`x-cache:
    ///   hit`). Both the put and the hit stream the body.
    ///
    /// The clone's reader checks every byte against the origin's pattern (byte
    /// i is 33 + i % 89), frees each chunk once read (a chunk left to the
    /// garbage collector stays until the next full collection, which
    /// StarlingMonkey runs only after some tens of MiB: more than this
    /// worker's `memory_mb`), and reports `GET <origin>/done/<id>?n=&bad=`: the
    /// length it read and how many chunks differed.
    const WORKER: &str = r#"
const PERIOD = 89;
// The pattern from any phase on, for pieces of up to PIECE bytes.
const PIECE = 64 * 1024;
const EXPECTED = new Uint8Array(PIECE + PERIOD);
for (let i = 0; i < EXPECTED.length; i++) EXPECTED[i] = 33 + (i % PERIOD);

// Native digests: comparing 100 MiB byte by byte in interpreted
// JavaScript would take most of a minute.
async function sameBytes(a, b) {
  const [x, y] = await Promise.all([crypto.subtle.digest("SHA-256", a), crypto.subtle.digest("SHA-256", b)]);
  const [p, q] = [new Uint8Array(x), new Uint8Array(y)];
  return p.every((byte, i) => byte === q[i]);
}

async function readClone(stream, origin, id, every) {
  const reader = stream.getReader();
  let n = 0;
  let bad = 0;
  let next = every;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    let same = true;
    for (let offset = 0; offset < value.byteLength; offset += PIECE) {
      const piece = value.subarray(offset, offset + PIECE);
      const phase = (n + offset) % PERIOD;
      same &&= await sameBytes(piece, EXPECTED.subarray(phase, phase + piece.byteLength));
    }
    if (!same) bad++;
    n += value.byteLength;
    if (value.byteOffset === 0 && value.byteLength === value.buffer.byteLength) value.buffer.transfer(0);
    if (every > 0 && n >= next) {
      await fetch(`${origin}/progress/${id}?n=${n}`);
      next += every;
    }
  }
  await fetch(`${origin}/done/${id}?n=${n}&bad=${bad}`);
}

export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    const [, , mode, id] = url.pathname.split("/");
    const origin = env.ORIGIN;
    if (mode === "cache") {
      const hit = await caches.default.match(request);
      if (hit) {
        const response = new Response(hit.body, hit);
        response.headers.set("x-cache", "hit");
        return response;
      }
    }
    const r = await fetch(`${origin}/body/${id}?mib=${url.searchParams.get("mib")}`);
    if (mode === "cache") {
      ctx.waitUntil(caches.default.put(request, r.clone()));
    } else {
      const every = mode === "slow" ? Number(url.searchParams.get("every")) * 1024 * 1024 : 0;
      ctx.waitUntil(readClone(r.clone().body, origin, id, every));
    }
    return r;
  },
};
"#;

    const MIB: u64 = 1 << 20;
    const PERIOD: usize = 89;
    /// The longest piece compared against the pattern at once.
    const PIECE: usize = 64 * 1024;
    /// How long the origin holds each progress report of the slow clone: time
    /// for the client to take all the faster branch may give it.
    const HOLD: Duration = Duration::from_millis(300);
    /// How far the faster branch may run ahead of the slower: the shim's
    /// `TEE_HIGH_WATER` (1 MiB) plus one chunk (StarlingMonkey reads a fetched
    /// body 8 KiB at a time; 64 KiB leaves room).
    const LEAD: u64 = MIB + 64 * 1024;

    /// `PIECE + PERIOD` bytes of the pattern: byte i is 33 + i % 89.
    static PATTERN: LazyLock<Bytes> = LazyLock::new(|| {
        (0..PIECE + PERIOD)
            .map(|i| 33 + (i % PERIOD) as u8)
            .collect()
    });

    /// The offset in `chunk`, which starts at `offset` of the body, of its
    /// first byte that is not the pattern's.
    fn first_difference(offset: u64, chunk: &[u8]) -> Option<usize> {
        let mut at = 0;
        while at < chunk.len() {
            let phase = ((offset + at as u64) % PERIOD as u64) as usize;
            let piece = &chunk[at..chunk.len().min(at + PIECE)];
            let expected = &PATTERN[phase..phase + piece.len()];
            if piece != expected {
                return Some(
                    at + piece
                        .iter()
                        .zip(expected)
                        .position(|(a, b)| a != b)
                        .unwrap(),
                );
            }
            at += piece.len();
        }
        None
    }

    /// What the origin heard from the clone's reader of one request.
    #[derive(Debug, Default)]
    struct Reports {
        /// Each progress report: how far the clone had read, and how much of
        /// the body the client had when the origin answered it.
        progress: Vec<(u64, u64)>,
        /// The clone's length and differing chunks, and when that came.
        done: Option<(u64, u64, Instant)>,
    }

    /// The origin: `GET /body/<id>?mib=N` streams N MiB of the pattern (with
    /// a Content-Length, in 64 KiB frames, cacheable for a minute); the clone's
    /// reader reports to `/progress/<id>` and `/done/<id>`.
    struct Origin {
        addr: SocketAddr,
        /// Bytes the test's client has received of the response being read.
        received: Arc<AtomicU64>,
        reports: Arc<Mutex<HashMap<String, Reports>>>,
        task: tokio::task::JoinHandle<()>,
    }

    type Body = BoxBody<Bytes, Infallible>;

    fn query(uri: &hyper::Uri, key: &str) -> u64 {
        let value = uri
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key} in {uri}"));
        value.parse().unwrap()
    }

    fn streamed(total: u64) -> hyper::Response<Body> {
        let frames = futures_util::stream::unfold(0u64, move |offset| async move {
            if offset >= total {
                return None;
            }
            let len = (total - offset).min(PIECE as u64) as usize;
            let phase = (offset % PERIOD as u64) as usize;
            let frame = hyper::body::Frame::data(PATTERN.slice(phase..phase + len));
            Some((Ok::<_, Infallible>(frame), offset + len as u64))
        });
        let mut response = hyper::Response::new(http_body_util::StreamBody::new(frames).boxed());
        let headers = response.headers_mut();
        headers.insert("content-length", total.to_string().parse().unwrap());
        headers.insert("cache-control", "public, max-age=60".parse().unwrap());
        response
    }

    impl Origin {
        async fn start() -> Origin {
            use hyper_util::rt::TokioIo;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let received = Arc::new(AtomicU64::new(0));
            let reports: Arc<Mutex<HashMap<String, Reports>>> = Arc::default();
            let (client, log) = (received.clone(), reports.clone());
            let task = tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (client, log) = (client.clone(), log.clone());
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let (client, log) = (client.clone(), log.clone());
                            async move {
                                let uri = request.uri().clone();
                                let mut parts = uri.path().trim_start_matches('/').splitn(2, '/');
                                let (kind, id) =
                                    (parts.next().unwrap(), parts.next().unwrap_or(""));
                                let id = id.to_owned();
                                let ok = || {
                                    hyper::Response::new(
                                        http_body_util::Full::new(Bytes::from_static(b"ok"))
                                            .boxed(),
                                    )
                                };
                                let response = match kind {
                                    "body" => streamed(query(&uri, "mib") * MIB),
                                    "progress" => {
                                        tokio::time::sleep(HOLD).await;
                                        let n = query(&uri, "n");
                                        // Bytes the server sent may still be
                                        // on their way to the client's reader
                                        // on a loaded machine: wait (a
                                        // bounded while, the clone held all
                                        // along) for them before sampling.
                                        let waiting = Instant::now();
                                        while client.load(Ordering::SeqCst) < n
                                            && waiting.elapsed() < Duration::from_secs(5)
                                        {
                                            tokio::time::sleep(Duration::from_millis(10)).await;
                                        }
                                        let had = client.load(Ordering::SeqCst);
                                        log.lock()
                                            .unwrap()
                                            .entry(id)
                                            .or_default()
                                            .progress
                                            .push((n, had));
                                        ok()
                                    }
                                    "done" => {
                                        let done =
                                            (query(&uri, "n"), query(&uri, "bad"), Instant::now());
                                        log.lock().unwrap().entry(id).or_default().done =
                                            Some(done);
                                        ok()
                                    }
                                    _ => panic!("unexpected request {uri}"),
                                };
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
            Origin {
                addr,
                received,
                reports,
                task,
            }
        }

        /// The clone's final report for `id`: its length and differing chunks,
        /// and when it came; waits a minute at most.
        async fn done(&self, id: &str, server: &Server) -> (u64, u64, Instant) {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(done) = self.reports.lock().unwrap().get(id).and_then(|r| r.done) {
                    return done;
                }
                assert!(
                    Instant::now() < deadline,
                    "the clone of {id} never finished; logs:\n{}",
                    server.logs()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        fn progress(&self, id: &str) -> Vec<(u64, u64)> {
            let reports = self.reports.lock().unwrap();
            reports
                .get(id)
                .map(|r| r.progress.clone())
                .unwrap_or_default()
        }
    }

    impl Drop for Origin {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Where the worker's source is written, once per test run: a fixed path,
    /// so that every project builds the same bundle (a build cache hit).
    fn worker_js() -> PathBuf {
        static WRITTEN: Once = Once::new();
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("js-streams/worker.js");
        WRITTEN.call_once(|| {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, WORKER).unwrap();
        });
        path
    }

    /// `fresh` (a fresh instance per request, `memory_mb = 32`: a JS hello
    /// needs less than 16) and `reused` (`instance_reuse`, `memory_mb = 128`:
    /// see [`a_reused_instance_streams_a_cloned_response`]).
    fn config(origin: SocketAddr) -> String {
        let main = worker_js().display().to_string();
        // The memory cache holds the largest body a test stores.
        let mut config = format!(
            "[server]\ncache_dir = {:?}\n\n[backends]\ncache = {{ type = \"memory\", max_mb = 256 }}\n\n",
            shared_cache().display().to_string()
        );
        for (name, extra) in [
            ("fresh", "memory_mb = 32\n"),
            ("reused", "memory_mb = 128\ninstance_reuse = 10\n"),
        ] {
            config.push_str(&format!(
                "[[worker]]\nname = {name:?}\nmain = {main:?}\nroutes = [\"/{name}/*\"]\n{extra}\
                 cpu_ms = 60000\nwall_ms = 120000\n\
                 vars = {{ ORIGIN = \"http://{origin}\" }}\n\
                 allowed_outbound_hosts = [\"http://{origin}\"]\n\n"
            ));
        }
        config
    }

    /// Build and compile both builds of the worker once, before any test
    /// serves it.
    fn warm_up() {
        static WARM: Once = Once::new();
        WARM.call_once(|| {
            let project = Project::new(&config("127.0.0.1:9".parse().unwrap()));
            let output = run_isola(&["compile", project.config().to_str().unwrap()]);
            assert!(
                output.status.success(),
                "building the clone-stream worker failed:\n{}",
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

    /// What the client got of one response.
    #[derive(Debug)]
    struct Received {
        status: u16,
        cache: Option<String>,
        bytes: u64,
        /// The first byte (of the body) that was not the pattern's.
        wrong_at: Option<u64>,
        /// When the first and the last bytes of the body came.
        first: Option<Instant>,
        last: Instant,
    }

    /// GET `path`, reading the body as fast as it comes, checking it against
    /// the pattern and counting it in `origin.received` as it goes.
    async fn receive(server: &Server, origin: &Origin, path: &str) -> Received {
        origin.received.store(0, Ordering::SeqCst);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let mut response = client
            .get(server.url(path))
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        let cache = response
            .headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_owned());
        let (mut bytes, mut wrong_at, mut first) = (0u64, None, None);
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => panic!(
                    "GET {path}: the body broke off after {bytes} bytes: {e}; logs:\n{}",
                    server.logs()
                ),
            };
            first.get_or_insert_with(Instant::now);
            if wrong_at.is_none() {
                wrong_at = first_difference(bytes, &chunk).map(|at| bytes + at as u64);
            }
            bytes += chunk.len() as u64;
            origin.received.store(bytes, Ordering::SeqCst);
        }
        Received {
            status,
            cache,
            bytes,
            wrong_at,
            first,
            last: Instant::now(),
        }
    }

    /// The client got all `total` bytes of the pattern, with a 200.
    fn assert_whole(got: &Received, total: u64, path: &str, server: &Server) {
        assert_eq!(
            (got.status, got.bytes, got.wrong_at),
            (200, total, None),
            "GET {path}: {got:?}; logs:\n{}",
            server.logs()
        );
    }

    /// The request's access line (logged when its instance is done, waitUntil
    /// tasks included) names no limit.
    fn assert_no_limit(server: &Server, path: &str) {
        let needle = format!("path={path} ");
        let logs = server.wait_for_line(|l| l.contains("isola::access") && l.contains(&needle));
        let line = logs
            .lines()
            .find(|l| l.contains("isola::access") && l.contains(&needle))
            .unwrap();
        assert!(line.contains("limit=none"), "{line}\n{logs}");
    }

    /// The clone is read as fast as it comes: 100 MiB through a 32 MiB
    /// instance. The client gets every byte, the clone reads the same ones.
    async fn fast_clone(server: &Server, origin: &Origin, route: &str, mib: u64) {
        let id = format!("{route}-fast");
        let path = format!("/{route}/fast/{id}");
        let got = receive(server, origin, &format!("{path}?mib={mib}")).await;
        assert_whole(&got, mib * MIB, &path, server);
        let (n, bad, _) = origin.done(&id, server).await;
        assert_eq!((n, bad), (mib * MIB, 0), "what the clone read");
        assert_no_limit(server, &path);
    }

    /// The clone is the slower branch: its reader stops every `every` MiB
    /// until the origin answers its report. Whenever it is stopped, the client
    /// has all it has read (the response streams while the clone is read) and
    /// at most [`LEAD`] more (the faster branch waits, the buffer does not
    /// grow); the body is larger than the instance's memory.
    async fn slow_clone(server: &Server, origin: &Origin, route: &str, mib: u64, every: u64) {
        let id = format!("{route}-slow");
        let path = format!("/{route}/slow/{id}");
        let started = Instant::now();
        let got = receive(server, origin, &format!("{path}?mib={mib}&every={every}")).await;
        assert_whole(&got, mib * MIB, &path, server);
        let (n, bad, finished) = origin.done(&id, server).await;
        assert_eq!((n, bad), (mib * MIB, 0), "what the clone read");
        let progress = origin.progress(&id);
        assert_eq!(progress.len() as u64, mib / every, "{progress:?}");
        for &(clone_at, client_had) in &progress {
            assert!(
                client_had >= clone_at && client_had <= clone_at + LEAD,
                "the clone had read {clone_at} bytes and the client had {client_had}, \
                 not between those and {LEAD} more: {progress:?}"
            );
        }
        // The client's first bytes came long before the clone was done, and
        // its last ones only once the clone had been held nearly every time.
        let first = got.first.unwrap().duration_since(started);
        let last = got.last.duration_since(started);
        let clone_took = finished.duration_since(started);
        assert!(
            first + HOLD * 2 < clone_took,
            "first byte after {first:?}, the clone done after {clone_took:?}"
        );
        assert!(
            last >= HOLD * (mib / every - 1) as u32,
            "the client had the body after {last:?}, the clone was held {HOLD:?} {} times",
            mib / every
        );
        assert_no_limit(server, &path);
    }

    /// `ctx.waitUntil(caches.default.put(request, r.clone()))` while `r`
    /// streams to the client: the cache gets the whole body (then serves it).
    async fn cache_put_of_the_clone(server: &Server, origin: &Origin, route: &str, mib: u64) {
        let path = format!("/{route}/cache/{route}-cache?mib={mib}");
        let got = receive(server, origin, &path).await;
        assert_whole(&got, mib * MIB, &path, server);
        assert_eq!(got.cache, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = receive(server, origin, &path).await;
            assert_whole(&got, mib * MIB, &path, server);
            if got.cache.as_deref() == Some("hit") {
                break;
            }
            assert!(Instant::now() < deadline, "never served from the cache");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The access lines of the requests for `path`, once there are `n`
    /// (each is logged when its run is done, waitUntil included): none
    /// names a limit.
    fn assert_runs_within_limits(server: &Server, path: &str, n: usize) {
        let needle = format!("path={path} ");
        let deadline = Instant::now() + Duration::from_secs(60);
        let lines = loop {
            let logs = server.logs();
            let lines: Vec<String> = logs
                .lines()
                .filter(|l| l.contains("isola::access") && l.contains(&needle))
                .map(str::to_owned)
                .collect();
            if lines.len() >= n {
                break lines;
            }
            assert!(
                Instant::now() < deadline,
                "{n} runs of {path} never ended; logs:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        for line in lines {
            assert!(line.contains("limit=none"), "{line}\n{}", server.logs());
        }
    }

    /// `cache_put_of_the_clone` with a body larger than the instance's
    /// memory: the put streams the clone into the cache while the response
    /// streams to the client, and the next request is a hit that streams
    /// the stored body; every byte arrives both times, within the limits.
    async fn cache_put_of_a_large_clone(server: &Server, origin: &Origin, route: &str, mib: u64) {
        let path = format!("/{route}/cache/{route}-large");
        let query = format!("{path}?mib={mib}");
        let got = receive(server, origin, &query).await;
        assert_whole(&got, mib * MIB, &path, server);
        assert_eq!(got.cache, None);
        // The put is done (it ran in waitUntil) once the run's line is out.
        assert_runs_within_limits(server, &path, 1);
        let hit = receive(server, origin, &query).await;
        assert_whole(&hit, mib * MIB, &path, server);
        assert_eq!(hit.cache.as_deref(), Some("hit"), "{}", server.logs());
        assert_runs_within_limits(server, &path, 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_fresh_instance_caches_a_response_larger_than_its_memory() {
        let (origin, _project, server) = serve().await;
        cache_put_of_a_large_clone(&server, &origin, "fresh", 80).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_fresh_instance_streams_a_cloned_response_larger_than_its_memory() {
        let (origin, _project, server) = serve().await;
        fast_clone(&server, &origin, "fresh", 100).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_slow_clone_holds_the_response_back_by_at_most_the_bound() {
        let (origin, _project, server) = serve().await;
        slow_clone(&server, &origin, "fresh", 40, 4).await;
        cache_put_of_the_clone(&server, &origin, "fresh", 4).await;
    }

    /// On a reused instance the shim sends the response itself, through
    /// componentize-js's bindings, which (in 0.23) free what an import call
    /// took only when the export call returns: every byte of a streamed
    /// response stays in guest memory until the request ends, tee or no tee.
    /// So the bodies here fit in `memory_mb`; the tee's behaviour (bytes,
    /// bound) is the same as on a fresh instance.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_reused_instance_streams_a_cloned_response() {
        let (origin, _project, server) = serve().await;
        fast_clone(&server, &origin, "reused", 16).await;
        slow_clone(&server, &origin, "reused", 16, 2).await;
        cache_put_of_the_clone(&server, &origin, "reused", 4).await;
    }
}
