//! R2: an object bucket bound in `r2_buckets`. Bodies stream both ways:
//! neither the guest nor the host holds a whole object in memory.
//!
//! ```ignore
//! let bucket = env.bucket("BUCKET")?;
//! // Stream the request body in, chunk by chunk.
//! let options = R2PutOptions::new().content_type("image/png");
//! let object = bucket.put("cat.png", &mut req, options).await?;
//! // Stream an object (or the range the client asked for) out.
//! let range = req.header("range").and_then(R2Range::from_header);
//! match bucket.get_range("cat.png", range).await? {
//!     Some(object) => Ok(object.into_response()),
//!     None => Ok(Response::empty(404)),
//! }
//! ```
//!
//! Keys are 1..=1024 bytes; no leading `/`, `.` or `..` segments, NUL or
//! backslash. Every call counts against the request's subrequest budget.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;

use crate::bindings::isola::worker::blob as wit;
use crate::error::check;
use crate::{BodyChunks, HeaderMap, HeaderName, HeaderValue, Request, Response, Result};

/// How many bytes each read of an object body asks for.
const READ_CHUNK: u32 = 64 * 1024;
/// The largest piece handed to the host in one upload write.
const WRITE_CHUNK: usize = 1024 * 1024;

/// A bucket; see [`Env::bucket`](crate::Env::bucket).
#[derive(Debug)]
pub struct Bucket {
    bucket: wit::Bucket,
}

impl Bucket {
    pub(crate) fn open(binding: &str) -> Result<Self> {
        Ok(Bucket {
            bucket: check(wit::Bucket::open(binding))?,
        })
    }

    /// The object's metadata without its body, or `None`.
    pub async fn head(&self, key: &str) -> Result<Option<R2Object>> {
        Ok(check(self.bucket.head(key))?.map(R2Object::from_wit))
    }

    /// The object and its whole body, or `None`.
    pub async fn get(&self, key: &str) -> Result<Option<R2ObjectBody>> {
        self.get_range(key, None).await
    }

    /// The object and the bytes of `range` (all of them for `None`), or
    /// `None` when there is no such object. A range that starts beyond the
    /// end of the object is an [`Invalid`](crate::BindingError::Invalid)
    /// error.
    pub async fn get_range(
        &self,
        key: &str,
        range: impl Into<Option<R2Range>>,
    ) -> Result<Option<R2ObjectBody>> {
        let range = range.into();
        let found = check(self.bucket.get(key, range.map(R2Range::to_wit)))?;
        Ok(found.map(|(object, body)| R2ObjectBody {
            object: R2Object::from_wit(object),
            range,
            body: R2Body { body: Some(body) },
        }))
    }

    /// Store an object, replacing any with the same key. `body` is streamed
    /// to the host: bytes or text, a request (`&mut req`, its body read
    /// chunk by chunk), [`Request::body_chunks`], another object's body, or
    /// any iterator of chunks through [`R2PutBody::chunks`] /
    /// [`R2PutBody::try_chunks`]. If reading the body fails nothing is
    /// stored.
    pub async fn put(
        &self,
        key: &str,
        body: impl Into<R2PutBody>,
        options: R2PutOptions,
    ) -> Result<R2Object> {
        let mut upload = self.upload(key, options).await?;
        match body.into() {
            R2PutBody::Bytes(bytes) => upload.write(&bytes)?,
            R2PutBody::Chunks(chunks) => {
                for chunk in chunks {
                    upload.write(&chunk?)?;
                }
            }
        }
        upload.finish().await
    }

    /// Start writing an object piece by piece; nothing is stored until
    /// [`R2Upload::finish`].
    pub async fn upload(&self, key: &str, options: R2PutOptions) -> Result<R2Upload> {
        let options = wit::PutOptions {
            http_metadata: options.http_metadata.to_wit(),
            custom_metadata: options.custom_metadata.into_iter().collect(),
        };
        Ok(R2Upload {
            upload: check(self.bucket.put(key, &options))?,
        })
    }

    /// Delete one key (`"a"`) or several (`["a", "b"]`, a `Vec`). Deleting
    /// a missing key is not an error.
    pub async fn delete(&self, keys: impl R2Keys) -> Result<()> {
        check(self.bucket.delete(&keys.into_keys()))
    }

