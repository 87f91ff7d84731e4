//! D1 on PostgreSQL, shared by every node.
//!
//! Each `d1_databases` entry is a schema, `d1_<database_name>`, made on
//! first use; connections to it set `search_path` to that schema only.
//! Statements are the guest's own SQL, with SQLite's `?` / `?NNN`
//! placeholders turned into `$n` (outside strings, quoted identifiers,
//! comments and dollar quotes). Parameters are typed from their values
//! (`int8`, `float8`, `text`, `bytea`; NULL lets PostgreSQL infer), and
//! results come back as the same five value kinds as SQLite's: integers,
//! booleans (0/1) and whole numerics as integers, floats and fractional
//! numerics as reals, text-like types as text, `bytea` as blobs. Other
//! column types are an error asking for a cast (`::text`).
//!
//! Meta: `changes` / `rows_written` are the rows the statement's command
//! tag reports (rows changed by triggers are not counted, unlike SQLite);
//! `rows_read` is the number of rows returned; `last_row_id` is
//! `lastval()` after an INSERT (the last sequence value the session drew:
//! a `serial` / identity column), else 0.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::BytesMut;
use futures_util::{TryStreamExt, pin_mut};
use tokio_postgres::types::{IsNull, Kind, ToSql, Type};
use tokio_postgres::{Client, GenericClient};

use super::pg_tls::{PgTls, split_mode};
use super::{ExecResult, Meta, Rows, SqlBackend, SqlDatabase, Statement, Value};
use crate::error::{BindingError, Result};
use crate::remote::{IO_TIMEOUT, redact};
use crate::util::lock;

/// Idle connections kept per database.
const MAX_IDLE: usize = 16;

pub struct PostgresSql {
    config: tokio_postgres::Config,
    tls: Option<PgTls>,
    url: String,
    open: Mutex<HashMap<String, Arc<PgDatabase>>>,
}

impl PostgresSql {
    /// Connect once to check the server answers.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &isola_config::BackendTls::default()).await
    }

    /// As [`PostgresSql::connect`]; with `sslmode=require` or `verify-full`
    /// in the URL, over TLS verified against `tls`' files
    /// ([`super::pg_tls`]).
    pub async fn connect_with(url: &str, tls: &isola_config::BackendTls) -> Result<Self> {
        let shown = redact(url);
        let (parsed, verified) = split_mode(url)?;
        let mut config: tokio_postgres::Config = parsed.parse().map_err(|e| {
            BindingError::Invalid(format!("postgres URL {shown} is not valid: {e}"))
        })?;
        config.connect_timeout(IO_TIMEOUT);
        let tls = if verified {
            Some(PgTls::new(tls)?)
        } else {
            None
        };
        let pool = Pool::new(config.clone(), tls.clone(), shown.clone(), None);
        let client = pool.get().await?;
        client
            .client()
            .simple_query("SELECT 1")
            .await
            .map_err(|e| BindingError::Backend(format!("{shown}: {}", pg_message(&e))))?;
        Ok(PostgresSql {
            config,
            tls,
            url: shown,
            open: Mutex::new(HashMap::new()),
        })
    }
}

impl SqlBackend for PostgresSql {
    fn open_database(&self, name: &str) -> Result<Arc<dyn SqlDatabase>> {
        let mut open = lock(&self.open);
        if let Some(db) = open.get(name) {
            return Ok(db.clone());
        }
        let db = Arc::new(PgDatabase {
            pool: Pool::new(
                self.config.clone(),
                self.tls.clone(),
                self.url.clone(),
                Some(format!("d1_{name}")),
            ),
        });
        open.insert(name.to_owned(), db.clone());
        Ok(db)
    }
}

/// A few connections to one schema, made when needed; a broken one is
/// dropped, so the next call reconnects.
struct Pool {
    config: tokio_postgres::Config,
    tls: Option<PgTls>,
    url: String,
    schema: Option<String>,
    schema_made: AtomicBool,
    idle: Arc<Mutex<Vec<Client>>>,
}

struct Pooled {
    client: Option<Client>,
    idle: Arc<Mutex<Vec<Client>>>,
}

