//! Outbound HTTP from a worker: [`fetch()`] through `wasi:http/outgoing-handler`.

use anyhow::Context as _;

use crate::runtime::wait_for;
use crate::wire::{fields, header_map, write_all_async};
use crate::{
    BodyChunks, HeaderMap, HeaderName, HeaderValue, Method, Result, StatusCode, anyhow, bail,
};
use wasi::http::types::{OutgoingBody, Scheme};

/// An outbound HTTP request, sent with [`fetch()`].
pub struct OutboundRequest {
    pub(crate) method: Method,
    pub(crate) url: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl OutboundRequest {
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        OutboundRequest {
            method,
            url: url.into(),
            headers: HeaderMap::new(),
            body: Vec::new(),
        }
    }

    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::GET, url)
    }

    pub fn post(url: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self::new(Method::POST, url).with_body(body)
    }

    /// Panics if the name or value is not a valid header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
            HeaderValue::from_str(value).expect("a valid header value"),
        );
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

impl From<&str> for OutboundRequest {
    fn from(url: &str) -> Self {
        OutboundRequest::get(url)
    }
}

impl From<String> for OutboundRequest {
    fn from(url: String) -> Self {
        OutboundRequest::get(url)
    }
}

/// The response to a [`fetch()`].
pub struct FetchResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl FetchResponse {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub fn bytes(&self) -> &[u8] {
        &self.body
    }

    pub fn text(&self) -> Result<String> {
        Ok(String::from_utf8(self.body.clone())?)
    }
}

/// Relay a fetched response: its status, headers and body. Hop-by-hop
/// headers (`connection`, `transfer-encoding`...), which belong to the
/// connection it came on, are left out.
impl From<FetchResponse> for crate::Response {
    fn from(fetched: FetchResponse) -> Self {
        const HOP_BY_HOP: &[&str] = &[
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "te",
            "trailer",
            "http2-settings",
            "host",
        ];
        let mut response = crate::Response::new(fetched.body).with_status(fetched.status.as_u16());
        let headers = response.headers_mut();
        for (name, value) in &fetched.headers {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                headers.append(name.clone(), value.clone());
            }
        }
        response
    }
}

/// Send an HTTP request through the host (`wasi:http/outgoing-handler`).
///
/// The host decides what is reachable: hosts outside the worker's
/// `allowed_outbound_hosts`, or requests beyond its subrequest budget, fail
/// here with an error naming the reason.
///
/// Fetches awaited together (`futures::join!`, `join_all`) are in flight
/// together: ten to an upstream that takes 100 ms take about 100 ms.
pub async fn fetch(request: impl Into<OutboundRequest>) -> Result<FetchResponse> {
    use wasi::http::types::Method as WasiMethod;

    let request = request.into();
    let url = request.url.clone();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow!("fetch {url}: not an absolute http(s) URL"))?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => bail!("fetch {url}: unsupported scheme {other}"),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path
    };
    let fields = fields(&request.headers).with_context(|| format!("fetch {url}"))?;
    let outgoing = wasi::http::types::OutgoingRequest::new(fields);
    let method = match request.method.as_str() {
        "GET" => WasiMethod::Get,
        "HEAD" => WasiMethod::Head,
        "POST" => WasiMethod::Post,
        "PUT" => WasiMethod::Put,
        "DELETE" => WasiMethod::Delete,
        "OPTIONS" => WasiMethod::Options,
        "PATCH" => WasiMethod::Patch,
        other => WasiMethod::Other(other.to_owned()),
    };
    let invalid = |what: &str| anyhow!("fetch {url}: invalid {what}");
    outgoing
        .set_method(&method)
        .map_err(|()| invalid("method"))?;
    outgoing
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid("scheme"))?;
    outgoing
        .set_authority(Some(authority))
        .map_err(|()| invalid("host"))?;
    outgoing
        .set_path_with_query(Some(&path))
        .map_err(|()| invalid("path"))?;
    let body = outgoing
        .body()
        .map_err(|()| anyhow!("fetch {url}: body taken twice"))?;

    // Send first, then stream the body: the host forwards it as it is written.
    let pending = wasi::http::outgoing_handler::handle(outgoing, None)
        .map_err(|e| anyhow!("fetch {url}: {e:?}"))?;
    {
        let stream = body
            .write()
            .map_err(|()| anyhow!("fetch {url}: body stream taken twice"))?;
        write_all_async(&stream, &request.body)
            .await
            .with_context(|| format!("fetch {url}: sending the body"))?;
    }
    OutgoingBody::finish(body, None).map_err(|e| anyhow!("fetch {url}: {e:?}"))?;

    // Wait with the executor: other fetches (and tasks) go on meanwhile.
    let response = loop {
        match pending.get() {
            Some(result) => break result,
            None => wait_for(pending.subscribe()).await,
        }
    };
    let response = response
        .map_err(|()| anyhow!("fetch {url}: response taken twice"))?
        .map_err(|e| anyhow!("fetch {url}: {e:?}"))?;
    let status = StatusCode::from_u16(response.status())?;
    let headers = header_map(&response.headers())?;
    let incoming = response
        .consume()
        .map_err(|()| anyhow!("fetch {url}: body taken twice"))?;
    let mut chunks = BodyChunks::new(Some(incoming));
    let mut body = Vec::new();
    while let Some(chunk) = chunks.next_async().await {
        body.extend_from_slice(&chunk.with_context(|| format!("fetch {url}"))?);
    }
    Ok(FetchResponse {
        status,
        headers,
        body,
    })
}