    /// One page of objects, in key order. While [`R2Objects::truncated`],
    /// pass its `cursor` to the next call for the next page.
    pub async fn list(&self, options: R2ListOptions) -> Result<R2Objects> {
        let options = wit::ListOptions {
            prefix: options.prefix,
            delimiter: options.delimiter,
            cursor: options.cursor,
            limit: options.limit,
        };
        let result = check(self.bucket.list(&options))?;
        Ok(R2Objects {
            objects: result.objects.into_iter().map(R2Object::from_wit).collect(),
            delimited_prefixes: result.delimited_prefixes,
            truncated: result.truncated,
            cursor: result.cursor,
        })
    }
}

/// An object's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "json", derive(serde::Serialize))]
pub struct R2Object {
    pub key: String,
    /// Bytes in the whole object.
    pub size: u64,
    /// Hex MD5 of the body (unquoted; see [`R2Object::http_etag`]).
    pub etag: String,
    /// Milliseconds since the Unix epoch.
    pub uploaded: u64,
    pub http_metadata: R2HttpMetadata,
    pub custom_metadata: BTreeMap<String, String>,
}

impl R2Object {
    fn from_wit(object: wit::Object) -> Self {
        let http = object.http_metadata;
        R2Object {
            key: object.key,
            size: object.size,
            etag: object.etag,
            uploaded: object.uploaded,
            http_metadata: R2HttpMetadata {
                content_type: http.content_type,
                content_language: http.content_language,
                content_disposition: http.content_disposition,
                content_encoding: http.content_encoding,
                cache_control: http.cache_control,
            },
            custom_metadata: object.custom_metadata.into_iter().collect(),
        }
    }

    /// A bodiless 200 response for a HEAD request: `etag`,
    /// `content-length` (the object's size), `accept-ranges: bytes` and the
    /// HTTP metadata as headers.
    pub fn head_response(&self) -> Response {
        let mut response = Response::empty(200);
        let headers = response.headers_mut();
        self.write_http_metadata(headers);
        if let Ok(etag) = HeaderValue::from_str(&self.http_etag()) {
            headers.insert(http::header::ETAG, etag);
        }
        headers.insert(http::header::CONTENT_LENGTH, self.size.into());
        headers.insert(
            http::header::ACCEPT_RANGES,
            HeaderValue::from_static("bytes"),
        );
        response
    }

    /// The etag quoted, as an `ETag` header carries it.
    pub fn http_etag(&self) -> String {
        format!("\"{}\"", self.etag)
    }

    /// Set the headers the HTTP metadata describes (`content-type`,
    /// `content-language`, `content-disposition`, `content-encoding`,
    /// `cache-control`), like R2's `writeHttpMetadata`. Values that are not
    /// valid header values are skipped.
    pub fn write_http_metadata(&self, headers: &mut HeaderMap) {
        let meta = &self.http_metadata;
        for (name, value) in [
            (http::header::CONTENT_TYPE, &meta.content_type),
            (http::header::CONTENT_LANGUAGE, &meta.content_language),
            (http::header::CONTENT_DISPOSITION, &meta.content_disposition),
            (http::header::CONTENT_ENCODING, &meta.content_encoding),
            (http::header::CACHE_CONTROL, &meta.cache_control),
        ] {
            if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, value);
            }
        }
    }
}

/// The HTTP headers stored with an object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "json", derive(serde::Serialize))]
pub struct R2HttpMetadata {
    pub content_type: Option<String>,
    pub content_language: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub cache_control: Option<String>,
}

impl R2HttpMetadata {
    /// The metadata a request's (or response's) headers carry:
    /// `content-type`, `content-language`, `content-disposition`,
    /// `content-encoding` and `cache-control`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let get = |name: HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        R2HttpMetadata {
            content_type: get(http::header::CONTENT_TYPE),
            content_language: get(http::header::CONTENT_LANGUAGE),
            content_disposition: get(http::header::CONTENT_DISPOSITION),
            content_encoding: get(http::header::CONTENT_ENCODING),
            cache_control: get(http::header::CACHE_CONTROL),
        }
    }

    fn to_wit(&self) -> wit::HttpMetadata {
        wit::HttpMetadata {
            content_type: self.content_type.clone(),
            content_language: self.content_language.clone(),
            content_disposition: self.content_disposition.clone(),
            content_encoding: self.content_encoding.clone(),
            cache_control: self.cache_control.clone(),
        }
    }
}

