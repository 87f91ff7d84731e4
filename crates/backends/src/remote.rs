//! What the distributed backends share: connections made on a background
//! runtime and bounded by a timeout, credentials redacted from every
//! message, a node id. A leaf: it knows no backend.

use std::sync::OnceLock;
use std::time::Duration;

use crate::error::{BindingError, Result};
use crate::util::hex;

/// How long a connection attempt or a command may take before the call
/// fails with a `backend` error (the guest sees the error; it never hangs
/// for its whole wall-clock budget on a dead server).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A random id for this process, used as its Redis consumer name and as
/// the value of the cron leases it holds.
pub fn node_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let mut bytes = [0u8; 8];
        let _ = getrandom::getrandom(&mut bytes);
        format!("{}-{}", std::process::id(), hex(&bytes))
    })
}

/// A runtime of its own for connection drivers (Redis, Postgres), so
/// connections made while starting up outlive whatever runtime the caller
/// had, and keep working for every runtime that uses them.
pub(crate) fn background() -> &'static tokio::runtime::Handle {
    static RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("isola-backends".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("isola-backends")
                    .enable_all()
                    .build()
                    .expect("a runtime for backend connections");
                let _ = tx.send(runtime.handle().clone());
                runtime.block_on(std::future::pending::<()>());
            })
            .expect("a thread for backend connections");
        rx.recv().expect("the backend runtime started")
    })
}

/// Run `future` on the [`background`] runtime and wait for it here.
pub(crate) async fn on_background<T, F>(future: F) -> Result<T>
where
    F: std::future::Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    background()
        .spawn(future)
        .await
        .map_err(|e| BindingError::Backend(format!("backend task failed: {e}")))?
}

/// `url` with its password (or a lone user name, which may be a token)
/// replaced by `***`: `redis://user:***@host:6379`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("***@{host}"),
        },
        None => authority.to_owned(),
    };
    // A password in the query (`?password=`) is redacted as well.
    let path = match path.find("password=") {
        Some(at) => {
            let from = at + "password=".len();
            let end = path[from..].find('&').map_or(path.len(), |e| from + e);
            format!("{}***{}", &path[..from], &path[end..])
        }
        None => path.to_owned(),
    };
    format!("{scheme}://{authority}{path}")
}

/// A Redis failure as the guest sees it.
pub(crate) fn redis_err(e: redis::RedisError) -> BindingError {
    BindingError::Backend(format!("redis: {e}"))
}

/// Install aws-lc-rs as the process's rustls provider unless one is set:
/// clients that build their TLS config with `ClientConfig::builder()` (the
/// `redis` crate's) need one, and this build has two.
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// What a failed TLS handshake with `store` was checked against, to follow
/// its error: ` (Redis TLS: server certificate checked against ca.pem)`.
pub(crate) fn tls_hint(store: &str, tls: &isola_config::BackendTls) -> String {
    let roots = tls.ca_file.as_ref().map_or_else(
        || "the system's root certificates".to_owned(),
        |ca| format!("CA file {}", ca.display()),
    );
    let client = match &tls.client_cert {
        Some(cert) => format!(", client certificate {}", cert.display()),
        None => String::new(),
    };
    format!(" ({store} TLS: server certificate checked against {roots}{client})")
}

/// `e`'s message followed by those of its sources not already in it.
pub(crate) fn with_sources(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    message
}

/// Whether a connection error came from the TLS handshake.
pub(crate) fn is_tls_failure(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["certificate", "tls", "handshake", "alert"]
        .iter()
        .any(|word| message.contains(word))
}

/// The contents of a certificate file a `[backends]` entry names.
pub(crate) fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| BindingError::Invalid(format!("cannot read {what} {}: {e}", path.display())))
}

/// A Redis connection that reconnects by itself: commands on a broken
/// connection fail (the caller gets a `backend` error) and the next one
/// reconnects. Every attempt and every command is bounded by
/// [`IO_TIMEOUT`]. A `rediss://` URL is TLS, verified against the system's
/// roots; see [`redis_connection_with`] for certificate files.
pub async fn redis_connection(url: &str) -> Result<redis::aio::ConnectionManager> {
    redis_connection_with(url, &isola_config::BackendTls::default()).await
}

/// As [`redis_connection`]; over TLS (`rediss://`) the server's certificate
/// is verified against `tls.ca_file` (else the system's roots), and
/// `tls.client_cert` / `client_key` are presented when set.
pub async fn redis_connection_with(
    url: &str,
    tls: &isola_config::BackendTls,
) -> Result<redis::aio::ConnectionManager> {
    let invalid = |e: redis::RedisError| {
        BindingError::Invalid(format!("redis URL {} is not valid: {e}", redact(url)))
    };
    let client = if url.starts_with("rediss://") {
        ensure_crypto_provider();
        let client_tls = match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_pem(cert, "client certificate")?,
                client_key: read_pem(key, "client key")?,
            }),
            _ => None,
        };
        let root_cert = match &tls.ca_file {
            Some(ca) => Some(read_pem(ca, "CA file")?),
            None => None,
        };
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(invalid)?
    } else {
        redis::Client::open(url).map_err(invalid)?
    };
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(IO_TIMEOUT))
        .set_response_timeout(Some(IO_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let shown = redact(url);
    let hint = url.starts_with("rediss://").then(|| tls_hint("Redis", tls));
    on_background(async move {
        let mut conn = redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| {
                let e = e.to_string();
                let hint = hint.filter(|_| is_tls_failure(&e)).unwrap_or_default();
                BindingError::Backend(format!("cannot connect to {shown}: {e}{hint}"))
            })?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| BindingError::Backend(format!("{shown} does not answer PING: {e}")))?;
        Ok(conn)
    })
    .await
}

impl From<redis::RedisError> for BindingError {
    fn from(e: redis::RedisError) -> Self {
        crate::remote::redis_err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("redis://:secret@host"), "redis://:***@host");
        assert_eq!(redact("redis://token@host"), "redis://***@host");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            redact("postgres://isola:p%40ss@db:5432/app?sslmode=disable"),
            "postgres://isola:***@db:5432/app?sslmode=disable"
        );
        assert_eq!(
            redact("postgres://db/app?user=a&password=b&x=1"),
            "postgres://db/app?user=a&password=***&x=1"
        );
        assert_eq!(redact("not a url"), "not a url");
    }
}
