//! `isola dev`: build the workers, serve them exactly as `serve` does (fresh
//! instance per request, the same limits), watch the sources and the config,
//! rebuild and swap on change. A failed build or a broken config prints the
//! error and keeps the last good version serving.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use isola_config::Config;
use isola_server::LiveHandle;
use isola_server::lifecycle::Watch;
use notify_debouncer_mini::notify::event::{AccessKind, AccessMode};
use notify_debouncer_mini::notify::{self, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::config::load_config;
use crate::js;

/// Wait for a quiet moment: editors and build tools write in bursts (one
/// save is a truncate, writes and a close, or a new file and a rename, all
/// within a few milliseconds). Short, as it adds to every reload (a JS
/// edit is served in about a second, bench/dev-reload).
const DEBOUNCE: Duration = Duration::from_millis(100);

/// What to watch for one config, and what a change means.
#[derive(Default)]
struct WatchPlan {
    config: PathBuf,
    /// Per worker with a build: (worker, canonical workdir, its patterns).
    builds: Vec<(String, PathBuf, GlobSet)>,
    /// Components of workers without a build command.
    components: BTreeSet<PathBuf>,
    /// (path, recursive)
    roots: BTreeSet<(PathBuf, bool)>,
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_owned())
}

impl WatchPlan {
    fn new(source: &Path, config: Option<&Config>) -> anyhow::Result<WatchPlan> {
        let source = canonical(source);
        let mut plan = WatchPlan {
            roots: BTreeSet::from([(source.parent().unwrap_or(Path::new("/")).to_owned(), false)]),
            config: source,
            ..WatchPlan::default()
        };
        for worker in config.map_or(&[][..], |c| &c.workers) {
            match &worker.build {
                Some(build) => {
                    let workdir = canonical(&build.workdir);
                    let mut globs = GlobSetBuilder::new();
                    for pattern in &build.watch {
                        globs.add(Glob::new(pattern).map_err(|e| {
                            anyhow::anyhow!(
                                "worker `{}`: build.watch `{pattern}`: {e}",
                                worker.name
                            )
                        })?);
                    }
                    if !build.watch.is_empty() {
                        plan.roots.insert((workdir.clone(), true));
                    }
                    plan.builds
                        .push((worker.name.clone(), workdir, globs.build()?));
                }
                None => {
                    let component = canonical(&worker.component);
                    if let Some(dir) = component.parent() {
                        plan.roots.insert((dir.to_owned(), false));
                    }
                    plan.components.insert(component);
                }
            }
        }
        Ok(plan)
    }

    /// What `changed` asks for: `None` when nothing watched changed, else
    /// whether the config changed and which workers to rebuild.
    fn classify(&self, changed: &BTreeSet<PathBuf>) -> Option<(bool, BTreeSet<String>)> {
        let mut config = false;
        let mut rebuild = BTreeSet::new();
        let mut component = false;
        for path in changed {
            if *path == self.config {
                config = true;
            }
            if self.components.contains(path) {
                component = true;
            }
            for (name, workdir, globs) in &self.builds {
                if let Ok(relative) = path.strip_prefix(workdir)
                    && globs.is_match(relative)
                {
                    rebuild.insert(name.clone());
                }
            }
        }
        (config || component || !rebuild.is_empty()).then_some((config, rebuild))
    }
}

/// Keep the watcher's roots equal to the plan's.
fn rewatch(
    watcher: &mut RecommendedWatcher,
    watched: &mut BTreeSet<(PathBuf, bool)>,
    plan: &WatchPlan,
) {
    for (path, _) in watched.difference(&plan.roots) {
        let _ = watcher.unwatch(path);
    }
    for (path, recursive) in plan.roots.difference(watched) {
        let mode = if *recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        if let Err(e) = watcher.watch(path, mode) {
            tracing::warn!("cannot watch {}: {e}", display_path(path));
        }
    }
    watched.clone_from(&plan.roots);
}

/// Run the build command of each worker in `which` (all when `None`).
/// Prints the output of a failed build; returns whether all succeeded.
fn build(config: &Config, which: Option<&BTreeSet<String>>) -> bool {
    let mut ok = true;
    for worker in &config.workers {
        let Some((build, command)) = worker
            .build
            .as_ref()
            .and_then(|b| Some((b, b.command.as_ref()?)))
        else {
            continue;
        };
        if which.is_some_and(|w| !w.contains(&worker.name)) {
            continue;
        }
        let spinner = if std::io::stderr().is_terminal() {
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.enable_steady_tick(std::time::Duration::from_millis(100));
            spinner.set_message(format!("building {}: {}", worker.name, command));
            spinner
        } else {
            indicatif::ProgressBar::hidden()
        };
        tracing::info!(worker = %worker.name, "building: {}", command);
        let started = std::time::Instant::now();
        let mut shell = Command::new("sh");
        without_secrets(&mut shell);
        let output = shell
            .arg("-c")
            .arg(command)
            .current_dir(&build.workdir)
            .stdin(Stdio::null())
            .output();
        spinner.finish_and_clear();
        match output {
            Ok(output) if output.status.success() => {
                tracing::info!(worker = %worker.name, "built in {:.1} s", started.elapsed().as_secs_f64());
            }
            Ok(output) => {
                ok = false;
                eprintln!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
                tracing::error!(worker = %worker.name,
                    "build failed ({}); still serving the last good version", output.status);
            }
            Err(e) => {
                ok = false;
                tracing::error!(worker = %worker.name,
                    "cannot run the build command in {}: {e}; still serving the last good version",
                    display_path(&build.workdir));
            }
        }
    }
    ok
}

