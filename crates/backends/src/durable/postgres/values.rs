//! Values between SQLite's five kinds and PostgreSQL's types: D1's
//! conversions (`sql::postgres`), and what a value costs in memory.

use crate::sql::Value;
pub(super) use crate::sql::postgres::{Column, Param, param_type};

/// Roughly what `value` costs in memory.
pub(super) fn value_size(value: &Value) -> usize {
    match value {
        Value::Text(s) => s.len() + 8,
        Value::Blob(b) => b.len() + 8,
        _ => 8,
    }
}
