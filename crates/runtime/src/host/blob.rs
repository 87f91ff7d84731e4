//! `isola:worker/blob`: R2 buckets, with streamed object bodies and uploads.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use isola_backends::{self as backend, Backends};
use isola_config::WorkerRun;
use wasmtime::component::{Linker, Resource};

use super::handles::{BodyHandle, BucketHandle, UploadHandle, UploadStep};
use super::{CallResult, Error, HasView, HostView, View, add_types, call, unbound};
use crate::generated::isola::worker::blob;

/// The buckets a worker has bound (binding name → bucket name) and the
/// store they live in.
pub struct BlobCtx {
    buckets: HashMap<String, String>,
    store: Arc<dyn backend::blob::BlobStore>,
}

impl BlobCtx {
    pub fn new(run: &WorkerRun, backends: &Backends) -> Self {
        BlobCtx {
            buckets: run
                .r2_buckets
                .iter()
                .map(|r2| (r2.binding.clone(), r2.bucket_name.clone()))
                .collect(),
            store: backends.blob.clone(),
        }
    }
}

/// Add `isola:worker/blob` to `linker`.
pub fn add_to_linker<T: HostView<BlobCtx> + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    add_types::<T, BlobCtx>(linker)?;
    blob::add_to_linker::<T, HasView<BlobCtx>>(linker, T::view)
}

fn http_metadata_in(m: blob::HttpMetadata) -> backend::blob::HttpMetadata {
    backend::blob::HttpMetadata {
        content_type: m.content_type,
        content_language: m.content_language,
        content_disposition: m.content_disposition,
        content_encoding: m.content_encoding,
        cache_control: m.cache_control,
    }
}

fn http_metadata_out(m: backend::blob::HttpMetadata) -> blob::HttpMetadata {
    blob::HttpMetadata {
        content_type: m.content_type,
        content_language: m.content_language,
        content_disposition: m.content_disposition,
        content_encoding: m.content_encoding,
        cache_control: m.cache_control,
    }
}

fn object_out(o: backend::blob::ObjectInfo) -> blob::Object {
    blob::Object {
        key: o.key,
        size: o.size,
        etag: o.etag,
        uploaded: o.uploaded,
        http_metadata: http_metadata_out(o.http_metadata),
        custom_metadata: o.custom_metadata,
    }
}

impl blob::Host for View<'_, BlobCtx> {}

/// A bucket's name and the store it is in.
type Target = (String, Arc<dyn backend::blob::BlobStore>);

impl View<'_, BlobCtx> {
    /// The bucket behind `this` and the store, once `key` is checked.
    fn target(&self, this: &Resource<BucketHandle>, key: &str) -> CallResult<Target> {
        let bucket = self.table.get(this)?.0.clone();
        Ok(match backend::blob::validate_key(key) {
            Ok(()) => Ok((bucket, self.ctx.store.clone())),
            Err(e) => Err(self.guest_error(e)),
        })
    }
}

