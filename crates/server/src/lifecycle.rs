//! The life of a serving process (`run`, `serve`, `dev`): the admin
//! listener, the first load, the public listener, reloads (SIGHUP,
//! `POST /reload`, `dev`'s rebuilds) that swap a whole generation of
//! workers and restart the trigger loops, and shutdown.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use futures_util::future::BoxFuture;
use isola_config::Config;
use isola_runtime::{Backends, IsolaEngine, Placement};

use crate::admin::{Admin, AdminOptions, Reloader};
use crate::app::App;
use crate::cluster::ClusterListener;
use crate::listener::{Server, shutdown_signal};
use crate::load::{
    Progress, backends_for, engine_options, largest_memory_mb, load_workers, outbound_client_for,
};
use crate::profiles::ProfileStore;
use crate::telemetry::Telemetry;
use crate::triggers::Triggers;

/// How the server was asked to run.
pub enum Mode {
    /// Workers load before the listeners open; SIGHUP reloads `source`
    /// when there is one.
    Serve { source: Option<PathBuf> },
    /// The listeners open first; `watch` builds the workers, installs them
    /// through its [`LiveHandle`], and rebuilds them on change. It is
    /// stopped at shutdown.
    Dev { source: PathBuf, watch: Watch },
}

/// `isola dev`'s builder and watcher, run beside the server.
pub type Watch = Box<dyn FnOnce(LiveHandle) -> BoxFuture<'static, ()> + Send>;

/// Reads a config file for serving: parses and validates it and builds its
/// JavaScript workers (the command knows how).
pub type ReadConfig = Arc<dyn Fn(&Path) -> Result<Config> + Send + Sync>;

/// What the command gives the server besides the config.
pub struct ServeOptions {
    /// `--listen`, already applied to the config; reloads keep it.
    pub listen_override: Option<SocketAddr>,
    pub telemetry: Arc<Telemetry>,
    /// How a reload reads the config file.
    pub read_config: ReadConfig,
    /// Hears each load of the workers.
    pub progress: Arc<dyn Progress>,
}

