//! The side-by-side tables: a row per workload and server, and the ratio
//! of Isola's req/s to each.

use std::fmt::Write as _;

use crate::load::LoadResult;

pub const MIB: f64 = 1024.0 * 1024.0;

/// A row of a side-by-side table.
pub struct Row {
    pub workload: &'static str,
    pub server: String,
    pub result: LoadResult,
}

/// `numerator ÷ denominator` as `1.23×`, or `—` when there is none.
pub fn fmt_ratio(numerator: f64, denominator: f64) -> String {
    if denominator > 0.0 && numerator.is_finite() {
        format!("{:.2}×", numerator / denominator)
    } else {
        "—".into()
    }
}

/// A markdown table of `rows`, each with `base_server`'s req/s ÷ its own.
pub fn table(rows: &[Row], base_server: &str) -> String {
    let mut out = String::from(
        "| workload | server | req/s | p50 ms | p99 ms | server CPU µs/req | RSS MiB | Isola ÷ this |\n|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let base = rows
            .iter()
            .find(|r| r.workload == row.workload && r.server == base_server)
            .map_or(f64::NAN, |r| r.result.rps);
        let ratio = if row.server == base_server {
            String::new()
        } else {
            fmt_ratio(base, row.result.rps)
        };
        let errors = if row.result.errors > 0 {
            format!(" ({} errors)", row.result.errors)
        } else {
            String::new()
        };
        writeln!(
            out,
            "| {} | {} | {:.0}{errors} | {:.2} | {:.2} | {:.0} | {:.0} | {ratio} |",
            row.workload,
            row.server,
            row.result.rps,
            row.result.p50_ms,
            row.result.p99_ms,
            row.result.cpu_us_per_request,
            row.result.rss_bytes as f64 / MIB,
        )
        .unwrap();
    }
    out
}

/// The result of `workload` on `server` among `rows`.
pub fn result_of<'a>(rows: &'a [Row], workload: &str, server: &str) -> Option<&'a LoadResult> {
    rows.iter()
        .find(|r| r.workload == workload && r.server == server)
        .map(|r| &r.result)
}
