//! Isola's benchmark: in-process micro-benchmarks through the embedding
//! API ([`micro`], and a plugin of a custom WIT world: [`plugin`]), fuel's
//! cost ([`fuel`]), per-request profiling's cost ([`profiling`]), and servers side by side under
//! `wrk` ([`load`]), with a loopback origin for the proxy rows
//! ([`origin`]): the programs and guests of a run ([`setup`]), what
//! loads them ([`workload`]), interleaved hello rounds ([`rounds`]) and
//! the tables ([`table`]). `src/main.rs` runs them all, one section of
//! `src/sections/` after another, and writes `bench/RESULTS.md`;
//! `bench/run` prepares the peers first.

pub mod fuel;
pub mod load;
pub mod micro;
pub mod origin;
pub mod plugin;
pub mod profiling;
pub mod rounds;
pub mod setup;
pub mod table;
pub mod workload;

use std::time::Duration;

/// The `p` quantile (0..=1) of `sorted`, in microseconds.
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}
