//! The embedded R2 backend: object bytes in the filesystem through
//! `object_store`, metadata in an SQLite index.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    BlobStore, BlobUpload, BodyStream, HttpMetadata, ListPage, ListQuery, LowerBound, ObjectInfo,
    PART_BYTES, PARTS_IN_FLIGHT, PutOptions, Range, Resume, lower_bound, resolve_range,
};
use crate::embedded::LazyConn;
use crate::error::{BindingError, Result, backend_err};
use crate::util::lock;

/// The embedded backend: `<dir>/<bucket>/...` plus `<dir>/index.sqlite`.
///
/// Object bytes do not live under their key: each upload gets a fresh file
/// `<bucket>/<2 hex of md5(key)>/<unique version>`, and the index row maps
/// (bucket, key) to it. Keys therefore never meet the filesystem (no
/// escaping, no 255-byte name limit, `a` and `a/b` can coexist, `a//b` and
/// `dir/` are fine), and an overwrite publishes a complete new file before
/// the index switches to it, so a reader holds either the old object and
/// its metadata or the new ones, never a mix. The replaced file is deleted
/// after the switch; a reader that had already opened it keeps reading it.
/// A crash between those steps leaves an unreferenced file, never a broken
/// object.
pub struct FsBlobStore {
    dir: PathBuf,
    index: Arc<LazyConn>,
    buckets: Mutex<HashMap<String, Arc<LocalFileSystem>>>,
}

impl FsBlobStore {
    pub fn new(dir: &std::path::Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BindingError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        Ok(FsBlobStore {
            dir: dir.to_owned(),
            // One connection behind a mutex, used only in spawn_blocking:
            // index statements are single-row or one range scan, and SQLite
            // has one writer per file anyway.
            index: Arc::new(LazyConn::new(&dir.join("index.sqlite"), create_index)),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// The object store rooted at `<dir>/<bucket>/`, created on first use.
    /// The directory is made inline (once per bucket per process, a couple
    /// of syscalls), not worth a trip to the blocking pool.
    fn bucket(&self, bucket: &str) -> Result<Arc<LocalFileSystem>> {
        let mut buckets = lock(&self.buckets);
        if let Some(store) = buckets.get(bucket) {
            return Ok(store.clone());
        }
        let root = self.dir.join(bucket);
        std::fs::create_dir_all(&root)
            .map_err(|e| BindingError::Backend(format!("cannot create {}: {e}", root.display())))?;
        // fsync before the index refers to a file: the index row must never
        // outlive (on power loss) the bytes it points at.
        let store = Arc::new(
            LocalFileSystem::new_with_prefix(&root)
                .map_err(backend_err)?
                .with_fsync(true),
        );
        buckets.insert(bucket.to_owned(), store.clone());
        Ok(store)
    }

    async fn with_index<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.index.run(f).await
    }

    async fn lookup(&self, bucket: &str, key: &str) -> Result<Option<(ObjectInfo, String)>> {
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        self.with_index(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS}, path FROM objects WHERE bucket = ?1 AND key = ?2"
            ))
            .and_then(|mut stmt| {
                stmt.query_row(params![bucket, key], |row| {
                    Ok((object_info(row)?, row.get::<_, String>(6)?))
                })
                .optional()
            })
            .map_err(backend_err)
        })
        .await
    }
}

fn create_index(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS objects (
             bucket TEXT NOT NULL,
             key TEXT NOT NULL,
             path TEXT NOT NULL,
             size INTEGER NOT NULL,
             etag TEXT NOT NULL,
             uploaded INTEGER NOT NULL,
             http_metadata TEXT NOT NULL,
             custom_metadata TEXT NOT NULL,
             PRIMARY KEY (bucket, key)
         ) WITHOUT ROWID;",
    )
}