impl Pooled {
    fn client(&self) -> &Client {
        self.client.as_ref().expect("present until dropped")
    }
    fn client_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !client.is_closed()
        {
            let mut idle = lock(&self.idle);
            if idle.len() < MAX_IDLE {
                idle.push(client);
            }
        }
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Pool {
    fn new(
        config: tokio_postgres::Config,
        tls: Option<PgTls>,
        url: String,
        schema: Option<String>,
    ) -> Self {
        Pool {
            config,
            tls,
            url,
            schema,
            schema_made: AtomicBool::new(false),
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    async fn get(&self) -> Result<Pooled> {
        loop {
            let Some(client) = lock(&self.idle).pop() else {
                break;
            };
            if !client.is_closed() {
                return Ok(Pooled {
                    client: Some(client),
                    idle: self.idle.clone(),
                });
            }
        }
        let client =
            super::pg_tls::connect(self.config.clone(), self.tls.clone(), self.url.clone()).await?;
        if let Some(schema) = &self.schema {
            let schema = quote_ident(schema);
            if !self.schema_made.load(Ordering::Relaxed) {
                // Two nodes creating it at once: one of them gets a unique
                // violation, and the schema exists either way.
                if let Err(e) = client
                    .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                    .await
                    && e.code() != Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
                {
                    return Err(pg_err(e));
                }
                self.schema_made.store(true, Ordering::Relaxed);
            }
            client
                .batch_execute(&format!("SET search_path TO {schema}"))
                .await
                .map_err(pg_err)?;
        }
        Ok(Pooled {
            client: Some(client),
            idle: self.idle.clone(),
        })
    }
}

fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => format!("postgres: {e}"),
    }
}

fn pg_err(e: tokio_postgres::Error) -> BindingError {
    BindingError::Backend(pg_message(&e))
}

struct PgDatabase {
    pool: Pool,
}

/// What the placeholder scan learned about one SQL text.
#[derive(Debug, PartialEq)]
pub(crate) struct Scanned {
    /// The SQL with `$n` placeholders.
    pub sql: String,
    /// The statements it holds (split at top-level `;`), each as its first
    /// keyword (uppercase) and whether it mentions INSERT / UPDATE /
    /// DELETE / MERGE anywhere outside strings; empty statements left out.
    pub statements: Vec<(String, bool)>,
    /// The largest placeholder number.
    pub params: u32,
}

/// Turn `?` / `?NNN` into `$n` outside quotes and comments, and split at
/// `;`. A bare `?` takes the number after the largest used so far, as in
/// SQLite.
pub(crate) fn scan(sql: &str) -> Scanned {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut statements = Vec::new();
    let mut first: Option<String> = None;
    let mut writes = false;
    let mut largest = 0u32;
    let mut i = 0;
    let mut copy_from = 0;
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let end_statement =
        |first: &mut Option<String>, writes: &mut bool, statements: &mut Vec<(String, bool)>| {
            if let Some(word) = first.take() {
                statements.push((word, *writes));
            }
            *writes = false;
        };
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\'' => {
                // E'...' strings take backslash escapes.
                let escapes =
                    i > 0 && matches!(bytes[i - 1], b'e' | b'E') && (i < 2 || !ident(bytes[i - 2]));
                i += 1;
                while i < bytes.len() {
                    if escapes && bytes[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if bytes[i] == b'\'' {
                        if bytes.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                first.get_or_insert_with(|| "'".into());
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += 1;
                }
                i += 1;
                first.get_or_insert_with(|| "\"".into());
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if bytes[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' if i == 0 || !ident(bytes[i - 1]) => {
                // A dollar quote: $tag$ ... $tag$ (the tag does not start
                // with a digit; `$1` is a parameter).
                let tag_end = bytes[i + 1..]
                    .iter()
                    .position(|&c| !ident(c))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(end)
                        if bytes[end] == b'$'
                            && !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) =>
                    {
                        let tag = &bytes[i..=end];
                        let body = end + 1;
                        i = bytes[body..]
                            .windows(tag.len())
                            .position(|w| w == tag)
                            .map_or(bytes.len(), |p| body + p + tag.len());
                        first.get_or_insert_with(|| "$".into());
                    }
                    _ => i += 1,
                }
            }
            b'?' => {
                out.push_str(&sql[copy_from..i]);
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .count();
                let n = if digits > 0 {
                    sql[i + 1..i + 1 + digits].parse().unwrap_or(u32::MAX)
                } else {
                    largest.saturating_add(1)
                };
                largest = largest.max(n);
                out.push('$');
                out.push_str(&n.to_string());
                i += 1 + digits;
                copy_from = i;
                first.get_or_insert_with(|| "?".into());
            }
            b';' => {
                end_statement(&mut first, &mut writes, &mut statements);
                i += 1;
            }
            b if b.is_ascii_alphabetic() || b == b'_' => {
                let start = i;
                while i < bytes.len() && ident(bytes[i]) {
                    i += 1;
                }
                let word = sql[start..i].to_ascii_uppercase();
                if matches!(word.as_str(), "INSERT" | "UPDATE" | "DELETE" | "MERGE") {
                    writes = true;
                }
                first.get_or_insert(word);
            }
            b if b.is_ascii_whitespace() => i += 1,
            _ => {
                i += 1;
                first.get_or_insert_with(|| "(".into());
            }
        }
    }
    out.push_str(&sql[copy_from.min(sql.len())..]);
    end_statement(&mut first, &mut writes, &mut statements);
    Scanned {
        sql: out,
        statements,
        params: largest,
    }
}

