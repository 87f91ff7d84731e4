//! `passThroughOnException`: when a guest that asked for it fails before
//! responding, the original request goes to the worker's origin instead.
//!
//! Replaying the request needs its body, so for workers with an origin the
//! body is buffered before the guest starts, when its length is known and at
//! most [`REPLAY_BUFFER_LIMIT`]; other requests run streamed and cannot be
//! passed through (the log says so if it comes to it).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::{Error, WasiBody};

use crate::body::Body;
use crate::client::OutboundClient;

/// Largest request body kept for a pass-through replay.
pub const REPLAY_BUFFER_LIMIT: u64 = 1 << 20;

/// The parts of a request needed to send it again.
pub(crate) struct Replay {
    method: http::Method,
    path_and_query: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// Buffer `request`'s body for a replay if that is possible; return the
/// request for the guest (with a buffered or streaming body) and the replay.
pub(crate) async fn prepare(
    request: http::Request<WasiBody>,
) -> Result<(http::Request<WasiBody>, Option<Replay>), Error> {
    use http_body::Body as _;
    let fits = request
        .body()
        .size_hint()
        .exact()
        .is_some_and(|len| len <= REPLAY_BUFFER_LIMIT);
    if !fits {
        return Ok((request, None));
    }
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let replay = Replay {
        method: parts.method.clone(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned()),
        headers: parts.headers.clone(),
        body: body.clone(),
    };
    let body = Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync();
    Ok((http::Request::from_parts(parts, body), Some(replay)))
}

/// Send the original request to `origin` and return its response.
pub(crate) async fn forward(origin: &str, replay: Replay) -> Result<http::Response<Body>, Error> {
    let uri: http::Uri = format!("{origin}{}", replay.path_and_query)
        .parse()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let mut request = http::Request::builder()
        .method(replay.method)
        .uri(uri)
        .body(
            Full::new(replay.body)
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    *request.headers_mut() = replay.headers;
    // The origin is the operator's, named in the config: any address.
    let origin_timeout = std::time::Duration::from_secs(600);
    let response = OutboundClient::shared()
        .send(request, false, origin_timeout, origin_timeout)
        .await?;
    Ok(response)
}