/// A unique file name for one upload: time, process and a counter, so two
/// processes sharing the state dir never pick the same one.
fn new_version_path(key: &str) -> StorePath {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let spread = Md5::digest(key.as_bytes());
    StorePath::from(format!(
        "{}/{nanos:x}-{:x}-{:x}",
        crate::util::hex(&spread[..1]),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

const COLUMNS: &str = "key, size, etag, uploaded, http_metadata, custom_metadata";

fn object_info(row: &rusqlite::Row<'_>) -> rusqlite::Result<ObjectInfo> {
    let http: String = row.get(4)?;
    let custom: String = row.get(5)?;
    Ok(ObjectInfo {
        key: row.get(0)?,
        size: row.get::<_, i64>(1)? as u64,
        etag: row.get(2)?,
        uploaded: row.get::<_, i64>(3)? as u64,
        http_metadata: http_from_json(&http),
        custom_metadata: serde_json::from_str(&custom).unwrap_or_default(),
    })
}

const HTTP_FIELDS: [&str; 5] = [
    "contentType",
    "contentLanguage",
    "contentDisposition",
    "contentEncoding",
    "cacheControl",
];

fn http_fields(m: &HttpMetadata) -> [&Option<String>; 5] {
    [
        &m.content_type,
        &m.content_language,
        &m.content_disposition,
        &m.content_encoding,
        &m.cache_control,
    ]
}

fn http_to_json(m: &HttpMetadata) -> String {
    let map: serde_json::Map<String, serde_json::Value> = HTTP_FIELDS
        .iter()
        .zip(http_fields(m))
        .filter_map(|(name, value)| Some((name.to_string(), value.clone()?.into())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

fn http_from_json(json: &str) -> HttpMetadata {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json).unwrap_or_default();
    let get = |name: &str| map.get(name).and_then(|v| v.as_str()).map(String::from);
    HttpMetadata {
        content_type: get(HTTP_FIELDS[0]),
        content_language: get(HTTP_FIELDS[1]),
        content_disposition: get(HTTP_FIELDS[2]),
        content_encoding: get(HTTP_FIELDS[3]),
        cache_control: get(HTTP_FIELDS[4]),
    }
}

/// Objects of bucket `?1` from key `?2` (inclusive or not) below `?3` (if
/// `bounded`), at most `?4`. Distinct statement texts rather than `?3 IS
/// NULL OR key < ?3`, so SQLite always sees a plain range it can seek in the
/// primary key.
fn scan_sql(inclusive: bool, bounded: bool) -> String {
    let op = if inclusive { ">=" } else { ">" };
    let upper = if bounded { "key < ?3" } else { "?3 IS NULL" };
    format!(
        "SELECT {COLUMNS} FROM objects
         WHERE bucket = ?1 AND key {op} ?2 AND {upper}
         ORDER BY key LIMIT ?4"
    )
}

/// Feeds objects from `from` (and below `upper`) in key order to `each`
/// until it returns false or `limit` rows were read. Rows are read lazily,
/// so stopping early costs nothing.
fn scan(
    conn: &Connection,
    bucket: &str,
    from: &LowerBound,
    upper: Option<&str>,
    limit: usize,
    mut each: impl FnMut(ObjectInfo) -> bool,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(&scan_sql(from.inclusive, upper.is_some()))?;
    let mut rows = stmt.query(params![bucket, from.key, upper, limit as i64])?;
    while let Some(row) = rows.next()? {
        if !each(object_info(row)?) {
            break;
        }
    }
    Ok(())
}

/// A page of the listing: objects and rolled-up prefixes in key order, at
/// most `limit` of them together (a rolled-up prefix counts like an object,
/// as in R2). After a roll-up the scan jumps past every key under it.
fn list_index(conn: &Connection, bucket: &str, query: &ListQuery) -> rusqlite::Result<ListPage> {
    let (prefix, limit) = (query.prefix.as_str(), query.limit);
    let delimiter = query.delimiter.as_deref();
    let upper = crate::util::prefix_successor(prefix);
    let mut result = ListPage::default();
    let mut count = 0;
    let mut next = lower_bound(prefix, query.resume.as_ref());
    while let Some(from) = next.take() {
        let mut seen = 0;
        // One row more than still fits shows whether the listing goes on.
        scan(
            conn,
            bucket,
            &from,
            upper.as_deref(),
            limit - count + 1,
            |object| {
                seen += 1;
                if count == limit {
                    result.truncated = true;
                    return false;
                }
                count += 1;
                let rest = &object.key[prefix.len()..];
                if let Some(at) = delimiter.and_then(|d| rest.find(d).map(|at| at + d.len())) {
                    let common = object.key[..prefix.len() + at].to_owned();
                    next = lower_bound(prefix, Some(&Resume::PastPrefix(common.clone())));
                    result.delimited_prefixes.push(common.clone());
                    result.last = Some(Resume::PastPrefix(common));
                    return false;
                }
                next = Some(LowerBound {
                    key: object.key.clone(),
                    inclusive: false,
                });
                result.last = Some(Resume::After(object.key.clone()));
                result.objects.push(object);
                true
            },
        )?;
        if seen == 0 || result.truncated {
            break;
        }
    }
    Ok(result)
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn head_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>> {
        Ok(self.lookup(bucket, key).await?.map(|(info, _)| info))
    }

    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range>,
    ) -> Result<Option<(ObjectInfo, BodyStream)>> {
        let store = self.bucket(bucket)?;
        // An overwrite may delete the file between reading its index row and
        // opening it; the row read again then names the new one.
        for _ in 0..5 {
            let Some((info, path)) = self.lookup(bucket, key).await? else {
                return Ok(None);
            };
            let bytes = resolve_range(range, info.size)?;
            if bytes.is_empty() {
                let empty: BodyStream = Box::pin(futures_util::stream::empty());
                return Ok(Some((info, empty)));
            }
            let options = GetOptions {
                range: Some(GetRange::Bounded(bytes)),
                ..GetOptions::default()
            };
            match store.get_opts(&StorePath::from(path), options).await {
                Ok(result) => {
                    let body: BodyStream = result.into_stream().map_err(backend_err).boxed();
                    return Ok(Some((info, body)));
                }
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(backend_err(e)),
            }
        }
        Err(BindingError::Backend(format!(
            "object {key:?} kept changing while being read"
        )))
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        options: PutOptions,
    ) -> Result<Box<dyn BlobUpload>> {
        let store = self.bucket(bucket)?;
        let path = new_version_path(key);
        let upload = store.put_multipart(&path).await.map_err(backend_err)?;
        Ok(Box::new(FsUpload {
            writer: Some(WriteMultipart::new_with_chunk_size(upload, PART_BYTES)),
            hasher: Md5::new(),
            size: 0,
            store,
            index: self.index.clone(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            path,
            options,
        }))
    }

    async fn delete_objects(&self, bucket: &str, keys: &[String]) -> Result<()> {
        let store = self.bucket(bucket)?;
        let (b, keys) = (bucket.to_owned(), keys.to_vec());
        // Index rows first: once they are gone no reader can find the
        // files, which are then removed.
        let paths = self
            .with_index(move |conn| {
                let tx = conn.transaction().map_err(backend_err)?;
                let mut paths = Vec::new();
                {
                    let mut stmt = tx
                        .prepare_cached(
                            "DELETE FROM objects WHERE bucket = ?1 AND key = ?2 RETURNING path",
                        )
                        .map_err(backend_err)?;
                    for key in &keys {
                        let path: Option<String> = stmt
                            .query_row(params![b, key], |row| row.get(0))
                            .optional()
                            .map_err(backend_err)?;
                        paths.extend(path);
                    }
                }
                tx.commit().map_err(backend_err)?;
                Ok(paths)
            })
            .await?;
        for path in paths {
            remove_file(&store, path).await;
        }
        Ok(())
    }

    async fn list_objects(&self, bucket: &str, query: ListQuery) -> Result<ListPage> {
        let bucket = bucket.to_owned();
        self.with_index(move |conn| list_index(conn, &bucket, &query).map_err(backend_err))
            .await
    }
}

/// Best-effort removal of an object file no index row refers to any more;
/// a leftover costs disk space, not correctness, so failures are logged.
async fn remove_file(store: &LocalFileSystem, path: String) {
    match store.delete(&StorePath::from(path.as_str())).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => tracing::warn!(path, error = %e, "could not remove a replaced object file"),
    }
}

/// An upload in progress. Chunks stream to a staging file next to the
/// object's version path (object_store's local multipart upload), hashed on
/// the way. Dropped without `finish`, `WriteMultipart` drops the
/// `LocalUpload`, whose own `Drop` deletes the staging file (on the tokio
/// blocking pool when a runtime is present): nothing was renamed into place
/// and no index row was written, so nothing is visible.
struct FsUpload {
    writer: Option<WriteMultipart>,
    hasher: Md5,
    size: u64,
    store: Arc<LocalFileSystem>,
    index: Arc<LazyConn>,
    bucket: String,
    key: String,
    path: StorePath,
    options: PutOptions,
}

#[async_trait]
impl BlobUpload for FsUpload {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| BindingError::Backend("upload already failed".into()))?;
        self.hasher.update(&chunk);
        self.size += chunk.len() as u64;
        writer
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(backend_err)?;
        writer.put(chunk);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectInfo> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| BindingError::Backend("upload already failed".into()))?;
        // Atomic publish: the local store renames the complete staging file
        // onto the version path.
        writer.finish().await.map_err(backend_err)?;
        let this = *self;
        let info = ObjectInfo {
            key: this.key.clone(),
            size: this.size,
            etag: crate::util::hex(&this.hasher.finalize()),
            uploaded: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
            http_metadata: this.options.http_metadata.clone(),
            custom_metadata: this.options.custom_metadata.clone(),
        };
        let row = info.clone();
        let (bucket, path) = (this.bucket.clone(), this.path.to_string());
        // Switch the index to the new file and learn which file it replaced,
        // in one transaction so concurrent overwrites each remove exactly
        // the file they replaced.
        let replaced = this
            .index
            .run(move |conn| {
                let tx = conn.transaction().map_err(backend_err)?;
                let old: Option<String> = tx
                    .query_row(
                        "SELECT path FROM objects WHERE bucket = ?1 AND key = ?2",
                        params![bucket, row.key],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend_err)?;
                tx.execute(
                    "INSERT INTO objects (bucket, key, path, size, etag, uploaded, http_metadata, custom_metadata)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (bucket, key) DO UPDATE SET
                         path = excluded.path, size = excluded.size, etag = excluded.etag,
                         uploaded = excluded.uploaded, http_metadata = excluded.http_metadata,
                         custom_metadata = excluded.custom_metadata",
                    params![
                        bucket,
                        row.key,
                        path,
                        row.size as i64,
                        row.etag,
                        row.uploaded as i64,
                        http_to_json(&row.http_metadata),
                        serde_json::to_string(&row.custom_metadata).map_err(backend_err)?,
                    ],
                )
                .map_err(backend_err)?;
                tx.commit().map_err(backend_err)?;
                Ok(old)
            })
            .await;
        match replaced {
            Ok(old) => {
                if let Some(old) = old {
                    remove_file(&this.store, old).await;
                }
                Ok(info)
            }
            Err(e) => {
                // Not indexed, so unreachable: remove it.
                remove_file(&this.store, this.path.to_string()).await;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_seeks_in_the_primary_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsBlobStore::new(&dir.path().join("r2")).unwrap();
        s.index
            .with(|conn| {
                for inclusive in [true, false] {
                    for bounded in [true, false] {
                        let upper = Some("b").filter(|_| bounded);
                        let plan = crate::embedded::query_plan(
                            conn,
                            &scan_sql(inclusive, bounded),
                            params!["b", "a", upper, 10],
                        );
                        // SQLite prints `>=` as `>` in query plans.
                        assert!(plan.contains("PRIMARY KEY (bucket=? AND key>?"), "{plan}");
                        assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}
