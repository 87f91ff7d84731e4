//! The host side of the binding interfaces (`isola:worker/{kv,sql,blob,
//! cache,analytics}`): a binding name resolves to its backend in
//! `isola-backends`, every call is charged to the request's subrequest
//! budget, and WIT types are translated at the boundary.

use bytes::Bytes;
use futures_util::StreamExt;
use isola_backends::{self as backend, BindingError};
use wasmtime::component::Resource;

use crate::generated::isola::worker::{analytics, blob, cache, kv, queue, sql, types};
use crate::resources::{
    BodyHandle, BucketHandle, CacheHandle, DatasetHandle, KvHandle, ProducerHandle, SqlHandle,
    UploadHandle, UploadStep, WorkerBindings,
};
use crate::state::HostState;

type Error = types::Error;
/// A host call's result: the outer error traps (a bad handle), the inner
/// one is the guest's to handle.
type CallResult<T> = wasmtime::Result<Result<T, Error>>;

fn guest_error(error: BindingError) -> Error {
    match error {
        BindingError::Invalid(message) => Error::Invalid(message),
        BindingError::Backend(message) => Error::Backend(message),
    }
}

fn unbound(kind: &str, binding: &str) -> Error {
    Error::Invalid(format!("no {kind} is bound as `{binding}` for this worker"))
}

impl HostState {
    fn bindings(&self) -> &WorkerBindings {
        &self.shared.bindings
    }

    /// Take one call from the request's subrequest budget.
    fn charge(&self) -> Result<(), Error> {
        self.subrequests().take().map_err(Error::SubrequestLimit)
    }

    /// `error` as the guest sees it; a `backend` one is remembered, so a
    /// request that then fails answers 503 (`backend`), not 500.
    fn guest_error(&self, error: BindingError) -> Error {
        if matches!(error, BindingError::Backend(_)) {
            self.subrequests()
                .backend_failed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        guest_error(error)
    }
}

/// Charge the call, then run it and translate its error.
macro_rules! call {
    ($state:expr, $body:expr) => {{
        if let Err(e) = $state.charge() {
            return Ok(Err(e));
        }
        Ok($body.await.map_err(|e| $state.guest_error(e)))
    }};
}

impl types::Host for HostState {}

// ---- KV ----

impl kv::Host for HostState {}

impl kv::HostNamespace for HostState {
    async fn open(&mut self, binding: String) -> CallResult<Resource<KvHandle>> {
        let Some(namespace) = self.bindings().kv.get(&binding).cloned() else {
            return Ok(Err(unbound("KV namespace", &binding)));
        };
        Ok(Ok(self.table.push(KvHandle(namespace))?))
    }

    async fn get(
        &mut self,
        this: Resource<KvHandle>,
        key: String,
    ) -> CallResult<Option<kv::Value>> {
        let namespace = self.table.get(&this)?.0.clone();
        let result: CallResult<_> = call!(self, namespace.get(&key));
        Ok(result?.map(|value| {
            value.map(|v| kv::Value {
                data: v.data,
                metadata: v.metadata,
            })
        }))
    }

    async fn put(
        &mut self,
        this: Resource<KvHandle>,
        key: String,
        value: Vec<u8>,
        options: kv::PutOptions,
    ) -> CallResult<()> {
        let namespace = self.table.get(&this)?.0.clone();
        let options = backend::kv::PutOptions {
            expiration_ttl: options.expiration_ttl,
            expiration: options.expiration,
            metadata: options.metadata,
        };
        call!(self, namespace.put(&key, value, options))
    }

    async fn delete(&mut self, this: Resource<KvHandle>, key: String) -> CallResult<()> {
        let namespace = self.table.get(&this)?.0.clone();
        call!(self, namespace.delete(&key))
    }

