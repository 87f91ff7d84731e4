//! `isola`: run, serve, compile and check wasm workers; inspect and seed
//! their state.

mod admin_client;
mod config;
mod dev;
mod init;
mod js;
mod log_writer;
mod progress;
mod state;
mod types;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use isola_config::{Config, ServerConfig};
use isola_server::{
    Mode, ServeOptions, Telemetry, TelemetryLayer, backends_for, compile_components, engine_for,
    load_workers,
};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{configs_for, load_config, load_config_listening, read_config_listening};

/// mimalloc rather than glibc's malloc: a request allocates and frees
/// hundreds of small objects (wasmtime's resource tables and lowering,
/// hyper, the instance's store), and glibc's spent ~9% of a proxied
/// request's CPU in `malloc`/`free` under `wrk` (bench/RESULTS.md,
/// "Proxying (issue 29): what a proxied request costs beyond a hello").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "isola", version, about = "A WebAssembly worker host")]
struct Cli {
    /// How log lines (stderr) look: `pretty` for people, `json` (one object
    /// per line) for log shippers.
    #[arg(long, global = true, value_enum, default_value = "pretty")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one component, or one JavaScript/TypeScript worker module
    /// (built first, as `isola build` does), on every path.
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
        /// Let one instance serve many requests (for `instance_reuse`, and
        /// for a worker that defines Durable Object classes, whose objects
        /// keep their instance): the shim serves wasi:http itself instead
        /// of the engine's one-shot fetch event, at a higher cost per
        /// request. `serve`, `dev` and `check` choose this from the config.
        #[arg(long, conflicts_with = "setup")]
        instance_reuse: bool,
        /// A compile-time constant, as `define` in isola.toml:
        /// `--define DEBUG=false`, `--define 'MODE="prod"'` (repeatable).
        #[arg(long, value_name = "NAME=EXPRESSION", conflicts_with = "setup")]
        define: Vec<String>,
        /// A module alias, as `alias` in isola.toml: `--alias
        /// some-module=./src/shim.js` (a path is relative to the current
        /// directory) or `--alias old-pkg=new-pkg` (repeatable).
        #[arg(long, value_name = "NAME=TARGET", conflicts_with = "setup")]
        alias: Vec<String>,
        /// A GET request run through the worker's fetch at build time, as
        /// `warm_up` in isola.toml: a path (`--warm-up /api/users/7`) or an
        /// absolute http(s) URL (repeatable, run in order). Requests with
        /// another method, headers or a body are written in isola.toml.
        #[arg(long, value_name = "PATH_OR_URL", conflicts_with = "setup")]
        warm_up: Vec<String>,
    },
    /// Serve the workers of a config file.
    Serve {
        #[arg(default_value = "isola.toml")]
        config: PathBuf,
        /// Overrides `[server] listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Build the workers (`build` commands), serve them as `serve` does,
    /// and rebuild and swap them when their sources or the config change.
    Dev {
        #[arg(default_value = "isola.toml")]
        config: PathBuf,
        /// Overrides `[server] listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Create a worker project.
    Init {
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "rust")]
        template: init::Template,
        /// Which handlers the worker has besides fetch.
        #[arg(long, value_enum, default_value = "fetch")]
        handler: init::Handler,
        /// isola-sdk checkout for Rust projects (default: the one this
        /// isola was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Write a TypeScript declaration of each worker's `env` (`Env`) from
    /// the config, as `wrangler types` does.
    Types {
        #[arg(long, default_value = "isola.toml")]
        config: PathBuf,
        /// Where to write it (`-`: stdout).
        #[arg(short, long, default_value = "worker-configuration.d.ts")]
        out: PathBuf,
        /// The worker whose env is `Env` (default: the only one; with
        /// several, each worker's is `<Name>Env`).
        #[arg(long)]
        worker: Option<String>,
    },
    /// Stream live request and guest log events from a running server's
    /// admin listener.
    Tail {
        #[arg(long, default_value = "isola.toml")]
        config: PathBuf,
        /// The admin listener (default: `[server] admin` of the config).
        #[arg(long)]
        admin: Option<String>,
        /// Bearer token (default: `admin_token` of the config, then
        /// $ISOLA_ADMIN_TOKEN).
        #[arg(long)]
        token: Option<String>,
        /// Only this worker's events.
        #[arg(long)]
        worker: Option<String>,
        /// Only these statuses: a comma-separated list of `404`, `5xx`, `ok`
        /// (below 400), `error` (400 and above).
        #[arg(long)]
        status: Option<String>,
        #[arg(long, value_enum, default_value = "pretty")]
        format: admin_client::Format,
    },
    /// Profile a worker's next requests on a running server and save each
    /// profile (open them at https://profiler.firefox.com).
    Profile {
        #[arg(long, default_value = "isola.toml")]
        config: PathBuf,
        #[arg(long)]
        admin: Option<String>,
        #[arg(long)]
        token: Option<String>,
        /// The worker to profile.
        #[arg(long)]
        worker: String,
        /// Only requests whose path starts with this.
        #[arg(long)]
        path: Option<String>,
        /// How many requests.
        #[arg(short = 'n', long, default_value_t = 1)]
        count: u32,
        /// Milliseconds between samples.
        #[arg(long, default_value_t = 1)]
        interval_ms: u64,
        /// Where to write the profiles.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Give up after this many seconds without all the profiles.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Make a running server re-read its config (as SIGHUP does) and wait
    /// for the outcome.
    Reload {
        #[arg(default_value = "isola.toml")]
        config: PathBuf,
        #[arg(long)]
        admin: Option<String>,
        #[arg(long)]
        token: Option<String>,
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
    let cli = Cli::parse();
    let telemetry = Arc::new(Telemetry::new());
    let filter = tracing_subscriber::EnvFilter::try_from_env("ISOLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, flush_logs) = log_writer::LogWriter::stderr();
    let log = match cli.log_format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
    };
    // Metrics and tail see the request events whatever ISOLA_LOG says.
    let events = tracing_subscriber::filter::Targets::new()
        .with_target("isola::access", tracing::Level::INFO)
        .with_target("isola::guest", tracing::Level::INFO)
        .with_target("isola::trigger", tracing::Level::INFO)
        // A failed request's cause, for its tail event.
        .with_target("isola_runtime", tracing::Level::WARN);
    tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(TelemetryLayer(telemetry.clone()).with_filter(events))
        .init();
    raise_open_files_limit();
    let result = run(cli, telemetry);
    drop(flush_logs);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Lift the soft limit on open files to the hard one, as servers do: a
/// server holds client sockets, outbound connections, and up to 256 open
/// Durable Object databases (three files each), and the usual soft limit
/// of 1024 would be reached well before the machine's.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // `None` is unlimited: then there is nothing to raise (soft) or no
    // finite value to raise it to (hard).
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        let raised = rustix::process::Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!("raising the open-files limit failed: {e}");
        }
    }
}

