//! A plugin call through the embedding API: the example plugin host's
//! `filter` world (`examples/plugin-host`), one call at a time, each in a
//! fresh instance: instantiate, call (with one host import per word),
//! drop.

use std::path::Path;
use std::time::{Duration, Instant};

use isola_runtime::Limits;
use plugin_host::Filters;

/// Sorted wall times of `calls` calls, after `warmup` more.
pub async fn per_call(work: &Path, warmup: usize, calls: usize) -> Vec<Duration> {
    let limits = Limits {
        subrequests: 0,
        ..Limits::default()
    };
    let filters = Filters::load(
        isola_test_programs::PLUGIN_FILTER.as_ref(),
        work,
        limits,
        &["heck", "darn"],
    )
    .expect("the filter plugin loads");
    let mut samples = Vec::with_capacity(calls);
    for i in 0..warmup + calls {
        let started = Instant::now();
        let answer = filters.filter("well heck that is darn good").await;
        let elapsed = started.elapsed();
        assert_eq!(answer.unwrap().unwrap(), "well **** that is **** good");
        if i >= warmup {
            samples.push(elapsed);
        }
    }
    samples.sort();
    samples
}
