//! The workers of a server by name, which service bindings reach.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use wasmtime_wasi_http::WasiBody;

use crate::body::Body;
use crate::request::RequestContext;
use crate::services::Callees;
use crate::worker::Worker;

/// The workers of a server, by name, for service bindings.
#[derive(Default)]
pub struct Services {
    workers: RwLock<HashMap<String, Worker>>,
}

impl Services {
    /// A registry of `workers`, each of which is told to use it. Keep it
    /// alive as long as they serve: workers hold it weakly.
    pub fn new(workers: &[Worker]) -> Arc<Services> {
        let services = Arc::new(Services {
            workers: RwLock::new(
                workers
                    .iter()
                    .map(|w| (w.name().to_owned(), w.clone()))
                    .collect(),
            ),
        });
        let callees: Arc<dyn Callees> = services.clone();
        for worker in workers {
            worker.attach_callees(Arc::downgrade(&callees));
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

impl Callees for Services {
    fn call(
        &self,
        name: &str,
        request: http::Request<WasiBody>,
        context: RequestContext,
    ) -> Option<BoxFuture<'static, http::Response<Body>>> {
        let callee = self.get(name)?;
        Some(
            async move {
                let request = request.map(|body| body.boxed_unsync());
                callee.handle(request, context).await.response
            }
            .boxed(),
        )
    }
}
