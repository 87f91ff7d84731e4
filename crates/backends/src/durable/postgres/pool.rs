//! The connection pool, and PostgreSQL's errors as the bindings report them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::MAX_IDLE;
use crate::error::{BindingError, Result};
use crate::sql::pg_tls::PgTls;
use crate::util::lock;

/// A few connections, made when needed; a broken one is dropped, so the
/// next call reconnects.
pub(super) struct Pool {
    pub(super) config: tokio_postgres::Config,
    pub(super) tls: Option<PgTls>,
    /// Redacted.
    pub(super) url: String,
    pub(super) idle: Mutex<Vec<PgClient>>,
    /// Connections open now.
    pub(super) open: Arc<AtomicUsize>,
}

/// A connection, counted in [`Pool::open`] while it lives.
pub(super) struct PgClient {
    pub(super) client: Client,
    _open: OpenCount,
}

struct OpenCount(Arc<AtomicUsize>);

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection taken from the pool. It goes back when dropped if it is
/// still open and clean: a connection marked dirty (a transaction may be
/// open on it, say because the call was dropped halfway) is closed
/// instead, which rolls that transaction back.
pub(super) struct Conn {
    pub(super) client: Option<PgClient>,
    pub(super) pool: Arc<Pool>,
    pub(super) clean: bool,
}

impl Conn {
    pub(super) fn client(&self) -> &Client {
        &self.client.as_ref().expect("present until dropped").client
    }

    pub(super) fn is_closed(&self) -> bool {
        self.client().is_closed()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && self.clean
            && !client.client.is_closed()
        {
            let mut idle = lock(&self.pool.idle);
            if idle.len() < MAX_IDLE {
                idle.push(client);
            }
        }
    }
}

impl Pool {
    pub(super) async fn get(self: &Arc<Self>) -> Result<Conn> {
        loop {
            let Some(client) = lock(&self.idle).pop() else {
                break;
            };
            if !client.client.is_closed() {
                return Ok(Conn {
                    client: Some(client),
                    pool: self.clone(),
                    clean: true,
                });
            }
        }
        let client =
            crate::sql::pg_tls::connect(self.config.clone(), self.tls.clone(), self.url.clone())
                .await?;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Conn {
            client: Some(PgClient {
                client,
                _open: OpenCount(self.open.clone()),
            }),
            pool: self.clone(),
            clean: true,
        })
    }
}

pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(super) fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => format!("postgres: {}", crate::remote::with_sources(e)),
    }
}

/// An error of the storage's own statements: the store's fault.
pub(super) fn pg_err(e: &tokio_postgres::Error) -> BindingError {
    BindingError::Backend(pg_message(e))
}

/// Whether `e` says a table or schema does not exist.
pub(super) fn is_missing(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(&SqlState::UNDEFINED_TABLE | &SqlState::INVALID_SCHEMA_NAME)
    )
}

/// An error of the guest's SQL as the guest sees it: PostgreSQL's message,
/// [`BindingError::Invalid`] when the SQL is at fault (syntax, names,
/// types, constraints, data, limits of a statement) and
/// [`BindingError::Backend`] when the store is (connections, resources,
/// the server shutting down, serialization failures, internal errors).
pub(super) fn guest_err(e: &tokio_postgres::Error, time_limit: Duration) -> BindingError {
    let Some(db) = e.as_db_error() else {
        return BindingError::Backend(pg_message(e));
    };
    if *db.code() == SqlState::QUERY_CANCELED {
        return BindingError::Invalid(format!(
            "the SQL ran longer than {time_limit:?} and was stopped"
        ));
    }
    let class = db.code().code().get(..2).unwrap_or_default();
    match class {
        // Cardinality, data, integrity, transaction state, SQL routine and
        // external routine exceptions, syntax or access rules, WITH CHECK
        // OPTION, feature not supported, invalid schema or catalog name,
        // program limits (a statement too complex), PL/pgSQL.
        "21" | "22" | "23" | "25" | "2F" | "38" | "39" | "3D" | "3F" | "42" | "44" | "0A"
        | "54" | "P0" => BindingError::Invalid(db.message().to_owned()),
        _ => BindingError::Backend(db.message().to_owned()),
    }
}
