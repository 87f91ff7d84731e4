//! R2 buckets on S3 (or any S3-compatible store) through `object_store`,
//! shared by every node.
//!
//! Everything lives in the one configured S3 bucket: object `key` of R2
//! bucket `b` is stored at `b/<hex of key>`. Hex keeps every valid R2 key
//! faithful (`a//b`, `dir/`, any byte S3 or `object_store` paths would
//! escape or refuse) and keeps S3's listing order equal to the keys' byte
//! order, so prefixes, cursors and delimiter roll-ups work exactly as in
//! the embedded backend (roll-ups are computed here, skipping past each
//! rolled-up prefix with `start-after`).
//!
//! Metadata: the five HTTP fields are the object's own S3 headers
//! (Content-Type, ...); custom metadata (hex of its JSON), the upload time
//! (ms) and, for single-part uploads, the body's MD5 ride in `x-amz-meta-*`
//! headers. Bodies up to 8 MiB are buffered and sent in one PUT, so their
//! ETag is the body's MD5 as in R2; larger ones stream up in 8 MiB parts,
//! and their ETag is S3's multipart ETag (`<hex>-<parts>`), since the
//! metadata must be fixed before the first part is hashed. An upload
//! dropped before `finish` leaves an incomplete multipart upload, which S3
//! never shows (an `AbortIncompleteMultipartUpload` lifecycle rule reclaims
//! it). Listing reads each listed object's metadata with a HEAD (16 at a
//! time). Credentials come from the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as StorePath;
use object_store::{
    Attribute, AttributeValue, Attributes, ClientOptions, GetOptions, GetRange, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions as StorePutOptions, RetryConfig,
    WriteMultipart,
};

use super::{
    BlobStore, BlobUpload, BodyStream, HttpMetadata, ListPage, ListQuery, LowerBound, ObjectInfo,
    PART_BYTES, PARTS_IN_FLIGHT, PutOptions, Range, Resume, lower_bound, resolve_range,
};
use crate::error::{BindingError, Result};

const CUSTOM: &str = "isola-custom";
const UPLOADED: &str = "isola-uploaded";
const MD5: &str = "isola-md5";
/// Bodies up to this size go up in one PUT (ETag = MD5).
const SINGLE_PUT_BYTES: usize = 8 * 1024 * 1024;

pub struct S3BlobStore {
    store: Arc<AmazonS3>,
}

fn s3_err(e: object_store::Error) -> BindingError {
    BindingError::Backend(format!("s3: {e}"))
}

impl S3BlobStore {
    /// Build the client and list the bucket once to check it answers.
    pub async fn connect(endpoint: Option<&str>, region: &str, bucket: &str) -> Result<Self> {
        Self::connect_with(endpoint, region, bucket, None).await
    }

    /// As [`S3BlobStore::connect`], with credentials given here rather
    /// than taken from the environment.
    pub async fn connect_with(
        endpoint: Option<&str>,
        region: &str,
        bucket: &str,
        credentials: Option<(&str, &str)>,
    ) -> Result<Self> {
        Self::connect_tls(endpoint, region, bucket, credentials, None).await
    }

