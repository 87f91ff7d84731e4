//! Service bindings: a worker calls another worker in-process.
//!
//! A guest reaches its binding `AUTH` by sending an ordinary outbound
//! request to `http://AUTH.service.isola.internal/…` (the SDK's
//! `env.service("AUTH").fetch(…)` does this), so any language's HTTP client
//! works, as with Spin's `*.spin.internal`. No socket is involved: the host
//! hands the request to the callee's `Worker::handle` (see `registry`). The call counts as a
//! subrequest, the callee runs under its own limits, and the request's
//! `ctx` locals travel with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use wasmtime_wasi_http::{Error, WasiBody};

use isola_config::DurableObjectBinding;

use crate::objects::{
    CurrentObject, OBJECT_HOST_SUFFIX, OBJECT_ID_HEADER, OBJECT_NAME_HEADER, ObjectAddress,
};
use crate::request::{CallContext, RequestContext, RequestId, RequestInfo};

/// The host of a service-binding URL ends with this.
pub const SERVICE_HOST_SUFFIX: &str = ".service.isola.internal";

/// How deep a chain of service-binding calls may go; deeper calls get a 508.
pub const MAX_CALL_DEPTH: u32 = 16;

/// The workers a request's service bindings can reach, by name: the
/// server's registry ([`crate::Services`]). A trait here so that a run's
/// state can hold it without depending on the workers it calls.
pub(crate) trait Callees: Send + Sync {
    /// Run `request` on the worker named `name`; `None` when there is none.
    fn call(
        &self,
        name: &str,
        request: http::Request<WasiBody>,
        context: RequestContext,
    ) -> Option<futures_util::future::BoxFuture<'static, http::Response<crate::body::Body>>>;

    /// Deliver `request` to the object `address` of a class defined by the
    /// worker named `worker`; `None` when there is no such worker.
    fn call_object(
        &self,
        worker: &str,
        address: ObjectAddress,
        request: http::Request<WasiBody>,
        context: RequestContext,
    ) -> Option<futures_util::future::BoxFuture<'static, http::Response<crate::body::Body>>>;
}

/// One request's view of its worker's service bindings.
#[derive(Clone)]
pub(crate) struct ServiceCalls {
    pub services: Option<Weak<dyn Callees>>,
    /// Binding name (lower-cased, as hosts are) → worker name.
    pub bindings: Arc<HashMap<String, String>>,
    pub depth: u32,
    pub locals: Arc<Mutex<HashMap<String, String>>>,
    pub request_id: RequestId,
    pub info: RequestInfo,
    /// Durable Object namespace bindings, by lower-cased name (hosts are).
    pub object_bindings: Arc<HashMap<String, DurableObjectBinding>>,
    /// The object this run serves, if it serves one.
    pub object: Option<CurrentObject>,
}

impl ServiceCalls {
    /// The calls of a run that has no service bindings (a plugin call, the
    /// handlers question).
    pub fn none(request_id: RequestId) -> Self {
        ServiceCalls {
            services: None,
            bindings: Arc::default(),
            depth: 0,
            locals: Arc::default(),
            request_id,
            info: RequestInfo::default(),
            object_bindings: Arc::default(),
            object: None,
        }
    }

    /// The binding named by a Durable Object stub's host, if it is one.
    pub fn object_binding_of(host: &str) -> Option<String> {
        let host = host.to_ascii_lowercase();
        host.strip_suffix(OBJECT_HOST_SUFFIX).map(str::to_owned)
    }

