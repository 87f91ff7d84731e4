//! An object's event on the wire between nodes: the `isola-forward-*`
//! headers of a `POST /__isola/object` (see [`super::placement`]).

use std::collections::HashMap;

use super::placement::is_ours;
use super::{ObjectAddress, ObjectEvent};
use crate::request::{CallContext, RequestContext, RequestId, RequestInfo};

const WORKER: &str = "isola-forward-worker";
const CLASS: &str = "isola-forward-class";
const ID: &str = "isola-forward-id";
const NAME: &str = "isola-forward-name";
const EVENT: &str = "isola-forward-event";
const ALARM_RETRY: &str = "isola-forward-alarm-retry";
const ALARM_TIME: &str = "isola-forward-alarm-time";
const HOPS: &str = "isola-forward-hops";
pub(super) const METHOD: &str = "isola-forward-method";
pub(super) const URI: &str = "isola-forward-uri";
const REQUEST_ID: &str = "isola-forward-request-id";
const DEPTH: &str = "isola-forward-depth";
const LOCALS: &str = "isola-forward-locals";
pub(super) const FORWARD_PREFIX: &str = "isola-forward-";

/// An object's event as one node hands it to another.
#[derive(Debug, Clone)]
pub struct ForwardedEvent {
    /// The worker that defines the object's class.
    pub worker: String,
    pub address: ObjectAddress,
    pub event: ObjectEvent,
    /// For an alarm, the time it was set for.
    pub alarm_firing: Option<u64>,
    /// Times the event was forwarded, this one included.
    pub hops: u32,
    pub(crate) context: RequestContext,
}

impl ForwardedEvent {
    pub(crate) fn new(
        worker: &str,
        address: &ObjectAddress,
        event: ObjectEvent,
        alarm_firing: Option<u64>,
        hops: u32,
        context: &RequestContext,
    ) -> Self {
        ForwardedEvent {
            worker: worker.to_owned(),
            address: address.clone(),
            event,
            alarm_firing,
            hops,
            context: context.clone(),
        }
    }

    /// The request id the event carries.
    pub fn request_id(&self) -> Option<&RequestId> {
        self.context.id.as_ref()
    }

    pub(super) fn write(&self, headers: &mut http::HeaderMap) -> Result<(), String> {
        let mut set = |name: &'static str, value: String| {
            let value = http::HeaderValue::try_from(value.as_str())
                .map_err(|_| format!("`{value}` cannot be a header value"))?;
            headers.insert(name, value);
            Ok::<_, String>(())
        };
        set(WORKER, encode(&self.worker))?;
        set(CLASS, encode(&self.address.class_name))?;
        set(ID, self.address.id.clone())?;
        if let Some(name) = &self.address.name {
            set(NAME, encode(name))?;
        }
        match self.event {
            ObjectEvent::Fetch => set(EVENT, "fetch".into())?,
            ObjectEvent::Alarm { retry_count } => {
                set(EVENT, "alarm".into())?;
                set(ALARM_RETRY, retry_count.to_string())?;
            }
        }
        if let Some(time) = self.alarm_firing {
            set(ALARM_TIME, time.to_string())?;
        }
        set(HOPS, self.hops.to_string())?;
        if let Some(id) = &self.context.id {
            set(REQUEST_ID, encode(id.as_str()))?;
        }
        set(DEPTH, self.context.call.depth.to_string())?;
        if !self.context.call.locals.is_empty() {
            let locals = serde_json::to_string(&self.context.call.locals)
                .map_err(|e| format!("the locals cannot be sent: {e}"))?;
            set(LOCALS, encode(&locals))?;
        }
        Ok(())
    }

    /// The event a forwarded request carries, and the request as it was
    /// before it was forwarded (its method, URI and headers). The secret
    /// is not checked here: see [`Placement::authorized`].
    pub fn read<B>(request: http::Request<B>) -> Result<(http::Request<B>, Self), String> {
        let (mut parts, body) = request.into_parts();
        let headers = &parts.headers;
        let text = |name: &str| -> Result<Option<String>, String> {
            headers
                .get(name)
                .map(|v| decode(v.as_bytes()).ok_or_else(|| format!("`{name}` is not UTF-8")))
                .transpose()
        };
        let required = |name: &str| text(name)?.ok_or_else(|| format!("`{name}` is missing"));
        let number = |name: &str| -> Result<Option<u64>, String> {
            text(name)?
                .map(|v| v.parse().map_err(|_| format!("`{name}` is not a number")))
                .transpose()
        };
        let small = |name: &str| -> Result<Option<u32>, String> {
            number(name)?
                .map(|n| u32::try_from(n).map_err(|_| format!("`{name}` is too large")))
                .transpose()
        };
        let event = match required(EVENT)?.as_str() {
            "fetch" => ObjectEvent::Fetch,
            "alarm" => ObjectEvent::Alarm {
                retry_count: small(ALARM_RETRY)?.unwrap_or(0),
            },
            other => return Err(format!("`{other}` is not an object event")),
        };
        let method = http::Method::from_bytes(required(METHOD)?.as_bytes())
            .map_err(|_| format!("`{METHOD}` is not a method"))?;
        let uri: http::Uri = required(URI)?
            .parse()
            .map_err(|_| format!("`{URI}` is not a URI"))?;
        let locals = match text(LOCALS)? {
            Some(json) => serde_json::from_str(&json)
                .map_err(|_| format!("`{LOCALS}` is not a JSON object of strings"))?,
            None => HashMap::new(),
        };
        let forwarded = ForwardedEvent {
            worker: required(WORKER)?,
            address: ObjectAddress {
                class_name: required(CLASS)?,
                id: required(ID)?,
                name: text(NAME)?,
            },
            event,
            alarm_firing: number(ALARM_TIME)?,
            hops: small(HOPS)?.unwrap_or(1),
            context: RequestContext {
                id: text(REQUEST_ID)?.map(|id| RequestId::from(id.as_str())),
                client: None,
                info: Some(RequestInfo {
                    protocol: "internal".into(),
                    ..RequestInfo::default()
                }),
                call: CallContext {
                    depth: small(DEPTH)?.unwrap_or(0),
                    locals,
                },
            },
        };
        let names: Vec<http::HeaderName> = parts
            .headers
            .keys()
            .filter(|name| is_ours(name.as_str()))
            .cloned()
            .collect();
        for name in names {
            parts.headers.remove(name);
        }
        parts.method = method;
        parts.uri = uri;
        Ok((http::Request::from_parts(parts, body), forwarded))
    }
}

