//! The sections of `bench/RESULTS.md`, in the order `main` runs them. Each
//! appends its text to the document and returns what it measured that the
//! targets read.

pub mod durable;
pub mod embedding;
pub mod header;
pub mod js;
pub mod js_workloads;
pub mod memory;
pub mod proxy;
pub mod scaling;
pub mod side_by_side;
pub mod startup;
pub mod targets;