/// Which bytes of an object [`Bucket::get_range`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum R2Range {
    /// From `offset`, `length` bytes (to the end for `None`).
    Offset { offset: u64, length: Option<u64> },
    /// The last this-many bytes.
    Suffix(u64),
}

impl R2Range {
    /// A single range of a `Range` header: `bytes=A-B`, `bytes=A-` or
    /// `bytes=-N`. `None` for anything else (including several ranges).
    pub fn from_header(value: &str) -> Option<Self> {
        let spec = value.trim().strip_prefix("bytes=")?.trim();
        let (first, last) = spec.split_once('-')?;
        let number = |text: &str| -> Option<u64> {
            let text = text.trim();
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            text.parse().ok()
        };
        if first.trim().is_empty() {
            return Some(R2Range::Suffix(number(last)?));
        }
        let offset = number(first)?;
        if last.trim().is_empty() {
            return Some(R2Range::Offset {
                offset,
                length: None,
            });
        }
        let last = number(last)?;
        let length = last.checked_sub(offset)?.checked_add(1)?;
        Some(R2Range::Offset {
            offset,
            length: Some(length),
        })
    }

    /// The first byte and the number of bytes this range selects from an
    /// object of `size` bytes, or `None` when it selects nothing there.
    pub fn resolve(&self, size: u64) -> Option<(u64, u64)> {
        match *self {
            R2Range::Offset { offset, length } => {
                if offset >= size {
                    return None;
                }
                let available = size - offset;
                let length = length.map_or(available, |l| l.min(available));
                (length > 0).then_some((offset, length))
            }
            R2Range::Suffix(suffix) => {
                let length = suffix.min(size);
                (length > 0).then_some((size - length, length))
            }
        }
    }

    fn to_wit(self) -> wit::Range {
        match self {
            R2Range::Offset { offset, length } => wit::Range {
                offset: Some(offset),
                length,
                suffix: None,
            },
            R2Range::Suffix(suffix) => wit::Range {
                offset: None,
                length: None,
                suffix: Some(suffix),
            },
        }
    }
}

/// An object and its body (or the part of it that was asked for), read
/// from the host as it is consumed. Derefs to its [`R2Object`].
pub struct R2ObjectBody {
    object: R2Object,
    range: Option<R2Range>,
    body: R2Body,
}

impl fmt::Debug for R2ObjectBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("R2ObjectBody")
            .field("object", &self.object)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl Deref for R2ObjectBody {
    type Target = R2Object;

    fn deref(&self) -> &R2Object {
        &self.object
    }
}

impl R2ObjectBody {
    pub fn object(&self) -> &R2Object {
        &self.object
    }

    /// The range that was asked for, if any.
    pub fn range(&self) -> Option<R2Range> {
        self.range
    }

    /// The first byte and the number of bytes the body holds: the whole
    /// object, or the requested range cut to the object's size.
    pub fn body_range(&self) -> (u64, u64) {
        match self.range {
            None => (0, self.object.size),
            Some(range) => range.resolve(self.object.size).unwrap_or((0, 0)),
        }
    }

    /// Split into the metadata and the body.
    pub fn into_parts(self) -> (R2Object, R2Body) {
        (self.object, self.body)
    }

    /// The body's chunks as they are read from the host.
    pub fn chunks(self) -> R2Body {
        self.body
    }

    /// The whole body, in memory.
    pub async fn bytes(self) -> Result<Vec<u8>> {
        let mut all = Vec::new();
        for chunk in self.body {
            all.extend_from_slice(&chunk?);
        }
        Ok(all)
    }

    /// The whole body as UTF-8 text.
    pub async fn text(self) -> Result<String> {
        Ok(String::from_utf8(self.bytes().await?)?)
    }

    /// The whole body parsed as JSON.
    #[cfg(feature = "json")]
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        Ok(serde_json::from_slice(&self.bytes().await?)?)
    }

    /// A response that streams the body to the client without holding it:
    /// status 200, or 206 with `content-range` when a range was asked for;
    /// `etag`, `content-length`, `accept-ranges: bytes` and the object's
    /// HTTP metadata as headers. If reading fails midway the response is
    /// cut off (the handler fails) rather than ending early.
    pub fn into_response(self) -> Response {
        let (offset, length) = self.body_range();
        let mut response = Response::try_stream(self.body);
        let headers = response.headers_mut();
        self.object.write_http_metadata(headers);
        if let Ok(etag) = HeaderValue::from_str(&self.object.http_etag()) {
            headers.insert(http::header::ETAG, etag);
        }
        headers.insert(http::header::CONTENT_LENGTH, length.into());
        headers.insert(
            http::header::ACCEPT_RANGES,
            HeaderValue::from_static("bytes"),
        );
        if self.range.is_some() {
            let end = (offset + length).saturating_sub(1);
            let range = format!("bytes {offset}-{end}/{}", self.object.size);
            headers.insert(
                http::header::CONTENT_RANGE,
                HeaderValue::from_str(&range).expect("a valid header value"),
            );
            response = response.with_status(206);
        }
        response
    }
}