fn run(cli: Cli, telemetry: Arc<Telemetry>) -> Result<()> {
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
            let mut config = Config::single(component.clone(), server);
            if js::is_worker_module(&component) {
                // As `main = "…"` in a config: built under the state
                // directory, then served.
                let worker = &mut config.workers[0];
                worker.component = config.server.js_build_path(&worker.name);
                worker.main = Some(component);
                js::build_workers(&config)?;
            }
            isola_server::serve(
                config,
                Mode::Serve { source: None },
                serve_options(None, telemetry),
            )
        }
        Command::Build {
            main,
            out,
            setup,
            instance_reuse,
            define,
            alias,
            warm_up,
        } => build(
            main,
            out,
            setup,
            BuildFlags {
                instance_reuse,
                define: &define,
                alias: &alias,
                warm_up: &warm_up,
            },
        ),
        Command::Serve {
            config: path,
            listen,
        } => {
            let config = load_config_listening(&path, listen)?;
            isola_server::serve(
                config,
                Mode::Serve { source: Some(path) },
                serve_options(listen, telemetry),
            )
        }
        Command::Dev {
            config: path,
            listen,
        } => {
            // The watcher's first round builds the workers and installs
            // them; building them here too built every JS worker twice.
            let config = read_config_listening(&path, listen)?;
            let mode = Mode::Dev {
                watch: dev::watch(path.clone()),
                source: path,
            };
            isola_server::serve(config, mode, serve_options(listen, telemetry))
        }
        Command::Init {
            dir,
            template,
            handler,
            sdk,
        } => init::init(&dir, template, handler, sdk),
        Command::Types {
            config,
            out,
            worker,
        } => types::write(&config, &out, worker.as_deref()),
        Command::Tail {
            config,
            admin,
            token,
            worker,
            status,
            format,
        } => admin_client::tail(
            &admin_client::Target::resolve(&config, admin.as_deref(), token)?,
            worker.as_deref(),
            status.as_deref(),
            format,
        ),
        Command::Profile {
            config,
            admin,
            token,
            worker,
            path,
            count,
            interval_ms,
            out,
            timeout,
        } => admin_client::profile(
            &admin_client::Target::resolve(&config, admin.as_deref(), token)?,
            &admin_client::ProfileArgs {
                worker,
                path,
                count,
                interval_ms,
                out,
                timeout: std::time::Duration::from_secs(timeout),
            },
        ),
        Command::Reload {
            config,
            admin,
            token,
        } => admin_client::reload(&admin_client::Target::resolve(
            &config,
            admin.as_deref(),
            token,
        )?),
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

