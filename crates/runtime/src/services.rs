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
        if self.depth + 1 > MAX_CALL_DEPTH {
            tracing::warn!(
                request_id = %self.request_id,
                service = %service,
                "service binding call refused: chain deeper than {MAX_CALL_DEPTH}"
            );
            return Ok(crate::failure::error_response(
                http::StatusCode::LOOP_DETECTED,
                "loop-detected",
                &format!("service binding calls nest deeper than {MAX_CALL_DEPTH}"),
            ));
        }
        let context = RequestContext {
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
        };
        match callees.call(service, request, context) {
            Some(response) => Ok(response.await),
            None => Err(not_loaded(service)),
        }
    }
}

fn not_loaded(service: &str) -> Error {
    Error::InternalError(Some(format!("service `{service}` is not loaded")))
}