/// An object body being read: an iterator of chunks (at most 64 KiB each)
/// that ends at the end of the body.
pub struct R2Body {
    body: Option<wit::Body>,
}

impl fmt::Debug for R2Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("R2Body").finish_non_exhaustive()
    }
}

impl Iterator for R2Body {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let result = check(self.body.as_ref()?.read(READ_CHUNK));
        match result {
            Ok(chunk) if chunk.is_empty() => {
                self.body = None;
                None
            }
            Ok(chunk) => Some(Ok(chunk)),
            Err(error) => {
                self.body = None;
                Some(Err(error))
            }
        }
    }
}

/// An object being written; see [`Bucket::upload`]. Dropping it without
/// calling [`R2Upload::finish`] stores nothing.
pub struct R2Upload {
    upload: wit::Upload,
}

impl fmt::Debug for R2Upload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("R2Upload").finish_non_exhaustive()
    }
}

impl R2Upload {
    /// Append bytes to the object.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        for piece in bytes.chunks(WRITE_CHUNK) {
            check(self.upload.write(piece))?;
        }
        Ok(())
    }

    /// Store the object (replacing any with the same key).
    pub async fn finish(self) -> Result<R2Object> {
        Ok(R2Object::from_wit(check(wit::Upload::finish(self.upload))?))
    }
}

/// A body for [`Bucket::put`].
pub enum R2PutBody {
    Bytes(Vec<u8>),
    Chunks(Box<dyn Iterator<Item = Result<Vec<u8>>>>),
}

impl fmt::Debug for R2PutBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            R2PutBody::Bytes(bytes) => write!(f, "R2PutBody::Bytes({} bytes)", bytes.len()),
            R2PutBody::Chunks(_) => f.write_str("R2PutBody::Chunks(..)"),
        }
    }
}

impl R2PutBody {
    /// A body made of these chunks, written as they are produced.
    pub fn chunks(chunks: impl IntoIterator<Item = Vec<u8>> + 'static) -> Self {
        R2PutBody::Chunks(Box::new(chunks.into_iter().map(Ok)))
    }

    /// A body made of these chunks; the first error stops the upload and
    /// stores nothing.
    pub fn try_chunks(chunks: impl IntoIterator<Item = Result<Vec<u8>>> + 'static) -> Self {
        R2PutBody::Chunks(Box::new(chunks.into_iter()))
    }
}

impl From<Vec<u8>> for R2PutBody {
    fn from(bytes: Vec<u8>) -> Self {
        R2PutBody::Bytes(bytes)
    }
}

impl From<&[u8]> for R2PutBody {
    fn from(bytes: &[u8]) -> Self {
        R2PutBody::Bytes(bytes.to_vec())
    }
}

impl<const N: usize> From<&[u8; N]> for R2PutBody {
    fn from(bytes: &[u8; N]) -> Self {
        R2PutBody::Bytes(bytes.to_vec())
    }
}

impl From<String> for R2PutBody {
    fn from(text: String) -> Self {
        R2PutBody::Bytes(text.into_bytes())
    }
}

impl From<&str> for R2PutBody {
    fn from(text: &str) -> Self {
        R2PutBody::Bytes(text.as_bytes().to_vec())
    }
}

/// The request body, streamed chunk by chunk.
impl From<BodyChunks> for R2PutBody {
    fn from(chunks: BodyChunks) -> Self {
        R2PutBody::Chunks(Box::new(chunks))
    }
}

/// The request's body, streamed chunk by chunk (the request keeps none).
impl From<&mut Request> for R2PutBody {
    fn from(request: &mut Request) -> Self {
        request.body_chunks().into()
    }
}

