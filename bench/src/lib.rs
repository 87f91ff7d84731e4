//! What Isola's benchmark programs share: driving a worker one request at
//! a time through the embedding API, and percentiles.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use isola_runtime::{RequestStats, Worker};

/// The `p` quantile (0..=1) of `sorted`, in microseconds.
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Send `warmup + requests` GETs one at a time, each waited for until its
/// guest task is over (instance dropped), and return the sorted wall times
/// (request to full body) and guest CPU times of the last `requests`.
/// `check` sees each response's status and body.
pub async fn one_at_a_time(
    worker: &Worker,
    warmup: usize,
    requests: usize,
    check: impl Fn(http::StatusCode, &[u8]),
) -> (Vec<Duration>, Vec<Duration>) {
    let mut walls = Vec::with_capacity(requests);
    let mut cpus = Vec::with_capacity(requests);
    for i in 0..warmup + requests {
        let request = http::Request::get("http://bench/")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let started = Instant::now();
        let response = worker.handle(request).await;
        let stats = response
            .extensions()
            .get::<RequestStats>()
            .cloned()
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let elapsed = started.elapsed();
        check(status, &body);
        while worker.active_tasks() > 0 {
            tokio::task::yield_now().await;
        }
        if i >= warmup {
            walls.push(elapsed);
            cpus.push(stats.cpu_time());
        }
    }
    walls.sort();
    cpus.sort();
    (walls, cpus)
}
