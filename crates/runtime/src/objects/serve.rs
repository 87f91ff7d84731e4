//! How a worker serves its Durable Objects' events: admitted here (this
//! node owns the object), forwarded to the owner, or refused; and an
//! admitted event's run in the object's turn.

use std::sync::Arc;

use bytes::Bytes;

use crate::body::{Body, BodyError};
use crate::failure::GuestError;
use crate::instance::Home;
use crate::objects::forward::ForwardedEvent;
use crate::objects::placement::{MAX_HOPS, Placement};
use crate::objects::{
    Admission, Cell, CurrentObject, ObjectAddress, ObjectCall, ObjectEvent, Objects,
};
use crate::report::{Observer, Report};
use crate::request::{RequestContext, RequestId};
use crate::services::ServiceCalls;
use crate::worker::{Handled, Worker};

/// An event for a Durable Object admitted here: the event and the
/// object's cell.
pub(crate) struct ObjectRun {
    pub(crate) call: ObjectCall,
    pub(crate) cell: Arc<Cell>,
}

/// What to do with an object's event when another node owns the object.
#[derive(Clone, Copy)]
enum Route {
    /// Forward it there (it has been forwarded `hops` times already).
    Forward { hops: u32 },
    /// Leave it (an alarm: the owner's scheduler delivers it).
    LocalOnly,
}