/// Another object's body, streamed: a copy that never holds the object.
impl From<R2Body> for R2PutBody {
    fn from(body: R2Body) -> Self {
        R2PutBody::Chunks(Box::new(body))
    }
}

impl From<R2ObjectBody> for R2PutBody {
    fn from(object: R2ObjectBody) -> Self {
        object.body.into()
    }
}

/// How [`Bucket::put`] stores an object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct R2PutOptions {
    pub http_metadata: R2HttpMetadata,
    pub custom_metadata: BTreeMap<String, String>,
}

impl R2PutOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn http_metadata(mut self, metadata: R2HttpMetadata) -> Self {
        self.http_metadata = metadata;
        self
    }

    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.http_metadata.content_type = Some(content_type.into());
        self
    }

    pub fn cache_control(mut self, cache_control: impl Into<String>) -> Self {
        self.http_metadata.cache_control = Some(cache_control.into());
        self
    }

    /// Add one custom metadata entry.
    pub fn custom(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.custom_metadata.insert(name.into(), value.into());
        self
    }
}

/// Which objects [`Bucket::list`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct R2ListOptions {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Usually `/`: keys with more after the prefix are rolled up into
    /// [`R2Objects::delimited_prefixes`].
    pub delimiter: Option<String>,
    /// The `cursor` of the previous page.
    pub cursor: Option<String>,
    /// At most this many (1000, the default, is the maximum).
    pub limit: Option<u32>,
}

impl R2ListOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    pub fn delimiter(mut self, delimiter: impl Into<String>) -> Self {
        self.delimiter = Some(delimiter.into());
        self
    }

    pub fn cursor(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into());
        self
    }

    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// One page of [`Bucket::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct R2Objects {
    pub objects: Vec<R2Object>,
    /// With a delimiter: the prefixes the rolled-up keys share.
    pub delimited_prefixes: Vec<String>,
    /// True when more objects follow: pass `cursor` to the next `list`.
    pub truncated: bool,
    pub cursor: Option<String>,
}

/// The keys [`Bucket::delete`] takes: one key or a collection of them.
pub trait R2Keys {
    fn into_keys(self) -> Vec<String>;
}

impl R2Keys for &str {
    fn into_keys(self) -> Vec<String> {
        vec![self.to_owned()]
    }
}

impl R2Keys for String {
    fn into_keys(self) -> Vec<String> {
        vec![self]
    }
}

impl R2Keys for &String {
    fn into_keys(self) -> Vec<String> {
        vec![self.clone()]
    }
}

impl<K: AsRef<str>> R2Keys for Vec<K> {
    fn into_keys(self) -> Vec<String> {
        self.iter().map(|k| k.as_ref().to_owned()).collect()
    }
}

impl<K: AsRef<str>> R2Keys for &[K] {
    fn into_keys(self) -> Vec<String> {
        self.iter().map(|k| k.as_ref().to_owned()).collect()
    }
}

impl<K: AsRef<str>, const N: usize> R2Keys for [K; N] {
    fn into_keys(self) -> Vec<String> {
        self.iter().map(|k| k.as_ref().to_owned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::R2Range;

    #[test]
    fn range_headers() {
        let offset = |offset, length| {
            Some(R2Range::Offset {
                offset,
                length: Some(length),
            })
        };
        assert_eq!(R2Range::from_header("bytes=0-9"), offset(0, 10));
        assert_eq!(R2Range::from_header("bytes=5-5"), offset(5, 1));
        assert_eq!(
            R2Range::from_header("bytes=7-"),
            Some(R2Range::Offset {
                offset: 7,
                length: None
            })
        );
        assert_eq!(R2Range::from_header("bytes=-3"), Some(R2Range::Suffix(3)));
        assert_eq!(R2Range::from_header("bytes=9-2"), None);
        assert_eq!(R2Range::from_header("bytes=0-1,4-5"), None);
        assert_eq!(R2Range::from_header("items=0-1"), None);
        assert_eq!(R2Range::from_header("bytes=-"), None);
    }

    #[test]
    fn ranges_resolve_against_the_size() {
        let all = R2Range::Offset {
            offset: 2,
            length: None,
        };
        assert_eq!(all.resolve(10), Some((2, 8)));
        assert_eq!(R2Range::Suffix(3).resolve(10), Some((7, 3)));
        assert_eq!(R2Range::Suffix(30).resolve(10), Some((0, 10)));
        assert_eq!(all.resolve(2), None);
    }
}
