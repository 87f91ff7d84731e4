//! Workers Analytics Engine: a dataset bound in
//! `analytics_engine_datasets`.
//!
//! ```ignore
//! let events = env.analytics("EVENTS")?;
//! events.write_data_point(
//!     DataPoint::new().index(customer_id).blob(req.path()).double(1.0),
//! )?;
//! ```

use std::fmt;

use crate::Result;
use crate::bindings::isola::worker::analytics as wit;
use crate::error::check;

/// A dataset; see [`Env::analytics`](crate::Env::analytics).
pub struct Dataset {
    dataset: wit::Dataset,
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset").finish_non_exhaustive()
    }
}

impl Dataset {
    pub(crate) fn open(binding: &str) -> Result<Self> {
        Ok(Dataset {
            dataset: check(wit::Dataset::open(binding))?,
        })
    }

    /// Record one data point. Like Workers' `writeDataPoint` this does not
    /// wait for the write to be stored; an error means the point broke a
    /// limit (at most 20 blobs of 16 KiB together, 20 doubles, 1 index of
    /// at most 96 bytes) or the request's subrequest budget is spent.
    pub fn write_data_point(&self, point: DataPoint) -> Result<()> {
        let point = wit::DataPoint {
            blobs: point.blobs,
            doubles: point.doubles,
            indexes: point.indexes,
        };
        check(self.dataset.write_data_point(&point))
    }
}

/// One data point: strings (blobs), numbers (doubles) and a sampling key
/// (index). Build it with struct syntax or
/// `DataPoint::new().blob("GET").double(12.5).index("customer-7")`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DataPoint {
    pub blobs: Vec<Vec<u8>>,
    pub doubles: Vec<f64>,
    pub indexes: Vec<Vec<u8>>,
}

impl DataPoint {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a blob (text or bytes).
    pub fn blob(mut self, blob: impl Into<Vec<u8>>) -> Self {
        self.blobs.push(blob.into());
        self
    }

    pub fn double(mut self, double: f64) -> Self {
        self.doubles.push(double);
        self
    }

    /// Add an index (text or bytes); a data point has at most one.
    pub fn index(mut self, index: impl Into<Vec<u8>>) -> Self {
        self.indexes.push(index.into());
        self
    }
}