    async fn list(
        &mut self,
        this: Resource<KvHandle>,
        options: kv::ListOptions,
    ) -> CallResult<kv::ListResult> {
        let namespace = self.table.get(&this)?.0.clone();
        let options = backend::kv::ListOptions {
            prefix: options.prefix,
            limit: options.limit,
            cursor: options.cursor,
        };
        let result: CallResult<_> = call!(self, namespace.list(options));
        Ok(result?.map(|list| kv::ListResult {
            keys: list
                .keys
                .into_iter()
                .map(|k| kv::Key {
                    name: k.name,
                    expiration: k.expiration,
                    metadata: k.metadata,
                })
                .collect(),
            list_complete: list.list_complete,
            cursor: list.cursor,
        }))
    }

    async fn drop(&mut self, this: Resource<KvHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

// ---- SQL ----

fn sql_value_in(value: sql::Value) -> backend::sql::Value {
    use backend::sql::Value as V;
    match value {
        sql::Value::Null => V::Null,
        sql::Value::Integer(i) => V::Integer(i),
        sql::Value::Real(r) => V::Real(r),
        sql::Value::Text(t) => V::Text(t),
        sql::Value::Blob(b) => V::Blob(b),
    }
}

fn sql_value_out(value: backend::sql::Value) -> sql::Value {
    use backend::sql::Value as V;
    match value {
        V::Null => sql::Value::Null,
        V::Integer(i) => sql::Value::Integer(i),
        V::Real(r) => sql::Value::Real(r),
        V::Text(t) => sql::Value::Text(t),
        V::Blob(b) => sql::Value::Blob(b),
    }
}

fn statement_in(statement: sql::Statement) -> backend::sql::Statement {
    backend::sql::Statement {
        sql: statement.sql,
        params: statement.params.into_iter().map(sql_value_in).collect(),
    }
}

fn rows_out(rows: backend::sql::Rows) -> sql::Rows {
    let m = rows.meta;
    sql::Rows {
        columns: rows.columns,
        rows: rows
            .rows
            .into_iter()
            .map(|row| row.into_iter().map(sql_value_out).collect())
            .collect(),
        meta: sql::Meta {
            rows_read: m.rows_read,
            rows_written: m.rows_written,
            last_row_id: m.last_row_id,
            changes: m.changes,
            duration_ms: m.duration_ms,
            changed_db: m.changed_db,
        },
    }
}

impl sql::Host for HostState {}

impl sql::HostDatabase for HostState {
    async fn open(&mut self, binding: String) -> CallResult<Resource<SqlHandle>> {
        let Some(database) = self.bindings().sql.get(&binding).cloned() else {
            return Ok(Err(unbound("D1 database", &binding)));
        };
        Ok(Ok(self.table.push(SqlHandle(database))?))
    }

    async fn query(
        &mut self,
        this: Resource<SqlHandle>,
        statement: sql::Statement,
    ) -> CallResult<sql::Rows> {
        let database = self.table.get(&this)?.0.clone();
        let result: CallResult<_> = call!(self, database.query(statement_in(statement)));
        Ok(result?.map(rows_out))
    }

    async fn batch(
        &mut self,
        this: Resource<SqlHandle>,
        statements: Vec<sql::Statement>,
    ) -> CallResult<Vec<sql::Rows>> {
        let database = self.table.get(&this)?.0.clone();
        let statements = statements.into_iter().map(statement_in).collect();
        let result: CallResult<_> = call!(self, database.batch(statements));
        Ok(result?.map(|all| all.into_iter().map(rows_out).collect()))
    }

    async fn exec(
        &mut self,
        this: Resource<SqlHandle>,
        sql: String,
    ) -> CallResult<sql::ExecResult> {
        let database = self.table.get(&this)?.0.clone();
        let result: CallResult<_> = call!(self, database.exec(sql));
        Ok(result?.map(|r| sql::ExecResult {
            count: r.count,
            duration_ms: r.duration_ms,
        }))
    }

    async fn drop(&mut self, this: Resource<SqlHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

// ---- Blob (R2) ----

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

impl blob::Host for HostState {}

impl HostState {
    fn bucket(&self, this: &Resource<BucketHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(this)?.0.clone())
    }
}

impl blob::HostBucket for HostState {
    async fn open(&mut self, binding: String) -> CallResult<Resource<BucketHandle>> {
        let Some(bucket) = self.bindings().buckets.get(&binding).cloned() else {
            return Ok(Err(unbound("R2 bucket", &binding)));
        };
        Ok(Ok(self.table.push(BucketHandle(bucket))?))
    }

    async fn head(
        &mut self,
        this: Resource<BucketHandle>,
        key: String,
    ) -> CallResult<Option<blob::Object>> {
        let bucket = self.bucket(&this)?;
        if let Err(e) = backend::blob::validate_key(&key) {
            return Ok(Err(self.guest_error(e)));
        }
        let store = self.bindings().backends.blob.clone();
        let result: CallResult<_> = call!(self, store.head(&bucket, &key));
        Ok(result?.map(|o| o.map(object_out)))
    }

    async fn get(
        &mut self,
        this: Resource<BucketHandle>,
        key: String,
        range: Option<blob::Range>,
    ) -> CallResult<Option<(blob::Object, Resource<BodyHandle>)>> {
        let bucket = self.bucket(&this)?;
        if let Err(e) = backend::blob::validate_key(&key) {
            return Ok(Err(self.guest_error(e)));
        }
        let range = range.map(|r| backend::blob::Range {
            offset: r.offset,
            length: r.length,
            suffix: r.suffix,
        });
        let store = self.bindings().backends.blob.clone();
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
        let bucket = self.bucket(&this)?;
        if let Err(e) = backend::blob::validate_key(&key) {
            return Ok(Err(self.guest_error(e)));
        }
        let options = backend::blob::PutOptions {
            http_metadata: http_metadata_in(options.http_metadata),
            custom_metadata: options.custom_metadata,
        };
        let store = self.bindings().backends.blob.clone();
        let result: CallResult<_> = call!(self, store.put(&bucket, &key, options));
        match result? {
            Ok(upload) => Ok(Ok(self.table.push(UploadHandle::spawn(upload))?)),
            Err(e) => Ok(Err(e)),
        }
    }

    async fn delete(&mut self, this: Resource<BucketHandle>, keys: Vec<String>) -> CallResult<()> {
        let bucket = self.bucket(&this)?;
        if let Some(e) = keys
            .iter()
            .find_map(|k| backend::blob::validate_key(k).err())
        {
            return Ok(Err(self.guest_error(e)));
        }
        let store = self.bindings().backends.blob.clone();
        call!(self, store.delete(&bucket, &keys))
    }

    async fn list(
        &mut self,
        this: Resource<BucketHandle>,
        options: blob::ListOptions,
    ) -> CallResult<blob::ListResult> {
        let bucket = self.bucket(&this)?;
        let options = backend::blob::ListOptions {
            prefix: options.prefix,
            delimiter: options.delimiter,
            cursor: options.cursor,
            limit: options.limit,
        };
        let store = self.bindings().backends.blob.clone();
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

impl blob::HostBody for HostState {
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

impl blob::HostUpload for HostState {
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

// ---- Cache API ----

impl cache::Host for HostState {}

impl HostState {
    fn cache_target(&self, this: &Resource<CacheHandle>) -> wasmtime::Result<(String, String)> {
        Ok((
            self.table.get(this)?.0.clone(),
            self.bindings().cache_scope.clone(),
        ))
    }
}

impl cache::HostCache for HostState {
    async fn open(&mut self, name: String) -> CallResult<Resource<CacheHandle>> {
        if name.is_empty() || name.len() > 1024 {
            return Ok(Err(Error::Invalid(
                "a cache name must be 1 to 1024 bytes".into(),
            )));
        }
        Ok(Ok(self.table.push(CacheHandle(name))?))
    }

    async fn match_(
        &mut self,
        this: Resource<CacheHandle>,
        url: String,
        headers: cache::Headers,
    ) -> CallResult<Option<cache::Response>> {
        let (name, scope) = self.cache_target(&this)?;
        let store = self.bindings().backends.cache.clone();
        let result: CallResult<_> = call!(self, store.match_(&scope, &name, &url, &headers));
        Ok(result?.map(|hit| {
            hit.map(|r| cache::Response {
                status: r.status,
                headers: r.headers,
                body: r.body.to_vec(),
            })
        }))
    }

    async fn put(
        &mut self,
        this: Resource<CacheHandle>,
        url: String,
        headers: cache::Headers,
        response: cache::Response,
    ) -> CallResult<bool> {
        let (name, scope) = self.cache_target(&this)?;
        let response = backend::cache::CachedResponse {
            status: response.status,
            headers: response.headers,
            body: Bytes::from(response.body),
        };
        let store = self.bindings().backends.cache.clone();
        call!(self, store.put(&scope, &name, &url, &headers, response))
    }

    async fn delete(
        &mut self,
        this: Resource<CacheHandle>,
        url: String,
        headers: cache::Headers,
    ) -> CallResult<bool> {
        let (name, scope) = self.cache_target(&this)?;
        let store = self.bindings().backends.cache.clone();
        call!(self, store.delete(&scope, &name, &url, &headers))
    }

    async fn drop(&mut self, this: Resource<CacheHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

// ---- Analytics ----

impl analytics::Host for HostState {}

impl analytics::HostDataset for HostState {
    async fn open(&mut self, binding: String) -> CallResult<Resource<DatasetHandle>> {
        let Some(dataset) = self.bindings().datasets.get(&binding).cloned() else {
            return Ok(Err(unbound("analytics dataset", &binding)));
        };
        Ok(Ok(self.table.push(DatasetHandle(dataset))?))
    }

    async fn write_data_point(
        &mut self,
        this: Resource<DatasetHandle>,
        point: analytics::DataPoint,
    ) -> CallResult<()> {
        let dataset = self.table.get(&this)?.0.clone();
        let point = backend::analytics::DataPoint {
            blobs: point.blobs,
            doubles: point.doubles,
            indexes: point.indexes,
        };
        if let Err(e) = backend::analytics::validate(&point) {
            return Ok(Err(self.guest_error(e)));
        }
        let sink = self.bindings().backends.analytics.clone();
        call!(self, sink.write(&dataset, point))
    }

    async fn drop(&mut self, this: Resource<DatasetHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

// ---- Queue producers ----

fn outgoing(body: Vec<u8>, options: queue::SendOptions) -> backend::queue::OutgoingMessage {
    backend::queue::OutgoingMessage {
        body,
        content_type: options
            .content_type
            .unwrap_or_else(|| "application/octet-stream".into()),
        delay: std::time::Duration::from_secs(options.delay_seconds.unwrap_or(0).into()),
    }
}

impl queue::Host for HostState {}

impl HostState {
    async fn send_messages(
        &mut self,
        this: &Resource<ProducerHandle>,
        messages: Vec<backend::queue::OutgoingMessage>,
    ) -> CallResult<()> {
        let queue = self.table.get(this)?.0.clone();
        if let Err(e) = backend::queue::validate(&messages) {
            return Ok(Err(self.guest_error(e)));
        }
        let store = self.bindings().backends.queues.clone();
        call!(self, store.send(&queue, messages))
    }
}

impl queue::HostProducer for HostState {
    async fn open(&mut self, binding: String) -> CallResult<Resource<ProducerHandle>> {
        let Some(queue) = self.bindings().queues.get(&binding).cloned() else {
            return Ok(Err(unbound("queue", &binding)));
        };
        Ok(Ok(self.table.push(ProducerHandle(queue))?))
    }

    async fn send(
        &mut self,
        this: Resource<ProducerHandle>,
        body: Vec<u8>,
        options: queue::SendOptions,
    ) -> CallResult<()> {
        self.send_messages(&this, vec![outgoing(body, options)])
            .await
    }

    async fn send_batch(
        &mut self,
        this: Resource<ProducerHandle>,
        messages: Vec<queue::OutgoingMessage>,
    ) -> CallResult<()> {
        let messages = messages
            .into_iter()
            .map(|m| outgoing(m.body, m.options))
            .collect();
        self.send_messages(&this, messages).await
    }

    async fn drop(&mut self, this: Resource<ProducerHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}
