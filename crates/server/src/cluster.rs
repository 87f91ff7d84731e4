//! The internal listener of a cluster node (`[cluster] listen`): where the
//! other nodes send the events of the Durable Objects this node owns.
//!
//! It takes one thing, `POST /__isola/object` carrying the cluster's
//! shared secret (`ISOLA_CLUSTER_SECRET`, compared in constant time), and
//! hands the event to the current generation's worker that defines the
//! object's class; the response streams back to the node that forwarded
//! it. Anything else is refused: 404 for another path, 405 for another
//! method, 403 without the right secret (whose value is never logged).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use isola_runtime::{Body, BodyError, FORWARD_PATH, ForwardedEvent, Placement, error_response};
use tokio::net::TcpListener;

use crate::app::App;

/// The environment variable holding the nodes' shared secret (never the
/// config file).
pub const SECRET_ENV: &str = "ISOLA_CLUSTER_SECRET";

/// The shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// The cluster's shared secret from [`SECRET_ENV`], or why it is unusable.
pub fn secret_from_env() -> Result<String, String> {
    match std::env::var(SECRET_ENV) {
        Ok(secret) if secret.len() >= MIN_SECRET_LEN => Ok(secret),
        Ok(secret) if secret.is_empty() => Err(format!("{SECRET_ENV} is empty")),
        Ok(_) => Err(format!(
            "{SECRET_ENV} is shorter than {MIN_SECRET_LEN} characters; use a long random one (`openssl rand -hex 32`)"
        )),
        Err(std::env::VarError::NotPresent) => Err(format!("{SECRET_ENV} is not set")),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{SECRET_ENV} is not UTF-8")),
    }
}

/// A bound internal listener.
pub struct ClusterListener {
    listener: TcpListener,
    app: Arc<App>,
    placement: Arc<Placement>,
}

impl ClusterListener {
    pub async fn bind(
        addr: SocketAddr,
        app: Arc<App>,
        placement: Arc<Placement>,
    ) -> std::io::Result<Self> {
        Ok(ClusterListener {
            listener: TcpListener::bind(addr).await?,
            app,
            placement,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until the task is dropped; each connection on its own task.
    pub async fn run(self) {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10));
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("the internal listener's accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (app, placement) = (self.app.clone(), self.placement.clone());
            let service = hyper::service::service_fn(move |request| {
                let (app, placement) = (app.clone(), placement.clone());
                async move { Ok::<_, Infallible>(handle(&app, &placement, request, peer).await) }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, "an internal connection ended with an error: {e}");
                }
            });
        }
    }
}

/// Answer one request of the internal listener.
pub async fn handle(
    app: &App,
    placement: &Placement,
    request: http::Request<Incoming>,
    peer: SocketAddr,
) -> http::Response<Body> {
    if request.uri().path() != FORWARD_PATH {
        return error_response(
            http::StatusCode::NOT_FOUND,
            "not-found",
            "the internal listener takes only POST /__isola/object",
        );
    }
    if request.method() != http::Method::POST {
        let mut response = error_response(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "use POST",
        );
        response
            .headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        return response;
    }
    if !placement.authorized(request.headers()) {
        tracing::warn!(%peer, "the internal listener refused a request without the cluster's secret");
        return error_response(
            http::StatusCode::FORBIDDEN,
            "forbidden",
            "this request does not carry the cluster's secret",
        );
    }
    let (request, event) = match ForwardedEvent::read(request) {
        Ok(read) => read,
        Err(why) => {
            return error_response(http::StatusCode::BAD_REQUEST, "bad-forward", &why);
        }
    };
    let Some(generation) = app.current() else {
        let mut response = error_response(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "the workers are not loaded yet",
        );
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        return response;
    };
    let Some(worker) = generation
        .workers()
        .iter()
        .find(|w| w.name() == event.worker)
    else {
        return error_response(
            http::StatusCode::NOT_FOUND,
            "no-worker",
            &format!("this node has no worker `{}`", event.worker),
        );
    };
    let request = request.map(|body| body.map_err(BodyError::Hyper));
    worker.handle_forwarded(request, event).await.response
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::TokioExecutor;
    use isola_backends::lease::LocalLeases;
    use isola_runtime::SECRET_HEADER;

    const SECRET: &str = "a-long-enough-shared-secret";

    /// The refusals, against a real listener: nothing reaches a worker
    /// without the secret.
    #[tokio::test]
    async fn only_post_to_the_object_path_with_the_secret_gets_in() {
        let app = Arc::new(App::empty(
            &isola_config::ServerConfig::default(),
            Arc::new(crate::Telemetry::new()),
        ));
        let placement = Arc::new(Placement::new(
            Arc::new(LocalLeases),
            "http://127.0.0.1:1",
            SECRET,
        ));
        let listener = ClusterListener::bind("127.0.0.1:0".parse().unwrap(), app, placement)
            .await
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let serving = tokio::spawn(listener.run());
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Full<Bytes>>();
        let send = |method: &str, path: &str, headers: &[(&str, &str)]| {
            let mut request = http::Request::builder()
                .method(method)
                .uri(format!("{base}{path}"));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let request = request.body(Full::new(Bytes::new())).unwrap();
            let client = client.clone();
            async move {
                let response = client.request(request).await.unwrap();
                let status = response.status().as_u16();
                let reason = response
                    .headers()
                    .get(isola_runtime::ERROR_HEADER)
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (status, reason, String::from_utf8_lossy(&body).into_owned())
            }
        };
        let event = [
            (SECRET_HEADER, SECRET),
            ("isola-forward-worker", "w"),
            ("isola-forward-class", "Counter"),
            ("isola-forward-id", "00"),
            ("isola-forward-event", "fetch"),
            ("isola-forward-method", "GET"),
            ("isola-forward-uri", "http://counter.object.isola.internal/"),
        ];
        let (status, _, body) = send("POST", "/other", &event).await;
        assert_eq!(status, 404, "{body}");
        let (status, _, body) = send("GET", FORWARD_PATH, &event).await;
        assert_eq!(status, 405, "{body}");
        let (status, reason, _) = send("POST", FORWARD_PATH, &event[1..]).await;
        assert_eq!((status, reason.as_deref()), (403, Some("forbidden")));
        let mut wrong = event;
        wrong[0] = (SECRET_HEADER, "a-long-enough-shared-secreT");
        let (status, _, body) = send("POST", FORWARD_PATH, &wrong).await;
        assert_eq!(status, 403);
        assert!(!body.contains("secret-"), "{body}");
        // The secret lets a request in; it still needs its event.
        let (status, reason, body) = send("POST", FORWARD_PATH, &event[..4]).await;
        assert_eq!(
            (status, reason.as_deref()),
            (400, Some("bad-forward")),
            "{body}"
        );
        assert!(body.contains("isola-forward-event"), "{body}");
        // A whole event, before the workers are loaded.
        let (status, reason, _) = send("POST", FORWARD_PATH, &event).await;
        assert_eq!((status, reason.as_deref()), (503, Some("not-ready")));
        serving.abort();
    }
}