    /// As [`S3BlobStore::connect_with`]; an `https://` endpoint's
    /// certificate is verified against `ca_file` (PEM, one or more CA
    /// certificates) instead of the system's roots.
    pub async fn connect_tls(
        endpoint: Option<&str>,
        region: &str,
        bucket: &str,
        credentials: Option<(&str, &str)>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self> {
        let mut options = ClientOptions::new()
            .with_connect_timeout(crate::remote::IO_TIMEOUT)
            .with_timeout(Duration::from_secs(60));
        if let Some(ca) = ca_file {
            let pem = crate::remote::read_pem(ca, "CA file")?;
            let certs = object_store::Certificate::from_pem_bundle(&pem)
                .map_err(|e| BindingError::Invalid(format!("CA file {}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(BindingError::Invalid(format!(
                    "CA file {} holds no certificate",
                    ca.display()
                )));
            }
            options = options.with_no_system_certificates(true);
            for cert in certs {
                options = options.with_root_certificate(cert);
            }
        }
        let mut builder = AmazonS3Builder::from_env();
        if let Some((key_id, secret)) = credentials {
            builder = builder
                .with_access_key_id(key_id)
                .with_secret_access_key(secret);
        }
        let mut builder = builder
            .with_region(region)
            .with_bucket_name(bucket)
            .with_client_options(options)
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: crate::remote::IO_TIMEOUT,
                ..RetryConfig::default()
            });
        let shown = match endpoint {
            Some(endpoint) => {
                builder = builder
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"));
                format!("{}/{bucket}", crate::remote::redact(endpoint))
            }
            None => format!("s3://{bucket} ({region})"),
        };
        let store = builder
            .build()
            .map_err(|e| BindingError::Invalid(format!("s3 bucket {shown}: {e}")))?;
        let store = Arc::new(store);
        let check = store.clone();
        let probe = async move {
            let mut listing = check.list(Some(&StorePath::from("isola-check")));
            listing.next().await.transpose()
        };
        // The reason a request failed (a certificate, say) is in the
        // error's sources, which its message leaves out.
        let hint = endpoint
            .is_some_and(|e| e.starts_with("https://"))
            .then(|| {
                crate::remote::tls_hint(
                    "S3",
                    &isola_config::BackendTls {
                        ca_file: ca_file.map(std::path::Path::to_owned),
                        ..Default::default()
                    },
                )
            });
        crate::remote::on_background(async move {
            probe.await.map_err(|e| {
                let message = crate::remote::with_sources(&e);
                let hint = hint
                    .filter(|_| crate::remote::is_tls_failure(&message))
                    .unwrap_or_default();
                BindingError::Backend(format!("s3: {message}{hint}"))
            })
        })
        .await
        .map_err(|e| BindingError::Backend(format!("cannot reach {shown}: {e}")))?;
        Ok(S3BlobStore { store })
    }
}

fn path(bucket: &str, key: &str) -> StorePath {
    StorePath::from(format!("{bucket}/{}", crate::util::hex(key.as_bytes())))
}

fn http_attributes(m: &HttpMetadata) -> [(Attribute, &Option<String>); 5] {
    [
        (Attribute::ContentType, &m.content_type),
        (Attribute::ContentLanguage, &m.content_language),
        (Attribute::ContentDisposition, &m.content_disposition),
        (Attribute::ContentEncoding, &m.content_encoding),
        (Attribute::CacheControl, &m.cache_control),
    ]
}

fn attributes(options: &PutOptions, uploaded: u64, md5: Option<&str>) -> Result<Attributes> {
    let mut attributes = Attributes::new();
    for (attribute, value) in http_attributes(&options.http_metadata) {
        if let Some(value) = value {
            attributes.insert(attribute, AttributeValue::from(value.clone()));
        }
    }
    let custom = serde_json::to_string(&options.custom_metadata)
        .map_err(|e| BindingError::Backend(e.to_string()))?;
    attributes.insert(
        Attribute::Metadata(CUSTOM.into()),
        crate::util::hex(custom.as_bytes()).into(),
    );
    attributes.insert(
        Attribute::Metadata(UPLOADED.into()),
        uploaded.to_string().into(),
    );
    if let Some(md5) = md5 {
        attributes.insert(Attribute::Metadata(MD5.into()), md5.to_owned().into());
    }
    Ok(attributes)
}

