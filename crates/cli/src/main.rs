//! `isola`: run, serve, compile and check wasm workers; inspect and seed
//! their state.

mod js;
mod state;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use isola_config::{Config, ServerConfig};
use isola_engine::{EngineOptions, IsolaEngine};
use isola_server::{App, Backends, Server};

#[derive(Parser)]
#[command(name = "isola", version, about = "A WebAssembly worker host")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one component on every path.
    Run {
        component: PathBuf,
        #[arg(long, default_value = isola_config::DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Compile cache and embedded state.
        #[arg(long, default_value = isola_config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Build a JavaScript worker (`export default { fetch, ... }`) into a
    /// component, with componentize-js (installed from npm on first use).
    Build {
        /// The worker's entry module; relative imports are bundled.
        #[arg(required_unless_present = "setup")]
        main: Option<PathBuf>,
        /// Where to write the component (default: the module's name with
        /// `.wasm`, in the current directory).
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// Only install the JavaScript toolchain (for CI and images).
        #[arg(long, conflicts_with_all = ["main", "out"])]
        setup: bool,
    },
    /// Serve the workers of a config file.
    Serve {
        #[arg(default_value = "isola.toml")]
        config: PathBuf,
        /// Overrides `[server] listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Compile components into the cache ahead of serving.
    Compile {
        /// Components (.wasm) or config files (.toml).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Cache location for components given directly.
        #[arg(long, default_value = isola_config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Validate a config file (or a component) without serving.
    Check {
        #[arg(default_value = "isola.toml")]
        input: PathBuf,
        #[arg(long, default_value = isola_config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Read and write KV namespaces (by `id` or binding name).
    Kv {
        #[arg(long, default_value = "isola.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: state::KvCommand,
    },
    /// Run SQL against a D1 database (by `database_name` or binding name).
    Sql {
        #[arg(long, default_value = "isola.toml")]
        config: PathBuf,
        database: String,
        /// One statement; its rows are printed as JSON lines.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        sql: Option<String>,
        /// Run the `;`-separated statements of a file (migrations).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Fire a worker's handler once, in this process, with the worker's
    /// bindings and limits.
    Trigger {
        #[arg(long, default_value = "isola.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: TriggerCommand,
    },
    /// Query the analytics datasets written by workers.
    Analytics {
        #[arg(long, default_value = "isola.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: state::AnalyticsCommand,
    },
}

#[derive(Subcommand)]
enum TriggerCommand {
    /// Run the `scheduled` handler as if `--cron` (default: the worker's
    /// first `triggers.crons` entry) fired now.
    Cron {
        worker: String,
        #[arg(long)]
        cron: Option<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ISOLA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            component,
            listen,
            state_dir,
        } => {
            if !component.is_file() {
                bail!("{}: component file not found", component.display());
            }
            let server = ServerConfig {
                listen,
                state_dir,
                ..ServerConfig::default()
            };
            serve(Config::single(component, server))
        }
        Command::Build { main, out, setup } => build(main, out, setup),
        Command::Serve { config, listen } => {
            let mut config = load_config(&config)?;
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            serve(config)
        }
        Command::Compile { inputs, state_dir } => compile(&inputs, &state_dir),
        Command::Check { input, state_dir } => check(&input, &state_dir),
        Command::Kv { config, command } => state::kv(&Config::load(&config)?, command),
        Command::Sql {
            config,
            database,
            sql,
            file,
        } => state::sql(&Config::load(&config)?, &database, sql, file),
        Command::Trigger {
            config,
            command: TriggerCommand::Cron { worker, cron },
        } => trigger_cron(&load_config(&config)?, &worker, cron),
        Command::Analytics { config, command } => {
            state::analytics(&Config::load(&config)?, command)
        }
    }
}

/// Read a config file for serving: parse and validate it, then build its
/// JavaScript workers (`main = "….js"`) into components.
fn load_config(path: &Path) -> Result<Config> {
    let config = Config::load(path)?;
    js::build_workers(&config)?;
    Ok(config)
}

fn build(main: Option<PathBuf>, out: Option<PathBuf>, setup: bool) -> Result<()> {
    if setup {
        let dir = js::setup()?;
        println!("JavaScript toolchain ready in {}", dir.display());
        return Ok(());
    }
    let main = main.expect("clap requires `main` without --setup");
    let out = out.unwrap_or_else(|| {
        let stem = main.file_stem().unwrap_or(main.as_os_str());
        PathBuf::from(stem).with_extension("wasm")
    });
    let built = js::build(&main, &out)?;
    let size = std::fs::metadata(&built.component)
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "{}: {} ({:.1} MB{})",
        main.display(),
        built.component.display(),
        size as f64 / 1e6,
        match (built.cached, &built.world) {
            (true, _) => ", cached".to_owned(),
            (false, Some(world)) => format!(", world {world}"),
            (false, None) => String::new(),
        }
    );
    Ok(())
}

/// The state behind the workers' bindings.
/// The backends `[backends]` names, connected and checked (an unreachable
/// server stops start-up with its URL, credentials redacted). Connections
/// live on the bindings' own background runtime, so this works before any
/// runtime of ours exists.
fn backends_for(config: &Config) -> Result<Backends> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(Backends::connect(
            &config.backends,
            &config.server.state_dir,
        ))
        .with_context(|| {
            if config.backends.is_distributed() {
                format!("{}: cannot start the backends", config.source.display())
            } else {
                format!(
                    "cannot open the state in {}",
                    config.server.state_dir.display()
                )
            }
        })
}

fn engine_for(config: &Config) -> Result<IsolaEngine> {
    let mut options = EngineOptions::new(config.server.cache_dir());
    options.max_instances = config.server.max_instances;
    let largest = config
        .workers
        .iter()
        .map(|w| w.limits.memory_mb)
        .max()
        .unwrap_or(128);
    options.max_memory_bytes = usize::try_from(largest << 20).context("memory_mb too large")?;
    Ok(IsolaEngine::new(&options)?)
}

fn serve(config: Config) -> Result<()> {
    let engine = engine_for(&config)?;
    let backends = backends_for(&config)?;
    let workers = isola_server::load_workers(&engine, &config.workers, &backends)?;
    let app = App::new(workers.clone(), &config.workers, &config.server);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = isola_server::shutdown_signal()?;
        let server = Server::bind(config.server.listen, app)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let addr = server.local_addr()?;
        let mut admin_addr_bound = None;
        if let Some(admin_addr) = config.server.admin {
            let schedulable = workers
                .iter()
                .zip(&config.workers)
                .map(|(worker, c)| isola_server::admin::Schedulable {
                    worker: worker.clone(),
                    crons: c.crons.iter().map(|c| c.expression.clone()).collect(),
                })
                .collect();
            let token = config
                .server
                .admin_token
                .as_ref()
                .map(|t| t.expose().to_owned());
            let admin = isola_server::admin::Admin::bind(admin_addr, schedulable, token)
                .await
                .with_context(|| format!("cannot listen on {admin_addr} (admin)"))?;
            admin_addr_bound = Some(admin.local_addr()?);
            tokio::spawn(admin.run());
        }
        let mut triggers = isola_server::Triggers::start(
            &workers,
            &config.workers,
            backends.queues.clone(),
            backends.leases.clone(),
            &config.server.state_dir,
        )
        .await;
        // The first line on stdout, which scripts and tests wait for.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{addr}")?;
        if let Some(admin) = admin_addr_bound {
            writeln!(stdout, "admin listening on http://{admin}")?;
        }
        stdout.flush()?;
        drop(stdout);
        server
            .run(async {
                shutdown.await;
                // No new firings or batches once shutdown starts.
                triggers.stop();
            })
            .await?;
        Ok(())
    })
}

