use super::*;
use crate::secrets::secret_value;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.wasm"), b"").unwrap();
        Fixture { dir }
    }
    fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        Config::parse(&self.dir.path().join("isola.toml"), text)
    }
    fn error(&self, text: &str) -> String {
        let e = self.parse(text).unwrap_err();
        let file = self.dir.path().join("isola.toml");
        e.to_string()
            .replace(&file.display().to_string(), "isola.toml")
    }
}

#[test]
fn a_javascript_worker_is_built_into_the_state_dir() {
    let f = Fixture::new();
    std::fs::create_dir(f.dir.path().join("src")).unwrap();
    std::fs::write(f.dir.path().join("src/worker.js"), "").unwrap();
    let config = f
        .parse(
            "[server]\ncache_dir = \"cc\"\n[[worker]]\nname = \"js\"\nmain = \"src/worker.js\"\n",
        )
        .unwrap();
    let w = &config.workers[0];
    assert_eq!(
        w.main.as_deref(),
        Some(f.dir.path().join("src/worker.js").as_path())
    );
    assert_eq!(w.component, f.dir.path().join(".isola/build/js.wasm"));
    assert_eq!(config.server.cache_dir(), f.dir.path().join("cc"));
}

#[test]
fn minimal_config_gets_defaults() {
    let f = Fixture::new();
    let config = f
        .parse(
            "[[worker]]\nname = \"app\"\ncomponent = \"app.wasm\"\nvars = { GREETING = \"hi\" }\n",
        )
        .unwrap();
    assert_eq!(config.server.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(config.server.state_dir, f.dir.path().join(".isola"));
    let w = &config.workers[0];
    assert_eq!(w.component, f.dir.path().join("app.wasm"));
    assert_eq!(w.routes[0].as_str(), "/*");
    assert_eq!(w.run.vars["GREETING"], "hi");
    assert_eq!(w.run.limits, Limits::default());
}

#[test]
fn errors_name_file_line_and_key() {
    let f = Fixture::new();
    assert_eq!(
        f.error("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n"),
        "isola.toml:3:1: unknown field `lisen`, expected one of `listen`, `state_dir`, `cache_dir`, `max_instances`, `fuel_per_ms`, `max_header_bytes`, `max_body_mb`, `header_timeout_ms`, `server_timing`, `outbound_override`, `shutdown_grace_ms`, `colo`, `country`, `trusted_client_ip_header`, `admin`, `admin_token`, `outbound_idle_timeout_ms`, `outbound_max_connections_per_origin`, `outbound_ca_file`, `queue_timeout_ms`, `max_connections`"
    );
    assert_eq!(
        f.error("[[worker]]\nname = \"app\"\ncomponent = \"app.wasm\"\nroutes = [\"/ok/*\", \"/a/*/b\"]\n"),
        "isola.toml:4:20: worker[0].routes: bad route pattern `/a/*/b`: `*` may only end the path"
    );
    assert_eq!(
        f.error("[[worker]]\nname = \"app\"\ncomponent = \"missing.wasm\"\n"),
        format!(
            "isola.toml:3:13: worker[0].component: component file not found: {}",
            f.dir.path().join("missing.wasm").display()
        )
    );
    assert_eq!(
        f.error(
            "[server]\nlisten = \"nowhere\"\n[[worker]]\nname = \"app\"\ncomponent = \"app.wasm\"\n"
        ),
        "isola.toml:2:10: server.listen: `nowhere` is not an address such as 127.0.0.1:8787"
    );
    assert_eq!(
        f.error("[[worker]]\nname = \"app\"\n"),
        "isola.toml:2:8: worker[0].component: missing `component` (a .wasm) or `main` (a JavaScript module)"
    );
    assert_eq!(
        f.error("[[worker]]\nname = \"app\"\nmain = \"src/missing.js\"\n"),
        format!(
            "isola.toml:3:8: worker[0].main: worker module not found: {}",
            f.dir.path().join("src/missing.js").display()
        )
    );
    assert_eq!(
        f.error("[[worker]]\nname = \"app\"\ncomponent = \"app.wasm\"\nmain = \"app.wasm\"\n"),
        "isola.toml:4:8: worker[0].main: give either `component` (a .wasm) or `main` (a JavaScript module), not both"
    );
    assert_eq!(
        f.error("[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\nroutes = [\"/*\"]\n[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\n"),
        "isola.toml:6:8: worker[1].name: worker `a` is defined twice"
    );
    assert_eq!(
        f.error("[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\nroutes = [\"/*\"]\n[[worker]]\nname = \"b\"\ncomponent = \"app.wasm\"\nroutes = [\"/*\"]\n"),
        "isola.toml:8:11: worker[1].routes: route `/*` is already used by worker `a`"
    );
    assert_eq!(
        f.error("[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\ncpu_ms = 0\n"),
        "isola.toml:4:10: worker[0].cpu_ms: must be at least 1"
    );
    assert_eq!(f.error(""), "isola.toml: no [[worker]] is configured");
    assert_eq!(
        f.error("[server]\nadmin = \"0.0.0.0:8788\"\n[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\n"),
        "isola.toml:2:9: server.admin: an admin listener off loopback needs `admin_token`"
    );
    assert_eq!(
        f.error("[server]\ntrusted_client_ip_header = \"x real ip\"\n[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\n"),
        "isola.toml:2:28: server.trusted_client_ip_header: `x real ip` is not a header name"
    );
    assert_eq!(
        f.error("[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\nservices = [{ binding = \"AUTH\", service = \"nope\" }]\n"),
        "isola.toml:4:43: worker[0].services: no worker is named `nope`"
    );
    assert_eq!(
        f.error("[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\norigin = \"ftp://x\"\n"),
        "isola.toml:4:10: worker[0].origin: `ftp://x` is not of the form http(s)://host[:port]"
    );
    assert!(f.error("[[worker]\n").starts_with("isola.toml:1:"));
}

#[test]
fn distributed_backends() {
    let f = Fixture::new();
    let config = f
        .parse(
            "[backends]\nkv = { type = \"redis\", url = \"redis://127.0.0.1:6379\" }\n\
             cache = { type = \"redis\", url = \"redis://127.0.0.1:6379/1\" }\n\
             sql = { type = \"postgres\", url = \"postgres://isola:pw@db/isola\" }\n\
             blob = { type = \"s3\", endpoint = \"http://127.0.0.1:9000\", bucket = \"isola\" }\n\
             queue = { type = \"redis\", url = \"redis://127.0.0.1:6379\" }\n\
             [[worker]]\nname = \"app\"\ncomponent = \"app.wasm\"\n",
        )
        .unwrap();
    let b = &config.backends;
    assert!(b.is_distributed());
    assert_eq!(
        b.kv,
        Backend::Redis {
            url: "redis://127.0.0.1:6379".into(),
            tls: BackendTls::default(),
        }
    );
    assert_eq!(
        b.cache,
        Backend::Redis {
            url: "redis://127.0.0.1:6379/1".into(),
            tls: BackendTls::default(),
        }
    );
    assert_eq!(
        b.sql,
        Backend::Postgres {
            url: "postgres://isola:pw@db/isola".into(),
            tls: BackendTls::default(),
        }
    );
    assert_eq!(
        b.blob,
        Backend::S3 {
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: "us-east-1".into(),
            bucket: "isola".into(),
            tls: BackendTls::default(),
        }
    );
    assert_eq!(b.queue, b.kv);
    assert!(!BackendsConfig::default().is_distributed());
}

#[test]
fn backends_over_tls() {
    let f = Fixture::new();
    std::fs::create_dir(f.dir.path().join("certs")).unwrap();
    for file in ["ca.pem", "node.pem", "node.key"] {
        std::fs::write(f.dir.path().join("certs").join(file), "").unwrap();
    }
    let worker = "[[worker]]\nname = \"app\"\ncomponent = \"app.wasm\"\n";
    let config = f
        .parse(&format!(
            "[backends]\n\
             kv = {{ type = \"redis\", url = \"rediss://r:6380\", ca_file = \"certs/ca.pem\", \
             client_cert = \"certs/node.pem\", client_key = \"certs/node.key\" }}\n\
             sql = {{ type = \"postgres\", url = \"postgres://db/app?sslmode=verify-full\", ca_file = \"certs/ca.pem\" }}\n\
             blob = {{ type = \"s3\", endpoint = \"https://s3:9000\", bucket = \"b\", ca_file = \"certs/ca.pem\" }}\n\
             {worker}"
        ))
        .unwrap();
    let certs = f.dir.path().join("certs");
    let full = BackendTls {
        ca_file: Some(certs.join("ca.pem")),
        client_cert: Some(certs.join("node.pem")),
        client_key: Some(certs.join("node.key")),
    };
    let ca_only = BackendTls {
        ca_file: Some(certs.join("ca.pem")),
        ..BackendTls::default()
    };
    let b = &config.backends;
    assert_eq!(
        b.kv,
        Backend::Redis {
            url: "rediss://r:6380".into(),
            tls: full
        }
    );
    assert_eq!(
        b.sql,
        Backend::Postgres {
            url: "postgres://db/app?sslmode=verify-full".into(),
            tls: ca_only.clone()
        }
    );
    assert!(matches!(&b.blob, Backend::S3 { tls, .. } if *tls == ca_only));

    let missing = f.error(&format!(
        "[backends]\nkv = {{ type = \"redis\", url = \"rediss://r\", ca_file = \"nope.pem\" }}\n{worker}"
    ));
    assert!(
        missing.starts_with("isola.toml:2:54: backends.kv.ca_file: ")
            && missing.ends_with("nope.pem is not a file"),
        "{missing}"
    );
    assert_eq!(
        f.error(&format!(
            "[backends]\nkv = {{ type = \"redis\", url = \"redis://r\", ca_file = \"certs/ca.pem\" }}\n{worker}"
        )),
        "isola.toml:2:30: backends.kv.url: certificate files need a `rediss://` (TLS) URL"
    );
    assert_eq!(
        f.error(&format!(
            "[backends]\nsql = {{ type = \"postgres\", url = \"postgres://db/app\", ca_file = \"certs/ca.pem\" }}\n{worker}"
        )),
        "isola.toml:2:34: backends.sql.url: certificate files need `sslmode=verify-full` (or `require`) in the URL"
    );
    assert_eq!(
        f.error(&format!(
            "[backends]\ncache = {{ type = \"redis\", url = \"rediss://r\", client_cert = \"certs/node.pem\" }}\n{worker}"
        )),
        "isola.toml:2:61: backends.cache.client_cert: `client_cert` needs `client_key`"
    );
    assert_eq!(
        f.error(&format!(
            "[backends]\nblob = {{ type = \"s3\", bucket = \"b\", client_key = \"certs/node.key\" }}\n{worker}"
        )),
        "isola.toml:2:50: backends.blob.client_key: a `s3` backend has no `client_key`"
    );
    assert_eq!(
        f.error(&format!(
            "[backends]\nkv = {{ type = \"sqlite\", ca_file = \"certs/ca.pem\" }}\n{worker}"
        )),
        "isola.toml:2:35: backends.kv.ca_file: a `sqlite` backend has no `ca_file`"
    );
}

#[test]
fn bindings_and_secrets() {
    let f = Fixture::new();
    std::fs::write(
        f.dir.path().join(".dev.vars"),
        "# local secrets\nAPI_KEY=\"from-dev-vars\"\nOTHER=x\n",
    )
    .unwrap();
    let config = f
        .parse(
            "[backends]\ncache = { type = \"memory\", max_mb = 8 }\nqueue = { type = \"sqlite\" }\n\
             [[worker]]\nname = \"app\"\ncomponent = \"app.wasm\"\nsecrets = [\"API_KEY\"]\n\
             kv_namespaces = [{ binding = \"KV\", id = \"app-kv\" }]\n\
             d1_databases = [{ binding = \"DB\", database_name = \"app\" }]\n\
             r2_buckets = [{ binding = \"BUCKET\", bucket_name = \"assets\" }]\n\
             analytics_engine_datasets = [{ binding = \"EVENTS\", dataset = \"events\" }]\n",
        )
        .unwrap();
    assert_eq!(config.backends.cache_max_bytes, 8 << 20);
    let w = &config.workers[0];
    assert_eq!(w.run.secrets["API_KEY"].expose(), "from-dev-vars");
    assert_eq!(format!("{:?}", w.run.secrets), "{\"API_KEY\": [redacted]}");
    assert_eq!(w.run.kv_namespaces[0].id, "app-kv");
    assert_eq!(w.run.d1_databases[0].database_name, "app");
    assert_eq!(w.run.r2_buckets[0].bucket_name, "assets");
    assert_eq!(w.run.analytics_engine_datasets[0].dataset, "events");
}

#[test]
fn binding_errors() {
    let f = Fixture::new();
    let worker = "[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\n";
    let missing = f.error(&format!("{worker}secrets = [\"ISOLA_TEST_NEVER_SET\"]\n"));
    assert_eq!(
        missing,
        format!(
            "isola.toml:4:12: worker[0].secrets: secret `ISOLA_TEST_NEVER_SET` has no value: set $ISOLA_SECRET_ISOLA_TEST_NEVER_SET or add `ISOLA_TEST_NEVER_SET=...` to {}",
            f.dir.path().join(".dev.vars").display()
        )
    );
    assert_eq!(
        f.error(&format!("{worker}vars = {{ KV = \"x\" }}\nkv_namespaces = [{{ binding = \"KV\", id = \"k\" }}]\n")),
        "isola.toml:5:30: worker[0].kv_namespaces: `KV` is already bound as a var"
    );
    assert_eq!(
        f.error(&format!(
            "{worker}r2_buckets = [{{ binding = \"B\", bucket_name = \"Bad_Name\" }}]\n"
        )),
        "isola.toml:4:46: worker[0].r2_buckets: `Bad_Name` is not a valid bucket name (3 to 63 lowercase letters, digits and inner `-`)"
    );
    assert_eq!(
        f.error(&format!(
            "{worker}d1_databases = [{{ binding = \"1DB\", database_name = \"x\" }}]\n"
        )),
        "isola.toml:4:29: worker[0].d1_databases: `1DB` is not a valid binding name (a letter or `_`, then letters, digits, `_`)"
    );
    assert_eq!(
        f.error(&format!("{worker}analytics_engine_datasets = [{{ binding = \"E\", dataset = \"drop table\" }}]\n")),
        "isola.toml:4:57: worker[0].analytics_engine_datasets: `drop table` is not a valid dataset name (a letter or `_`, then letters, digits, `_`): it is queried as an SQL table"
    );
    assert_eq!(
        f.error(&format!(
            "[backends]\nkv = {{ type = \"redis\" }}\n{worker}"
        )),
        "isola.toml:2:15: backends.kv.url: a `redis` backend needs `url`"
    );
    assert_eq!(
        f.error(&format!(
            "[backends]\nkv = {{ type = \"postgres\", url = \"postgres://h/d\" }}\n{worker}"
        )),
        "isola.toml:2:15: backends.kv.type: `postgres` is not an available kv backend (available: sqlite, redis)"
    );
    assert_eq!(
        f.error(&format!(
            "[backends]\nqueue = {{ type = \"kafka\" }}\n{worker}"
        )),
        "isola.toml:2:18: backends.queue.type: `kafka` is not an available queue backend (available: sqlite, redis)"
    );
    assert_eq!(
        f.error(&format!(
            "[backends]\nkv = {{ type = \"redis\", url = \"http://x\" }}\n{worker}"
        )),
        "isola.toml:2:30: backends.kv.url: must start with redis:// or rediss://"
    );
    assert_eq!(
        f.error(&format!(
            "[backends]\nsql = {{ type = \"sqlite\", url = \"postgres://h/d\" }}\n{worker}"
        )),
        "isola.toml:2:32: backends.sql.url: a `sqlite` backend has no `url`"
    );
    assert_eq!(
        f.error(&format!(
            "[backends]\nblob = {{ type = \"s3\", region = \"eu\" }}\n{worker}"
        )),
        "isola.toml:2:17: backends.blob.bucket: a `s3` backend needs `bucket`"
    );
    let unknown = f.error(&format!(
        "[backends]\nblob = {{ type = \"s3\", bucket = \"b\", secret = \"x\" }}\n{worker}"
    ));
    assert!(
        unknown.starts_with("isola.toml:2:") && unknown.contains("secret"),
        "unknown keys are errors with their position: {unknown}"
    );
    assert_eq!(
        f.error(&format!(
            "[backends]\nkv = {{ type = \"sqlite\", max_mb = 3 }}\n{worker}"
        )),
        "isola.toml:2:34: backends.kv.max_mb: only the cache backend has a size cap"
    );
    assert!(
        f.error(&format!(
            "{worker}kv_namespaces = [{{ binding = \"KV\", id = \"k\", preview_id = \"p\" }}]\n"
        ))
        .contains("unknown field `preview_id`")
    );
}

#[test]
fn secrets_never_come_from_plain_environment_variables() {
    // Only `ISOLA_SECRET_<NAME>` supplies a secret, so a worker cannot
    // declare `PATH` (or any host variable) and read it.
    let f = Fixture::new();
    assert!(std::env::var_os("PATH").is_some());
    let mut cache = None;
    assert!(secret_value("PATH", f.dir.path(), &mut cache).is_err());
}

#[test]
fn queues_and_triggers() {
    let f = Fixture::new();
    let config = f
        .parse(
            "[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\n\
             [worker.queues]\nproducers = [{ binding = \"JOBS\", queue = \"jobs\" }]\n\
             consumers = [{ queue = \"jobs\", max_batch_size = 5, dead_letter_queue = \"jobs-dlq\" }]\n\
             [worker.triggers]\ncrons = [\"*/5 * * * *\", \"*/2 * * * * *\"]\ncpu_ms = 500\n",
        )
        .unwrap();
    let w = &config.workers[0];
    assert_eq!(w.run.queue_producers[0].queue, "jobs");
    let c = &w.queue_consumers[0];
    assert_eq!(
        (
            c.max_batch_size,
            c.max_batch_timeout,
            c.max_retries,
            c.max_concurrency
        ),
        (5, 5, 3, 1)
    );
    assert_eq!(c.dead_letter_queue.as_deref(), Some("jobs-dlq"));
    assert_eq!(w.crons.len(), 2);
    assert_eq!(w.run.trigger_cpu_ms, Some(500));

    let worker = "[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\n";
    assert_eq!(
        f.error(&format!(
            "{worker}[worker.triggers]\ncrons = [\"61 * * * *\"]\n"
        ))
        .split(": ")
        .take(2)
        .collect::<Vec<_>>(),
        ["isola.toml:5:10", "worker[0].triggers.crons"]
    );
    assert!(
        f.error(&format!("{worker}[worker.triggers]\ncrons = [\"* * *\"]\n"))
            .contains("has 3 fields")
    );
    assert_eq!(
        f.error(&format!(
            "{worker}[worker.queues]\nconsumers = [{{ queue = \"q\", max_batch_size = 101 }}]\n"
        )),
        "isola.toml:5:46: worker[0].queues.consumers: max_batch_size must be between 1 and 100"
    );
    assert_eq!(
        f.error(&format!("{worker}[worker.queues]\nconsumers = [{{ queue = \"q\", dead_letter_queue = \"q\" }}]\n")),
        "isola.toml:5:49: worker[0].queues.consumers: a queue cannot be its own dead letter queue"
    );
    assert!(
        f.error(&format!("{worker}[worker.queues]\nconsumers = [{{ queue = \"q\" }}]\n[[worker]]\nname = \"b\"\ncomponent = \"app.wasm\"\n[worker.queues]\nconsumers = [{{ queue = \"q\" }}]\n"))
            .contains("queue `q` already has a consumer: worker `a`")
    );
}

#[test]
fn build_section_for_dev() {
    let f = Fixture::new();
    let config = f
        .parse(concat!(
            "[[worker]]\nname = \"app\"\ncomponent = \"target/app.wasm\"\n",
            "build = { command = \"cargo build --release\", watch = [\"src/**/*.rs\", \"Cargo.toml\"], workdir = \"guest\" }\n",
        ))
        .expect("a component not built yet is fine when the worker has a build command");
    let build = config.workers[0].build.as_ref().unwrap();
    assert_eq!(build.command.as_deref(), Some("cargo build --release"));
    assert_eq!(build.watch, ["src/**/*.rs", "Cargo.toml"]);
    assert_eq!(build.workdir, f.dir.path().join("guest"));
    assert!(
        f.error("[[worker]]\nname = \"app\"\ncomponent = \"missing.wasm\"\n")
            .contains("component file not found")
    );
    assert_eq!(
        f.error(
            "[[worker]]\nname = \"app\"\ncomponent = \"app.wasm\"\nbuild = { command = \" \" }\n"
        ),
        "isola.toml:4:21: worker[0].build.command: the build command is empty"
    );
    assert!(
        f.error("[[worker]]\nname = \"app\"\ncomponent = \"app.wasm\"\nbuild = { cmd = \"x\" }\n")
            .contains("unknown field `cmd`")
    );
}

#[test]
fn a_malformed_dev_vars_file_never_echoes_its_lines() {
    let f = Fixture::new();
    std::fs::write(
        f.dir.path().join(".dev.vars"),
        "GOOD=1\nAPI_KEY 'hunter2-secret\n",
    )
    .unwrap();
    let error =
        f.error("[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\nsecrets = [\"API_KEY\"]\n");
    assert!(error.contains("is not NAME=value"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
}

#[test]
fn outbound_client_settings() {
    let f = Fixture::new();
    std::fs::write(f.dir.path().join("ca.pem"), "").unwrap();
    let worker = "[[worker]]\nname = \"app\"\ncomponent = \"app.wasm\"\n";
    let config = f
        .parse(&format!(
            "[server]\noutbound_idle_timeout_ms = 5000\noutbound_max_connections_per_origin = 8\noutbound_ca_file = \"ca.pem\"\n{worker}"
        ))
        .unwrap();
    assert_eq!(config.server.outbound_idle_timeout_ms, 5000);
    assert_eq!(config.server.outbound_max_connections_per_origin, 8);
    assert_eq!(
        config.server.outbound_ca_file.as_deref(),
        Some(f.dir.path().join("ca.pem").as_path())
    );
    let defaults = f.parse(worker).unwrap();
    assert_eq!(defaults.server.outbound_max_connections_per_origin, 256);
    assert_eq!(defaults.workers[0].run.pass_through_buffer_kb, 1024);
    let buffered = f
        .parse(&format!("{worker}pass_through_buffer_kb = 64\n"))
        .unwrap();
    assert_eq!(buffered.workers[0].run.pass_through_buffer_kb, 64);
    assert_eq!(
        f.error(&format!("{worker}pass_through_buffer_kb = 0\n")),
        "isola.toml:4:26: worker[0].pass_through_buffer_kb: must be at least 1"
    );
    assert_eq!(defaults.server.outbound_ca_file, None);
    assert_eq!(
        f.error(&format!(
            "[server]\noutbound_max_connections_per_origin = 0\n{worker}"
        )),
        "isola.toml:2:39: server.outbound_max_connections_per_origin: must be at least 1"
    );
    let missing = f.error(&format!(
        "[server]\noutbound_ca_file = \"nope.pem\"\n{worker}"
    ));
    assert!(
        missing.starts_with("isola.toml:2:20: server.outbound_ca_file: ")
            && missing.ends_with("nope.pem is not a file"),
        "{missing}"
    );
}

/// Property tests: cron expressions and whole config texts.
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// A cron field: `*`, a value, a range, a list or a step, within
    /// `lo..=hi`.
    fn cron_field(lo: u32, hi: u32) -> impl Strategy<Value = String> {
        let n = lo..=hi;
        prop_oneof![
            Just("*".to_owned()),
            n.clone().prop_map(|v| v.to_string()),
            (n.clone(), n.clone()).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
            proptest::collection::vec(n.clone(), 1..4).prop_map(|v| v
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")),
            (1..=hi.max(1)).prop_map(|s| format!("*/{s}")),
            (n, 1..=hi.max(1)).prop_map(move |(a, s)| format!("{a}-{hi}/{s}")),
        ]
    }

    fn five_fields() -> impl Strategy<Value = String> {
        (
            cron_field(0, 59),
            cron_field(0, 23),
            cron_field(1, 28),
            cron_field(1, 12),
            cron_field(0, 6),
        )
            .prop_map(|(m, h, d, mo, w)| format!("{m} {h} {d} {mo} {w}"))
    }

    /// Cron-ish text: the tokens croner knows, out of place.
    fn cron_noise() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("*".to_owned()),
            Just("?".to_owned()),
            Just("L".to_owned()),
            Just("W".to_owned()),
            Just("#".to_owned()),
            Just("/".to_owned()),
            Just(",".to_owned()),
            Just("-".to_owned()),
            Just("+".to_owned()),
            Just("MON".to_owned()),
            Just("jan".to_owned()),
            Just(" ".to_owned()),
            Just("\t".to_owned()),
            Just("\u{a0}".to_owned()),
            (0u64..100).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
        ];
        proptest::collection::vec(token, 0..24).prop_map(|t| t.concat())
    }

    fn check_cron(text: &str) -> Result<(), TestCaseError> {
        if let Ok(cron) = CronSchedule::parse(text) {
            prop_assert_eq!(&cron.expression, text);
            prop_assert!((5..=6).contains(&text.split_whitespace().count()));
        }
        Ok(())
    }

    /// What a key of the schema holds. The generator fills each key with a
    /// value of its kind, picked from values near the rules (valid, just
    /// valid, just invalid), and now and then with one of another type.
    enum Kind {
        Str(&'static [&'static str]),
        Num,
        Bool,
        Strs(&'static [&'static str]),
        Table(&'static [(&'static str, Kind)]),
        Tables(&'static [(&'static str, Kind)]),
        Map(&'static [&'static str], &'static [&'static str]),
    }

    use Kind::*;

    const BINDINGS: &[&str] = &["KV", "DB", "_x", "1bad", "a-b", ""];
    const QUEUES: &[&str] = &["q", "jobs", "bad name", ""];
    const HOSTS: &[&str] = &[
        "*",
        "https://*.example.com",
        "http://[::1]:8080",
        "http://127.0.0.1:*",
        "ftp://x",
        "https://a*b",
    ];
    const URLS: &[&str] = &[
        "http://127.0.0.1:9",
        "https://x.com/",
        "http://",
        "redis://x",
        "postgres://x",
        "x",
    ];
    const NAMES: &[&str] = &["a", "b", "a-b_c", "bad name", ""];
    const ADDRESSES: &[&str] = &["127.0.0.1:0", "0.0.0.0:8788", "[::1]:0", "nope"];

    const SERVER: &[(&str, Kind)] = &[
        ("listen", Str(ADDRESSES)),
        ("state_dir", Str(&["state", ""])),
        ("cache_dir", Str(&["cache"])),
        ("max_instances", Num),
        ("fuel_per_ms", Num),
        ("max_header_bytes", Num),
        ("max_body_mb", Num),
        ("header_timeout_ms", Num),
        ("server_timing", Bool),
        ("outbound_override", Str(URLS)),
        ("shutdown_grace_ms", Num),
        ("colo", Str(&["SFO"])),
        (
            "trusted_client_ip_header",
            Str(&["x-real-ip", "X_Ip", "bad header", ""]),
        ),
        ("admin", Str(ADDRESSES)),
        ("admin_token", Str(&["t"])),
        ("outbound_idle_timeout_ms", Num),
        ("outbound_max_connections_per_origin", Num),
        ("outbound_ca_file", Str(&["app.wasm", "missing.pem"])),
        ("queue_timeout_ms", Num),
        ("max_connections", Num),
    ];
    const CONSUMER: &[(&str, Kind)] = &[
        ("queue", Str(QUEUES)),
        ("max_batch_size", Num),
        ("max_batch_timeout", Num),
        ("max_retries", Num),
        ("dead_letter_queue", Str(QUEUES)),
        ("max_concurrency", Num),
        ("retry_delay", Num),
    ];
    const RULE: &[(&str, Kind)] = &[
        (
            "type",
            Str(&[
                "Text",
                "Data",
                "ESModule",
                "CommonJS",
                "CompiledWasm",
                "Nope",
            ]),
        ),
        (
            "globs",
            Strs(&["**/*.md", "./x", "[ab]", "{a", "{a,b}/*", "/abs", ""]),
        ),
        ("fallthrough", Bool),
    ];
    const WORKER: &[(&str, Kind)] = &[
        ("component", Str(&["app.wasm", "missing.wasm"])),
        ("main", Str(&["app.wasm", "src/worker.js"])),
        (
            "routes",
            Strs(&[
                "/*",
                "/api/*",
                "Example.com/*",
                "*.example.com/x",
                "/a b",
                "/x*y",
                "x",
            ]),
        ),
        ("vars", Map(&["A", "B"], &["1", ""])),
        ("cpu_ms", Num),
        ("wall_ms", Num),
        ("memory_mb", Num),
        ("subrequests", Num),
        ("instance_reuse", Num),
        ("pass_through_buffer_kb", Num),
        ("allowed_outbound_hosts", Strs(HOSTS)),
        ("outbound_override", Str(URLS)),
        ("origin", Str(URLS)),
        (
            "services",
            Tables(&[("binding", Str(BINDINGS)), ("service", Str(NAMES))]),
        ),
        ("secrets", Strs(BINDINGS)),
        (
            "kv_namespaces",
            Tables(&[("binding", Str(BINDINGS)), ("id", Str(&["ns", ""]))]),
        ),
        (
            "d1_databases",
            Tables(&[("binding", Str(BINDINGS)), ("database_name", Str(NAMES))]),
        ),
        (
            "r2_buckets",
            Tables(&[
                ("binding", Str(BINDINGS)),
                ("bucket_name", Str(&["bucket", "ab", "-bad", "Up"])),
            ]),
        ),
        (
            "analytics_engine_datasets",
            Tables(&[("binding", Str(BINDINGS)), ("dataset", Str(BINDINGS))]),
        ),
        (
            "queues",
            Table(&[
                (
                    "producers",
                    Tables(&[("binding", Str(BINDINGS)), ("queue", Str(QUEUES))]),
                ),
                ("consumers", Tables(CONSUMER)),
            ]),
        ),
        (
            "triggers",
            Table(&[
                (
                    "crons",
                    Strs(&[
                        "*/5 * * * *",
                        "0 0 * * * *",
                        "61 * * * *",
                        "* * *",
                        "0 0 30 2 *",
                    ]),
                ),
                ("cpu_ms", Num),
            ]),
        ),
        (
            "build",
            Table(&[
                ("command", Str(&["make", " "])),
                ("watch", Strs(&["src/**", ""])),
                ("workdir", Str(&["."])),
            ]),
        ),
        (
            "alias",
            Map(
                &["some-module", "./rel", "a b"],
                &["./src/shim.js", "pkg", "/nowhere", ""],
            ),
        ),
        (
            "define",
            Map(&["DEBUG", "process.env.MODE", "1bad"], &["false", " "]),
        ),
        ("rules", Tables(RULE)),
        (
            "compatibility_date",
            Str(&["2024-02-29", "2023-02-29", "2024-13-01", "x"]),
        ),
        ("compatibility_flags", Strs(&["nodejs_compat", "Bad", ""])),
    ];
    const BACKEND: &[(&str, Kind)] = &[
        (
            "type",
            Str(&["sqlite", "redis", "postgres", "fs", "s3", "memory", "none"]),
        ),
        ("max_mb", Num),
        ("url", Str(URLS)),
        ("endpoint", Str(URLS)),
        ("region", Str(&["eu-west-1"])),
        ("bucket", Str(&["b", ""])),
    ];

    fn toml_string(pool: &'static [&'static str]) -> BoxedStrategy<String> {
        prop_oneof![
            14 => Just(pool[0].to_owned()),
            5 => proptest::sample::select(pool).prop_map(str::to_owned),
            1 => any::<String>(),
        ]
        .prop_map(|s| toml::Value::String(s).to_string())
        .boxed()
    }

    /// A value of any type: what a key of another kind receives.
    fn wrong_value() -> BoxedStrategy<String> {
        prop_oneof![
            toml_string(&["x"]),
            Just("-1".to_owned()),
            Just("1.5".to_owned()),
            Just("true".to_owned()),
            Just("1979-05-27T07:32:00Z".to_owned()),
            Just("[1, \"a\"]".to_owned()),
            Just("{ unknown = 1 }".to_owned()),
        ]
        .boxed()
    }

    fn value(kind: &'static Kind) -> BoxedStrategy<String> {
        let right = match kind {
            Str(pool) => toml_string(pool),
            Num => prop_oneof![
                3 => (1u32..=60).prop_map(|n| n.to_string()),
                1 => proptest::sample::select(
                    &[
                        "0",
                        "1",
                        "2",
                        "60",
                        "100",
                        "101",
                        "1024",
                        "16384",
                        "16385",
                        "43200",
                        "1000000",
                        "1000001",
                        "4294967296",
                        "9223372036854775807",
                    ][..]
                )
                .prop_map(str::to_owned),
                1 => any::<u32>().prop_map(|n| n.to_string()),
            ]
            .boxed(),
            Bool => any::<bool>().prop_map(|b| b.to_string()).boxed(),
            Strs(pool) => proptest::collection::vec(toml_string(pool), 0..3)
                .prop_map(|v| format!("[{}]", v.join(", ")))
                .boxed(),
            Table(fields) => table(fields),
            Tables(fields) => proptest::collection::vec(table(fields), 0..3)
                .prop_map(|v| format!("[{}]", v.join(", ")))
                .boxed(),
            Map(keys, values) => {
                proptest::collection::btree_map(toml_string(keys), toml_string(values), 0..3)
                    .prop_map(|m| {
                        let entries: Vec<_> =
                            m.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                        format!("{{ {} }}", entries.join(", "))
                    })
                    .boxed()
            }
        };
        prop_oneof![49 => right, 1 => wrong_value()].boxed()
    }

    /// `key = value` lines for some of `fields`, each at most once; the
    /// required ones (named in `REQUIRED`) nearly always.
    fn entries(fields: &'static [(&'static str, Kind)]) -> BoxedStrategy<Vec<String>> {
        let (required, optional): (Vec<usize>, Vec<usize>) =
            (0..fields.len()).partition(|&i| REQUIRED.contains(&fields[i].0));
        let size = optional.len().min(6);
        (
            proptest::sample::subsequence(optional, 0..=size),
            proptest::bool::weighted(0.95),
        )
            .prop_flat_map(move |(picked, complete)| {
                let mut picked = picked;
                if complete {
                    picked.extend(&required);
                }
                picked
                    .into_iter()
                    .map(|i| {
                        let (key, kind) = &fields[i];
                        value(kind).prop_map(move |v| format!("{key} = {v}"))
                    })
                    .collect::<Vec<_>>()
            })
            .boxed()
    }

    /// Keys without which a table is refused.
    const REQUIRED: &[&str] = &[
        "type",
        "binding",
        "queue",
        "id",
        "database_name",
        "bucket_name",
        "dataset",
        "service",
        "globs",
    ];

    fn table(fields: &'static [(&'static str, Kind)]) -> BoxedStrategy<String> {
        entries(fields)
            .prop_map(|e| format!("{{ {} }}", e.join(", ")))
            .boxed()
    }

    /// A config text: `[server]`, workers (most with a name and the
    /// component that exists), `[backends.*]`.
    fn config_text() -> impl Strategy<Value = String> {
        let worker = (
            proptest::option::weighted(
                0.95,
                prop_oneof![4 => "[a-c]{1,2}".prop_map(|n| format!("\"{n}\"")), 1 => toml_string(NAMES)],
            ),
            proptest::bool::weighted(0.9),
            entries(WORKER),
        )
            .prop_map(|(name, component, rest)| {
                let mut lines: Vec<String> = name.map(|n| format!("name = {n}")).into_iter().collect();
                if component && !rest.iter().any(|l| l.starts_with("component =")) {
                    lines.push("component = \"app.wasm\"".to_owned());
                }
                lines.extend(rest);
                format!("[[worker]]\n{}\n", lines.join("\n"))
            });
        let backend = (
            prop_oneof![
                9 => proptest::sample::select(&["kv", "sql", "blob", "cache", "queue"][..]),
                1 => Just("other"),
            ],
            entries(BACKEND),
        )
            .prop_map(|(kind, e)| format!("[backends.{kind}]\n{}\n", e.join("\n")));
        (
            proptest::option::of(entries(SERVER)),
            prop_oneof![1 => Just(0..1), 9 => Just(1..4)]
                .prop_flat_map(move |n| proptest::collection::vec(worker.clone(), n)),
            proptest::option::weighted(0.3, backend),
        )
            .prop_map(|(server, workers, backends)| {
                let server = server
                    .map(|s| format!("[server]\n{}\n", s.join("\n")))
                    .unwrap_or_default();
                format!(
                    "{server}{}{}",
                    workers.concat(),
                    backends.unwrap_or_default()
                )
            })
    }

    /// `text` with `edit` spliced in at a char boundary near `at`, and
    /// `cut` chars removed there: broken TOML of every kind.
    fn mangle(text: &str, at: usize, cut: usize, edit: &str) -> String {
        let chars: Vec<char> = text.chars().collect();
        let at = at % (chars.len() + 1);
        let end = (at + cut).min(chars.len());
        let mut out: String = chars[..at].iter().collect();
        out.push_str(edit);
        out.extend(&chars[end..]);
        out
    }

    thread_local! {
        /// One project directory per test thread (each test runs on its
        /// own), removed when the thread ends.
        static FIXTURE: Fixture = Fixture::new();
    }

    fn check_config(f: &Fixture, text: &str) -> Result<(), TestCaseError> {
        match f.parse(text) {
            Ok(config) => {
                prop_assert!(!config.workers.is_empty());
                let mut names = std::collections::HashSet::new();
                let mut routes = std::collections::HashSet::new();
                for w in &config.workers {
                    prop_assert!(names.insert(w.name.clone()), "{} twice", w.name);
                    prop_assert!(!w.name.is_empty());
                    for r in &w.routes {
                        prop_assert_eq!(&RoutePattern::parse(r.as_str()).unwrap(), r);
                        prop_assert!(routes.insert(r.as_str().to_owned()), "{} twice", r);
                    }
                    for c in &w.crons {
                        prop_assert!(CronSchedule::parse(&c.expression).is_ok());
                    }
                    let limits = &w.run.limits;
                    prop_assert!(limits.cpu_ms > 0 && limits.wall_ms > 0 && limits.memory_mb > 0);
                }
                prop_assert!(config.server.max_instances >= 1);
            }
            Err(e) => {
                let lines = text.split('\n').count();
                prop_assert!(e.line <= lines, "line {} of {}: {}", e.line, lines, e);
                if e.line > 0 {
                    let line = text.split('\n').nth(e.line - 1).unwrap();
                    prop_assert!(
                        e.column >= 1 && e.column <= line.chars().count() + 1,
                        "{}",
                        e
                    );
                }
                prop_assert!(!e.message.is_empty());
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn any_cron_text_parses_or_is_refused(text in any::<String>()) {
            check_cron(&text)?;
        }

        #[test]
        fn cron_noise_parses_or_is_refused(text in cron_noise()) {
            check_cron(&text)?;
        }

        #[test]
        fn well_formed_crons_parse_with_or_without_seconds(
            five in five_fields(),
            seconds in cron_field(0, 59),
            extra in cron_field(0, 59),
        ) {
            let cron = CronSchedule::parse(&five).unwrap();
            prop_assert_eq!(&cron.expression, &five);
            let six = format!("{seconds} {five}");
            prop_assert!(CronSchedule::parse(&six).is_ok(), "{:?}", six);
            let seven = format!("{extra} {six}");
            prop_assert!(CronSchedule::parse(&seven).is_err());
            let four: Vec<_> = five.split(' ').skip(1).collect();
            prop_assert!(CronSchedule::parse(&four.join(" ")).is_err());
        }

        #[test]
        fn out_of_range_cron_values_are_refused(
            five in five_fields(),
            field in 0usize..5,
            over in 0u32..1000,
        ) {
            let limit = [60, 24, 32, 13, 8][field];
            let mut fields: Vec<String> = five.split(' ').map(str::to_owned).collect();
            fields[field] = (limit + over).to_string();
            let text = fields.join(" ");
            prop_assert!(CronSchedule::parse(&text).is_err(), "{:?}", text);
        }

        #[test]
        fn any_text_is_a_config_or_an_error(text in any::<String>()) {
            FIXTURE.with(|f| check_config(f, &text))?;
        }

        #[test]
        fn config_shaped_text_is_a_config_or_a_located_error(text in config_text()) {
            FIXTURE.with(|f| check_config(f, &text))?;
        }

        #[test]
        fn mangled_config_text_is_a_config_or_a_located_error(
            text in config_text(),
            at in any::<usize>(),
            cut in 0usize..4,
            edit in prop_oneof![
                Just(String::new()),
                "[\\[\\]{}=\"'.,#\n\\\\]",
                any::<char>().prop_map(String::from),
                Just("\u{e9}\u{1F600}".to_owned()),
            ],
        ) {
            FIXTURE.with(|f| check_config(f, &mangle(&text, at, cut, &edit)))?;
        }
    }
}
