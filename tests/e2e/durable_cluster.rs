//! Durable Objects on two nodes (issue 34, point 5): two `isola serve`
//! processes with `[cluster]`, sharing a Redis (the objects' leases) and
//! the shared PostgreSQL (their storage). The worker is
//! `tests/js/durable_cluster.js`; each node gives it its own `NODE` var, so
//! an object says where its instance lives.
//!
//! Each object is owned by one node at a time; the other forwards its
//! events there over the internal listener. When the owner dies, the other
//! node takes the object over once the lease runs out, with its storage.

use std::collections::BTreeSet;
use std::sync::Once;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use isola_test_services::{self as test_services, Redis};
use serde_json::Value;

use crate::support::{Project, Server, client, isola, js_fixture, run_isola, stderr_of};

/// What every node of these tests shows the others.
const SECRET: &str = "durable-cluster-test-secret-0123456789";

/// How long a dead owner's lease outlives it (the runtime's default).
const LEASE_TTL: Duration = Duration::from_secs(10);

fn worker_js() -> String {
    js_fixture("durable_cluster.js")
}

/// One node's config: the shared compile cache, `[backends]` on `redis`
/// and the shared PostgreSQL, `[cluster]` on `port`, and the counter
/// worker with `NODE = node`.
fn config(redis: &Redis, node: &str, port: u16) -> String {
    config_with(
        &redis.url(),
        &test_services::shared_postgres().url(),
        node,
        port,
    )
}

fn config_with(redis: &str, pg: &str, node: &str, port: u16) -> String {
    format!(
        "[server]\ncache_dir = {cache:?}\n\n\
         [backends]\n\
         queue = {{ type = \"redis\", url = \"{redis}\" }}\n\
         durable = {{ type = \"postgres\", url = \"{pg}\" }}\n\n\
         [cluster]\nlisten = \"127.0.0.1:{port}\"\nadvertise = \"http://127.0.0.1:{port}\"\n\n\
         [[worker]]\nname = \"counter\"\nmain = {main:?}\nroutes = [\"/*\"]\n\
         vars = {{ NODE = \"{node}\" }}\n\
         durable_objects = {{ bindings = [{{ name = \"COUNTER\", class_name = \"Counter\" }}] }}\n\
         migrations = [{{ tag = \"v1\", new_sqlite_classes = [\"Counter\"] }}]\n",
        cache = crate::js::shared_cache().display().to_string(),
        main = worker_js(),
    )
}

/// Build and compile the worker once, before any node serves it.
fn warm_up(config: &str) {
    static WARM: Once = Once::new();
    WARM.call_once(|| {
        let project = Project::new(config);
        let output = run_isola(&["compile", project.config().to_str().unwrap()]);
        assert!(
            output.status.success(),
            "building the cluster worker failed:\n{}",
            stderr_of(&output)
        );
    });
}

/// A node serving `config` from its own directory (its own state dir).
fn node(config: &str) -> (Project, Server) {
    warm_up(config);
    let project = Project::new(config);
    let server = Server::start_in(
        project.dir.path(),
        &["serve", "isola.toml", "--listen", "127.0.0.1:0"],
        &[
            ("ISOLA_CLUSTER_SECRET", SECRET),
            // For the alarm scheduler's "another node owns it" lines.
            ("ISOLA_LOG", "info,isola_runtime::objects::alarms=debug"),
        ],
    );
    (project, server)
}

