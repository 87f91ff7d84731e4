//! `instance_reuse` without CPU-limit surprises (issue 30, point 4): a
//! reused JS instance whose memory has grown is retired before
//! SpiderMonkey's full collection of its grown heap would cost a request
//! more than `cpu_ms`, while a handler that really spins still hits it.

use crate::js::{shared_cache, warm_up};
use crate::support::{Project, client, repo_path};

#[tokio::test(flavor = "multi_thread")]
async fn a_grown_reused_instance_is_retired_before_a_full_collection_costs_a_request_its_cpu() {
    // tests/js/reuse_memory.js tenures ~0.3 MB of garbage a request on
    // top of a live heap of 200,000 objects; without retirement a full
    // collection comes every ~50 requests and burns more fuel than
    // cpu_ms = 25 grants (measured ~270 M against 212 M), while an
    // ordinary request burns ~40 M.
    let project = Project::new(&format!(
        "[server]\ncache_dir = {:?}\n\n[[worker]]\nname = \"reuse\"\nmain = {:?}\n\
         routes = [\"/*\"]\ninstance_reuse = 1000000\ncpu_ms = 25\n",
        shared_cache().display().to_string(),
        repo_path("tests/js/reuse_memory.js")
    ));
    warm_up();
    let server = project.serve();
    let client = client();
    let mut served = Vec::new();
    for _ in 0..400 {
        let response = client.get(server.url("/?n=2000")).send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!(status, 200, "{body}; logs:\n{}", server.logs());
        let count: u32 = body.split(' ').next().unwrap().parse().unwrap();
        served.push(count);
    }
    // Instances were reused (module state lived on), and retired: the
    // count started again from 1 after it had grown.
    assert!(served.iter().any(|&n| n >= 5), "{served:?}");
    assert!(
        served.windows(2).any(|w| w[1] == 1 && w[0] > 1),
        "{served:?}"
    );
    let logs = server.wait_for_log("a reused instance is retired");
    assert!(logs.contains("worker=reuse"), "{logs}");

    // A handler that spins is cut off at cpu_ms all the same.
    let response = client.get(server.url("/spin")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["x-isola-error"], "cpu-limit");
    // And the worker goes on serving.
    let response = client.get(server.url("/?n=10")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}