/// Text as a header value: percent-encoded beyond visible ASCII.
fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, &HEADER_UNSAFE).to_string()
}

fn decode(value: &[u8]) -> Option<String> {
    percent_encoding::percent_decode(value)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

/// Controls, non-ASCII, and `%` itself.
const HEADER_UNSAFE: percent_encoding::AsciiSet = percent_encoding::CONTROLS.add(b'%');

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::placement::SECRET_HEADER;

    #[test]
    fn an_event_reads_back_as_it_was_written() {
        let mut context = RequestContext::default().with_id(RequestId::from("req-1"));
        context.call.depth = 3;
        context
            .call
            .locals
            .insert("user".into(), "zoë \"quoted\"\n".into());
        let address = ObjectAddress {
            class_name: "Counter".into(),
            id: "ab".repeat(32),
            name: Some("naïve/name %20 ü".into()),
        };
        for (event, firing) in [
            (ObjectEvent::Fetch, None),
            (
                ObjectEvent::Alarm { retry_count: 4 },
                Some(1_700_000_000_123),
            ),
        ] {
            let sent = ForwardedEvent::new("wörker", &address, event, firing, 1, &context);
            let mut request = http::Request::post("http://b:1/__isola/object")
                .header("x-note", "kept")
                .header(SECRET_HEADER, "s3cret")
                .body(())
                .unwrap();
            request
                .headers_mut()
                .insert(METHOD, http::HeaderValue::from_static("PUT"));
            request.headers_mut().insert(
                URI,
                http::HeaderValue::from_static("http://counter.object.isola.internal/x?y=1"),
            );
            sent.write(request.headers_mut()).unwrap();
            let (request, read) = ForwardedEvent::read(request).unwrap();
            assert_eq!(read.worker, "wörker");
            assert_eq!(read.address, address);
            assert_eq!(read.event, event);
            assert_eq!(read.alarm_firing, firing);
            assert_eq!(read.hops, 1);
            assert_eq!(read.request_id().map(RequestId::as_str), Some("req-1"));
            assert_eq!(read.context.call.depth, 3);
            assert_eq!(read.context.call.locals, context.call.locals);
            assert_eq!(request.method(), http::Method::PUT);
            assert_eq!(
                request.uri().to_string(),
                "http://counter.object.isola.internal/x?y=1"
            );
            let names: Vec<&str> = request.headers().keys().map(|n| n.as_str()).collect();
            assert_eq!(names, ["x-note"], "the cluster's headers are taken off");
        }
        let bad = http::Request::post("/").body(()).unwrap();
        assert!(ForwardedEvent::read(bad).unwrap_err().contains("missing"));
    }
}