fn trigger_cron(config: &Config, name: &str, cron: Option<String>) -> Result<()> {
    let Some(worker_config) = config.workers.iter().find(|w| w.name == name) else {
        bail!("{}: no worker is named `{name}`", config.source.display());
    };
    let cron = cron
        .or_else(|| worker_config.crons.first().map(|c| c.expression.clone()))
        .with_context(|| format!("worker `{name}` has no triggers.crons; give --cron"))?;
    let engine = engine_for(config)?;
    let backends = backends_for(config)?;
    let worker =
        isola_server::load_workers(&engine, std::slice::from_ref(worker_config), &backends)?
            .remove(0);
    if !worker.handles_scheduled() {
        bail!("worker `{name}` does not export a scheduled handler");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    runtime
        .block_on(isola_server::triggers::fire(&worker, &cron, now_ms))
        .map_err(|e| anyhow::anyhow!("the scheduled handler failed: {e}"))?;
    println!("{name}: scheduled `{cron}` ok");
    Ok(())
}

/// Configs named on the command line: a `.toml` is read as a config file,
/// anything else is taken as a component.
fn configs_for(inputs: &[PathBuf], state_dir: &Path) -> Result<Vec<Config>> {
    inputs
        .iter()
        .map(|input| {
            if input.extension().is_some_and(|e| e == "toml") {
                load_config(input)
            } else if input.is_file() {
                let server = ServerConfig {
                    state_dir: state_dir.to_owned(),
                    ..ServerConfig::default()
                };
                Ok(Config::single(input.clone(), server))
            } else {
                bail!("{}: file not found", input.display())
            }
        })
        .collect()
}

fn compile(inputs: &[PathBuf], state_dir: &Path) -> Result<()> {
    for config in configs_for(inputs, state_dir)? {
        let engine = engine_for(&config)?;
        let progress = if config.workers.len() > 1 && std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(config.workers.len() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        std::thread::scope(|scope| -> Result<()> {
            let handles: Vec<_> = config
                .workers
                .iter()
                .map(|worker| {
                    let (engine, progress) = (&engine, &progress);
                    scope.spawn(move || {
                        let loaded = engine.load_component(&worker.component);
                        progress.inc(1);
                        loaded
                    })
                })
                .collect();
            for (handle, worker) in handles.into_iter().zip(&config.workers) {
                let loaded = handle.join().expect("compile thread panicked")?;
                progress.suspend(|| {
                    println!(
                        "{}: {} ({:?})",
                        worker.name,
                        engine.cache().entry_path_for(&loaded.digest).display(),
                        loaded.outcome
                    )
                });
            }
            Ok(())
        })?;
        progress.finish_and_clear();
    }
    Ok(())
}

fn check(input: &Path, state_dir: &Path) -> Result<()> {
    for config in configs_for(std::slice::from_ref(&input.to_owned()), state_dir)? {
        let engine = engine_for(&config)?;
        isola_server::load_workers(&engine, &config.workers, &backends_for(&config)?)?;
        println!(
            "{}: ok ({} worker{})",
            config.source.display(),
            config.workers.len(),
            if config.workers.len() == 1 { "" } else { "s" }
        );
    }
    Ok(())
}
