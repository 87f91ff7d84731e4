//! The raw serde types: `isola.toml` as written, with the spans that
//! errors point at. Every table denies unknown keys.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::js_build;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) server: RawServer,
    #[serde(default)]
    pub(crate) worker: Vec<RawWorker>,
    #[serde(default)]
    pub(crate) backends: RawBackends,
    pub(crate) cluster: Option<RawCluster>,
}

/// `[cluster]`: the internal listener, and the URL other nodes reach it
/// at. The shared secret is never in the file (`ISOLA_CLUSTER_SECRET`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub(crate) listen: Spanned<String>,
    pub(crate) advertise: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackends {
    pub(crate) kv: Option<RawBackend>,
    pub(crate) sql: Option<RawBackend>,
    pub(crate) blob: Option<RawBackend>,
    pub(crate) cache: Option<RawBackend>,
    pub(crate) queue: Option<RawBackend>,
    pub(crate) durable: Option<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub(crate) r#type: Spanned<String>,
    pub(crate) max_mb: Option<Spanned<u64>>,
    pub(crate) url: Option<Spanned<String>>,
    pub(crate) endpoint: Option<Spanned<String>>,
    pub(crate) region: Option<Spanned<String>>,
    pub(crate) bucket: Option<Spanned<String>>,
    pub(crate) ca_file: Option<Spanned<String>>,
    pub(crate) client_cert: Option<Spanned<String>>,
    pub(crate) client_key: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) listen: Option<Spanned<String>>,
    pub(crate) state_dir: Option<String>,
    pub(crate) cache_dir: Option<String>,
    pub(crate) max_instances: Option<Spanned<u64>>,
    pub(crate) fuel_per_ms: Option<Spanned<u64>>,
    pub(crate) max_header_bytes: Option<Spanned<usize>>,
    pub(crate) max_body_mb: Option<u64>,
    pub(crate) header_timeout_ms: Option<u64>,
    pub(crate) server_timing: Option<bool>,
    pub(crate) outbound_override: Option<Spanned<String>>,
    pub(crate) shutdown_grace_ms: Option<u64>,
    pub(crate) colo: Option<String>,
    pub(crate) country: Option<String>,
    pub(crate) trusted_client_ip_header: Option<Spanned<String>>,
    pub(crate) admin: Option<Spanned<String>>,
    pub(crate) admin_token: Option<String>,
    pub(crate) outbound_idle_timeout_ms: Option<Spanned<u64>>,
    pub(crate) outbound_max_connections_per_origin: Option<Spanned<u64>>,
    pub(crate) outbound_ca_file: Option<Spanned<String>>,
    pub(crate) queue_timeout_ms: Option<u64>,
    pub(crate) max_connections: Option<Spanned<u64>>,
    pub(crate) durable_object_idle_s: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorker {
    pub(crate) name: Spanned<String>,
    pub(crate) component: Option<Spanned<String>>,
    pub(crate) main: Option<Spanned<String>>,
    pub(crate) routes: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) vars: BTreeMap<String, String>,
    pub(crate) cpu_ms: Option<Spanned<u64>>,
    pub(crate) wall_ms: Option<Spanned<u64>>,
    pub(crate) memory_mb: Option<Spanned<u64>>,
    pub(crate) subrequests: Option<u32>,
    pub(crate) instance_reuse: Option<Spanned<u32>>,
    pub(crate) pass_through_buffer_kb: Option<Spanned<u64>>,
    #[serde(default)]
    pub(crate) allowed_outbound_hosts: Vec<Spanned<String>>,
    pub(crate) outbound_override: Option<Spanned<String>>,
    pub(crate) origin: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) services: Vec<RawService>,
    #[serde(default)]
    pub(crate) secrets: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) kv_namespaces: Vec<RawKv>,
    #[serde(default)]
    pub(crate) d1_databases: Vec<RawD1>,
    #[serde(default)]
    pub(crate) r2_buckets: Vec<RawR2>,
    #[serde(default)]
    pub(crate) analytics_engine_datasets: Vec<RawAnalytics>,
    #[serde(default)]
    pub(crate) queues: RawQueues,
    #[serde(default)]
    pub(crate) triggers: RawTriggers,
    #[serde(default)]
    pub(crate) durable_objects: RawDurableObjects,
    #[serde(default)]
    pub(crate) migrations: Vec<RawMigration>,
    pub(crate) build: Option<RawBuild>,
    // Wrangler's build keys: see `js_build`.
    pub(crate) alias: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    pub(crate) define: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    pub(crate) rules: Option<Spanned<Vec<Spanned<js_build::RawRule>>>>,
    /// Requests run through a JavaScript worker's `fetch` at build time:
    /// see `warm_up`.
    pub(crate) warm_up: Option<Spanned<Vec<Spanned<toml::Value>>>>,
    pub(crate) compatibility_date: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub(crate) compatibility_flags: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBuild {
    pub(crate) command: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) watch: Vec<Spanned<String>>,
    pub(crate) workdir: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueues {
    #[serde(default)]
    pub(crate) producers: Vec<RawProducer>,
    #[serde(default)]
    pub(crate) consumers: Vec<RawConsumer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProducer {
    pub(crate) binding: Spanned<String>,
    pub(crate) queue: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConsumer {
    pub(crate) queue: Spanned<String>,
    pub(crate) max_batch_size: Option<Spanned<u64>>,
    pub(crate) max_batch_timeout: Option<Spanned<u64>>,
    pub(crate) max_retries: Option<Spanned<u64>>,
    pub(crate) dead_letter_queue: Option<Spanned<String>>,
    pub(crate) max_concurrency: Option<Spanned<u64>>,
    pub(crate) retry_delay: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTriggers {
    #[serde(default)]
    pub(crate) crons: Vec<Spanned<String>>,
    pub(crate) cpu_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub(crate) binding: Spanned<String>,
    pub(crate) service: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKv {
    pub(crate) binding: Spanned<String>,
    pub(crate) id: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawD1 {
    pub(crate) binding: Spanned<String>,
    pub(crate) database_name: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawR2 {
    pub(crate) binding: Spanned<String>,
    pub(crate) bucket_name: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAnalytics {
    pub(crate) binding: Spanned<String>,
    pub(crate) dataset: Spanned<String>,
}

/// `durable_objects = { bindings = [...] }`, Wrangler's shape.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDurableObjects {
    #[serde(default)]
    pub(crate) bindings: Vec<RawDurableBinding>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDurableBinding {
    pub(crate) name: Spanned<String>,
    pub(crate) class_name: Spanned<String>,
    pub(crate) script_name: Option<Spanned<String>>,
}

/// One `migrations` entry; its steps apply in the order of the fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMigration {
    pub(crate) tag: Spanned<String>,
    #[serde(default)]
    pub(crate) new_classes: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) new_sqlite_classes: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) renamed_classes: Vec<RawRename>,
    #[serde(default)]
    pub(crate) deleted_classes: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRename {
    pub(crate) from: Spanned<String>,
    pub(crate) to: Spanned<String>,
}
