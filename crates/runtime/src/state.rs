//! The per-request store data: WASI contexts and the `isola:worker` imports.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::RequestInfo;
use crate::services::ServiceCalls;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::guest_log::{GuestLog, Stream};
use crate::outbound::{OutboundPolicy, Subrequests};

use crate::generated::isola::worker::{ctx, env, request_info};

/// What a worker's requests share, built once at load time.
pub(crate) struct WorkerShared {
    pub name: Arc<str>,
    /// Vars and secrets: what `env.var` answers.
    pub vars: BTreeMap<String, String>,
    /// `vars` and secrets as WASI environment variables, so `std::env::var`
    /// works too.
    pub environment: Vec<(String, String)>,
    /// Secret values, masked in guest log lines.
    pub secret_values: Arc<[String]>,
    pub bindings: crate::resources::WorkerBindings,
    /// Every name of the worker's `env` and what it is (`env.bindings`).
    pub env_names: Vec<env::Binding>,
    pub outbound: Arc<OutboundPolicy>,
    /// Largest linear memory, in bytes.
    pub memory_limit: usize,
    /// The JavaScript bundle's source map (`<component>.map`), read once at
    /// load: guest log lines name original positions with it.
    pub source_map: Option<Arc<crate::source_map::SourceMap>>,
}

/// The data of one request's `Store`.
pub(crate) struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    hooks: IsolaHttpHooks,
    pub(crate) shared: Arc<WorkerShared>,
    request_id: Arc<str>,
    /// What the guest's stdout and stderr lines are tagged with.
    log_request_id: Arc<std::sync::RwLock<Arc<str>>>,
    info: RequestInfo,
    pub pass_through_on_exception: bool,
    /// Set when the guest asked for more memory than its limit.
    pub memory_limit_hit: bool,
}

impl HostState {
    pub fn new(
        shared: Arc<WorkerShared>,
        subrequests: Subrequests,
        services: ServiceCalls,
    ) -> Self {
        let request_id = services.request_id.0.clone();
        let log_request_id = Arc::new(std::sync::RwLock::new(request_id.clone()));
        let log = |stream| GuestLog {
            worker: shared.name.clone(),
            request_id: log_request_id.clone(),
            secrets: shared.secret_values.clone(),
            source_map: shared.source_map.clone(),
            stream,
        };
        // No preopened directories, no inherited environment, no network:
        // the guest sees its vars and nothing of the host.
        let wasi = WasiCtx::builder()
            .envs(&shared.environment)
            .stdout(log(Stream::Stdout))
            .stderr(log(Stream::Stderr))
            .build();
        HostState {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            info: services.info.clone(),
            hooks: IsolaHttpHooks {
                policy: shared.outbound.clone(),
                subrequests,
                services,
            },
            shared,
            request_id,
            log_request_id,
            pass_through_on_exception: false,
            memory_limit_hit: false,
        }
    }

    /// Point a reused instance's host state at its next request: what the
    /// guest sees of the request (id, info, locals) and what it is charged
    /// (subrequests) are that request's; nothing of the last one remains
    /// on the host side.
    pub fn begin_request(&mut self, subrequests: Subrequests, services: ServiceCalls) {
        self.request_id = services.request_id.0.clone();
        *self.log_request_id.write().expect("request id lock") = self.request_id.clone();
        self.info = services.info.clone();
        self.hooks.subrequests = subrequests;
        self.hooks.services = services;
        self.pass_through_on_exception = false;
        self.memory_limit_hit = false;
    }
}

impl HostState {
    pub(crate) fn subrequests(&self) -> &Subrequests {
        &self.hooks.subrequests
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl wasmtime::ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.shared.memory_limit {
            self.memory_limit_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Each table element costs a pointer; hold tables to the same budget.
        Ok(desired.saturating_mul(std::mem::size_of::<usize>()) <= self.shared.memory_limit)
    }
}

/// Outbound HTTP goes through the worker's allow-list and the request's
/// subrequest budget; a worker granted no hosts reaches nothing.
struct IsolaHttpHooks {
    policy: Arc<OutboundPolicy>,
    subrequests: Subrequests,
    services: ServiceCalls,
}

impl WasiHttpHooks for IsolaHttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        Box::new(crate::outbound::send(
            self.policy.clone(),
            self.subrequests.clone(),
            self.services.clone(),
            request,
            options,
        ))
    }
}

impl ctx::Host for HostState {
    fn request_id(&mut self) -> String {
        self.request_id.to_string()
    }

    fn pass_through_on_exception(&mut self) {
        self.pass_through_on_exception = true;
    }

    fn abort(&mut self, message: String) -> wasmtime::Result<()> {
        // The message carries the uncaught exception's stack: its frames
        // name original positions, as guest log lines do.
        let message = match &self.shared.source_map {
            Some(map) => map.rewrite_cow(&message),
            None => std::borrow::Cow::Borrowed(message.as_str()),
        };
        Err(wasmtime::Error::msg(crate::guest_log::mask_secrets(
            &message,
            &self.shared.secret_values,
        )))
    }

    fn get_local(&mut self, key: String) -> Option<String> {
        self.hooks
            .services
            .locals
            .lock()
            .expect("locals lock")
            .get(&key)
            .cloned()
    }

    fn set_local(&mut self, key: String, value: String) {
        self.hooks
            .services
            .locals
            .lock()
            .expect("locals lock")
            .insert(key, value);
    }
}

impl request_info::Host for HostState {
    fn get(&mut self) -> request_info::Info {
        request_info::Info {
            client_address: self.info.client_address.map(|ip| ip.to_string()),
            protocol: self.info.protocol.clone(),
            tls_version: self.info.tls_version.clone(),
            request_id: self.request_id.to_string(),
            colo: self.info.colo.clone(),
            country: self.info.country.clone(),
        }
    }
}

impl env::Host for HostState {
    fn var(&mut self, name: String) -> Option<String> {
        self.shared.vars.get(&name).cloned()
    }

    fn bindings(&mut self) -> Vec<env::Binding> {
        self.shared.env_names.clone()
    }
}

/// The names of a worker's `env`, as `env.bindings` lists them.
pub(crate) fn env_names(config: &isola_config::WorkerConfig) -> Vec<env::Binding> {
    use env::BindingKind as Kind;
    let named = |kind: Kind| move |name: &String| (name.clone(), kind);
    let mut names: Vec<(String, Kind)> = Vec::new();
    names.extend(config.vars.keys().map(named(Kind::Var)));
    names.extend(config.secrets.keys().map(named(Kind::Secret)));
    names.extend(
        config
            .kv_namespaces
            .iter()
            .map(|b| &b.binding)
            .map(named(Kind::Kv)),
    );
    names.extend(
        config
            .d1_databases
            .iter()
            .map(|b| &b.binding)
            .map(named(Kind::Sql)),
    );
    names.extend(
        config
            .r2_buckets
            .iter()
            .map(|b| &b.binding)
            .map(named(Kind::Blob)),
    );
    names.extend(
        config
            .analytics_engine_datasets
            .iter()
            .map(|b| &b.binding)
            .map(named(Kind::Analytics)),
    );
    names.extend(
        config
            .queue_producers
            .iter()
            .map(|b| &b.binding)
            .map(named(Kind::Queue)),
    );
    names.extend(
        config
            .services
            .iter()
            .map(|b| &b.binding)
            .map(named(Kind::Service)),
    );
    names
        .into_iter()
        .map(|(name, kind)| env::Binding { name, kind })
        .collect()
}
