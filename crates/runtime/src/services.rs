//! Service bindings: a worker calls another worker in-process.
//!
//! A guest reaches its binding `AUTH` by sending an ordinary outbound
//! request to `http://AUTH.service.isola.internal/…` (the SDK's
//! `env.service("AUTH").fetch(…)` does this), so any language's HTTP client
//! works, as with Spin's `*.spin.internal`. No socket is involved: the host
//! hands the request to the callee's [`Worker::handle`]. The call counts as a
//! subrequest, the callee runs under its own limits, and the request's
//! `ctx` locals travel with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, WasiBody};

use crate::{RequestId, RequestInfo, Worker};

/// The host of a service-binding URL ends with this.
pub const SERVICE_HOST_SUFFIX: &str = ".service.isola.internal";

/// How deep a chain of service-binding calls may go; deeper calls get a 508.
pub const MAX_CALL_DEPTH: u32 = 16;

/// The workers of a server, by name, for service bindings.
#[derive(Default)]
pub struct Services {
    workers: RwLock<HashMap<String, Worker>>,
}

impl Services {
    /// A registry of `workers`, each of which is told to use it.
    pub fn new(workers: &[Worker]) -> Arc<Services> {
        let services = Arc::new(Services {
            workers: RwLock::new(
                workers
                    .iter()
                    .map(|w| (w.name().to_owned(), w.clone()))
                    .collect(),
            ),
        });
        for worker in workers {
            worker.attach_services(&services);
        }
        services
    }

    pub fn get(&self, name: &str) -> Option<Worker> {
        self.workers
            .read()
            .expect("services lock")
            .get(name)
            .cloned()
    }
}

/// What travels from a caller to the workers it calls.
#[derive(Clone, Debug, Default)]
pub(crate) struct CallContext {
    pub depth: u32,
    pub locals: HashMap<String, String>,
}

/// One request's view of its worker's service bindings.
#[derive(Clone)]
pub(crate) struct ServiceCalls {
    pub services: Weak<Services>,
    /// Binding name (lower-cased, as hosts are) → worker name.
    pub bindings: Arc<HashMap<String, String>>,
    pub depth: u32,
    pub locals: Arc<Mutex<HashMap<String, String>>>,
    pub request_id: RequestId,
    pub info: RequestInfo,
}

impl ServiceCalls {
    /// The binding named by a service-binding host, if it is one.
    pub fn binding_of(host: &str) -> Option<String> {
        let host = host.to_ascii_lowercase();
        host.strip_suffix(SERVICE_HOST_SUFFIX).map(str::to_owned)
    }

    /// Call the worker behind `binding` with `request`.
    pub async fn call(
        &self,
        binding: &str,
        mut request: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, Error> {
        let Some(service) = self.bindings.get(binding) else {
            return Err(Error::InternalError(Some(format!(
                "no service binding named `{binding}`"
            ))));
        };
        let callee = self
            .services
            .upgrade()
            .and_then(|services| services.get(service))
            .ok_or_else(|| {
                Error::InternalError(Some(format!("service `{service}` is not loaded")))
            })?;
        if self.depth + 1 > MAX_CALL_DEPTH {
            tracing::warn!(
                request_id = %self.request_id,
                service = %service,
                "service binding call refused: chain deeper than {MAX_CALL_DEPTH}"
            );
            return Ok(crate::error_response(
                http::StatusCode::LOOP_DETECTED,
                "loop-detected",
                &format!("service binding calls nest deeper than {MAX_CALL_DEPTH}"),
            ));
        }
        let locals = self.locals.lock().expect("locals lock").clone();
        let extensions = request.extensions_mut();
        extensions.insert(self.request_id.clone());
        extensions.insert(CallContext {
            depth: self.depth + 1,
            locals,
        });
        extensions.insert(RequestInfo {
            protocol: "internal".into(),
            ..self.info.clone()
        });
        let response = Box::pin(callee.handle(request.map(|body| body.boxed_unsync()))).await;
        Ok(response)
    }
}
