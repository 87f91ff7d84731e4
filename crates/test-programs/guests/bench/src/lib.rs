//! The benchmark's Rust guest, on plain `wasi:http/proxy` so that Isola and
//! `wasmtime serve` run the very same component:
//!
//! - `GET /`: `Hello from Isola!\n`
//! - `GET /compute`: a fixed 1,000,000-step loop, answering its checksum
//! - `POST /echo`: the request body back, with its content type (the bench
//!   sends 10 KiB of JSON)
//! - `GET /stream`: 1 MiB, written in 64 KiB chunks as the client reads
//! - `GET /sleep?ms=N`: answer after N ms (memory per in-flight instance)

use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
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
            _ => respond(out, 404, "text/plain", &[b"not found\n"]),
        }
    }
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
