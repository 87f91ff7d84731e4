//! A hello workload on several servers in interleaved rounds, judged on
//! the median of its paired (back-to-back) ratios.

use std::fmt::Write as _;
use std::time::Duration;

use crate::load::{LoadResult, Server};
use crate::setup::Setup;
use crate::table::Row;
use crate::workload::{CONNECTIONS, Workload, measure};

/// Rounds of each hello workload, interleaved across its servers. On this
/// 2-core VM two 10 s runs of one server can differ by 30%, and the hello
/// ratios are the targets: each is judged on the median of its per-round
/// (paired, back-to-back) ratios, not on one run per server. Three rounds
/// still let one slow round move the median (session 9's reuse ratio read
/// 1.16/0.55/0.82×); five cost ~3 min more.
pub const HELLO_ROUNDS: usize = 5;

/// One workload on several servers in `HELLO_ROUNDS` interleaved rounds.
pub struct Rounds {
    /// Per server, its results in round order.
    servers: Vec<(String, Vec<LoadResult>)>,
}

impl Rounds {
    pub fn run(
        setup: &Setup,
        servers: &[(&str, &Server)],
        workload: &Workload,
        duration: Duration,
    ) -> Rounds {
        let mut results: Vec<(String, Vec<LoadResult>)> = servers
            .iter()
            .map(|(name, _)| (name.to_string(), Vec::new()))
            .collect();
        for round in 1..=HELLO_ROUNDS {
            // Every other round in reverse order, so that no server always
            // runs right after the same neighbour.
            let mut order: Vec<usize> = (0..servers.len()).collect();
            if round % 2 == 0 {
                order.reverse();
            }
            for i in order {
                let (name, server) = servers[i];
                eprintln!("  {} on {name}, round {round}", workload.name);
                let result = measure(setup, server, workload, CONNECTIONS, duration);
                results[i].1.push(result);
            }
        }
        Rounds { servers: results }
    }

    fn results(&self, server: &str) -> Option<&[LoadResult]> {
        self.servers
            .iter()
            .find(|(name, _)| name == server)
            .map(|(_, results)| results.as_slice())
    }

    /// Each server's median round (by req/s), as a table row.
    pub fn median_rows(&self, workload: &'static str) -> Vec<Row> {
        self.servers
            .iter()
            .map(|(name, results)| {
                let mut by_rps: Vec<&LoadResult> = results.iter().collect();
                by_rps.sort_by(|a, b| a.rps.total_cmp(&b.rps));
                Row {
                    workload,
                    server: name.clone(),
                    result: by_rps[by_rps.len() / 2].clone(),
                }
            })
            .collect()
    }

    /// `ours ÷ peer` per round (runs back to back), and their median.
    pub fn paired_ratios(&self, ours: &str, peer: &str) -> Option<(Vec<f64>, f64)> {
        let (ours, peer) = (self.results(ours)?, self.results(peer)?);
        let ratios: Vec<f64> = ours.iter().zip(peer).map(|(o, p)| o.rps / p.rps).collect();
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        Some((ratios, median))
    }

    /// A markdown table of `ours ÷ peer` per round for each other server.
    pub fn ratio_table(&self, ours: &str) -> String {
        let rounds: String = (1..=HELLO_ROUNDS)
            .map(|r| format!(" round {r} |"))
            .collect();
        let mut out = format!(
            "| {ours} ÷ |{rounds} median |\n|---|{}---|\n",
            "---|".repeat(HELLO_ROUNDS)
        );
        for (peer, _) in &self.servers {
            if let Some((ratios, median)) = self.paired_ratios(ours, peer).filter(|_| peer != ours)
            {
                let cells: String = ratios.iter().map(|r| format!(" {r:.2}× |")).collect();
                writeln!(out, "| {peer} |{cells} **{median:.2}×** |").unwrap();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(servers: &[(&str, [f64; HELLO_ROUNDS])]) -> Rounds {
        Rounds {
            servers: servers
                .iter()
                .map(|(name, rps)| {
                    let results = rps
                        .iter()
                        .map(|&rps| LoadResult {
                            rps,
                            ..LoadResult::default()
                        })
                        .collect();
                    (name.to_string(), results)
                })
                .collect(),
        }
    }

    #[test]
    fn ratios_are_paired_by_round_and_the_median_is_taken() {
        // A slow second round for both servers: paired ratios stay steady
        // where the ratio of the two medians would not.
        let r = rounds(&[
            ("isola", [20_000.0, 10_000.0, 21_000.0, 18_000.0, 22_000.0]),
            ("peer", [25_000.0, 12_000.0, 20_000.0, 20_000.0, 20_000.0]),
        ]);
        let (ratios, median) = r.paired_ratios("isola", "peer").unwrap();
        assert_eq!(ratios.len(), HELLO_ROUNDS);
        assert!((ratios[0] - 0.8).abs() < 1e-9);
        assert!((median - 0.9).abs() < 1e-9, "{median}");
        assert!(r.paired_ratios("isola", "absent").is_none());

        let rows = r.median_rows("hello");
        assert_eq!(rows[0].server, "isola");
        assert_eq!(rows[0].result.rps, 20_000.0);
        assert_eq!(rows[1].result.rps, 20_000.0);

        let table = r.ratio_table("isola");
        assert!(
            table.contains("| peer | 0.80× | 0.83× | 1.05× | 0.90× | 1.10× | **0.90×** |"),
            "{table}"
        );
        assert!(!table.contains("| isola |"), "{table}");
    }
}