    /// Deliver `request` to the object it names (its id header) in the
    /// namespace bound as `binding`. A bad id is the caller's mistake: a
    /// 400 that says why.
    pub async fn call_object(
        &self,
        binding: &str,
        mut request: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, Error> {
        let Some(namespace) = self.object_bindings.get(binding) else {
            return Err(Error::InternalError(Some(format!(
                "no Durable Object namespace is bound as `{binding}`"
            ))));
        };
        let address = match object_address(namespace, request.headers_mut()) {
            Ok(address) => address,
            Err(why) => {
                return Ok(crate::failure::error_response(
                    http::StatusCode::BAD_REQUEST,
                    "bad-object-id",
                    &why,
                ));
            }
        };
        let Some(callees) = self.services.as_ref().and_then(Weak::upgrade) else {
            return Err(not_loaded(&namespace.worker));
        };
        if let Some(refused) = self.too_deep(&namespace.worker) {
            return Ok(refused);
        }
        match callees.call_object(&namespace.worker, address, request, self.callee_context()) {
            Some(response) => Ok(response.await),
            None => Err(not_loaded(&namespace.worker)),
        }
    }

    /// The binding named by a service-binding host, if it is one.
    pub fn binding_of(host: &str) -> Option<String> {
        let host = host.to_ascii_lowercase();
        host.strip_suffix(SERVICE_HOST_SUFFIX).map(str::to_owned)
    }

    /// Call the worker behind `binding` with `request`.
    pub async fn call(
        &self,
        binding: &str,
        request: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, Error> {
        let Some(service) = self.bindings.get(binding) else {
            return Err(Error::InternalError(Some(format!(
                "no service binding named `{binding}`"
            ))));
        };
        let Some(callees) = self.services.as_ref().and_then(Weak::upgrade) else {
            return Err(not_loaded(service));
        };
        if let Some(refused) = self.too_deep(service) {
            return Ok(refused);
        }
        match callees.call(service, request, self.callee_context()) {
            Some(response) => Ok(response.await),
            None => Err(not_loaded(service)),
        }
    }

    /// The 508 of a call that would nest deeper than [`MAX_CALL_DEPTH`].
    fn too_deep(&self, callee: &str) -> Option<http::Response<WasiBody>> {
        if self.depth < MAX_CALL_DEPTH {
            return None;
        }
        tracing::warn!(
            request_id = %self.request_id,
            service = %callee,
            "service binding call refused: chain deeper than {MAX_CALL_DEPTH}"
        );
        Some(crate::failure::error_response(
            http::StatusCode::LOOP_DETECTED,
            "loop-detected",
            &format!("service binding calls nest deeper than {MAX_CALL_DEPTH}"),
        ))
    }

    /// What a call carries to its callee: this request's id and info, one
    /// level deeper, with a copy of the locals.
    fn callee_context(&self) -> RequestContext {
        RequestContext {
            id: Some(self.request_id.clone()),
            client: None,
            info: Some(RequestInfo {
                protocol: "internal".into(),
                ..self.info.clone()
            }),
            call: CallContext {
                depth: self.depth + 1,
                locals: self.locals.lock().expect("locals lock").clone(),
            },
        }
    }
}

/// The object a stub's request names, its id checked against `namespace`
/// (and against its name, when it carries one); the headers that said so
/// are removed.
fn object_address(
    namespace: &DurableObjectBinding,
    headers: &mut http::HeaderMap,
) -> Result<ObjectAddress, String> {
    let id = headers.remove(OBJECT_ID_HEADER).ok_or_else(|| {
        format!("a request to a Durable Object needs its id in `{OBJECT_ID_HEADER}`")
    })?;
    let id = id
        .to_str()
        .map_err(|_| format!("`{OBJECT_ID_HEADER}` is not text"))?;
    let id = crate::objects::id::parse(&namespace.namespace, id)?;
    let name = match headers.remove(OBJECT_NAME_HEADER) {
        None => None,
        Some(value) => {
            let name = percent_encoding::percent_decode(value.as_bytes())
                .decode_utf8()
                .map_err(|_| format!("`{OBJECT_NAME_HEADER}` is not percent-encoded UTF-8"))?
                .into_owned();
            if crate::objects::id::from_name(&namespace.namespace, &name) != id {
                return Err(format!(
                    "`{OBJECT_NAME_HEADER}` names an object other than `{OBJECT_ID_HEADER}`"
                ));
            }
            Some(name)
        }
    };
    Ok(ObjectAddress {
        class_name: namespace.class_name.clone(),
        id,
        name,
    })
}

fn not_loaded(service: &str) -> Error {
    Error::InternalError(Some(format!("service `{service}` is not loaded")))
}