impl blob::HostBucket for View<'_, BlobCtx> {
    async fn open(&mut self, binding: String) -> CallResult<Resource<BucketHandle>> {
        let Some(bucket) = self.ctx.buckets.get(&binding).cloned() else {
            return Ok(Err(unbound("R2 bucket", &binding)));
        };
        Ok(Ok(self.table.push(BucketHandle(bucket))?))
    }

    async fn head(
        &mut self,
        this: Resource<BucketHandle>,
        key: String,
    ) -> CallResult<Option<blob::Object>> {
        let (bucket, store) = match self.target(&this, &key)? {
            Ok(target) => target,
            Err(e) => return Ok(Err(e)),
        };
        let result: CallResult<_> = call!(self, store.head(&bucket, &key));
        Ok(result?.map(|o| o.map(object_out)))
    }

    async fn get(
        &mut self,
        this: Resource<BucketHandle>,
        key: String,
        range: Option<blob::Range>,
    ) -> CallResult<Option<(blob::Object, Resource<BodyHandle>)>> {
        let (bucket, store) = match self.target(&this, &key)? {
            Ok(target) => target,
            Err(e) => return Ok(Err(e)),
        };
        let range = range.map(|r| backend::blob::Range {
            offset: r.offset,
            length: r.length,
            suffix: r.suffix,
        });
        let result: CallResult<_> = call!(self, store.get(&bucket, &key, range));
        match result? {
            Ok(Some((object, stream))) => {
                let body = self.table.push(BodyHandle {
                    stream,
                    pending: Bytes::new(),
                })?;
                Ok(Ok(Some((object_out(object), body))))
            }
            Ok(None) => Ok(Ok(None)),
            Err(e) => Ok(Err(e)),
        }
    }

    async fn put(
        &mut self,
        this: Resource<BucketHandle>,
        key: String,
        options: blob::PutOptions,
    ) -> CallResult<Resource<UploadHandle>> {
        let (bucket, store) = match self.target(&this, &key)? {
            Ok(target) => target,
            Err(e) => return Ok(Err(e)),
        };
        let options = backend::blob::PutOptions {
            http_metadata: http_metadata_in(options.http_metadata),
            custom_metadata: options.custom_metadata,
        };
        let result: CallResult<_> = call!(self, store.put(&bucket, &key, options));
        match result? {
            Ok(upload) => Ok(Ok(self.table.push(UploadHandle::spawn(upload))?)),
            Err(e) => Ok(Err(e)),
        }
    }

    async fn delete(&mut self, this: Resource<BucketHandle>, keys: Vec<String>) -> CallResult<()> {
        let bucket = self.table.get(&this)?.0.clone();
        if let Some(e) = keys
            .iter()
            .find_map(|k| backend::blob::validate_key(k).err())
        {
            return Ok(Err(self.guest_error(e)));
        }
        let store = self.ctx.store.clone();
        call!(self, store.delete(&bucket, &keys))
    }

    async fn list(
        &mut self,
        this: Resource<BucketHandle>,
        options: blob::ListOptions,
    ) -> CallResult<blob::ListResult> {
        let bucket = self.table.get(&this)?.0.clone();
        let options = backend::blob::ListOptions {
            prefix: options.prefix,
            delimiter: options.delimiter,
            cursor: options.cursor,
            limit: options.limit,
        };
        let store = self.ctx.store.clone();
        let result: CallResult<_> = call!(self, store.list(&bucket, options));
        Ok(result?.map(|list| blob::ListResult {
            objects: list.objects.into_iter().map(object_out).collect(),
            delimited_prefixes: list.delimited_prefixes,
            truncated: list.truncated,
            cursor: list.cursor,
        }))
    }

    async fn drop(&mut self, this: Resource<BucketHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl blob::HostBody for View<'_, BlobCtx> {
    async fn read(&mut self, this: Resource<BodyHandle>, max: u32) -> CallResult<Vec<u8>> {
        if max == 0 {
            return Ok(Err(Error::Invalid("read size must be at least 1".into())));
        }
        let body = self.table.get_mut(&this)?;
        // Skip empty chunks: an empty read means the end.
        while body.pending.is_empty() {
            match body.stream.next().await {
                Some(Ok(chunk)) => body.pending = chunk,
                Some(Err(e)) => return Ok(Err(self.guest_error(e))),
                None => return Ok(Ok(Vec::new())),
            }
        }
        let n = body.pending.len().min(max as usize);
        Ok(Ok(body.pending.split_to(n).to_vec()))
    }

    async fn drop(&mut self, this: Resource<BodyHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl blob::HostUpload for View<'_, BlobCtx> {
    async fn write(&mut self, this: Resource<UploadHandle>, chunk: Vec<u8>) -> CallResult<()> {
        let upload = self.table.get_mut(&this)?;
        let step = UploadStep::Chunk(Bytes::from(chunk));
        if upload.steps.send(step).await.is_err() {
            let error = upload.failure().await;
            return Ok(Err(self.guest_error(error)));
        }
        Ok(Ok(()))
    }

    async fn finish(&mut self, this: Resource<UploadHandle>) -> CallResult<blob::Object> {
        let mut upload = self.table.delete(this)?;
        if upload.steps.send(UploadStep::Finish).await.is_err() {
            let error = upload.failure().await;
            return Ok(Err(self.guest_error(error)));
        }
        Ok(match (&mut upload.outcome).await {
            Ok(result) => result.map(object_out).map_err(|e| self.guest_error(e)),
            Err(_) => Err(Error::Backend("the upload was interrupted".into())),
        })
    }

    async fn drop(&mut self, this: Resource<UploadHandle>) -> wasmtime::Result<()> {
        // The backend discards an unfinished upload when it is dropped.
        self.table.delete(this)?;
        Ok(())
    }
}