fn is_transaction_control(word: &str) -> bool {
    matches!(
        word,
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE"
    )
}

/// A bound value, encoded as the type its placeholder was declared with
/// (D1's and Durable Objects' SQL on PostgreSQL).
pub(crate) struct Param<'a>(pub(crate) &'a Value);

impl std::fmt::Debug for Param<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Value::Null => return Ok(IsNull::Yes),
            Value::Integer(i) => match *ty {
                Type::INT2 => out.extend_from_slice(&i16::try_from(*i)?.to_be_bytes()),
                Type::INT4 => out.extend_from_slice(&i32::try_from(*i)?.to_be_bytes()),
                Type::FLOAT8 => out.extend_from_slice(&(*i as f64).to_be_bytes()),
                Type::BOOL => out.extend_from_slice(&[u8::from(*i != 0)]),
                Type::TEXT | Type::VARCHAR => out.extend_from_slice(i.to_string().as_bytes()),
                _ => out.extend_from_slice(&i.to_be_bytes()),
            },
            Value::Real(f) => out.extend_from_slice(&f.to_be_bytes()),
            Value::Text(s) => out.extend_from_slice(s.as_bytes()),
            Value::Blob(b) => out.extend_from_slice(b),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

pub(crate) fn param_type(value: &Value) -> Type {
    match value {
        Value::Integer(_) => Type::INT8,
        Value::Real(_) => Type::FLOAT8,
        Value::Text(_) => Type::TEXT,
        Value::Blob(_) => Type::BYTEA,
        // Oid 0: unspecified, PostgreSQL infers it from the context.
        Value::Null => Type::new("unspecified".into(), 0, Kind::Pseudo, "pg_catalog".into()),
    }
}

/// A column value in one of the five SQLite kinds.
pub(crate) struct Column(pub(crate) Value);

