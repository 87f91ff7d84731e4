//! `serve`, `run` and `dev`: the listeners, reload (SIGHUP, `POST /reload`)
//! and, for `dev`, building and watching the workers' sources.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use isola_config::{Config, WorkerConfig};
use isola_engine::IsolaEngine;
use isola_server::admin::{Admin, AdminOptions, Reloader};
use isola_server::{App, Backends, Server, Telemetry, Triggers};

use crate::{backends_for, engine_for, load_config};

/// How the server was asked to run.
pub enum Mode {
    /// Workers load before the listeners open; SIGHUP reloads `source`
    /// when there is one.
    Serve { source: Option<PathBuf> },
    /// The listeners open first; workers are built, loaded, and rebuilt on
    /// change.
    Dev { source: PathBuf },
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
    listen_override: Option<std::net::SocketAddr>,
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
            load_workers_with_progress(&live.engine, &workers_config, &live.backends)
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
        // As `engine_for` sizes the pool.
        let largest = |c: &Config| {
            c.workers
                .iter()
                .map(|w| w.limits.memory_mb)
                .max()
                .unwrap_or(128)
        };
        if largest(config) > largest(&self.initial) {
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
        let mut config = tokio::task::spawn_blocking(move || load_config(&source))
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

/// Load every worker; a progress bar on a terminal when there are several.
fn load_workers_with_progress(
    engine: &IsolaEngine,
    configs: &[WorkerConfig],
    backends: &Backends,
) -> Result<Vec<isola_runtime::Worker>> {
    let progress = if configs.len() > 1 && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(configs.len() as u64);
        bar.set_message("loading workers");
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let workers = std::thread::scope(|scope| {
        let handles: Vec<_> = configs
            .iter()
            .map(|config| {
                let progress = &progress;
                scope.spawn(move || {
                    let loaded = isola_runtime::Worker::load(engine, config, backends);
                    progress.inc(1);
                    loaded
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker loading panicked"))
            .collect::<Result<Vec<_>, _>>()
    });
    progress.finish_and_clear();
    Ok(workers?)
}

/// Serve `config` until SIGINT or SIGTERM.
/// `listen_override` is the `--listen` flag, already applied to `config`.
pub fn serve(
    config: Config,
    mode: Mode,
    listen_override: Option<std::net::SocketAddr>,
    telemetry: Arc<Telemetry>,
) -> Result<()> {
    let engine = engine_for(&config)?;
    let backends = backends_for(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = isola_server::shutdown_signal()?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let app = Arc::new(App::empty(&config.server, telemetry));
        let source = match &mode {
            Mode::Serve { source } => source.clone(),
            Mode::Dev { source } => Some(source.clone()),
        };
        let live = Arc::new(Live {
            source,
            engine,
            backends: backends.clone(),
            app: app.clone(),
            initial: config.clone(),
            listen_override,
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
                },
            )
            .await
            .with_context(|| format!("cannot start the admin listener on {addr}"))?;
            admin_addr = Some(admin.local_addr()?);
            tokio::spawn(admin.run());
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
            Mode::Dev { source } => Some(tokio::spawn(crate::dev::run(live_handle(&live), source))),
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
        Ok(())
    })
}

/// What `isola dev` needs of the running server.
#[derive(Clone)]
pub struct LiveHandle(Arc<Live>);

fn live_handle(live: &Arc<Live>) -> LiveHandle {
    LiveHandle(live.clone())
}

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

/// `path` relative to the current directory when it is inside it.
pub fn display_path(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_owned())
        .display()
        .to_string()
}

/// Wait for a quiet moment: the build tools write in bursts.
pub const DEBOUNCE: Duration = Duration::from_millis(300);
