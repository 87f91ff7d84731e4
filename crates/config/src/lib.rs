//! `isola.toml`: its schema, validation and defaults.
//!
//! Every error names the file, the line and column, and the key at fault:
//! an unknown key, a bad route, a missing component. Nothing is silently
//! ignored: a key Isola does not implement is an unknown key. Loading
//! finds every independent error in one pass ([`ConfigErrors`], in file
//! order); only text that is not TOML stops it at the first.
//!
//! The text is read into the raw serde types (`raw`, with spans), checked
//! section by section (`parse`) and handed on as the plain model (`model`);
//! `secrets` finds secret values, `error` places faults at a line and
//! column. `route`, `outbound`, `js_build` and `warm_up` hold the patterns,
//! rules and build keys that have a grammar of their own.

mod error;
pub mod js_build;
mod model;
pub mod outbound;
mod parse;
mod raw;
pub mod route;
mod secrets;
pub mod warm_up;

pub use error::{ConfigError, ConfigErrors};
pub use js_build::{JsBuild, ModuleRule, ModuleType};
pub use model::{
    AnalyticsBinding, Backend, BackendTls, BackendsConfig, BuildConfig, ClusterConfig, Config,
    CronSchedule, D1Binding, DEFAULT_LISTEN, DEFAULT_STATE_DIR, DurableObjectBinding,
    DurableObjectClass, KvBinding, Limits, QueueConsumer, QueueProducer, R2Binding, Secret,
    ServerConfig, ServiceBinding, WorkerConfig, WorkerRun,
};
pub use outbound::OutboundRule;
pub use route::{RouteError, RoutePattern};
pub use secrets::secret_env_var;
pub use warm_up::WarmUpRequest;

#[cfg(test)]
mod tests;