impl<'a> tokio_postgres::types::FromSql<'a> for Column {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let int = |n: i64| Ok(Column(Value::Integer(n)));
        match *ty {
            Type::BOOL => int(i64::from(raw.first().copied().unwrap_or(0) != 0)),
            Type::INT2 => int(i16::from_be_bytes(raw.try_into()?).into()),
            Type::INT4 => int(i32::from_be_bytes(raw.try_into()?).into()),
            Type::INT8 => int(i64::from_be_bytes(raw.try_into()?)),
            Type::OID => int(u32::from_be_bytes(raw.try_into()?).into()),
            Type::FLOAT4 => Ok(Column(Value::Real(
                f32::from_be_bytes(raw.try_into()?).into(),
            ))),
            Type::FLOAT8 => Ok(Column(Value::Real(f64::from_be_bytes(raw.try_into()?)))),
            Type::NUMERIC => Ok(Column(numeric(raw).ok_or("malformed numeric")?)),
            Type::BYTEA => Ok(Column(Value::Blob(raw.to_vec()))),
            Type::JSONB => Ok(Column(Value::Text(
                std::str::from_utf8(raw.get(1..).unwrap_or_default())?.to_owned(),
            ))),
            Type::TEXT
            | Type::VARCHAR
            | Type::BPCHAR
            | Type::NAME
            | Type::UNKNOWN
            | Type::JSON
            | Type::XML => Ok(Column(Value::Text(std::str::from_utf8(raw)?.to_owned()))),
            ref other => Err(format!(
                "column type {} is not supported; cast it (e.g. `::text`)",
                other.name()
            )
            .into()),
        }
    }

    fn from_sql_null(
        _: &Type,
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Column(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// PostgreSQL's binary NUMERIC: an integer when it has no fractional
/// digits and fits, else a real.
fn numeric(raw: &[u8]) -> Option<Value> {
    let word =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes(raw.get(i..i + 2)?.try_into().ok()?)) };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i32;
    let sign = word(4)?;
    let dscale = word(6)?;
    if sign == 0xC000 {
        return Some(Value::Real(f64::NAN));
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|d| word(8 + 2 * d))
        .collect::<Option<_>>()?;
    let negative = sign == 0x4000;
    if dscale == 0 {
        let mut n: i128 = 0;
        for (d, &digit) in digits.iter().enumerate() {
            let exponent = weight - d as i32;
            if exponent < 0 {
                break;
            }
            n = n.checked_add(
                i128::from(digit).checked_mul(10_000i128.checked_pow(exponent as u32)?)?,
            )?;
        }
        let n = if negative { -n } else { n };
        if let Ok(n) = i64::try_from(n) {
            return Some(Value::Integer(n));
        }
    }
    let mut f = 0f64;
    for (d, &digit) in digits.iter().enumerate() {
        f += f64::from(digit) * 10_000f64.powi(weight - d as i32);
    }
    Some(Value::Real(if negative { -f } else { f }))
}

/// Run one statement on `client` (a connection or a transaction).
async fn run(
    client: &impl GenericClient,
    statement: &Statement,
    in_batch: bool,
) -> Result<(Rows, bool)> {
    let start = Instant::now();
    let scanned = scan(&statement.sql);
    let (first, writes) = match scanned.statements.as_slice() {
        [] => return Err(BindingError::Invalid("the SQL holds no statement".into())),
        [one] => one.clone(),
        _ => {
            return Err(BindingError::Invalid(
                "the SQL holds more than one statement; use exec() or batch()".into(),
            ));
        }
    };
    if is_transaction_control(&first) {
        return Err(BindingError::Invalid(if in_batch {
            "transaction statements are not allowed in a batch (it is one transaction already)"
                .into()
        } else {
            "transactions cannot span calls on a shared connection; use batch() for transactions"
                .into()
        }));
    }
    // `?` placeholders fix the count, as in SQLite (PostgreSQL would
    // instead fail to type an unused one, or ignore missing ones).
    if scanned.params > 0 && statement.params.len() != scanned.params as usize
        || statement.params.len() > scanned.params as usize
    {
        return Err(BindingError::Invalid(format!(
            "the statement takes {} parameters but {} were bound",
            scanned.params,
            statement.params.len()
        )));
    }
    let types: Vec<Type> = statement.params.iter().map(param_type).collect();
    let prepared = client
        .prepare_typed(&scanned.sql, &types)
        .await
        .map_err(pg_err)?;
    let expected = prepared.params().len();
    if statement.params.len() != expected {
        return Err(BindingError::Invalid(format!(
            "the statement takes {expected} parameters but {} were bound",
            statement.params.len()
        )));
    }
    let columns: Vec<String> = prepared
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let params = statement.params.iter().map(Param);
    let stream = client.query_raw(&prepared, params).await.map_err(pg_err)?;
    pin_mut!(stream);
    let mut rows = Vec::new();
    while let Some(row) = stream.try_next().await.map_err(pg_err)? {
        let values = (0..columns.len())
            .map(|i| row.try_get::<_, Column>(i).map(|c| c.0))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| BindingError::Backend(e.to_string()))?;
        rows.push(values);
    }
    let affected = stream.rows_affected().unwrap_or(0);
    let readonly = !writes
        || !matches!(
            first.as_str(),
            "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "WITH"
        );
    let mut meta = Meta {
        rows_read: rows.len() as u64,
        ..Meta::default()
    };
    if !readonly {
        meta.rows_written = affected;
        meta.changes = affected;
        meta.changed_db = affected > 0;
    }
    meta.duration_ms = start.elapsed().as_secs_f64() * 1000.0;
    let inserted = !readonly && affected > 0 && (first == "INSERT" || first == "WITH");
    Ok((
        Rows {
            columns,
            rows,
            meta,
        },
        inserted,
    ))
}

