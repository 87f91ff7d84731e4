//! Workers Analytics Engine: data points appended to a dataset, queried
//! with SQL. Embedded backend: one SQLite table per dataset, laid out like
//! Cloudflare's SQL API (`timestamp`, `index1`, `blob1..blob20`,
//! `double1..double20`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};

use crate::embedded::{LazyConn, blocking};
use crate::error::{BindingError, Result, backend_err};
use crate::sql::Value;
use crate::util::lock;

pub const MAX_BLOBS: usize = 20;
pub const MAX_BLOB_BYTES_TOTAL: usize = 16 * 1024;
pub const MAX_DOUBLES: usize = 20;
pub const MAX_INDEXES: usize = 1;
pub const MAX_INDEX_BYTES: usize = 96;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataPoint {
    pub blobs: Vec<Vec<u8>>,
    pub doubles: Vec<f64>,
    pub indexes: Vec<Vec<u8>>,
}

#[async_trait]
pub trait AnalyticsSink: Send + Sync {
    /// Append `point` to `dataset` (validated by [`validate`]).
    async fn write(&self, dataset: &str, point: DataPoint) -> Result<()>;
}

/// Check a data point against Workers' limits.
pub fn validate(point: &DataPoint) -> Result<()> {
    let invalid = |m: String| Err(BindingError::Invalid(m));
    if point.blobs.len() > MAX_BLOBS {
        return invalid(format!(
            "data point has {} blobs; the limit is {MAX_BLOBS}",
            point.blobs.len()
        ));
    }
    let blob_bytes: usize = point.blobs.iter().map(Vec::len).sum();
    if blob_bytes > MAX_BLOB_BYTES_TOTAL {
        return invalid(format!(
            "data point blobs total {blob_bytes} bytes; the limit is {MAX_BLOB_BYTES_TOTAL}"
        ));
    }
    if point.doubles.len() > MAX_DOUBLES {
        return invalid(format!(
            "data point has {} doubles; the limit is {MAX_DOUBLES}",
            point.doubles.len()
        ));
    }
    if point.indexes.len() > MAX_INDEXES {
        return invalid(format!(
            "data point has {} indexes; the limit is {MAX_INDEXES}",
            point.indexes.len()
        ));
    }
    if let Some(index) = point.indexes.iter().find(|i| i.len() > MAX_INDEX_BYTES) {
        return invalid(format!(
            "data point index is {} bytes; the limit is {MAX_INDEX_BYTES}",
            index.len()
        ));
    }
    Ok(())
}

fn validate_dataset(dataset: &str) -> Result<()> {
    let mut bytes = dataset.bytes();
    let valid = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        // SQLite reserves these names for itself.
        && !dataset.to_ascii_lowercase().starts_with("sqlite_");
    if valid {
        Ok(())
    } else {
        Err(BindingError::Invalid(format!(
            "dataset name {dataset:?} must be an SQL identifier ([A-Za-z_][A-Za-z0-9_]*, not sqlite_...)"
        )))
    }
}

/// The embedded backend: one SQLite file, a table per dataset, created on
/// its first write.
///
/// Columns: `timestamp` is UTC text `YYYY-MM-DD HH:MM:SS` (SQLite's
/// `datetime('now')`, the format Cloudflare's SQL API returns), then
/// `_sample_interval` (always 1: nothing is sampled), `index1`,
/// `blob1..blob20` and `double1..double20`. Like Cloudflare, absent blobs
/// and the absent index read as `''` and absent doubles as `0`. Blobs and
/// the index are TEXT when they are valid UTF-8, else BLOB.
///
/// One connection behind a mutex (taken only in `spawn_blocking`): writes
/// are single-row inserts and SQLite has one writer per file anyway.
pub struct SqliteAnalytics {
    state: Arc<Mutex<Writer>>,
}

struct Writer {
    conn: LazyConn,
    /// Datasets whose table is known to exist.
    tables: HashSet<String>,
}

impl SqliteAnalytics {
    /// The datasets in `path`, which is opened (and created) on first write.
    pub fn open(path: &std::path::Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(backend_err)?;
        }
        Ok(SqliteAnalytics {
            state: Arc::new(Mutex::new(Writer {
                conn: LazyConn::new(path, |_| Ok(())),
                tables: HashSet::new(),
            })),
        })
    }
}

