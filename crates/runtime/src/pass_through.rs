//! `passThroughOnException`: when a guest that asked for it fails before
//! responding, the original request goes to the worker's origin instead.
//!
//! Replaying the request needs its body, so for workers with an origin the
//! body is kept while the guest gets it, up to the worker's
//! `pass_through_buffer_kb` (sized or chunked); a larger body streams on to
//! the guest and cannot be passed through (the log says so if it comes to
//! it).

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use wasmtime_wasi_http::{Error, WasiBody};

use crate::body::Body;
use crate::client::OutboundClient;

/// The default of `pass_through_buffer_kb`: request bodies up to this size
/// are kept for a pass-through replay.
pub const REPLAY_BUFFER_LIMIT: u64 = 1 << 20;

/// The parts of a request needed to send it again.
pub(crate) struct Replay {
    method: http::Method,
    path_and_query: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// Read `request`'s body while it fits in `limit` bytes; return the request
/// for the guest (its body whole again, or what was read followed by the
/// rest of the stream) and, when it all fit, the replay.
pub(crate) async fn prepare(
    request: http::Request<WasiBody>,
    limit: u64,
) -> Result<(http::Request<WasiBody>, Option<Replay>), Error> {
    use http_body::Body as _;
    if request
        .body()
        .size_hint()
        .exact()
        .is_some_and(|len| len > limit)
    {
        return Ok((request, None));
    }
    let (parts, body) = request.into_parts();
    let mut frames = BodyStream::new(body);
    let mut kept = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = frames.next().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => {
                kept.extend_from_slice(&data);
                if kept.len() as u64 > limit {
                    // Too large to keep: the guest gets what was read, then
                    // the rest as it comes.
                    let read = futures_util::stream::iter([Ok(Frame::data(kept.freeze()))]);
                    let body = StreamBody::new(read.chain(frames)).boxed_unsync();
                    return Ok((http::Request::from_parts(parts, body), None));
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    let body = kept.freeze();
    let replay = Replay {
        method: parts.method.clone(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned()),
        headers: parts.headers.clone(),
        body: body.clone(),
    };
    let body = match trailers {
        None => Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
        Some(trailers) => {
            let frames = [Ok(Frame::data(body)), Ok(Frame::trailers(trailers))];
            StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
        }
    };
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