/// What a reload needs: the process-wide engine and state, the app to swap
/// the workers of, and the trigger loops to restart.
struct Live {
    source: Option<PathBuf>,
    engine: IsolaEngine,
    backends: Backends,
    app: Arc<App>,
    /// The config the process started with (for settings a reload cannot
    /// change).
    initial: Config,
    /// `--listen`, which outlives reloads.
    listen_override: Option<SocketAddr>,
    read_config: ReadConfig,
    progress: Arc<dyn Progress>,
    triggers: tokio::sync::Mutex<Option<Triggers>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl Live {
    /// Load `config`'s workers and install them; the old ones keep serving
    /// when anything fails.
    async fn install(self: &Arc<Self>, config: Config) -> Result<String> {
        let _one = self.reloading.lock().await;
        self.restart_only_changes(&config)?;
        let live = self.clone();
        let workers_config = config.workers.clone();
        let workers = tokio::task::spawn_blocking(move || {
            load_workers(
                &live.engine,
                &workers_config,
                &live.backends,
                &*live.progress,
            )
        })
        .await
        .context("loading the workers panicked")??;
        for worker in &workers {
            self.app.telemetry().record_load(worker.cache_outcome());
        }
        let id = self
            .app
            .install(workers.clone(), &config.workers, &config.server);
        let mut triggers = self.triggers.lock().await;
        // Firings and batches of the old workers stop here (a cut batch is
        // delivered again); the new workers take over.
        drop(triggers.take());
        *triggers = Some(
            Triggers::start(
                &workers,
                &config.workers,
                self.backends.queues.clone(),
                self.backends.leases.clone(),
                &config.server.state_dir,
            )
            .await,
        );
        Ok(format!(
            "generation {id}: {} worker{} loaded from {}",
            workers.len(),
            if workers.len() == 1 { "" } else { "s" },
            config.source.display()
        ))
    }

    /// Command-line flags (`--listen`) go on overriding the file.
    fn keep_overrides(&self, config: &mut Config) {
        if let Some(listen) = self.listen_override {
            config.server.listen = listen;
        }
    }

    /// Settings bound to the process (listeners, engine, state) need a
    /// restart; a reload refuses a config that would need one to take
    /// effect rather than half-apply it.
    fn restart_only_changes(&self, config: &Config) -> Result<()> {
        let (old, new) = (&self.initial.server, &config.server);
        let mut changed = Vec::new();
        if old.listen != new.listen {
            changed.push("server.listen");
        }
        if old.admin != new.admin {
            changed.push("server.admin");
        }
        if old.admin_token.as_ref().map(|t| t.expose())
            != new.admin_token.as_ref().map(|t| t.expose())
        {
            changed.push("server.admin_token");
        }
        if old.state_dir != new.state_dir {
            changed.push("server.state_dir");
        }
        if old.cache_dir() != new.cache_dir() {
            changed.push("server.cache_dir");
        }
        if old.max_instances != new.max_instances {
            changed.push("server.max_instances");
        }
        if old.header_timeout_ms != new.header_timeout_ms {
            changed.push("server.header_timeout_ms");
        }
        if old.shutdown_grace_ms != new.shutdown_grace_ms {
            changed.push("server.shutdown_grace_ms");
        }
        if self.initial.backends != config.backends {
            changed.push("[backends]");
        }
        if self.initial.cluster != config.cluster {
            changed.push("[cluster]");
        }
        if largest_memory_mb(config) > largest_memory_mb(&self.initial) {
            changed.push("the largest memory_mb (the instance pool is sized at start)");
        }
        if !changed.is_empty() {
            bail!(
                "{} changed, which needs a restart: {}",
                config.source.display(),
                changed.join(", ")
            );
        }
        Ok(())
    }

    /// Re-read the config file and install it.
    async fn reload(self: &Arc<Self>) -> Result<String> {
        let Some(source) = self.source.clone() else {
            bail!("this server was started without a config file");
        };
        let read_config = self.read_config.clone();
        let mut config = tokio::task::spawn_blocking(move || read_config(&source))
            .await
            .context("reading the config panicked")??;
        self.keep_overrides(&mut config);
        self.install(config).await
    }

    /// Reload and log the outcome: the one clear line an operator looks for.
    async fn reload_logged(self: &Arc<Self>, why: &str) -> Result<String, String> {
        tracing::info!("reloading ({why})");
        let outcome = self.reload().await;
        self.app.telemetry().record_reload(outcome.is_ok());
        match outcome {
            Ok(message) => {
                tracing::info!("reload done: {message}");
                Ok(message)
            }
            Err(e) => {
                let serving = self.app.current().map_or(0, |g| g.id);
                tracing::error!("reload rejected, still serving generation {serving}: {e:#}");
                Err(format!("{e:#}"))
            }
        }
    }
}

/// Serve `config` until SIGINT or SIGTERM.
pub fn serve(config: Config, mode: Mode, options: ServeOptions) -> Result<()> {
    let ServeOptions {
        listen_override,
        telemetry,
        read_config,
        progress,
    } = options;
    // A node of a cluster needs the nodes' shared secret: refuse to start
    // without it, before anything else is done.
    let secret = match &config.cluster {
        Some(_) => Some(crate::cluster::secret_from_env().map_err(|why| {
            anyhow::anyhow!(
                "{}: [cluster] needs the nodes' shared secret in the environment (never in the file): {why}",
                config.source.display()
            )
        })?),
        None => None,
    };
    let mut engine_options = engine_options(&config)?;
    // A JS worker's edit changes only its component's data: `isola dev`
    // makes the new artifact from the last one's machine code.
    engine_options.reuse_code = matches!(mode, Mode::Dev { .. });
    let engine = IsolaEngine::new(&engine_options)?;
    let backends = backends_for(&config)?;
    outbound_client_for(&config)?;
    let placement = match (&config.cluster, secret) {
        (Some(cluster), Some(secret)) => {
            if !backends.leases.is_shared() {
                bail!(
                    "{}: [cluster] needs leases every node shares (a `redis` backends.queue)",
                    config.source.display()
                );
            }
            Some(Arc::new(Placement::new(
                backends.leases.clone(),
                cluster.advertise.clone(),
                secret,
            )))
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // A spinning guest's poll lasts up to a fuel-yield interval (~1 ms).
        // tokio looks for I/O every 61 polls by default, so behind a few
        // spinners a healthy request waited ~60 ms per I/O step (300-800 ms
        // per request, measured); every 8 polls it waits a few ms.
        .event_interval(8)
        .build()?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal()?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let app = Arc::new(App::empty(&config.server, telemetry));
        if let Some(placement) = &placement {
            app.set_placement(placement.clone());
        }
        let source = match &mode {
            Mode::Serve { source } => source.clone(),
            Mode::Dev { source, .. } => Some(source.clone()),
        };
        let live = Arc::new(Live {
            source,
            engine,
            backends: backends.clone(),
            app: app.clone(),
            initial: config.clone(),
            listen_override,
            read_config,
            progress,
            triggers: tokio::sync::Mutex::new(None),
            reloading: tokio::sync::Mutex::new(()),
        });

        // The admin listener comes first, so /readyz answers (503) while
        // the workers load.
        let mut admin_addr = None;
        if let Some(addr) = config.server.admin {
            let reloader: Reloader = {
                let live = live.clone();
                Arc::new(move || {
                    let live = live.clone();
                    Box::pin(async move { live.reload_logged("POST /reload").await })
                })
            };
            let admin = Admin::bind(
                addr,
                AdminOptions {
                    app: app.clone(),
                    token: config
                        .server
                        .admin_token
                        .as_ref()
                        .map(|t| t.expose().to_owned()),
                    reloader: live.source.is_some().then_some(reloader),
                    queues: Some(backends.queues.clone()),
                    profiles: ProfileStore::new(&config.server.state_dir),
                },
            )
            .await
            .with_context(|| format!("cannot start the admin listener on {addr}"))?;
            admin_addr = Some(admin.local_addr()?);
            tokio::spawn(admin.run());
        }

        // The internal listener of a cluster node: events of the objects
        // this node owns, forwarded by the others (503 until the workers
        // are loaded).
        let mut cluster_addr = None;
        if let (Some(cluster), Some(placement)) = (&config.cluster, &placement) {
            let listener = ClusterListener::bind(cluster.listen, app.clone(), placement.clone())
                .await
                .with_context(|| {
                    format!("cannot start the internal listener on {}", cluster.listen)
                })?;
            cluster_addr = Some(listener.local_addr()?);
            tracing::info!(listen = %cluster.listen, advertise = %cluster.advertise,
                "a node of a cluster: Durable Objects run where their lease is held");
            tokio::spawn(listener.run());
        }

        if let Mode::Serve { .. } = mode {
            let message = live.install(config.clone()).await?;
            tracing::info!("{message}");
        }
        let server = Server::bind(config.server.listen, app.clone())
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let addr = server.local_addr()?;
        // The first line on stdout, which scripts and tests wait for.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{addr}")?;
        if let Some(admin) = admin_addr {
            writeln!(stdout, "admin listening on http://{admin}")?;
        }
        if let Some(cluster) = cluster_addr {
            writeln!(stdout, "cluster listening on http://{cluster}")?;
        }
        stdout.flush()?;
        drop(stdout);

        {
            let live = live.clone();
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    let _ = live.reload_logged("SIGHUP").await;
                }
            });
        }
        let dev = match mode {
            Mode::Dev { watch, .. } => Some(tokio::spawn(watch(LiveHandle(live.clone())))),
            Mode::Serve { .. } => None,
        };
        server
            .run(async {
                shutdown.await;
                if let Some(dev) = &dev {
                    dev.abort();
                }
                // No new firings or batches once shutdown starts.
                if let Some(mut triggers) = live.triggers.lock().await.take() {
                    triggers.stop();
                }
            })
            .await?;
        // Its requests done, a cluster node lets its objects go at once.
        if let Some(placement) = &placement {
            placement.release_all().await;
        }
        Ok(())
    })
}

/// What `isola dev` needs of the running server.
#[derive(Clone)]
pub struct LiveHandle(Arc<Live>);

impl LiveHandle {
    /// Install an already read config (after a build); logs the outcome.
    pub async fn install(&self, mut config: Config, why: &str) -> bool {
        self.0.keep_overrides(&mut config);
        let outcome = self.0.install(config).await;
        self.0.app.telemetry().record_reload(outcome.is_ok());
        match outcome {
            Ok(message) => {
                tracing::info!("{why}: {message}");
                true
            }
            Err(e) => {
                let serving = self.0.app.current().map_or(0, |g| g.id);
                tracing::error!("{why}: not loaded, still serving generation {serving}: {e:#}");
                false
            }
        }
    }
}
