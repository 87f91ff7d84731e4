//! Outbound HTTP from guests (`wasi:http/outgoing-handler`): the allow-list,
//! the per-request subrequest budget and the override target, in front of
//! the process's pooled client (`client`).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use isola_config::OutboundRule;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::client::OutboundClient;
use crate::services::ServiceCalls;

/// A worker's outbound rules, shared by its requests.
pub(crate) struct OutboundPolicy {
    pub rules: Vec<OutboundRule>,
    /// `host:port` every request goes to instead (plain HTTP).
    pub override_authority: Option<String>,
}

/// What one request may still send.
#[derive(Clone)]
pub(crate) struct Subrequests {
    pub used: Arc<AtomicU32>,
    pub budget: u32,
    /// Set when a binding call of this request got a `backend` error.
    pub backend_failed: Arc<std::sync::atomic::AtomicBool>,
}

impl Subrequests {
    /// A budget of `budget` for a run that counts on its own (a plugin
    /// call, the handlers question); requests count in their report.
    pub fn new(budget: u32) -> Self {
        Subrequests {
            used: Arc::default(),
            budget,
            backend_failed: Arc::default(),
        }
    }

    /// Take one subrequest from the budget, or say why not.
    pub fn take(&self) -> Result<(), String> {
        let n = self.used.fetch_add(1, Ordering::Relaxed);
        if n >= self.budget {
            self.used.fetch_sub(1, Ordering::Relaxed);
            Err(format!(
                "subrequest limit reached: this request may make at most {} subrequests",
                self.budget
            ))
        } else {
            Ok(())
        }
    }
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

/// Check and send one outbound request.
pub(crate) async fn send(
    policy: Arc<OutboundPolicy>,
    subrequests: Subrequests,
    services: ServiceCalls,
    cache_endpoints: Arc<crate::host::cache::Endpoints>,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> SendResult {
    let uri = request.uri().clone();
    let scheme = uri.scheme_str().unwrap_or("http").to_owned();
    let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?.clone();
    let host = authority.host().to_owned();

    // The cache's body and upload endpoints: part of a `match` or `put`
    // already counted, and never on the network.
    if host.eq_ignore_ascii_case(crate::host::cache::CACHE_ENDPOINT_HOST) {
        let response = crate::host::cache::serve_endpoint(&cache_endpoints, request).await;
        return Ok((response, Box::new(async { Ok(()) })));
    }
    // Service bindings are declared, so the allow-list does not apply; the
    // subrequest budget does.
    if let Some(binding) = ServiceCalls::binding_of(&host) {
        subrequests
            .take()
            .map_err(|why| Error::InternalError(Some(why)))?;
        let response = services.call(&binding, request).await?;
        return Ok((response, Box::new(async { Ok(()) })));
    }
    // So are Durable Object namespaces.
    if let Some(binding) = ServiceCalls::object_binding_of(&host) {
        subrequests
            .take()
            .map_err(|why| Error::InternalError(Some(why)))?;
        let response = services.call_object(&binding, request).await?;
        return Ok((response, Box::new(async { Ok(()) })));
    }
    let port = authority
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });

    let matching: Vec<&OutboundRule> = policy
        .rules
        .iter()
        .filter(|rule| rule.allows(&scheme, &host, port))
        .collect();
    if matching.is_empty() {
        tracing::warn!(target: "isola::outbound", url = %uri, "denied: not in allowed_outbound_hosts");
        return Err(Error::HttpRequestDenied);
    }
    subrequests.take().map_err(|why| {
        tracing::warn!(target: "isola::outbound", url = %uri, "denied: {why}");
        Error::InternalError(Some(why))
    })?;

    // A host only `*` allowed must be public: the client checks every
    // address it resolves to and dials one of those (no rebinding window).
    let public_only = !matching.iter().any(|rule| rule.names_host());
    if let Some(authority) = &policy.override_authority {
        // Keep the original Host header (already set by wasi-http) and
        // path; only the connection goes elsewhere, over plain HTTP.
        let authority = authority
            .parse()
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        set_target(&mut request, Scheme::HTTP, authority)?;
    }
    let public_only = public_only && policy.override_authority.is_none();
    let timeout = |pick: fn(&RequestOptions) -> Option<Duration>| {
        options.as_ref().and_then(pick).unwrap_or(DEFAULT_TIMEOUT)
    };
    let first_byte = timeout(|o| o.first_byte_timeout);
    let between_bytes = timeout(|o| o.between_bytes_timeout);
    let response = OutboundClient::shared()
        .send(request, public_only, first_byte, between_bytes)
        .await
        .inspect_err(|e| tracing::debug!(target: "isola::outbound", url = %uri, "failed: {e}"))?;
    // The connection is driven by the client's own task.
    Ok((response, Box::new(async { Ok(()) })))
}

/// What wasi-http's request options default to: the worker's `wall_ms`
/// bounds a request long before this.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

fn set_target(
    request: &mut http::Request<WasiBody>,
    scheme: Scheme,
    authority: Authority,
) -> Result<(), Error> {
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    *request.uri_mut() = http::Uri::from_parts(parts).map_err(|_| Error::HttpRequestUriInvalid)?;
    Ok(())
}

/// Loopback, private, link-local, shared (CGNAT), unspecified, multicast
/// and documentation ranges are not public.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b))
                || a == 0)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_private_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn the_budget_is_shared_and_hard() {
        let budget = Subrequests::new(2);
        let clone = budget.clone();
        assert!(budget.take().is_ok());
        assert!(clone.take().is_ok());
        assert!(budget.take().unwrap_err().contains("at most 2 subrequests"));
        assert_eq!(budget.used.load(Ordering::Relaxed), 2);
    }
}
