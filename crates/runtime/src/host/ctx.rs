//! `isola:worker/ctx` and `isola:worker/request-info`: what a run knows of
//! its request (id, client, `request.cf`), its locals, and the guest's
//! `passThroughOnException` and uncaught-exception reports.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use wasmtime::component::Linker;

use super::{HasView, HostView, View};
use crate::generated::isola::worker::{ctx, request_info};
use crate::request::RequestInfo;
use crate::source_map::SourceMap;

/// One run's request context. A reused instance gets a new one per request.
pub struct RequestCtx {
    pub(crate) request_id: Arc<str>,
    pub(crate) info: RequestInfo,
    /// Shared with the service calls this run makes, which carry them on.
    pub(crate) locals: Arc<Mutex<HashMap<String, String>>>,
    pub(crate) pass_through: AtomicBool,
    pub(crate) reports: AbortReports,
}

/// How an uncaught exception's message is told: its stack frames mapped to
/// original positions, secret values masked.
#[derive(Clone, Default)]
pub(crate) struct AbortReports {
    pub source_map: Option<Arc<SourceMap>>,
    pub secrets: Arc<[String]>,
}

impl RequestCtx {
    /// Whether the guest asked for `passThroughOnException`.
    pub fn pass_through_on_exception(&self) -> bool {
        self.pass_through.load(Ordering::Relaxed)
    }
}

/// Add `isola:worker/ctx` and `isola:worker/request-info` to `linker`.
pub fn add_to_linker<T: HostView<RequestCtx> + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    ctx::add_to_linker::<T, HasView<RequestCtx>>(linker, T::view)?;
    request_info::add_to_linker::<T, HasView<RequestCtx>>(linker, T::view)
}

impl ctx::Host for View<'_, RequestCtx> {
    fn request_id(&mut self) -> String {
        self.ctx.request_id.to_string()
    }

    fn pass_through_on_exception(&mut self) {
        self.ctx.pass_through.store(true, Ordering::Relaxed);
    }

    fn abort(&mut self, message: String) -> wasmtime::Result<()> {
        // The message carries the uncaught exception's stack: its frames
        // name original positions, as guest log lines do.
        let reports = &self.ctx.reports;
        let message = match &reports.source_map {
            Some(map) => map.rewrite_cow(&message),
            None => std::borrow::Cow::Borrowed(message.as_str()),
        };
        Err(wasmtime::Error::msg(crate::guest_log::mask_secrets(
            &message,
            &reports.secrets,
        )))
    }

    fn get_local(&mut self, key: String) -> Option<String> {
        self.ctx
            .locals
            .lock()
            .expect("locals lock")
            .get(&key)
            .cloned()
    }

    fn set_local(&mut self, key: String, value: String) {
        self.ctx
            .locals
            .lock()
            .expect("locals lock")
            .insert(key, value);
    }
}

impl request_info::Host for View<'_, RequestCtx> {
    fn get_json(&mut self) -> String {
        let info = self.get();
        serde_json::to_string(&Cf {
            http_protocol: &info.protocol,
            request_id: &info.request_id,
            client_address: info.client_address.as_deref(),
            tls_version: info.tls_version.as_deref(),
            colo: info.colo.as_deref(),
            country: info.country.as_deref(),
        })
        .expect("strings serialize")
    }

    fn get(&mut self) -> request_info::Info {
        let info = &self.ctx.info;
        request_info::Info {
            client_address: info.client_address.map(|ip| ip.to_string()),
            protocol: info.protocol.clone(),
            tls_version: info.tls_version.clone(),
            request_id: self.ctx.request_id.to_string(),
            colo: info.colo.clone(),
            country: info.country.clone(),
        }
    }
}

/// `request-info.get-json`'s object: Workers' `request.cf` names, in the
/// order the JS SDK has always given them.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Cf<'a> {
    http_protocol: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    colo: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    country: Option<&'a str>,
}
