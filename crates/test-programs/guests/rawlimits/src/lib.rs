//! Handlers the SDK would never write, on raw `wasi:http`:
//!
//! - `/no-response`: return without setting a response
//! - `/hang`: never set a response, sleeping forever
//! - `/respond-then-spin`: send a full 200, then loop forever

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

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
            _ => respond(
                response_out,
                b"try /no-response, /hang or /respond-then-spin\n",
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

wasi::http::proxy::export!(Handler);
