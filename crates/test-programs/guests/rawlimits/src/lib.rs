//! Handlers the SDK would never write, on raw `wasi:http`:
//!
//! - `/no-response`: return without setting a response
//! - `/hang`: never set a response, sleeping forever
//! - `/respond-then-spin`: send a full 200, then loop forever
//! - `/echo`: stream the request body back as the response body, through
//!   the guest's memory (`wasi:io` reads and writes, 64 KiB at most)
//! - `/splice`: the same with `blocking-splice`, host stream to host stream

use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::{OutputStream, StreamError};

struct Handler;

impl wasi::exports::http::incoming_handler::Guest for Handler {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        match request.path_with_query().as_deref() {
            Some("/no-response") => {}
            Some("/hang") => loop {
                wasi::clocks::monotonic_clock::subscribe_duration(60_000_000_000).block();
            },
            Some("/respond-then-spin") => {
                respond(response_out, b"sent before spinning\n");
                loop {
                    core::hint::black_box(());
                }
            }
            Some("/echo") => echo(request, response_out, false),
            Some("/splice") => echo(request, response_out, true),
            _ => respond(
                response_out,
                b"try /no-response, /hang, /respond-then-spin, /echo or /splice\n",
            ),
        }
    }
}

fn respond(out: ResponseOutparam, body: &[u8]) {
    let response = OutgoingResponse::new(Fields::new());
    let outgoing = response.body().expect("the body is taken once");
    ResponseOutparam::set(out, Ok(response));
    {
        let stream = outgoing.write().expect("the stream is taken once");
        stream
            .blocking_write_and_flush(body)
            .expect("writing the body");
    }
    OutgoingBody::finish(outgoing, None).expect("finishing the body");
}

/// Answer 200 with the request's body, streamed: read and written (or
/// spliced) as it arrives.
fn echo(request: IncomingRequest, out: ResponseOutparam, splice: bool) {
    let body = request.consume().expect("the body is taken once");
    let response = OutgoingResponse::new(Fields::new());
    let outgoing = response.body().expect("the body is taken once");
    ResponseOutparam::set(out, Ok(response));
    {
        let input = body.stream().expect("the stream is taken once");
        let output = outgoing.write().expect("the stream is taken once");
        loop {
            let moved = if splice {
                output.blocking_splice(&input, 1 << 20).map(drop)
            } else {
                input
                    .blocking_read(64 << 10)
                    .map(|chunk| write_all(&output, &chunk))
            };
            match moved {
                Ok(()) => {}
                Err(StreamError::Closed) => break,
                Err(e) => panic!("streaming the body: {e:?}"),
            }
        }
        output.blocking_flush().expect("flushing the body");
    }
    IncomingBody::finish(body);
    OutgoingBody::finish(outgoing, None).expect("finishing the body");
}

/// Write all of `bytes` as the stream lets us (`check-write`, waiting
/// while it is full).
fn write_all(output: &OutputStream, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let room = output.check_write().expect("writing the body");
        if room == 0 {
            output.subscribe().block();
            continue;
        }
        let n = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        output.write(&bytes[..n]).expect("writing the body");
        bytes = &bytes[n..];
    }
}

wasi::http::proxy::export!(Handler);
