//! What per-request profiling costs: the Rust hello through the embedding
//! API with nothing armed, with another path armed (every request checks
//! the armed prefix and is not profiled), and with every request profiled.
//! Rounds of the three alternate, so drift on a busy machine spreads evenly.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use isola_runtime::ProfileRequest;

use crate::{micro, percentile};

const CASES: [&str; 3] = [
    "nothing armed",
    "another path armed (not profiled)",
    "every request profiled",
];

/// Rows of (case, guest CPU p50 µs, p99 µs, wall p50 µs), and the mean
/// samples per profiled request.
pub async fn compare(work: &Path, requests: usize) -> (Vec<(&'static str, f64, f64, f64)>, f64) {
    let worker = micro::worker(isola_test_programs::BENCH.as_ref(), "hello", work, 0);
    let samples = Arc::new(AtomicU64::new(0));
    let profiles = Arc::new(AtomicU64::new(0));
    let arm = |case: usize| {
        let (samples, profiles) = (samples.clone(), profiles.clone());
        worker.profile_next(ProfileRequest {
            count: if case == 0 { 0 } else { u32::MAX },
            path_prefix: (case == 1).then(|| "/elsewhere".to_owned()),
            interval: Duration::from_millis(1),
            sink: Arc::new(move |profile| {
                samples.fetch_add(profile.samples, Ordering::Relaxed);
                profiles.fetch_add(1, Ordering::Relaxed);
            }),
        });
    };
    let rounds = 5;
    let mut cpu: [Vec<Duration>; 3] = Default::default();
    let mut wall: [Vec<Duration>; 3] = Default::default();
    for _ in 0..rounds {
        for case in 0..CASES.len() {
            arm(case);
            let round = micro::one_at_a_time(&worker, 50, requests / rounds, |status, _| {
                assert_eq!(status, 200)
            })
            .await;
            cpu[case].extend(round.guest_cpu);
            wall[case].extend(round.wall);
        }
    }
    let rows = (0..CASES.len())
        .map(|case| {
            cpu[case].sort();
            wall[case].sort();
            (
                CASES[case],
                percentile(&cpu[case], 0.5),
                percentile(&cpu[case], 0.99),
                percentile(&wall[case], 0.5),
            )
        })
        .collect();
    let profiled = profiles.load(Ordering::Relaxed).max(1);
    (
        rows,
        samples.load(Ordering::Relaxed) as f64 / profiled as f64,
    )
}
