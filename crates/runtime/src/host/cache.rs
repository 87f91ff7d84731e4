//! `isola:worker/cache`: the Cache API (`caches.default`, `caches.open`).
//!
//! Bodies stream both ways: a stored body is read chunk by chunk (`body`),
//! a new one written chunk by chunk (`upload`), never whole in guest
//! memory. The host gathers a body being stored (bounded by the backend's
//! limit) and hands out a stored one from its own memory.
//!
//! Each `body` and `upload` can also be reached over HTTP at its
//! `endpoint`, `http://cache.isola.internal/<kind>/<token>`, which
//! `outbound::send` hands to [`serve_endpoint`]. That is for the JavaScript
//! SDK: componentize-js frees what its import glue allocates only when an
//! export call returns, so every chunk passed through `read` or `write`
//! would stay in guest memory until the request ends; StarlingMonkey's
//! `fetch` streams a body without that glue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use http_body_util::BodyExt;
use isola_backends::{self as backend, Backends, BindingError};
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi_http::WasiBody;

use super::handles::{CacheBodyHandle, CacheHandle, CacheUploadHandle};
use super::{CallResult, Error, HasView, HostView, View, add_types, call};
use crate::generated::isola::worker::cache;

/// The host of the cache's endpoints.
pub const CACHE_ENDPOINT_HOST: &str = "cache.isola.internal";

/// A worker's view of the cache store: its entries are kept under the
/// worker's own scope.
pub struct CacheCtx {
    scope: String,
    store: Arc<dyn backend::cache::CacheStore>,
    endpoints: Arc<Endpoints>,
}

impl CacheCtx {
    /// The cache of the worker (or plugin) named `scope`.
    pub fn new(scope: &str, backends: &Backends) -> Self {
        CacheCtx {
            scope: scope.to_owned(),
            store: backends.cache.clone(),
            endpoints: Arc::default(),
        }
    }

    /// The endpoints of this worker's bodies and uploads, which its
    /// outbound requests reach.
    pub(crate) fn endpoints(&self) -> Arc<Endpoints> {
        self.endpoints.clone()
    }
}

/// What an endpoint token stands for. Weak: the guest's resource owns the
/// body or upload, so an endpoint lives no longer than its resource (and
/// the instance that holds it).
enum Target {
    Body(Weak<Mutex<Bytes>>),
    Upload(Weak<Mutex<Option<Box<dyn backend::cache::CacheUpload>>>>),
}

/// A worker's endpoints by token (128 random bits: another instance of
/// the worker cannot guess one either).
#[derive(Default)]
pub(crate) struct Endpoints(Mutex<HashMap<String, Target>>);

impl Endpoints {
    fn add(&self, kind: &str, target: Target) -> String {
        let mut token = [0u8; 16];
        getrandom::getrandom(&mut token).expect("the OS random source");
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let mut targets = self.0.lock().expect("cache endpoints lock");
        // Forget the endpoints whose resource is gone.
        targets.retain(|_, target| match target {
            Target::Body(body) => body.strong_count() > 0,
            Target::Upload(upload) => upload.strong_count() > 0,
        });
        targets.insert(token.clone(), target);
        format!("http://{CACHE_ENDPOINT_HOST}/{kind}/{token}")
    }

    fn take(&self, token: &str) -> Option<Target> {
        self.0.lock().expect("cache endpoints lock").remove(token)
    }
}

/// Answer a request to [`CACHE_ENDPOINT_HOST`]: `GET /body/<token>` with
/// the body's bytes, `PUT /upload/<token>` by storing the request's body
/// (200 `true` or `false`; 413 for a body over the limit, 400 or 502 for
/// other errors, with the message). A token is good for one request.
pub(crate) async fn serve_endpoint(
    endpoints: &Endpoints,
    request: http::Request<WasiBody>,
) -> http::Response<WasiBody> {
    let path = request.uri().path().to_owned();
    let (kind, token) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", ""));
    let target = match (kind, request.method()) {
        ("body" | "upload", &http::Method::GET | &http::Method::PUT) => endpoints.take(token),
        _ => None,
    };
    match (target, request.method()) {
        (Some(Target::Body(body)), &http::Method::GET) => match body.upgrade() {
            Some(body) => {
                let bytes = std::mem::take(&mut *body.lock().expect("cache body lock"));
                http::Response::builder()
                    .header(http::header::CONTENT_LENGTH, bytes.len())
                    .body(crate::body::full_body(bytes))
                    .expect("a valid response")
            }
            None => not_found(),
        },
        (Some(Target::Upload(upload)), &http::Method::PUT) => {
            let sink = upload
                .upgrade()
                .and_then(|upload| upload.lock().expect("cache upload lock").take());
            match sink {
                Some(sink) => store(sink, request.into_body()).await,
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}

/// Write `body` to `upload` and finish it.
async fn store(
    mut upload: Box<dyn backend::cache::CacheUpload>,
    mut body: WasiBody,
) -> http::Response<WasiBody> {
    let mut failed = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map(|f| f.into_data()) else {
            // The guest's body broke off: nothing is stored.
            return answer(http::StatusCode::BAD_REQUEST, "the body broke off");
        };
        // After a failed write, read the rest, so that the guest sees this
        // answer rather than a request cut off.
        if let (Ok(data), None) = (data, &failed)
            && let Err(e) = upload.write(data).await
        {
            failed = Some(e);
        }
    }
    let result = match failed {
        Some(e) => Err(e),
        None => upload.finish().await,
    };
    match result {
        Ok(stored) => answer(http::StatusCode::OK, if stored { "true" } else { "false" }),
        Err(BindingError::Invalid(message)) => {
            answer(http::StatusCode::PAYLOAD_TOO_LARGE, &message)
        }
        Err(BindingError::Backend(message)) => answer(http::StatusCode::BAD_GATEWAY, &message),
    }
}

fn answer(status: http::StatusCode, text: &str) -> http::Response<WasiBody> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(crate::body::full_body(text.to_owned()))
        .expect("a valid response")
}

fn not_found() -> http::Response<WasiBody> {
    answer(
        http::StatusCode::NOT_FOUND,
        "no such cache endpoint (each is good for one request)",
    )
}

/// Add `isola:worker/cache` to `linker`.
pub fn add_to_linker<T: HostView<CacheCtx> + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    add_types::<T, CacheCtx>(linker)?;
    cache::add_to_linker::<T, HasView<CacheCtx>>(linker, T::view)
}

