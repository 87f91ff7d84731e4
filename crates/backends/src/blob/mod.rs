//! R2: object buckets with streamed bodies. Workers' rules (bucket names,
//! object keys, list limits) and the list cursor are handled here, in the
//! provided methods of [`BlobStore`], in front of the backends: [`fs`]
//! (embedded: object bytes in the filesystem, metadata in an SQLite index)
//! and [`s3`] (shared by every node).

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::error::{BindingError, Result};

pub mod fs;
pub mod s3;

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

/// A blob backend. Callers use the provided methods, which check the
/// bucket name and keys (and the list limit and cursor) once, for every
/// backend; a backend implements the `*_object(s)` methods, which receive
/// them checked.
#[async_trait]
pub trait BlobStore: Send + Sync {
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>> {
        validate_bucket(bucket)?;
        validate_key(key)?;
        self.head_object(bucket, key).await
    }

    /// The object and the bytes of `range` (all of them without one).
    /// A range that starts beyond the end is an `Invalid` error.
    async fn get(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range>,
    ) -> Result<Option<(ObjectInfo, BodyStream)>> {
        validate_bucket(bucket)?;
        validate_key(key)?;
        self.get_object(bucket, key, range).await
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        options: PutOptions,
    ) -> Result<Box<dyn BlobUpload>> {
        validate_bucket(bucket)?;
        validate_key(key)?;
        self.put_object(bucket, key, options).await
    }

    /// Deleting a missing key is not an error.
    async fn delete(&self, bucket: &str, keys: &[String]) -> Result<()> {
        validate_bucket(bucket)?;
        for key in keys {
            validate_key(key)?;
        }
        self.delete_objects(bucket, keys).await
    }

    async fn list(&self, bucket: &str, options: ListOptions) -> Result<ListResult> {
        validate_bucket(bucket)?;
        let limit = options.limit.unwrap_or(MAX_LIST_LIMIT);
        if !(1..=MAX_LIST_LIMIT).contains(&limit) {
            return Err(BindingError::Invalid(format!(
                "list limit is {limit}; it must be between 1 and {MAX_LIST_LIMIT}"
            )));
        }
        let resume = match options.cursor.as_deref().filter(|c| !c.is_empty()) {
            Some(cursor) => Some(decode_cursor(cursor)?),
            None => None,
        };
        let query = ListQuery {
            prefix: options.prefix.unwrap_or_default(),
            delimiter: options.delimiter.filter(|d| !d.is_empty()),
            resume,
            limit: limit as usize,
        };
        let page = self.list_objects(bucket, query).await?;
        let cursor = match (page.truncated, &page.last) {
            (true, Some(last)) => Some(encode_cursor(last)),
            _ => None,
        };
        Ok(ListResult {
            objects: page.objects,
            delimited_prefixes: page.delimited_prefixes,
            truncated: page.truncated,
            cursor,
        })
    }

    /// [`BlobStore::head`], checked.
    async fn head_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>>;
    /// [`BlobStore::get`], checked.
    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range>,
    ) -> Result<Option<(ObjectInfo, BodyStream)>>;
    /// [`BlobStore::put`], checked.
    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        options: PutOptions,
    ) -> Result<Box<dyn BlobUpload>>;
    /// [`BlobStore::delete`], checked.
    async fn delete_objects(&self, bucket: &str, keys: &[String]) -> Result<()>;
    /// A page of [`BlobStore::list`], checked and its cursor decoded.
    async fn list_objects(&self, bucket: &str, query: ListQuery) -> Result<ListPage>;
}

/// A listing as a backend receives it: the limit checked, the cursor
/// decoded, an empty delimiter dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub prefix: String,
    pub delimiter: Option<String>,
    pub resume: Option<Resume>,
    pub limit: usize,
}

/// A page as a backend returns it: objects and rolled-up prefixes in key
/// order, at most `limit` of them together (a rolled-up prefix counts like
/// an object, as in R2), and the last item listed, from which
/// [`BlobStore::list`] makes the cursor of a truncated page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListPage {
    pub objects: Vec<ObjectInfo>,
    pub delimited_prefixes: Vec<String>,
    pub truncated: bool,
    pub last: Option<Resume>,
}

