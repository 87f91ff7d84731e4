//! TLS to PostgreSQL with rustls (aws-lc-rs): `sslmode=require` or
//! `verify-full` in the URL. Either way the server's certificate is
//! verified, host name included, against the entry's `ca_file` or else the
//! system's roots; Isola never talks TLS to a server it has not verified.
//! A `client_cert` / `client_key` pair is presented when the server asks.
//! Without one of those modes the connection is plain, as before.
//! [`connect`] opens a connection either way, for D1 and Durable Objects.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use isola_config::BackendTls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::error::{BindingError, Result};
use crate::remote::{read_pem, redact, tls_hint};

/// How a PostgreSQL URL asks for TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Verified,
}

/// `url`'s `sslmode`, and the URL tokio-postgres can parse (it knows
/// `require` but not `verify-full`, which becomes `require` here: both are
/// verified by [`PgTls`]).
pub(crate) fn split_mode(url: &str) -> Result<(String, bool)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), false));
    };
    let mut mode = Mode::Plain;
    let mut params = Vec::new();
    for param in query.split('&') {
        match param.strip_prefix("sslmode=") {
            Some("require" | "verify-full") => {
                mode = Mode::Verified;
                params.push("sslmode=require".to_owned());
            }
            Some("verify-ca") => {
                return Err(BindingError::Invalid(format!(
                    "postgres URL {}: sslmode=verify-ca is not supported (Isola checks the \
                     host name too: use verify-full)",
                    redact(url)
                )));
            }
            _ => params.push(param.to_owned()),
        }
    }
    Ok((
        format!("{base}?{}", params.join("&")),
        mode == Mode::Verified,
    ))
}

/// A rustls connector for tokio-postgres, and what to say when its
/// handshake fails.
#[derive(Clone)]
pub(crate) struct PgTls {
    config: Arc<rustls::ClientConfig>,
    /// Follows a handshake error: what the certificate was checked against.
    pub(crate) hint: String,
}

impl PgTls {
    pub(crate) fn new(tls: &BackendTls) -> Result<PgTls> {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca_file {
            Some(ca) => {
                let pem = read_pem(ca, "CA file")?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| {
                        BindingError::Invalid(format!("CA file {}: {e}", ca.display()))
                    })?;
                    roots.add(cert).map_err(|e| {
                        BindingError::Invalid(format!("CA file {}: {e}", ca.display()))
                    })?;
                }
                if roots.is_empty() {
                    return Err(BindingError::Invalid(format!(
                        "CA file {} holds no certificate",
                        ca.display()
                    )));
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| BindingError::Invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots);
        let config = match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => {
                let invalid = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
                    BindingError::Invalid(format!("{what} {}: {e}", path.display()))
                };
                let chain = CertificateDer::pem_slice_iter(&read_pem(cert, "client certificate")?)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| invalid("client certificate", cert, &e))?;
                let private = PrivateKeyDer::from_pem_slice(&read_pem(key, "client key")?)
                    .map_err(|e| invalid("client key", key, &e))?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| invalid("client certificate", cert, &e))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(PgTls {
            config: Arc::new(config),
            hint: tls_hint("PostgreSQL", tls),
        })
    }
}

impl MakeTlsConnect<Socket> for PgTls {
    type Stream = PgTlsStream;
    type TlsConnect = PgTlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> std::result::Result<PgTlsConnect, Self::Error> {
        Ok(PgTlsConnect {
            config: self.config.clone(),
            name: ServerName::try_from(domain.to_owned())?,
        })
    }
}

pub(crate) struct PgTlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl TlsConnect<Socket> for PgTlsConnect {
    type Stream = PgTlsStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<PgTlsStream, BoxError>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(PgTlsStream(Box::new(stream)))
        })
    }
}

pub(crate) struct PgTlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl TlsStream for PgTlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding (as over a plain connection).
        ChannelBinding::none()
    }
}

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// A new connection to `url` (`config` parsed from it), over `tls` when the
/// URL asked for it, driven on the background runtime until it ends.
pub(crate) async fn connect(
    config: tokio_postgres::Config,
    tls: Option<PgTls>,
    url: String,
) -> Result<tokio_postgres::Client> {
    crate::remote::on_background(async move {
        let failed = |e: tokio_postgres::Error, hint: &str| {
            // A TLS error's reason is in its sources, which `e` does not show.
            let message = crate::remote::with_sources(&e);
            let hint = if crate::remote::is_tls_failure(&message) {
                hint
            } else {
                ""
            };
            BindingError::Backend(format!("cannot connect to {url}: {message}{hint}"))
        };
        let background = crate::remote::background();
        match tls {
            Some(tls) => {
                let hint = tls.hint.clone();
                let (client, connection) =
                    config.connect(tls).await.map_err(|e| failed(e, &hint))?;
                background.spawn(drive(connection));
                Ok(client)
            }
            None => {
                let (client, connection) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| failed(e, ""))?;
                background.spawn(drive(connection));
                Ok(client)
            }
        }
    })
    .await
}

/// Run a connection until it ends.
async fn drive<T>(connection: tokio_postgres::Connection<Socket, T>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!("postgres connection ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_read_and_rewritten() {
        let (url, tls) = split_mode("postgres://h/d").unwrap();
        assert_eq!((url.as_str(), tls), ("postgres://h/d", false));
        let (url, tls) = split_mode("postgres://h/d?sslmode=verify-full&x=1").unwrap();
        assert_eq!(
            (url.as_str(), tls),
            ("postgres://h/d?sslmode=require&x=1", true)
        );
        let (url, tls) = split_mode("postgres://h/d?sslmode=require").unwrap();
        assert_eq!(
            (url.as_str(), tls),
            ("postgres://h/d?sslmode=require", true)
        );
        let (_, tls) = split_mode("postgres://h/d?sslmode=disable").unwrap();
        assert!(!tls);
        let err = split_mode("postgres://u:pw@h/d?sslmode=verify-ca")
            .unwrap_err()
            .to_string();
        assert!(err.contains("verify-full") && !err.contains("pw"), "{err}");
    }
}