/// `lastval()`, or 0 when this session has drawn no sequence value (the
/// error is contained in a savepoint when inside a transaction).
async fn last_row_id(client: &mut tokio_postgres::Transaction<'_>) -> Result<i64> {
    let savepoint = client.savepoint("isola_lastval").await.map_err(pg_err)?;
    match savepoint.query_one("SELECT lastval()", &[]).await {
        Ok(row) => {
            let id: i64 = row.try_get(0).map_err(pg_err)?;
            savepoint.commit().await.map_err(pg_err)?;
            Ok(id)
        }
        Err(_) => {
            savepoint.rollback().await.map_err(pg_err)?;
            Ok(0)
        }
    }
}

fn numbered(i: usize, n: usize, e: BindingError) -> BindingError {
    match e {
        BindingError::Invalid(m) => {
            BindingError::Invalid(format!("statement {} of {n}: {m}", i + 1))
        }
        BindingError::Backend(m) => {
            BindingError::Backend(format!("statement {} of {n}: {m}", i + 1))
        }
    }
}

#[async_trait]
impl SqlDatabase for PgDatabase {
    async fn query(&self, statement: Statement) -> Result<Rows> {
        let mut conn = self.pool.get().await?;
        // One statement in its own transaction, so `lastval()` can be
        // read right after it without a failing read spoiling anything.
        let mut tx = conn.client_mut().transaction().await.map_err(pg_err)?;
        let (mut rows, inserted) = run(&tx, &statement, false).await?;
        if inserted {
            rows.meta.last_row_id = last_row_id(&mut tx).await?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(rows)
    }

    async fn batch(&self, statements: Vec<Statement>) -> Result<Vec<Rows>> {
        let mut conn = self.pool.get().await?;
        let mut tx = conn.client_mut().transaction().await.map_err(pg_err)?;
        let n = statements.len();
        let mut results = Vec::with_capacity(n);
        for (i, statement) in statements.iter().enumerate() {
            // Dropping `tx` on an error rolls the whole batch back.
            let (mut rows, inserted) = run(&tx, statement, true)
                .await
                .map_err(|e| numbered(i, n, e))?;
            if inserted {
                rows.meta.last_row_id = last_row_id(&mut tx).await?;
            }
            results.push(rows);
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(results)
    }

    async fn exec(&self, sql: String) -> Result<ExecResult> {
        let start = Instant::now();
        let scanned = scan(&sql);
        // Whether the text leaves a transaction open (BEGIN without its
        // COMMIT): such a connection must not go back to the pool.
        let mut open = false;
        for (word, _) in &scanned.statements {
            match word.as_str() {
                "BEGIN" | "START" => open = true,
                "COMMIT" | "END" | "ABORT" => open = false,
                "ROLLBACK" if !sql.to_ascii_uppercase().contains("ROLLBACK TO") => open = false,
                _ => {}
            }
        }
        let conn = self.pool.get().await?;
        let result = conn.client().batch_execute(&sql).await;
        if open || result.is_err() {
            // Outside a transaction this only warns.
            let _ = conn.client().batch_execute("ROLLBACK").await;
        }
        result.map_err(pg_err)?;
        if open {
            return Err(BindingError::Invalid(
                "the SQL left a transaction open, so it was rolled back; use batch() for transactions"
                    .into(),
            ));
        }
        Ok(ExecResult {
            count: scanned.statements.len() as u32,
            duration_ms: start.elapsed().as_secs_f64() * 1000.0,
        })
    }
}

#[cfg(test)]
#[path = "postgres_tests.rs"]
mod tests;