/// What `isola dev` runs beside the server: [`run`] on `source`.
pub fn watch(source: PathBuf) -> Watch {
    Box::new(move |live| Box::pin(run(live, source)))
}

/// Whether a file-system event can mean new contents. Opening, reading
/// and closing a file unwritten are not changes: the builds themselves
/// read the config and the sources, and counting those reads ran every
/// build again after itself.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Read the config and build its JavaScript workers (what
/// [`load_config`] does), telling a config error from a failed JS build.
fn load(source: &Path) -> anyhow::Result<(Config, anyhow::Result<()>)> {
    let config = Config::load(source)?;
    let built = js::build_workers(&config);
    Ok((config, built))
}

/// Wait for the next change that matters to `plan`, then for the burst it
/// belongs to to end (no change that matters for [`DEBOUNCE`]): everything
/// that arrived meanwhile, during the last build too, is one change.
/// `None` when the watcher is gone.
async fn next_change(
    changes: &mut tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
    plan: &WatchPlan,
) -> Option<(BTreeSet<PathBuf>, bool, BTreeSet<String>)> {
    let matters = |path: &PathBuf| plan.classify(&BTreeSet::from([path.clone()])).is_some();
    let first = loop {
        let path = changes.recv().await?;
        if matters(&path) {
            break path;
        }
    };
    let mut changed = BTreeSet::from([first]);
    let mut quiet_at = tokio::time::Instant::now() + DEBOUNCE;
    loop {
        match tokio::time::timeout_at(quiet_at, changes.recv()).await {
            Ok(Some(path)) => {
                if matters(&path) {
                    changed.insert(path);
                    quiet_at = tokio::time::Instant::now() + DEBOUNCE;
                }
            }
            Ok(None) => return None,
            Err(_quiet) => break,
        }
    }
    let (config, workers) = plan.classify(&changed)?;
    Some((changed, config, workers))
}

/// Build, install, then rebuild and reinstall on every relevant change:
/// one build per burst of events, and one more when files changed while
/// it ran.
async fn run(live: LiveHandle, source: PathBuf) {
    let (sender, mut changes) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let watcher =
        notify::recommended_watcher(move |result: notify::Result<notify::Event>| match result {
            Ok(event) if is_change(&event.kind) => {
                for path in event.paths {
                    let _ = sender.send(path);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("file watching: {e}"),
        });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("cannot watch files: {e}; building once, without reloading");
            if let Ok(config) = load_config(&source)
                && build(&config, None)
            {
                live.install(config, "built").await;
            }
            return;
        }
    };
    let mut watched = BTreeSet::new();
    // `None`: build everything.
    let mut rebuild: Option<BTreeSet<String>> = None;
    loop {
        let loaded = {
            let source = source.clone();
            tokio::task::spawn_blocking(move || load(&source))
                .await
                .expect("reading the config panicked")
        };
        let plan = match loaded {
            Ok((config, js_built)) => {
                let plan = WatchPlan::new(&source, Some(&config));
                let js_ok = match js_built {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!("build failed: {e:#}; still serving the last good version");
                        false
                    }
                };
                let which = rebuild.take();
                let config_for_build = config.clone();
                let built =
                    tokio::task::spawn_blocking(move || build(&config_for_build, which.as_ref()))
                        .await
                        .expect("building panicked");
                if js_ok && built {
                    live.install(config, "dev").await;
                }
                match plan {
                    Ok(plan) => plan,
                    Err(e) => {
                        tracing::error!("{e:#}");
                        WatchPlan::new(&source, None).expect("a plan without workers")
                    }
                }
            }
            Err(e) => {
                tracing::error!("{e:#}; still serving the last good version");
                WatchPlan::new(&source, None).expect("a plan without workers")
            }
        };
        rewatch(&mut watcher, &mut watched, &plan);
        tracing::info!("watching for changes");
        // Until something that matters changes.
        let Some((changed, config_changed, workers)) = next_change(&mut changes, &plan).await
        else {
            return;
        };
        // A broken config watched nothing but itself: rebuild all once it
        // is readable again.
        rebuild = (!config_changed && !plan.builds.is_empty()).then_some(workers);
        let names: Vec<String> = changed.iter().map(|p| display_path(p)).collect();
        tracing::info!("changed: {}", names.join(", "));
    }
}

/// A build command compiles the worker's sources (a Rust build runs their
/// `build.rs` and macros), so it never gets the secrets Isola was given:
/// `ISOLA_SECRET_*`, the admin token, AWS credentials. It keeps the rest,
/// which toolchains need (`PATH`, `HOME`, `CARGO_*`, ...).
fn without_secrets(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let Some(text) = name.to_str() else { continue };
        if text.starts_with("ISOLA_SECRET_")
            || text == "ISOLA_ADMIN_TOKEN"
            || text.starts_with("AWS_")
        {
            command.env_remove(&name);
        }
    }
}

/// `path` relative to the current directory when it is inside it.
fn display_path(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_owned())
        .display()
        .to_string()
}