fn info(key: &str, meta: &object_store::ObjectMeta, attributes: &Attributes) -> ObjectInfo {
    let get = |a: Attribute| attributes.get(&a).map(|v| v.as_ref().to_owned());
    let custom = get(Attribute::Metadata(CUSTOM.into()))
        .and_then(|h| crate::util::unhex(&h))
        .and_then(|json| serde_json::from_slice(&json).ok())
        .unwrap_or_default();
    let etag = get(Attribute::Metadata(MD5.into())).unwrap_or_else(|| {
        meta.e_tag
            .as_deref()
            .unwrap_or_default()
            .trim_matches('"')
            .to_owned()
    });
    ObjectInfo {
        key: key.to_owned(),
        size: meta.size,
        etag,
        uploaded: get(Attribute::Metadata(UPLOADED.into()))
            .and_then(|u| u.parse().ok())
            .unwrap_or_else(|| meta.last_modified.timestamp_millis().max(0) as u64),
        http_metadata: HttpMetadata {
            content_type: get(Attribute::ContentType),
            content_language: get(Attribute::ContentLanguage),
            content_disposition: get(Attribute::ContentDisposition),
            content_encoding: get(Attribute::ContentEncoding),
            cache_control: get(Attribute::CacheControl),
        },
        custom_metadata: custom,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl S3BlobStore {
    /// The object's info and its S3 ETag (for conditional reads).
    async fn head_raw(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(ObjectInfo, Option<String>)>> {
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match self.store.get_opts(&path(bucket, key), options).await {
            Ok(result) => Ok(Some((
                info(key, &result.meta, &result.attributes),
                result.meta.e_tag.clone(),
            ))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_err(e)),
        }
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn head_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>> {
        Ok(self.head_raw(bucket, key).await?.map(|(info, _)| info))
    }

    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range>,
    ) -> Result<Option<(ObjectInfo, BodyStream)>> {
        // The range needs the size first; the read then insists on the
        // same version (If-Match), so an overwrite in between is seen as a
        // change and read again, never as a mix.
        for _ in 0..5 {
            let Some((info, etag)) = self.head_raw(bucket, key).await? else {
                return Ok(None);
            };
            let bytes = resolve_range(range, info.size)?;
            if bytes.is_empty() {
                let empty: BodyStream = Box::pin(futures_util::stream::empty());
                return Ok(Some((info, empty)));
            }
            let options = GetOptions {
                range: Some(GetRange::Bounded(bytes)),
                if_match: etag,
                ..GetOptions::default()
            };
            match self.store.get_opts(&path(bucket, key), options).await {
                Ok(result) => {
                    let body: BodyStream = result.into_stream().map_err(s3_err).boxed();
                    return Ok(Some((info, body)));
                }
                Err(object_store::Error::NotFound { .. })
                | Err(object_store::Error::Precondition { .. }) => continue,
                Err(e) => return Err(s3_err(e)),
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
        Ok(Box::new(S3Upload {
            store: self.store.clone(),
            path: path(bucket, key),
            key: key.to_owned(),
            uploaded: now_ms(),
            options,
            buffer: Vec::new(),
            hasher: Md5::new(),
            size: 0,
            multipart: None,
        }))
    }

    async fn delete_objects(&self, bucket: &str, keys: &[String]) -> Result<()> {
        for key in keys {
            match self.store.delete(&path(bucket, key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(s3_err(e)),
            }
        }
        Ok(())
    }

    async fn list_objects(&self, bucket: &str, query: ListQuery) -> Result<ListPage> {
        let (prefix, limit) = (query.prefix, query.limit);
        let delimiter = query.delimiter;
        let root = StorePath::from(bucket);
        let mut result = ListPage::default();
        let mut keys = Vec::new();
        let mut count = 0;
        let mut next = lower_bound(&prefix, query.resume.as_ref());
        'scan: while let Some(from) = next.take() {
            let mut listing = match start_after(&from) {
                Some(after) => self
                    .store
                    .list_with_offset(Some(&root), &StorePath::from(format!("{bucket}/{after}"))),
                None => self.store.list(Some(&root)),
            };
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(s3_err)?;
                let Some(key) = meta
                    .location
                    .as_ref()
                    .strip_prefix(&format!("{bucket}/"))
                    .and_then(crate::util::unhex)
                    .and_then(|b| String::from_utf8(b).ok())
                else {
                    continue; // Not an object of ours.
                };
                if !key.starts_with(&prefix) {
                    break 'scan; // Listed in key order: past the prefix.
                }
                if count == limit {
                    result.truncated = true;
                    break 'scan;
                }
                count += 1;
                let rest = &key[prefix.len()..];
                if let Some(at) = delimiter
                    .as_deref()
                    .and_then(|d| rest.find(d).map(|at| at + d.len()))
                {
                    let common = key[..prefix.len() + at].to_owned();
                    next = lower_bound(&prefix, Some(&Resume::PastPrefix(common.clone())));
                    result.delimited_prefixes.push(common.clone());
                    result.last = Some(Resume::PastPrefix(common));
                    continue 'scan;
                }
                result.last = Some(Resume::After(key.clone()));
                keys.push(key);
            }
        }
        // Metadata is only on the objects themselves: HEAD each one.
        // An object deleted since it was listed is left out.
        let heads = futures_util::stream::iter(keys.into_iter().map(|key| async move {
            Ok::<_, BindingError>(self.head_raw(bucket, &key).await?.map(|(info, _)| info))
        }))
        .buffered(16)
        .try_collect::<Vec<_>>()
        .await?;
        result.objects = heads.into_iter().flatten().collect();
        Ok(result)
    }
}

/// The S3 `start-after` (hex, under the bucket's root) for a listing that
/// starts at `from`; `None` for the very start.
fn start_after(from: &LowerBound) -> Option<String> {
    let hex = crate::util::hex(from.key.as_bytes());
    if from.inclusive {
        // Every object's name has even length, so dropping the last digit
        // gives a name just before `hex` that no object has.
        (!hex.is_empty()).then(|| hex[..hex.len() - 1].to_owned())
    } else {
        Some(hex)
    }
}

/// An upload: buffered up to [`SINGLE_PUT_BYTES`], then multipart.
struct S3Upload {
    store: Arc<AmazonS3>,
    path: StorePath,
    key: String,
    uploaded: u64,
    options: PutOptions,
    buffer: Vec<u8>,
    hasher: Md5,
    size: u64,
    multipart: Option<WriteMultipart>,
}

#[async_trait]
impl BlobUpload for S3Upload {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.hasher.update(&chunk);
        self.size += chunk.len() as u64;
        if self.multipart.is_none() && self.buffer.len() + chunk.len() <= SINGLE_PUT_BYTES {
            self.buffer.extend_from_slice(&chunk);
            return Ok(());
        }
        if self.multipart.is_none() {
            let options = PutMultipartOptions {
                attributes: attributes(&self.options, self.uploaded, None)?,
                ..PutMultipartOptions::default()
            };
            let upload = self
                .store
                .put_multipart_opts(&self.path, options)
                .await
                .map_err(s3_err)?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES.max(5 << 20));
            writer.write(&std::mem::take(&mut self.buffer));
            self.multipart = Some(writer);
        }
        let writer = self.multipart.as_mut().expect("just set");
        writer
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(s3_err)?;
        writer.put(chunk);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectInfo> {
        let md5 = crate::util::hex(&std::mem::take(&mut self.hasher).finalize());
        let etag = match self.multipart.take() {
            Some(writer) => {
                let done = writer.finish().await.map_err(s3_err)?;
                done.e_tag.unwrap_or_default().trim_matches('"').to_owned()
            }
            None => {
                let options = StorePutOptions {
                    attributes: attributes(&self.options, self.uploaded, Some(&md5))?,
                    ..StorePutOptions::default()
                };
                let body = Bytes::from(std::mem::take(&mut self.buffer));
                self.store
                    .put_opts(&self.path, body.into(), options)
                    .await
                    .map_err(s3_err)?;
                md5
            }
        };
        Ok(ObjectInfo {
            key: self.key.clone(),
            size: self.size,
            etag,
            uploaded: self.uploaded,
            http_metadata: self.options.http_metadata.clone(),
            custom_metadata: self.options.custom_metadata.clone(),
        })
    }
}
