//! The vendored wasmtime's third change (vendor/README.md): function
//! addresses looked up once per module and per component, then shared by
//! every instance, where upstream looks them up again in each instance.
//! That is the code that gives each fresh instance its own funcrefs, so it
//! is checked against upstream's path in the same binary:
//! `ISOLA_WASMTIME_UPSTREAM_FUNC_REFS=1` makes the vendored wasmtime take
//! upstream's lookups. Two servers, one each way, each with a small pool
//! that its thousands of fresh instances take turns in, serve the same
//! table-heavy requests, and every answer must be the same.

use futures_util::StreamExt;

use crate::js::{shared_cache, warm_up};
use crate::support::{Project, Server, client, repo_path};

const SWITCH: &str = "ISOLA_WASMTIME_UPSTREAM_FUNC_REFS";
/// What the engine logs when the switch is on (crates/engine/src/lib.rs).
const SWITCHED: &str = "ISOLA_WASMTIME_UPSTREAM_FUNC_REFS=1: wasmtime looks";

/// The Rust table guest, the JS workout and the JS hello, in a pool of 4.
fn project() -> Project {
    Project::new(&format!(
        "[server]\ncache_dir = {:?}\nmax_instances = 4\n\n\
         [[worker]]\nname = \"tables\"\ncomponent = {:?}\nroutes = [\"/rust/*\"]\n\n\
         [[worker]]\nname = \"js-tables\"\nmain = {:?}\nroutes = [\"/js/*\"]\n\n\
         [[worker]]\nname = \"hello\"\nmain = {:?}\nroutes = [\"/hello/*\"]\n",
        shared_cache().display().to_string(),
        isola_test_programs::TABLES,
        repo_path("tests/js/tables.js"),
        repo_path("guest-examples/js/hello/worker.js"),
    ))
}

/// Every request, in order: the status and body of each.
async fn answers(server: &Server, paths: &[String]) -> Vec<(u16, String)> {
    let client = client();
    futures_util::stream::iter(paths)
        .map(|path| {
            let client = client.clone();
            let url = server.url(path);
            async move {
                let response = client.get(&url).send().await.expect("request sent");
                let status = response.status().as_u16();
                (status, response.text().await.expect("body read"))
            }
        })
        // As many in flight as the pool has slots, so that instances are
        // made and dropped side by side as well as one after another.
        .buffered(4)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn remembered_function_addresses_answer_as_upstreams_lookups_do() {
    warm_up();
    let project = project();
    let serve = |env: &[(&str, &str)]| {
        Server::start_in(
            project.dir.path(),
            &[
                "serve",
                project.config().to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ],
            env,
        )
    };
    let patched = serve(&[]);
    let upstream = serve(&[(SWITCH, "1")]);
    // The switch took effect in one and only one of them.
    upstream.wait_for_log(SWITCHED);

    let mut paths = Vec::new();
    for seed in 0..2000u64 {
        paths.push(format!("/rust/?seed={seed}&steps={}", 100 + seed % 9 * 50));
        if seed % 2 == 0 {
            paths.push(format!("/js/?seed={seed}&steps={}", 20 + seed % 5 * 10));
        }
        if seed % 4 == 0 {
            paths.push(format!("/hello/{seed}"));
        }
    }
    let (mine, theirs) = tokio::join!(answers(&patched, &paths), answers(&upstream, &paths));

    assert!(
        !patched.logs().contains(SWITCHED),
        "the patched server took upstream's path"
    );
    let differing: Vec<_> = paths
        .iter()
        .zip(mine.iter().zip(&theirs))
        .filter(|(_, (a, b))| a != b)
        .collect();
    assert!(
        differing.is_empty(),
        "{} of {} answers differ, the first: {:?}",
        differing.len(),
        paths.len(),
        &differing[..differing.len().min(3)]
    );
    // And they are the guests' real answers, each from a fresh instance.
    for (path, (status, body)) in paths.iter().zip(&mine) {
        assert_eq!(*status, 200, "{path}: {body}");
        let expected = if path.starts_with("/rust/") {
            body.starts_with("seed=") && body.contains(" order=") && body.contains(" closures=")
        } else if path.starts_with("/js/") {
            body.starts_with("seed=") && body.ends_with(" served=1\n")
        } else {
            body == &format!("Hello from JavaScript on Isola! You asked for {path}\n")
        };
        assert!(expected, "{path}: {body:?}");
    }
}