fn column_list() -> String {
    let mut columns = vec![
        "timestamp".to_owned(),
        "_sample_interval".into(),
        "index1".into(),
    ];
    columns.extend((1..=MAX_BLOBS).map(|i| format!("blob{i}")));
    columns.extend((1..=MAX_DOUBLES).map(|i| format!("double{i}")));
    columns.join(", ")
}

fn text_or_blob(bytes: &[u8]) -> rusqlite::types::Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => rusqlite::types::Value::Text(s.to_owned()),
        Err(_) => rusqlite::types::Value::Blob(bytes.to_vec()),
    }
}

#[async_trait]
impl AnalyticsSink for SqliteAnalytics {
    async fn write(&self, dataset: &str, point: DataPoint) -> Result<()> {
        validate_dataset(dataset)?;
        validate(&point)?;
        let dataset = dataset.to_owned();
        let state = self.state.clone();
        blocking(move || {
            let state = &mut *lock(&state);
            state.conn.with(|conn| {
                if !state.tables.contains(&dataset) {
                    // Columns without a declared type keep TEXT and BLOB values
                    // as they were written.
                    let blobs: String = (1..=MAX_BLOBS).map(|i| format!(", blob{i}")).collect();
                    let doubles: String = (1..=MAX_DOUBLES)
                        .map(|i| format!(", double{i} REAL NOT NULL"))
                        .collect();
                    conn.execute_batch(&format!(
                        "CREATE TABLE IF NOT EXISTS \"{dataset}\" (
                             timestamp TEXT NOT NULL,
                             _sample_interval INTEGER NOT NULL,
                             index1{blobs}{doubles}
                         );
                         CREATE INDEX IF NOT EXISTS \"{dataset}_timestamp\"
                             ON \"{dataset}\" (timestamp);"
                    ))
                    .map_err(backend_err)?;
                    state.tables.insert(dataset.clone());
                }
                let empty = rusqlite::types::Value::Text(String::new());
                let mut values = vec![
                    point
                        .indexes
                        .first()
                        .map_or(empty.clone(), |i| text_or_blob(i)),
                ];
                values.extend((0..MAX_BLOBS).map(|i| {
                    point
                        .blobs
                        .get(i)
                        .map_or(empty.clone(), |b| text_or_blob(b))
                }));
                values.extend((0..MAX_DOUBLES).map(|i| {
                    rusqlite::types::Value::Real(point.doubles.get(i).copied().unwrap_or(0.0))
                }));
                let placeholders = vec!["?"; values.len()].join(", ");
                conn.prepare_cached(&format!(
                    "INSERT INTO \"{dataset}\" ({}) VALUES (datetime('now'), 1, {placeholders})",
                    column_list()
                ))
                .and_then(|mut stmt| stmt.execute(rusqlite::params_from_iter(values)))
                .map_err(backend_err)?;
                Ok(())
            })
        })
        .await
    }
}

