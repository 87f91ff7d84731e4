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
    fn parse(&self, text: &str) -> Result<Config, ConfigErrors> {
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
        "isola.toml: no [[worker]] is configured\n\
         isola.toml:3:1: unknown field `lisen`, expected one of `listen`, `state_dir`, `cache_dir`, `max_instances`, `fuel_per_ms`, `max_header_bytes`, `max_body_mb`, `header_timeout_ms`, `server_timing`, `outbound_override`, `shutdown_grace_ms`, `colo`, `country`, `trusted_client_ip_header`, `admin`, `admin_token`, `outbound_idle_timeout_ms`, `outbound_max_connections_per_origin`, `outbound_ca_file`, `queue_timeout_ms`, `max_connections`, `durable_object_idle_s`"
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

/// `[backends] durable`: embedded by default, or PostgreSQL with the same
/// keys and TLS options as `sql`.
#[test]
fn durable_objects_backend() {
    let f = Fixture::new();
    std::fs::create_dir(f.dir.path().join("certs")).unwrap();
    std::fs::write(f.dir.path().join("certs/ca.pem"), "").unwrap();
    let worker = "[[worker]]\nname = \"app\"\ncomponent = \"app.wasm\"\n";
    let config = f.parse(worker).unwrap();
    assert_eq!(config.backends.durable, Backend::Embedded);
    let config = f
        .parse(&format!(
            "[backends]\ndurable = {{ type = \"sqlite\" }}\n{worker}"
        ))
        .unwrap();
    assert_eq!(config.backends.durable, Backend::Embedded);
    assert!(!config.backends.is_distributed());

    let config = f
        .parse(&format!(
            "[backends]\n\
             durable = {{ type = \"postgres\", url = \"postgres://db/objects?sslmode=verify-full\", \
             ca_file = \"certs/ca.pem\" }}\n{worker}"
        ))
        .unwrap();
    assert_eq!(
        config.backends.durable,
        Backend::Postgres {
            url: "postgres://db/objects?sslmode=verify-full".into(),
            tls: BackendTls {
                ca_file: Some(f.dir.path().join("certs/ca.pem")),
                ..BackendTls::default()
            },
        }
    );
    assert!(config.backends.is_distributed());
    assert_eq!(config.backends.sql, Backend::Embedded, "independent of sql");

    assert_eq!(
        f.error(&format!(
            "[backends]\ndurable = {{ type = \"redis\", url = \"redis://r\" }}\n{worker}"
        )),
        "isola.toml:2:20: backends.durable.type: `redis` is not an available durable backend (available: sqlite, postgres)"
    );
    assert_eq!(
        f.error(&format!(
            "[backends]\ndurable = {{ type = \"postgres\" }}\n{worker}"
        )),
        "isola.toml:2:20: backends.durable.url: a `postgres` backend needs `url`"
    );
    assert_eq!(
        f.error(&format!(
            "[backends]\ndurable = {{ type = \"postgres\", url = \"redis://r\" }}\n{worker}"
        )),
        "isola.toml:2:38: backends.durable.url: must start with postgres:// or postgresql://"
    );
    assert_eq!(
        f.error(&format!(
            "[backends]\ndurable = {{ type = \"postgres\", url = \"postgres://db/o\", ca_file = \"certs/ca.pem\" }}\n{worker}"
        )),
        "isola.toml:2:38: backends.durable.url: certificate files need `sslmode=verify-full` (or `require`) in the URL"
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
    let mut cache = crate::secrets::DevVars::default();
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

mod cluster;
mod durable;
mod proptests;

#[test]
fn every_independent_error_is_reported_in_file_order() {
    let f = Fixture::new();
    let text = "\
[server]
listen = \"nowhere\"
colour = \"blue\"
max_instances = -1
[[worker]]
name = \"a\"
component = \"missing.wasm\"
routes = [\"/api/*\", \"/a*b\", 7]
cpu_ms = \"lots\"
secrets = [\"ISOLA_TEST_NEVER_SET\"]
kv_namespaces = [{ binding = \"ISOLA_TEST_NEVER_SET\", id = \"\" }]
services = [{ binding = \"AUTH\", service = \"nobody\" }]
triggers = { crons = [\"61 * * * *\", \"0 * * * *\"] }
[[worker]]
name = \"b\"
component = \"app.wasm\"
routes = [\"/api/*\"]
[backends]
kv = { type = \"etcd\" }
";
    let dev_vars = f.dir.path().join(".dev.vars");
    let expected = [
        "isola.toml:2:10: server.listen: `nowhere` is not an address such as 127.0.0.1:8787"
            .to_owned(),
        "isola.toml:3:1: unknown field `colour`, expected one of".to_owned(),
        "isola.toml:4:17: invalid value: integer `-1`, expected u64".to_owned(),
        format!(
            "isola.toml:7:13: worker[0].component: component file not found: {}",
            f.dir.path().join("missing.wasm").display()
        ),
        "isola.toml:8:21: worker[0].routes: bad route pattern `/a*b`".to_owned(),
        "isola.toml:8:29: invalid type: integer `7`, expected a string".to_owned(),
        "isola.toml:9:10: invalid type: string \"lots\", expected u64".to_owned(),
        format!(
            "isola.toml:10:12: worker[0].secrets: secret `ISOLA_TEST_NEVER_SET` has no value: set $ISOLA_SECRET_ISOLA_TEST_NEVER_SET or add `ISOLA_TEST_NEVER_SET=...` to {}",
            dev_vars.display()
        ),
        "isola.toml:11:30: worker[0].kv_namespaces: `ISOLA_TEST_NEVER_SET` is already bound as a secret"
            .to_owned(),
        "isola.toml:11:59: worker[0].kv_namespaces: an empty name in `kv_namespaces`".to_owned(),
        "isola.toml:12:43: worker[0].services: no worker is named `nobody`".to_owned(),
        "isola.toml:13:23: worker[0].triggers.crons: `61 * * * *` is not a valid cron expression"
            .to_owned(),
        "isola.toml:17:11: worker[1].routes: route `/api/*` is already used by worker `a`"
            .to_owned(),
        "isola.toml:19:15: backends.kv.type: `etcd` is not an available kv backend".to_owned(),
    ];
    let errors = f.error(text);
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{errors}");
    for (line, expected) in lines.iter().zip(&expected) {
        assert!(
            line.starts_with(expected.as_str()),
            "{line}\nexpected {expected}"
        );
    }
}

#[test]
fn a_fault_is_reported_once_not_again_as_what_follows_from_it() {
    let f = Fixture::new();
    let component = "component = \"app.wasm\"\n";
    // A mistyped or missing required key: one error, not also a missing
    // or invalid name (an empty one stands in for it).
    assert_eq!(
        f.error(&format!("[[worker]]\nname = 5\n{component}")),
        "isola.toml:2:8: invalid type: integer `5`, expected a string"
    );
    assert_eq!(
        f.error(&format!(
            "[[worker]]\nname = \"a\"\n{component}services = [{{ binding = \"S\" }}]\n"
        )),
        "isola.toml:4:13: missing field `service`"
    );
    // A missing key in a `[[...]]` table: what follows is still checked.
    assert_eq!(
        f.error("[[worker]]\ncomponent = \"app.wasm\"\ncpu_ms = 0\n"),
        "isola.toml:1:1: missing field `name`\nisola.toml:3:10: worker[0].cpu_ms: must be at least 1"
    );
    // A backend type Isola lacks: its other fields are not judged.
    assert_eq!(
        f.error(&format!(
            "[backends]\nkv = {{ type = \"etcd\", url = \"x\" }}\n[[worker]]\nname = \"a\"\n{component}"
        )),
        "isola.toml:2:15: backends.kv.type: `etcd` is not an available kv backend (available: sqlite, redis)"
    );
    // Text that is not TOML stops at its first error.
    let errors = f.error("[[worker]]\nname = \"a\"\n[server\nlisten = 5\nnope = 1\n");
    assert_eq!(errors, "isola.toml:3:8: unclosed table, expected `]`");
}

#[test]
fn a_broken_dev_vars_file_is_reported_once() {
    let f = Fixture::new();
    std::fs::write(f.dir.path().join(".dev.vars"), "A=1\nB 'x\n").unwrap();
    let errors = f.error(
        "[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\nsecrets = [\"ISOLA_TEST_X\", \"ISOLA_TEST_Y\"]\n",
    );
    assert_eq!(errors.lines().count(), 1, "{errors}");
    assert!(errors.contains("4:12: worker[0].secrets:"), "{errors}");
    assert!(errors.contains("entry 2 is not NAME=value"), "{errors}");
}
