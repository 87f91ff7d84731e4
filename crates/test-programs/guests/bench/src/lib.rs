//! The benchmark's Rust guest, on plain `wasi:http/proxy` so that Isola and
//! `wasmtime serve` run the very same component:
//!
//! - `GET /`: `Hello from Isola!\n`
//! - `GET /compute`: a fixed 1,000,000-step loop, answering its checksum
//! - `POST /echo`: the request body back, with its content type (the bench
//!   sends 10 KiB of JSON)
//! - `GET /stream`: 1 MiB, written in 64 KiB chunks as the client reads
//! - `GET /sleep?ms=N`: answer after N ms (memory per in-flight instance)
//! - `GET /proxy/<path>`: `GET $ORIGIN/<path>` (`ORIGIN` an environment
//!   variable, `http://host:port`) through `wasi:http/outgoing-handler`,
//!   its status, headers and body streamed back (502 if it fails)

use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

const COMPUTE_STEPS: u64 = 1_000_000;
const STREAM_BYTES: usize = 1 << 20;
const STREAM_CHUNK: usize = 64 << 10;

struct Handler;

impl wasi::exports::http::incoming_handler::Guest for Handler {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (path, query) = path.split_once('?').unwrap_or((&path, ""));
        match path {
            "/" => respond(out, 200, "text/plain", &[b"Hello from Isola!\n"]),
            "/compute" => {
                let body = format!("{}\n", checksum(COMPUTE_STEPS));
                respond(out, 200, "text/plain", &[body.as_bytes()]);
            }
            "/echo" => {
                let content_type = request
                    .headers()
                    .get("content-type")
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| b"application/octet-stream".to_vec());
                let body = read_body(&request);
                let content_type = String::from_utf8_lossy(&content_type).into_owned();
                respond(out, 200, &content_type, &[&body]);
            }
            "/stream" => {
                let chunk = vec![b'x'; STREAM_CHUNK];
                let chunks = vec![chunk.as_slice(); STREAM_BYTES / STREAM_CHUNK];
                respond(out, 200, "application/octet-stream", &chunks);
            }
            "/sleep" => {
                let ms: u64 = query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("ms="))
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(1000);
                wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                respond(out, 200, "text/plain", &[b"slept\n"]);
            }
            _ if path.starts_with("/proxy/") || path == "/proxy" => {
                let rest = &path["/proxy".len()..];
                let rest = if rest.is_empty() { "/" } else { rest };
                let target = if query.is_empty() {
                    rest.to_owned()
                } else {
                    format!("{rest}?{query}")
                };
                proxy(&request, out, &target);
            }
            _ => respond(out, 404, "text/plain", &[b"not found\n"]),
        }
    }
}

/// Forward `GET target` to `$ORIGIN` and stream its answer back; 502 with
/// the reason when the origin cannot be reached.
fn proxy(request: &IncomingRequest, out: ResponseOutparam, target: &str) {
    let origin = wasi::cli::environment::get_environment()
        .into_iter()
        .find_map(|(key, value)| (key == "ORIGIN").then_some(value))
        .unwrap_or_default();
    let (scheme, authority) = match origin.split_once("://") {
        Some(("https", authority)) => (Scheme::Https, authority.trim_end_matches('/')),
        Some((_, authority)) => (Scheme::Http, authority.trim_end_matches('/')),
        None => (Scheme::Http, origin.trim_end_matches('/')),
    };
    // End-to-end headers only: the host refuses hop-by-hop ones (and
    // `host`), so an append that fails is simply left out.
    let headers = Fields::new();
    for (name, value) in request.headers().entries() {
        if name != "host" {
            let _ = headers.append(&name, &value);
        }
    }
    let outgoing = OutgoingRequest::new(headers);
    let _ = outgoing.set_method(&Method::Get);
    let _ = outgoing.set_scheme(Some(&scheme));
    let _ = outgoing.set_authority(Some(authority));
    let _ = outgoing.set_path_with_query(Some(target));
    let response = outgoing_handler::handle(outgoing, None).and_then(|future| {
        future.subscribe().block();
        match future.get() {
            Some(Ok(result)) => result,
            _ => unreachable!("a ready future answers once"),
        }
    });
    let response = match response {
        Ok(response) => response,
        Err(error) => {
            let body = format!("origin {origin} unreachable: {error:?}\n");
            return respond(out, 502, "text/plain", &[body.as_bytes()]);
        }
    };
    let headers = Fields::new();
    for (name, value) in response.headers().entries() {
        let _ = headers.append(&name, &value);
    }
    let answer = OutgoingResponse::new(headers);
    let _ = answer.set_status_code(response.status());
    let outgoing = answer.body().expect("the body is taken once");
    ResponseOutparam::set(out, Ok(answer));
    let incoming = response.consume().expect("the body is taken once");
    {
        let from = incoming.stream().expect("the stream is taken once");
        let to = outgoing.write().expect("the stream is taken once");
        // Until the origin's body ends (Closed) or the client goes away.
        while to.blocking_splice(&from, 64 << 10).is_ok() {}
    }
    let _ = IncomingBody::finish(incoming);
    let _ = OutgoingBody::finish(outgoing, None);
}

/// A loop the optimizer cannot fold away: xorshift steps summed.
fn checksum(steps: u64) -> u64 {
    let (mut state, mut sum) = (0x9e37_79b9_7f4a_7c15_u64, 0u64);
    for _ in 0..steps {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        sum = sum.wrapping_add(state);
    }
    sum
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let body = request.consume().expect("the body is taken once");
    let mut bytes = Vec::new();
    {
        let stream = body.stream().expect("the stream is taken once");
        while let Ok(chunk) = stream.blocking_read(64 << 10) {
            bytes.extend_from_slice(&chunk);
        }
    }
    IncomingBody::finish(body);
    bytes
}

fn respond(out: ResponseOutparam, status: u16, content_type: &str, chunks: &[&[u8]]) {
    let headers =
        Fields::from_list(&[("content-type".to_string(), content_type.as_bytes().to_vec())])
            .expect("a valid header");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("a valid status");
    let outgoing = response.body().expect("the body is taken once");
    ResponseOutparam::set(out, Ok(response));
    {
        let stream = outgoing.write().expect("the stream is taken once");
        for chunk in chunks {
            // blocking_write_and_flush takes at most 4 KiB per call.
            for piece in chunk.chunks(4096) {
                if stream.blocking_write_and_flush(piece).is_err() {
                    return; // the client went away
                }
            }
        }
    }
    OutgoingBody::finish(outgoing, None).expect("finishing the body");
}

wasi::http::proxy::export!(Handler);
