//! Workers Analytics Engine: data points appended to a dataset, queried
//! with SQL. Embedded backend: one SQLite table per dataset, laid out like
//! Cloudflare's SQL API (`timestamp`, `index1`, `blob1..blob20`,
//! `double1..double20`).

use async_trait::async_trait;

use crate::Result;

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
    todo!()
}

pub struct SqliteAnalytics {}

impl SqliteAnalytics {
    pub fn open(path: &std::path::Path) -> Result<Self> {
        todo!()
    }
}

/// The columns and rows of a read-only SQL query over `path` (for
/// `isola analytics query`).
pub fn query(path: &std::path::Path, sql: &str) -> Result<(Vec<String>, Vec<Vec<crate::sql::Value>>)> {
    todo!()
}