/// Reject keys that could escape the bucket or that no filesystem stores
/// faithfully: empty, over 1024 bytes, NUL, a leading `/`, `.` or `..`
/// segments, backslashes.
pub fn validate_key(key: &str) -> Result<()> {
    let invalid = |why: String| Err(BindingError::Invalid(why));
    if key.is_empty() {
        return invalid("object key is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return invalid(format!(
            "object key is {} bytes; the limit is {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    if key.contains('\0') {
        return invalid(format!("object key {key:?} contains a NUL byte"));
    }
    if key.contains('\\') {
        return invalid(format!("object key {key:?} contains a backslash"));
    }
    if key.starts_with('/') {
        return invalid(format!("object key {key:?} starts with '/'"));
    }
    if key
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return invalid(format!("object key {key:?} has a '.' or '..' path segment"));
    }
    Ok(())
}

fn validate_bucket(bucket: &str) -> Result<()> {
    let valid = !bucket.is_empty()
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(BindingError::Invalid(format!(
            "bucket name {bucket:?} must be made of a-z, 0-9 and '-'"
        )))
    }
}

/// Parts handed to `object_store` while an upload streams in; the local
/// store writes each at its offset as soon as it is full.
pub(crate) const PART_BYTES: usize = 1024 * 1024;
/// Parts in flight per upload before `write` waits (back-pressure).
pub(crate) const PARTS_IN_FLIGHT: usize = 4;

/// The byte range `range` selects in an object of `size` bytes.
pub(crate) fn resolve_range(range: Option<Range>, size: u64) -> Result<std::ops::Range<u64>> {
    let Some(range) = range else {
        return Ok(0..size);
    };
    if let Some(suffix) = range.suffix {
        if range.offset.is_some() || range.length.is_some() {
            return Err(BindingError::Invalid(
                "a range has either a suffix or an offset and length, not both".into(),
            ));
        }
        return Ok(size - suffix.min(size)..size);
    }
    let start = range.offset.unwrap_or(0);
    if start > size {
        return Err(BindingError::Invalid(format!(
            "range offset {start} is beyond the end of the {size}-byte object"
        )));
    }
    let end = match range.length {
        Some(length) => start.saturating_add(length).min(size),
        None => size,
    };
    Ok(start..end)
}

/// Where a listing resumes.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// Strictly after this key (the last object returned).
    After(String),
    /// After every key under this rolled-up prefix.
    PastPrefix(String),
}

/// Cursors are opaque to callers: hex of a tag byte and the key or prefix.
fn encode_cursor(resume: &Resume) -> String {
    let (tag, s) = match resume {
        Resume::After(key) => ('k', key),
        Resume::PastPrefix(prefix) => ('p', prefix),
    };
    crate::util::hex(format!("{tag}{s}").as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<Resume> {
    let text = crate::util::unhex(cursor).and_then(|b| String::from_utf8(b).ok());
    match text.as_deref().map(|t| t.split_at_checked(1)) {
        Some(Some(("k", key))) => Ok(Resume::After(key.to_owned())),
        Some(Some(("p", prefix))) => Ok(Resume::PastPrefix(prefix.to_owned())),
        _ => Err(BindingError::Invalid(format!(
            "list cursor {cursor:?} is not valid"
        ))),
    }
}

/// The first key a listing may still return: `key`, or the first after it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LowerBound {
    pub(crate) key: String,
    pub(crate) inclusive: bool,
}

/// Where a listing under `prefix` continues from `resume`; `None` when
/// nothing can follow.
pub(crate) fn lower_bound(prefix: &str, resume: Option<&Resume>) -> Option<LowerBound> {
    let from = match resume {
        None => LowerBound {
            key: prefix.to_owned(),
            inclusive: true,
        },
        Some(Resume::After(key)) => LowerBound {
            key: key.clone(),
            inclusive: false,
        },
        Some(Resume::PastPrefix(p)) => LowerBound {
            key: crate::util::prefix_successor(p)?,
            inclusive: true,
        },
    };
    // Never start before the prefix (a cursor from another listing).
    Some(if from.key.as_str() < prefix {
        LowerBound {
            key: prefix.to_owned(),
            inclusive: true,
        }
    } else {
        from
    })
}

#[cfg(test)]
mod tests;
