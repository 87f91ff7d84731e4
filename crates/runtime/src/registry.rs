//! The workers of a server by name, which service bindings and Durable
//! Object stubs reach, and the alarm scheduler of their objects.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use wasmtime_wasi_http::WasiBody;

use isola_backends::durable::DurableStore;
use isola_config::DurableObjectClass;

use crate::body::Body;
use crate::objects::placement::Placement;
use crate::objects::{ObjectAddress, ObjectEvent};
use crate::request::RequestContext;
use crate::services::Callees;
use crate::worker::Worker;

/// The workers of a server, by name, for service bindings.
#[derive(Default)]
pub struct Services {
    workers: RwLock<HashMap<String, Worker>>,
    placement: Option<Arc<Placement>>,
}

impl Services {
    /// A registry of `workers`, each of which is told to use it. Keep it
    /// alive as long as they serve: workers hold it weakly.
    pub fn new(workers: &[Worker]) -> Arc<Services> {
        Self::with_placement(workers, None)
    }

    /// [`Services::new`] for a node of a cluster when `placement` is given:
    /// each Durable Object's events run on the node that holds its lease
    /// (forwarded there from the others), and each alarm is delivered by
    /// the node that owns its object.
    pub fn with_placement(workers: &[Worker], placement: Option<Arc<Placement>>) -> Arc<Services> {
        let services = Arc::new(Services {
            workers: RwLock::new(
                workers
                    .iter()
                    .map(|w| (w.name().to_owned(), w.clone()))
                    .collect(),
            ),
            placement: placement.clone(),
        });
        let callees: Arc<dyn Callees> = services.clone();
        for worker in workers {
            worker.attach_callees(Arc::downgrade(&callees));
            if let Some(placement) = &placement {
                worker.place(placement.clone());
            }
        }
        services.start_alarms(workers);
        services
    }

    /// The cluster this node is part of, if any.
    pub fn placement(&self) -> Option<&Arc<Placement>> {
        self.placement.as_ref()
    }

    /// Deliver the alarms of the objects of `workers`' classes: one
    /// scheduler per store (normally the process's one), when there is a
    /// runtime to run it.
    fn start_alarms(self: &Arc<Self>, workers: &[Worker]) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut stores: Vec<Arc<dyn DurableStore>> = Vec::new();
        for objects in workers.iter().filter_map(|w| w.inner.objects.as_ref()) {
            if !stores.iter().any(|s| Arc::ptr_eq(s, &objects.store)) {
                stores.push(objects.store.clone());
            }
        }
        for store in stores {
            runtime.spawn(crate::objects::alarms::run(Arc::downgrade(self), store));
        }
    }

    /// The worker defining the Durable Object class stored in `namespace`,
    /// and the class.
    pub(crate) fn class_of_namespace(
        &self,
        namespace: &str,
    ) -> Option<(Worker, DurableObjectClass)> {
        let workers = self.workers.read().expect("services lock");
        workers.values().find_map(|worker| {
            let class = worker.inner.objects.as_ref()?.class_in(namespace)?;
            Some((worker.clone(), class.clone()))
        })
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

    fn call_object(
        &self,
        worker: &str,
        address: ObjectAddress,
        request: http::Request<WasiBody>,
        context: RequestContext,
    ) -> Option<BoxFuture<'static, http::Response<Body>>> {
        let callee = self.get(worker)?;
        Some(
            async move {
                let request = request.map(|body| body.boxed_unsync());
                callee
                    .handle_object(request, context, address, ObjectEvent::Fetch, None)
                    .await
                    .response
            }
            .boxed(),
        )
    }
}