impl cache::Host for View<'_, CacheCtx> {}

impl cache::HostCache for View<'_, CacheCtx> {
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
    ) -> CallResult<Option<(cache::Response, Resource<CacheBodyHandle>)>> {
        let name = self.table.get(&this)?.0.clone();
        let (store, scope) = (self.ctx.store.clone(), &self.ctx.scope);
        let result: CallResult<_> = call!(self, store.match_(scope, &name, &url, &headers));
        let Some(hit) = (match result? {
            Ok(hit) => hit,
            Err(e) => return Ok(Err(e)),
        }) else {
            return Ok(Ok(None));
        };
        let head = cache::Response {
            status: hit.status,
            headers: hit.headers,
        };
        let body = self
            .table
            .push(CacheBodyHandle(Arc::new(Mutex::new(hit.body))))?;
        Ok(Ok(Some((head, body))))
    }

    async fn put(
        &mut self,
        this: Resource<CacheHandle>,
        url: String,
        headers: cache::Headers,
        response: cache::Response,
    ) -> CallResult<Option<Resource<CacheUploadHandle>>> {
        let name = self.table.get(&this)?.0.clone();
        let (store, scope) = (self.ctx.store.clone(), &self.ctx.scope);
        let result: CallResult<_> = call!(
            self,
            store.begin_put(
                scope,
                &name,
                &url,
                &headers,
                response.status,
                response.headers
            )
        );
        match result? {
            Ok(Some(upload)) => {
                let handle = CacheUploadHandle(Arc::new(Mutex::new(Some(upload))));
                Ok(Ok(Some(self.table.push(handle)?)))
            }
            Ok(None) => Ok(Ok(None)),
            Err(e) => Ok(Err(e)),
        }
    }

    async fn delete(
        &mut self,
        this: Resource<CacheHandle>,
        url: String,
        headers: cache::Headers,
    ) -> CallResult<bool> {
        let name = self.table.get(&this)?.0.clone();
        let (store, scope) = (self.ctx.store.clone(), &self.ctx.scope);
        call!(self, store.delete(scope, &name, &url, &headers))
    }

    async fn drop(&mut self, this: Resource<CacheHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl cache::HostBody for View<'_, CacheCtx> {
    async fn read(&mut self, this: Resource<CacheBodyHandle>, max: u32) -> CallResult<Vec<u8>> {
        if max == 0 {
            return Ok(Err(Error::Invalid("read size must be at least 1".into())));
        }
        let body = self.table.get(&this)?;
        let mut bytes = body.0.lock().expect("cache body lock");
        let n = bytes.len().min(max as usize);
        Ok(Ok(bytes.split_to(n).to_vec()))
    }

    async fn endpoint(&mut self, this: Resource<CacheBodyHandle>) -> wasmtime::Result<String> {
        let body = Arc::downgrade(&self.table.get(&this)?.0);
        Ok(self.ctx.endpoints.add("body", Target::Body(body)))
    }

    async fn drop(&mut self, this: Resource<CacheBodyHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

/// Why an upload can no longer be written to.
const UPLOAD_GONE: &str = "this cache upload is being written through its endpoint";

impl cache::HostUpload for View<'_, CacheCtx> {
    async fn write(&mut self, this: Resource<CacheUploadHandle>, chunk: Vec<u8>) -> CallResult<()> {
        let slot = self.table.get(&this)?.0.clone();
        // Out of its slot while it is written to, so no lock is held
        // across the await.
        let Some(mut upload) = slot.lock().expect("cache upload lock").take() else {
            return Ok(Err(Error::Invalid(UPLOAD_GONE.into())));
        };
        let written = upload.write(Bytes::from(chunk)).await;
        // Back even when it failed: a failed upload says why again.
        *slot.lock().expect("cache upload lock") = Some(upload);
        Ok(written.map_err(|e| self.guest_error(e)))
    }

    async fn finish(&mut self, this: Resource<CacheUploadHandle>) -> CallResult<bool> {
        let slot = self.table.delete(this)?.0;
        let Some(upload) = slot.lock().expect("cache upload lock").take() else {
            return Ok(Err(Error::Invalid(UPLOAD_GONE.into())));
        };
        Ok(upload.finish().await.map_err(|e| self.guest_error(e)))
    }

    async fn endpoint(&mut self, this: Resource<CacheUploadHandle>) -> wasmtime::Result<String> {
        let upload = Arc::downgrade(&self.table.get(&this)?.0);
        Ok(self.ctx.endpoints.add("upload", Target::Upload(upload)))
    }

    async fn drop(&mut self, this: Resource<CacheUploadHandle>) -> wasmtime::Result<()> {
        // An unfinished upload stores nothing when it is dropped.
        self.table.delete(this)?;
        Ok(())
    }
}
