//! `[cluster]`: the internal listener, the advertised URL, and the
//! backends a cluster needs.

use super::*;

const BACKENDS: &str = "[backends]\n\
    queue = { type = \"redis\", url = \"redis://127.0.0.1:6379\" }\n\
    durable = { type = \"postgres\", url = \"postgres://isola@127.0.0.1/isola\" }\n";

/// `text` and a worker after it (a config must configure one), so the
/// lines of `text` stay put.
fn with_worker(text: &str) -> String {
    format!("{text}\n[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\n")
}

#[test]
fn a_cluster_node_names_its_listener_and_advertised_url() {
    let f = Fixture::new();
    let text = format!(
        "{BACKENDS}[cluster]\nlisten = \"0.0.0.0:8790\"\nadvertise = \"http://10.0.0.5:8790/\"\n"
    );
    let config = f.parse(&with_worker(&text)).unwrap();
    assert_eq!(
        config.cluster,
        Some(ClusterConfig {
            listen: "0.0.0.0:8790".parse().unwrap(),
            advertise: "http://10.0.0.5:8790".into(),
        })
    );
    assert_eq!(f.parse(&with_worker(BACKENDS)).unwrap().cluster, None);
    for good in ["http://[::1]:8790", "http://node-2.internal:1"] {
        let text = format!("{BACKENDS}[cluster]\nlisten = \"[::]:8790\"\nadvertise = \"{good}\"\n");
        let config = f.parse(&with_worker(&text)).unwrap();
        assert_eq!(config.cluster.unwrap().advertise, good);
    }
}

#[test]
fn a_cluster_needs_shared_leases_and_shared_object_storage() {
    let f = Fixture::new();
    let cluster = "[cluster]\nlisten = \"0.0.0.0:8790\"\nadvertise = \"http://10.0.0.5:8790\"\n";
    assert_eq!(
        f.error(&with_worker(cluster)),
        "isola.toml:2:10: cluster: a cluster needs leases every node shares: set `backends.queue` to a `redis` backend\n\
         isola.toml:2:10: cluster: a cluster needs Durable Object storage every node reaches: set `backends.durable` to a `postgres` backend"
    );
    let redis_only = "[backends]\nqueue = { type = \"redis\", url = \"redis://h:6379\" }\n";
    assert_eq!(
        f.error(&with_worker(&format!("{redis_only}{cluster}"))),
        "isola.toml:4:10: cluster: a cluster needs Durable Object storage every node reaches: set `backends.durable` to a `postgres` backend"
    );
}

#[test]
fn cluster_errors_name_their_key() {
    let f = Fixture::new();
    let error = |listen: &str, advertise: &str| {
        let text =
            format!("{BACKENDS}[cluster]\nlisten = \"{listen}\"\nadvertise = \"{advertise}\"\n");
        f.error(&with_worker(&text))
    };
    assert_eq!(
        error("8790", "http://10.0.0.5:8790"),
        "isola.toml:5:10: cluster.listen: `8790` is not an address such as 0.0.0.0:8790"
    );
    for (advertise, says) in [
        ("https://10.0.0.5:8790", "must start with http://"),
        ("10.0.0.5:8790", "must start with http://"),
        ("http://10.0.0.5", "must name a host and a port"),
        ("http://10.0.0.5:0", "must name a host and a port"),
        ("http://:8790", "must name a host and a port"),
        ("http://10.0.0.5:8790/x", "must be only http://host:port"),
        ("http://u:p@10.0.0.5:8790", "must be only http://host:port"),
    ] {
        let text = error("0.0.0.0:8790", advertise);
        assert!(
            text.starts_with(&format!(
                "isola.toml:6:13: cluster.advertise: `{advertise}` {says}"
            )),
            "{advertise}: {text}"
        );
    }
    // Both keys are required, and no other is taken: the secret never
    // comes from the file.
    let text = format!("{BACKENDS}[cluster]\nlisten = \"0.0.0.0:8790\"\n");
    assert_eq!(
        f.error(&with_worker(&text)),
        "isola.toml:4:1: missing field `advertise`"
    );
    let text = format!(
        "{BACKENDS}[cluster]\nlisten = \"0.0.0.0:8790\"\nadvertise = \"http://h:1\"\nsecret = \"x\"\n"
    );
    let secret = f.error(&with_worker(&text));
    assert!(secret.contains("unknown field `secret`"), "{secret}");
}