/// What serving needs of the command: `--listen` (kept over reloads), the
/// telemetry the log layer feeds, [`load_config`] for reloads, and a
/// progress bar.
fn serve_options(listen: Option<SocketAddr>, telemetry: Arc<Telemetry>) -> ServeOptions {
    ServeOptions {
        listen_override: listen,
        telemetry,
        read_config: Arc::new(|path: &Path| load_config(path)),
        progress: Arc::new(progress::Bar::new("loading workers")),
    }
}

/// `isola build`'s options for the worker's build.
struct BuildFlags<'a> {
    instance_reuse: bool,
    define: &'a [String],
    alias: &'a [String],
    warm_up: &'a [String],
}

fn build(
    main: Option<PathBuf>,
    out: Option<PathBuf>,
    setup: bool,
    flags: BuildFlags<'_>,
) -> Result<()> {
    let BuildFlags {
        instance_reuse,
        define,
        alias,
        warm_up,
    } = flags;
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
    let mut options = js::BuildOptions {
        instance_reuse,
        ..js::BuildOptions::default()
    };
    let pair = |flag: &str, entry: &str| -> Result<(String, String)> {
        match entry.split_once('=') {
            Some((name, value)) => Ok((name.to_owned(), value.to_owned())),
            None => bail!("--{flag} {entry}: expected NAME=VALUE"),
        }
    };
    for entry in define {
        let (name, expression) = pair("define", entry)?;
        isola_config::js_build::check_define(&name, &expression)
            .map_err(|m| anyhow::anyhow!("--define {entry}: {m}"))?;
        options.bundle.define.insert(name, expression);
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    for entry in alias {
        let (name, target) = pair("alias", entry)?;
        let target = isola_config::js_build::alias_target(&name, &target, &cwd)
            .map_err(|m| anyhow::anyhow!("--alias {entry}: {m}"))?;
        options.bundle.alias.insert(name, target);
    }
    for target in warm_up {
        let request = isola_config::WarmUpRequest::get(target)
            .map_err(|m| anyhow::anyhow!("--warm-up {target}: {m}"))?;
        options.bundle.warm_up.push(request);
    }
    let built = js::build(&main, &out, &options)?;
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

fn trigger_cron(config: &Config, name: &str, cron: Option<String>) -> Result<()> {
    let Some(worker_config) = config.workers.iter().find(|w| w.name == name) else {
        bail!("{}: no worker is named `{name}`", config.source.display());
    };
    let cron = cron
        .or_else(|| worker_config.crons.first().map(|c| c.expression.clone()))
        .with_context(|| format!("worker `{name}` has no triggers.crons; give --cron"))?;
    let engine = engine_for(config)?;
    let backends = backends_for(config)?;
    isola_server::outbound_client_for(config)?;
    let worker =
        load_workers(&engine, std::slice::from_ref(worker_config), &backends, &())?.remove(0);
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

fn compile(inputs: &[PathBuf], state_dir: &Path) -> Result<()> {
    for config in configs_for(inputs, state_dir)? {
        let engine = engine_for(&config)?;
        let progress = progress::Bar::new("compiling");
        let compiled = compile_components(&engine, &config.workers, &progress);
        for (loaded, worker) in compiled.into_iter().zip(&config.workers) {
            let loaded = loaded?;
            println!(
                "{}: {} ({:?})",
                worker.name,
                engine.cache().entry_path_for(&loaded.digest).display(),
                loaded.outcome
            );
        }
    }
    Ok(())
}

fn check(input: &Path, state_dir: &Path) -> Result<()> {
    let configs = match configs_for(std::slice::from_ref(&input.to_owned()), state_dir) {
        Ok(configs) => configs,
        Err(e) => match e.downcast_ref::<isola_config::ConfigErrors>() {
            // As a compiler reports them: one per line, then how many.
            Some(errors) => {
                for error in errors.iter() {
                    eprintln!("{}", error.diagnostic());
                }
                let plural = if errors.len() == 1 { "" } else { "s" };
                bail!("{} error{plural}", errors.len());
            }
            None => return Err(e),
        },
    };
    for config in configs {
        let engine = engine_for(&config)?;
        load_workers(&engine, &config.workers, &backends_for(&config)?, &())?;
        println!(
            "{}: ok ({} worker{})",
            config.source.display(),
            config.workers.len(),
            if config.workers.len() == 1 { "" } else { "s" }
        );
    }
    Ok(())
}
