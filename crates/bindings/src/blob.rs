//! R2: object buckets with streamed bodies. Embedded backend: object bytes
//! in the filesystem through `object_store`, metadata in an SQLite index.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::Result;

pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_LIST_LIMIT: u32 = 1000;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpMetadata {
    pub content_type: Option<String>,
    pub content_language: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub cache_control: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Hex MD5 of the body.
    pub etag: String,
    /// Milliseconds since the Unix epoch.
    pub uploaded: u64,
    pub http_metadata: HttpMetadata,
    pub custom_metadata: Vec<(String, String)>,
}

/// `offset` + `length`, or the last `suffix` bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Range {
    pub offset: Option<u64>,
    pub length: Option<u64>,
    pub suffix: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub http_metadata: HttpMetadata,
    pub custom_metadata: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub prefix: Option<String>,
    pub delimiter: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListResult {
    pub objects: Vec<ObjectInfo>,
    pub delimited_prefixes: Vec<String>,
    pub truncated: bool,
    pub cursor: Option<String>,
}

pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// An object being written. Dropping it without `finish` stores nothing.
#[async_trait]
pub trait BlobUpload: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<()>;
    async fn finish(self: Box<Self>) -> Result<ObjectInfo>;
}

/// A blob backend. Keys reach it validated by [`validate_key`].
#[async_trait]
pub trait BlobStore: Send + Sync {
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>>;
    /// The object and the bytes of `range` (all of them without one).
    /// A range that starts beyond the end is an `Invalid` error.
    async fn get(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range>,
    ) -> Result<Option<(ObjectInfo, BodyStream)>>;
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        options: PutOptions,
    ) -> Result<Box<dyn BlobUpload>>;
    /// Deleting a missing key is not an error.
    async fn delete(&self, bucket: &str, keys: &[String]) -> Result<()>;
    async fn list(&self, bucket: &str, options: ListOptions) -> Result<ListResult>;
}

/// Reject keys that could escape the bucket or that no filesystem stores
/// faithfully: empty, over 1024 bytes, NUL, a leading `/`, `.` or `..`
/// segments, backslashes.
pub fn validate_key(key: &str) -> Result<()> {
    todo!()
}

/// The embedded backend: `<dir>/<bucket>/...` plus `<dir>/index.sqlite`.
pub struct FsBlobStore {}

impl FsBlobStore {
    pub fn new(dir: &std::path::Path) -> Result<Self> {
        todo!()
    }
}