impl Worker {
    /// Deliver `event` to the Durable Object `address` of a class this
    /// worker defines, in the object's live instance (made when it has
    /// none), after the object's earlier events are done. `request` is the
    /// stub's request (a `fetch` event) or a stand-in (an alarm);
    /// `alarm_firing` is the time of the alarm being delivered.
    ///
    /// On several nodes ([`Services::with_placement`](crate::Services::with_placement)),
    /// the event runs here only if this node owns the object; otherwise it
    /// is forwarded to the owner and the owner's response streams back.
    pub async fn handle_object<B>(
        &self,
        request: http::Request<B>,
        context: RequestContext,
        address: ObjectAddress,
        event: ObjectEvent,
        alarm_firing: Option<u64>,
    ) -> Handled
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        let call = ObjectCall {
            address,
            event,
            alarm_firing,
        };
        self.object_event(request, context, call, Route::Forward { hops: 0 })
            .await
            .expect("a forwarding route always answers")
    }

    /// Deliver an event another node forwarded (see
    /// [`ForwardedEvent::read`]): here if this node owns the object, else
    /// forwarded once more to the owner when it has not been forwarded
    /// twice already, else refused with a 503 to retry.
    pub async fn handle_forwarded<B>(
        &self,
        request: http::Request<B>,
        forwarded: ForwardedEvent,
    ) -> Handled
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        let ForwardedEvent {
            address,
            event,
            alarm_firing,
            hops,
            context,
            ..
        } = forwarded;
        let class = self
            .inner
            .objects
            .as_ref()
            .and_then(|objects| objects.class(&address.class_name));
        let checked = match class {
            None => Err(format!(
                "worker `{}` defines no Durable Object class `{}`",
                self.name(),
                address.class_name
            )),
            Some(class) => crate::objects::id::parse(&class.namespace, &address.id).map(|_| ()),
        };
        if let Err(why) = checked {
            let report = self.report_for(&request, &context, None);
            let outcome = report.pending();
            let response =
                crate::failure::error_response(http::StatusCode::BAD_REQUEST, "bad-object", &why);
            report.set_status(400);
            return Handled { response, outcome };
        }
        let call = ObjectCall {
            address,
            event,
            alarm_firing,
        };
        self.object_event(request, context, call, Route::Forward { hops })
            .await
            .expect("a forwarding route always answers")
    }

    /// Deliver an alarm to its object if this node owns it (or now takes
    /// it over); `None` when another node does.
    pub(crate) async fn handle_object_here<B>(
        &self,
        request: http::Request<B>,
        context: RequestContext,
        call: ObjectCall,
    ) -> Option<Handled>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        self.object_event(request, context, call, Route::LocalOnly)
            .await
    }

    /// Whether this node owns the object `address` (taking it over when it
    /// is free); always, on one node.
    pub(crate) async fn owns_object(&self, address: &ObjectAddress) -> Result<bool, String> {
        let Some(objects) = &self.inner.objects else {
            return Err(format!(
                "worker `{}` defines no Durable Object classes",
                self.name()
            ));
        };
        match objects.admit(address).await {
            Ok(Admission::Here(_)) => Ok(true),
            Ok(Admission::Elsewhere(_)) => Ok(false),
            Err(e) => Err(e.cause),
        }
    }

    /// Run this worker's objects as part of a cluster.
    pub(crate) fn place(&self, placement: Arc<Placement>) {
        if let Some(objects) = &self.inner.objects {
            objects.place(placement);
        }
    }

    async fn object_event<B>(
        &self,
        request: http::Request<B>,
        context: RequestContext,
        call: ObjectCall,
        route: Route,
    ) -> Option<Handled>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        let Some(objects) = &self.inner.objects else {
            // No cell: run_object explains.
            return Some(self.serve(request, context, Err(call)).await);
        };
        match objects.admit(&call.address).await {
            Ok(Admission::Here(cell)) => Some(
                self.serve(request, context, Ok(Some(ObjectRun { call, cell })))
                    .await,
            ),
            Ok(Admission::Elsewhere(owner)) => match route {
                Route::LocalOnly => None,
                Route::Forward { hops } => Some(
                    self.forward_object(owner, request, context, call, hops)
                        .await,
                ),
            },
            Err(error) => Some(self.refuse(request, context, error)),
        }
    }

    /// The report of a run that answers without the guest.
    fn report_for<B>(
        &self,
        request: &http::Request<B>,
        context: &RequestContext,
        observer: Option<Arc<dyn Observer>>,
    ) -> Arc<Report> {
        Report::new(
            self.inner.shared.name.clone(),
            context.id.clone().unwrap_or_else(RequestId::generate),
            request.method().clone(),
            request.uri().path().to_owned(),
            context.client,
            observer,
        )
    }

    /// Answer for the guest with `error`'s failure response.
    fn refuse<B>(
        &self,
        request: http::Request<B>,
        context: RequestContext,
        error: GuestError,
    ) -> Handled {
        let report = self.report_for(&request, &context, self.inner.observer.get().cloned());
        let outcome = report.pending();
        tracing::error!(worker = %self.name(), request_id = %report.request_id,
            reason = error.failure.reason(), "request failed: {}", error.cause);
        report.set_error(&error);
        report.set_failure(error.failure);
        let response = error.failure.response(&report.request_id);
        report.set_status(response.status().as_u16());
        Handled { response, outcome }
    }

    /// Send an object's event to `owner`, the node that holds the object's
    /// lease, unless it has been forwarded [`MAX_HOPS`] times already.
    async fn forward_object<B>(
        &self,
        owner: String,
        request: http::Request<B>,
        context: RequestContext,
        call: ObjectCall,
        hops: u32,
    ) -> Handled
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        // The owner's run is the one that counts in the metrics; this
        // node's access log still shows the request.
        let report = self.report_for(&request, &context, None);
        let outcome = report.pending();
        let placement = self
            .inner
            .objects
            .as_ref()
            .and_then(|objects| objects.placement().cloned())
            .expect("only a placed worker's objects live elsewhere");
        let request_id = report.request_id.clone();
        let response = if hops >= MAX_HOPS {
            tracing::warn!(worker = %self.name(), request_id = %request_id, object = %call.address.id, %owner,
                "a Durable Object's event was forwarded {hops} times and its owner moved again; refused, to retry");
            moved_response(&format!(
                "the Durable Object moved while its event was forwarded (now owned by {owner}); retry"
            ))
        } else {
            let event = ForwardedEvent::new(
                self.name(),
                &call.address,
                call.event,
                call.alarm_firing,
                hops + 1,
                &context.clone().with_id(request_id.clone()),
            );
            // The owner's own limits end the run; this covers a node that
            // stopped answering.
            let timeout = self.inner.budget.wall + std::time::Duration::from_secs(30);
            match placement.forward(&owner, request, &event, timeout).await {
                Ok(response) => {
                    tracing::debug!(worker = %self.name(), request_id = %request_id, object = %call.address.id, %owner,
                        status = response.status().as_u16(), "forwarded a Durable Object's event to its owner");
                    response
                }
                Err(why) => {
                    tracing::warn!(worker = %self.name(), request_id = %request_id, object = %call.address.id,
                        "forwarding a Durable Object's event failed: {why}");
                    let mut response = crate::failure::error_response(
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        "object-owner-unreachable",
                        &format!(
                            "the node that owns this Durable Object is unreachable ({why}); another node takes the object over when its lease runs out"
                        ),
                    );
                    response.headers_mut().insert(
                        http::header::RETRY_AFTER,
                        http::HeaderValue::from_static("1"),
                    );
                    response
                }
            }
        };
        report.set_status(response.status().as_u16());
        Handled { response, outcome }
    }

    /// Run `request` as `object`'s event, in its turn.
    pub(crate) async fn run_object(
        &self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        mut services: ServiceCalls,
        report: Arc<Report>,
        profile: Option<crate::profile::Claim>,
        object: ObjectRun,
    ) -> Result<http::Response<Body>, GuestError> {
        let objects = self
            .inner
            .objects
            .clone()
            .expect("an admitted object's worker has objects");
        let Some((mut turn, storage)) = Objects::turn(object.cell).await else {
            tracing::warn!(worker = %self.name(), request_id = %report.request_id, object = %object.call.address.id,
                "this node lost the Durable Object's lease while the event waited for its turn; refused, to retry");
            return Ok(moved_response(
                "this node lost the Durable Object's lease while the event waited for its turn; retry",
            ));
        };
        // An object that needs an instance when the pool is full makes room
        // by evicting the object idle the longest, rather than waiting for
        // a slot that idle objects would hold until their idle timeout.
        if let Some(live) = turn.take_live() {
            turn.keep(live);
        } else if self.inner.budget.full() {
            objects.evict_least_recently_used();
        }
        let call = object.call;
        services.object = Some(CurrentObject {
            address: call.address,
            event: call.event,
            storage,
            alarm_firing: call.alarm_firing,
        });
        self.run(request, services, report, profile, Home::Object(turn))
            .await
    }
}

/// The 503 of an event for an object that moved to another node meanwhile:
/// to be retried, which reaches the new owner.
fn moved_response(text: &str) -> http::Response<Body> {
    let mut response =
        crate::failure::error_response(http::StatusCode::SERVICE_UNAVAILABLE, "object-moved", text);
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    response
}
