//! Operator commands over the workers' state: `isola kv`, `isola sql`,
//! `isola analytics`. They open the same backends `serve` uses, so state
//! can be seeded and inspected without writing a worker (also while the
//! server runs: SQLite's WAL mode and busy timeouts let both proceed).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use isola_backends::kv::{KvNamespace, ListOptions, PutOptions};
use isola_backends::sql::{Statement, Value};
use isola_config::Config;

#[derive(Subcommand)]
pub enum KvCommand {
    /// Print a value (raw bytes) to stdout.
    Get {
        namespace: String,
        key: String,
    },
    /// Store a value given inline or read from `--path`.
    Put {
        namespace: String,
        key: String,
        #[arg(required_unless_present = "path", conflicts_with = "path")]
        value: Option<String>,
        #[arg(long)]
        path: Option<PathBuf>,
        /// Seconds until the key expires.
        #[arg(long)]
        ttl: Option<u64>,
        /// When the key expires, in seconds since the Unix epoch.
        #[arg(long)]
        expiration: Option<u64>,
        /// JSON metadata stored with the value.
        #[arg(long)]
        metadata: Option<String>,
    },
    Delete {
        namespace: String,
        key: String,
    },
    /// Print the keys as a JSON array, following cursors to the end.
    List {
        namespace: String,
        #[arg(long)]
        prefix: Option<String>,
        /// Stop after this many keys.
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Subcommand)]
pub enum AnalyticsCommand {
    /// Run a read-only SQL query; each dataset is a table. Rows are printed
    /// as JSON lines.
    Query { sql: String },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The one store `name` refers to, among `(id, binding)` pairs from every
/// worker: by its id (or database name) or by a binding name.
fn resolve<'a>(
    config: &Config,
    what: &str,
    name: &str,
    entries: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<String> {
    let ids: BTreeSet<&str> = entries
        .filter(|(id, binding)| *id == name || *binding == name)
        .map(|(id, _)| id)
        .collect();
    match ids.len() {
        1 => Ok(ids.into_iter().next().expect("one id").to_owned()),
        0 => bail!(
            "{}: no {what} has the name or binding `{name}`",
            config.source.display()
        ),
        _ => bail!(
            "`{name}` is a binding of several {what}s ({}); give the name",
            ids.into_iter().collect::<Vec<_>>().join(", ")
        ),
    }
}

fn kv_namespace_id(config: &Config, name: &str) -> Result<String> {
    let entries = config
        .workers
        .iter()
        .flat_map(|w| &w.run.kv_namespaces)
        .map(|kv| (kv.id.as_str(), kv.binding.as_str()));
    resolve(config, "KV namespace", name, entries)
}

pub fn kv(config: &Config, command: KvCommand) -> Result<()> {
    let backends = isola_server::backends_for(config)?;
    let open = |name: &str| -> Result<KvNamespace> {
        Ok(KvNamespace::new(
            backends.kv.clone(),
            &kv_namespace_id(config, name)?,
        ))
    };
    let runtime = runtime()?;
    match command {
        KvCommand::Get { namespace, key } => {
            let value = runtime
                .block_on(open(&namespace)?.get(&key))?
                .with_context(|| format!("key `{key}` not found"))?;
            std::io::stdout().write_all(&value.data)?;
        }
        KvCommand::Put {
            namespace,
            key,
            value,
            path,
            ttl,
            expiration,
            metadata,
        } => {
            let data = match (value, path) {
                (Some(value), _) => value.into_bytes(),
                (None, Some(path)) => std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                (None, None) => unreachable!("clap requires a value or --path"),
            };
            let options = PutOptions {
                expiration_ttl: ttl,
                expiration,
                metadata,
            };
            runtime.block_on(open(&namespace)?.put(&key, data, options))?;
        }
        KvCommand::Delete { namespace, key } => {
            runtime.block_on(open(&namespace)?.delete(&key))?;
        }
        KvCommand::List {
            namespace,
            prefix,
            limit,
        } => {
            let namespace = open(&namespace)?;
            let mut keys = Vec::new();
            let mut cursor = None;
            loop {
                let page = runtime.block_on(namespace.list(ListOptions {
                    prefix: prefix.clone(),
                    limit: None,
                    cursor: cursor.take(),
                }))?;
                for key in page.keys {
                    let mut entry = serde_json::json!({ "name": key.name });
                    if let Some(expiration) = key.expiration {
                        entry["expiration"] = expiration.into();
                    }
                    if let Some(metadata) = key.metadata {
                        entry["metadata"] = serde_json::from_str(&metadata)
                            .unwrap_or(serde_json::Value::String(metadata));
                    }
                    keys.push(entry);
                }
                if let Some(limit) = limit.filter(|&limit| keys.len() >= limit) {
                    keys.truncate(limit);
                    break;
                }
                if page.list_complete {
                    break;
                }
                cursor = page.cursor;
            }
            println!("{}", serde_json::to_string_pretty(&keys)?);
        }
    }
    Ok(())
}

fn database_name(config: &Config, name: &str) -> Result<String> {
    let entries = config
        .workers
        .iter()
        .flat_map(|w| &w.run.d1_databases)
        .map(|d1| (d1.database_name.as_str(), d1.binding.as_str()));
    resolve(config, "D1 database", name, entries)
}

pub fn sql(
    config: &Config,
    database: &str,
    sql: Option<String>,
    file: Option<PathBuf>,
) -> Result<()> {
    let backends = isola_server::backends_for(config)?;
    let database = backends.sql.open(&database_name(config, database)?)?;
    let runtime = runtime()?;
    if let Some(file) = file {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let result = runtime
            .block_on(database.exec(text))
            .with_context(|| format!("{}", file.display()))?;
        eprintln!(
            "{}: {} statements in {:.1} ms",
            file.display(),
            result.count,
            result.duration_ms
        );
        return Ok(());
    }
    let sql = sql.expect("clap requires SQL or --file");
    let rows = runtime.block_on(database.query(Statement {
        sql,
        params: Vec::new(),
    }))?;
    print_rows(&rows.columns, rows.rows)?;
    let meta = rows.meta;
    eprintln!(
        "rows read {}, rows written {}, changes {}, last row id {}, {:.1} ms",
        meta.rows_read, meta.rows_written, meta.changes, meta.last_row_id, meta.duration_ms
    );
    Ok(())
}

pub fn analytics(config: &Config, command: AnalyticsCommand) -> Result<()> {
    match command {
        AnalyticsCommand::Query { sql } => {
            let path = config.server.state_dir.join("analytics.sqlite");
            if !path.is_file() {
                bail!("{}: no analytics data has been written yet", path.display());
            }
            let (columns, rows) = isola_backends::analytics::query(&path, &sql)?;
            print_rows(&columns, rows)
        }
    }
}

/// Rows as JSON lines, one object per row; blobs as SQL hex literals.
fn print_rows(columns: &[String], rows: Vec<Vec<Value>>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for row in rows {
        let object: serde_json::Map<String, serde_json::Value> = columns
            .iter()
            .cloned()
            .zip(row.into_iter().map(json_value))
            .collect();
        writeln!(out, "{}", serde_json::Value::Object(object))?;
    }
    Ok(())
}

fn json_value(value: Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => i.into(),
        Value::Real(r) => r.into(),
        Value::Text(t) => t.into(),
        Value::Blob(b) => {
            let hex: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
            format!("x'{hex}'").into()
        }
    }
}
