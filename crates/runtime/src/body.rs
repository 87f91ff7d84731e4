//! The body type of a worker's responses.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// Why a response body could not be read to its end: the guest trapped
/// mid-stream, say. wasmtime-wasi-http's error type, re-exported on
/// purpose: the body streams from the guest without a copy or a re-wrap.
pub use wasmtime_wasi_http::Error as BodyError;

/// The body of a response produced by a worker; it streams from the guest.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BodyError>;

/// A body holding `bytes`, in the worker response body type.
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