/// The columns and rows of a read-only SQL query over `path` (for
/// `isola analytics query`).
pub fn query(
    path: &std::path::Path,
    sql: &str,
) -> Result<(Vec<String>, Vec<Vec<crate::sql::Value>>)> {
    // Read-only at the connection level, so no statement (not even
    // `PRAGMA` or `ATTACH`-then-write) can change the data.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| BindingError::Backend(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(backend_err)?;
    let mut stmt = conn.prepare(sql).map_err(backend_err)?;
    let columns: Vec<String> = stmt.column_names().map(String::from).collect();
    let mut rows = Vec::new();
    let mut cursor = stmt.raw_query();
    while let Some(row) = cursor.next().map_err(backend_err)? {
        let values = (0..columns.len())
            .map(|i| row.get_ref(i).map(crate::sql::sqlite::from_sqlite))
            .collect::<rusqlite::Result<Vec<Value>>>()
            .map_err(backend_err)?;
        rows.push(values);
    }
    Ok((columns, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid_msg(r: Result<()>) -> String {
        match r {
            Err(BindingError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn limits() {
        let ok = DataPoint {
            blobs: vec![vec![b'x'; MAX_BLOB_BYTES_TOTAL / MAX_BLOBS]; MAX_BLOBS],
            doubles: vec![1.0; MAX_DOUBLES],
            indexes: vec![vec![b'i'; MAX_INDEX_BYTES]],
        };
        validate(&ok).unwrap();
        let with = |f: &dyn Fn(&mut DataPoint)| {
            let mut p = ok.clone();
            f(&mut p);
            invalid_msg(validate(&p))
        };
        assert_eq!(
            with(&|p| p.blobs.push(vec![])),
            "data point has 21 blobs; the limit is 20"
        );
        assert_eq!(
            with(&|p| p.blobs[0].extend_from_slice(&[0; 100])),
            format!(
                "data point blobs total {} bytes; the limit is 16384",
                (MAX_BLOB_BYTES_TOTAL / MAX_BLOBS) * MAX_BLOBS + 100
            )
        );
        assert_eq!(
            with(&|p| p.doubles.push(0.0)),
            "data point has 21 doubles; the limit is 20"
        );
        assert_eq!(
            with(&|p| p.indexes.push(vec![])),
            "data point has 2 indexes; the limit is 1"
        );
        assert_eq!(
            with(&|p| p.indexes[0].push(b'!')),
            "data point index is 97 bytes; the limit is 96"
        );
    }

    #[tokio::test]
    async fn writes_are_queryable_and_queries_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("analytics.sqlite");
        let sink = SqliteAnalytics::open(&path).unwrap();
        for bad in ["", "1abc", "a-b", "a b", "x\"", "sqlite_master"] {
            let msg = invalid_msg(sink.write(bad, DataPoint::default()).await);
            assert!(msg.contains("SQL identifier"), "{msg}");
        }
        let too_many = DataPoint {
            doubles: vec![0.0; 21],
            ..Default::default()
        };
        assert!(matches!(
            sink.write("ds", too_many).await,
            Err(BindingError::Invalid(_))
        ));
        sink.write(
            "requests",
            DataPoint {
                blobs: vec![b"GET".to_vec(), vec![0xff, 0xfe]],
                doubles: vec![1.5, 2.0],
                indexes: vec![b"customer-1".to_vec()],
            },
        )
        .await
        .unwrap();
        sink.write("requests", DataPoint::default()).await.unwrap();

        let (columns, rows) = query(
            &path,
            "SELECT timestamp, _sample_interval, index1, blob1, blob2, blob3, double1, double2, double20
             FROM requests ORDER BY rowid",
        )
        .unwrap();
        assert_eq!(columns.len(), 9);
        assert_eq!(columns[0], "timestamp");
        let Value::Text(ts) = &rows[0][0] else {
            panic!("timestamp is text")
        };
        // YYYY-MM-DD HH:MM:SS
        assert_eq!(ts.len(), 19, "{ts}");
        assert_eq!((&ts[4..5], &ts[10..11], &ts[13..14]), ("-", " ", ":"));
        assert!(ts.as_str() >= "2025-01-01");
        assert_eq!(
            rows[0][1..],
            [
                Value::Integer(1),
                Value::Text("customer-1".into()),
                Value::Text("GET".into()),
                Value::Blob(vec![0xff, 0xfe]),
                Value::Text(String::new()),
                Value::Real(1.5),
                Value::Real(2.0),
                Value::Real(0.0),
            ]
        );
        assert_eq!(rows[1][2], Value::Text(String::new()));

        let all_columns = query(&path, "SELECT * FROM requests LIMIT 0").unwrap().0;
        assert_eq!(all_columns.len(), 3 + MAX_BLOBS + MAX_DOUBLES);
        assert_eq!(all_columns[2], "index1");
        assert_eq!(all_columns.last().unwrap(), "double20");

        for write in [
            "DELETE FROM requests",
            "DROP TABLE requests",
            "CREATE TABLE x (y)",
        ] {
            let err = query(&path, write).unwrap_err();
            assert!(
                matches!(err, BindingError::Backend(ref m) if m.contains("readonly")),
                "{err}"
            );
        }
        assert_eq!(
            query(&path, "SELECT count(*) FROM requests").unwrap().1,
            [[Value::Integer(2)]]
        );
        assert!(query(&dir.path().join("missing.sqlite"), "SELECT 1").is_err());
        assert!(!dir.path().join("missing.sqlite").exists());
    }
}