async fn call(server: &Server, method: reqwest::Method, path: &str) -> (u16, String) {
    let response = client()
        .request(method, server.url(path))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// `POST /increment?name=…` through `server`: the count it made, and the
/// node and instance that made it.
async fn increment(server: &Server, name: &str) -> (u64, String, String) {
    let (status, body) = call(
        server,
        reqwest::Method::POST,
        &format!("/increment?name={name}"),
    )
    .await;
    assert_eq!(status, 200, "{body}\nlogs:\n{}", server.logs());
    let made: Value = serde_json::from_str(&body).unwrap();
    (
        made["count"].as_u64().unwrap(),
        made["node"].as_str().unwrap().to_owned(),
        made["instance"].as_str().unwrap().to_owned(),
    )
}

async fn state(server: &Server, name: &str) -> (u16, Value) {
    let (status, body) = call(server, reqwest::Method::GET, &format!("/state?name={name}")).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn kill_9(server: &mut Server) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    server.wait(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_owner_serves_an_object_for_both_nodes_and_the_other_takes_over_when_it_dies() {
    let redis = Redis::start();
    let (port_a, port_b) = (test_services::free_port(), test_services::free_port());
    let (_a_dir, a) = node(&config(&redis, "a", port_a));
    let (_b_dir, b) = node(&config(&redis, "b", port_b));
    // Logged (on stderr) before "listening on" (on stdout), but the two
    // are read apart: wait for it rather than look once.
    for server in [&a, &b] {
        server.wait_for_line(|l| l.contains("a node of a cluster"));
    }
    let name = test_services::unique("hot");

    // 100 increments of one object, half sent to each node, all at once.
    let (a_ref, b_ref, name_ref) = (&a, &b, name.as_str());
    let bumps = (0..100)
        .map(|i| async move { increment(if i % 2 == 0 { a_ref } else { b_ref }, name_ref).await });
    let made = join_all(bumps).await;
    let counts: BTreeSet<u64> = made.iter().map(|(count, _, _)| *count).collect();
    assert_eq!(
        counts,
        (1..=100).collect::<BTreeSet<_>>(),
        "each increment saw a count no other saw: one event at a time"
    );
    let owners: BTreeSet<(&str, &str)> = made
        .iter()
        .map(|(_, node, instance)| (node.as_str(), instance.as_str()))
        .collect();
    assert_eq!(
        owners.len(),
        1,
        "one instance on one node served them all: {owners:?}"
    );
    let (owner, instance) = owners.into_iter().next().unwrap();
    let (owner, instance) = (owner.to_owned(), instance.to_owned());

    // A stub's fetch reaches the owner from either node, as it was sent.
    for (server, from) in [(&a, "a"), (&b, "b")] {
        let (status, seen) = state(server, &name).await;
        assert_eq!(status, 200, "{seen}");
        assert_eq!(seen["count"], 100, "{seen}");
        assert_eq!(
            (seen["node"].as_str(), seen["instance"].as_str()),
            (Some(owner.as_str()), Some(instance.as_str()))
        );
        assert_eq!(seen["method"], "PATCH", "{seen}");
        assert_eq!(seen["note"], format!("from {from}"), "{seen}");
        assert!(
            seen["url"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/state?name={name}")),
            "{seen}"
        );
    }

    // Another object is independent, and may live on either node.
    let other = test_services::unique("cold");
    assert_eq!(increment(&b, &other).await.0, 1);
    assert_eq!(increment(&a, &other).await.0, 2);

    // The internal listener takes nothing without the secret.
    let port = if owner == "a" { port_a } else { port_b };
    let refused = client()
        .post(format!("http://127.0.0.1:{port}/__isola/object"))
        .header("isola-cluster-secret", "not-the-secret-at-all")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);

    // An alarm, due soon after its owner dies.
    let (mut dead, survivor, survivor_name) = if owner == "a" {
        (a, b, "b")
    } else {
        (b, a, "a")
    };
    let (status, body) = call(
        &survivor,
        reqwest::Method::POST,
        &format!("/alarm?name={name}&in=3000"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("\"node\":\"{owner}\"")), "{body}");

    // kill -9 the owner: after the lease runs out, the survivor serves
    // the object, every acknowledged increment kept.
    kill_9(&mut dead);
    let killed = Instant::now();
    assert!(
        !dead.logs().contains(SECRET) && !survivor.logs().contains(SECRET),
        "the secret is never logged"
    );
    let seen = loop {
        let (status, seen) = state(&survivor, &name).await;
        if status == 200 {
            break seen;
        }
        assert!(
            killed.elapsed() < LEASE_TTL + Duration::from_secs(10),
            "the survivor never took the object over: {status} {seen}\nlogs:\n{}",
            survivor.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = killed.elapsed();
    assert!(
        took < LEASE_TTL + Duration::from_secs(5),
        "taken over after {took:?}"
    );
    assert_eq!(seen["count"], 100, "{seen}");
    assert_eq!(seen["node"], survivor_name, "{seen}");
    assert_ne!(seen["instance"], instance.as_str(), "{seen}");
    let (count, node, _) = increment(&survivor, &name).await;
    assert_eq!((count, node.as_str()), (101, survivor_name));

    // The alarm the dead owner never ran fires on the survivor, once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let fired = loop {
        let (_, seen) = state(&survivor, &name).await;
        let fired = seen["alarms"].as_array().cloned().unwrap_or_default();
        if !fired.is_empty() {
            break fired;
        }
        assert!(
            Instant::now() < deadline,
            "the alarm never fired on the survivor: {seen}\nlogs:\n{}",
            survivor.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, seen) = state(&survivor, &name).await;
    assert_eq!(
        seen["alarms"].as_array().map(Vec::len),
        Some(1),
        "fired once: {seen}"
    );
    assert_eq!(fired[0]["node"], survivor_name, "{fired:?}");
    // While the dead owner's lease ran, the survivor looked at the due
    // alarm about once a second, not in a loop of store and lease reads.
    let looks = survivor
        .logs()
        .lines()
        .filter(|l| l.contains("an alarm is due for an object another node owns"))
        .count();
    assert!(
        looks <= LEASE_TTL.as_secs() as usize + 5,
        "{looks} looks at an alarm another node owned"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_node_needs_the_shared_secret_in_its_environment() {
    // Refused before any backend is reached: nothing listens here.
    let project = Project::new(&config_with(
        "redis://127.0.0.1:1",
        "postgres://isola@127.0.0.1:1/isola",
        "a",
        test_services::free_port(),
    ));
    let output = isola()
        .current_dir(project.dir.path())
        .args(["serve", "isola.toml", "--listen", "127.0.0.1:0"])
        .env_remove("ISOLA_CLUSTER_SECRET")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("[cluster] needs the nodes' shared secret in the environment")
            && stderr.contains("ISOLA_CLUSTER_SECRET is not set"),
        "{stderr}"
    );
    let output = isola()
        .current_dir(project.dir.path())
        .args(["serve", "isola.toml", "--listen", "127.0.0.1:0"])
        .env("ISOLA_CLUSTER_SECRET", "short")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("shorter than 16 characters"),
        "{}",
        stderr_of(&output)
    );
}
