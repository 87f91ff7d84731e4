//! JavaScript workers: `isola build worker.js`, and the build step `serve`,
//! `dev` and `check` run for workers configured with `main = "….js"`.
//!
//! The heavy lifting is done by npm packages (esbuild bundles,
//! componentize-js compiles to a component) driven by `sdk/js/src/build.mjs`.
//! The SDK shim, the build script, the WIT and the pinned `package.json` +
//! lockfile are compiled into this binary and written under the user's
//! cache on first use, where `npm install` installs the packages: once per
//! lockfile, with the SDK files in a subdirectory named by their hash, so a
//! new `isola` never runs an older shim.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use isola_config::{Config, JsBuild};
use sha2::{Digest, Sha256};

/// The npm packages, pinned: installed once per lockfile.
const NPM_FILES: &[(&str, &str)] = &[
    ("package.json", include_str!("../../../sdk/js/package.json")),
    (
        "package-lock.json",
        include_str!("../../../sdk/js/package-lock.json"),
    ),
];

/// Isola's own part of the toolchain: written beside the packages, in a
/// directory named by its hash, so editing the shim never reinstalls npm
/// packages and two `isola` versions never run each other's shim.
const SDK_FILES: &[(&str, &str)] = &[
    ("src/shim.js", include_str!("../../../sdk/js/src/shim.js")),
    (
        "src/errors.js",
        include_str!("../../../sdk/js/src/errors.js"),
    ),
    ("src/bytes.js", include_str!("../../../sdk/js/src/bytes.js")),
    ("src/kv.js", include_str!("../../../sdk/js/src/kv.js")),
    ("src/d1.js", include_str!("../../../sdk/js/src/d1.js")),
    ("src/r2.js", include_str!("../../../sdk/js/src/r2.js")),
    (
        "src/queues.js",
        include_str!("../../../sdk/js/src/queues.js"),
    ),
    (
        "src/analytics.js",
        include_str!("../../../sdk/js/src/analytics.js"),
    ),
    (
        "src/service.js",
        include_str!("../../../sdk/js/src/service.js"),
    ),
    ("src/env.js", include_str!("../../../sdk/js/src/env.js")),
    (
        "src/glue-realm.js",
        include_str!("../../../sdk/js/src/glue-realm.js"),
    ),
    ("src/clone.js", include_str!("../../../sdk/js/src/clone.js")),
    (
        "src/durable.js",
        include_str!("../../../sdk/js/src/durable.js"),
    ),
    ("src/cache.js", include_str!("../../../sdk/js/src/cache.js")),
    ("src/http.js", include_str!("../../../sdk/js/src/http.js")),
    (
        "src/globals.js",
        include_str!("../../../sdk/js/src/globals.js"),
    ),
    ("src/serve.js", include_str!("../../../sdk/js/src/serve.js")),
    (
        "src/warm-up.js",
        include_str!("../../../sdk/js/src/warm-up.js"),
    ),
    (
        "src/inject.js",
        include_str!("../../../sdk/js/src/inject.js"),
    ),
    (
        "src/cloudflare-workers.js",
        include_str!("../../../sdk/js/src/cloudflare-workers.js"),
    ),
    (
        "src/node-crypto.js",
        include_str!("../../../sdk/js/src/node-crypto.js"),
    ),
    (
        "src/build.mjs",
        include_str!("../../../sdk/js/src/build.mjs"),
    ),
    (
        "src/snapshot.mjs",
        include_str!("../../../sdk/js/src/snapshot.mjs"),
    ),
    ("wit/worker.wit", include_str!("../../../wit/worker.wit")),
    (
        "wit/deps/cli.wit",
        include_str!("../../../wit/deps/cli.wit"),
    ),
    (
        "wit/deps/clocks.wit",
        include_str!("../../../wit/deps/clocks.wit"),
    ),
    (
        "wit/deps/filesystem.wit",
        include_str!("../../../wit/deps/filesystem.wit"),
    ),
    (
        "wit/deps/http.wit",
        include_str!("../../../wit/deps/http.wit"),
    ),
    ("wit/deps/io.wit", include_str!("../../../wit/deps/io.wit")),
    (
        "wit/deps/random.wit",
        include_str!("../../../wit/deps/random.wit"),
    ),
    (
        "wit/deps/sockets.wit",
        include_str!("../../../wit/deps/sockets.wit"),
    ),
];

/// Where Isola keeps what it builds for the user: `$ISOLA_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/isola`, else `~/.cache/isola`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("ISOLA_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("isola");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("isola"),
        None => std::env::temp_dir().join("isola-cache"),
    }
}

/// A short hash naming a set of files.
fn version_of(files: &[(&str, &str)]) -> String {
    let mut hash = Sha256::new();
    for (path, text) in files {
        hash.update(path.as_bytes());
        hash.update([0]);
        hash.update(text.as_bytes());
        hash.update([0]);
    }
    format!("{:x}", hash.finalize())[..16].to_owned()
}

/// Write `files` into a new directory `dir` (through a staging directory,
/// so a half-written one is never used).
fn write_files(dir: &Path, files: &[(&str, &str)], extra: &[(&str, &str)]) -> Result<PathBuf> {
    let staging = dir.with_extension(format!("staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    for (path, text) in files.iter().chain(extra) {
        let target = staging.join(path);
        std::fs::create_dir_all(target.parent().expect("toolchain files are in a directory"))?;
        std::fs::write(&target, text)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    Ok(staging)
}

/// Holds an exclusive lock on a file for as long as it lives: one `npm install`
/// and one componentize-js run at a time per machine (each takes most of
/// the CPU and ~1 GB; a second one waits and then finds the cache filled).
struct Lock(File);

impl Lock {
    fn acquire(path: &Path) -> Result<Lock> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(Lock(file))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// The installed toolchain: `<cache>/js-toolchain/<npm hash>/` holds the
/// npm packages, and its `sdk-<hash>/` the shim, build script and WIT.
/// Installs what is missing. Call with the build lock held.
fn toolchain() -> Result<PathBuf> {
    let packages = cache_root()
        .join("js-toolchain")
        .join(version_of(NPM_FILES));
    if !packages.join("node_modules/.package-lock.json").is_file() {
        install_packages(&packages)?;
    }
    let sdk_version = version_of(SDK_FILES);
    let sdk = packages.join(format!("sdk-{sdk_version}"));
    if !sdk.join("VERSION").is_file() {
        let staging = write_files(&sdk, SDK_FILES, &[("VERSION", &sdk_version)])?;
        let _ = std::fs::remove_dir_all(&sdk);
        std::fs::rename(&staging, &sdk)
            .with_context(|| format!("cannot move the JS SDK into {}", sdk.display()))?;
    }
    Ok(sdk)
}

/// Environment variables the toolchain's processes keep; everything else
/// (`ISOLA_SECRET_*`, cloud credentials, store URLs, `NODE_OPTIONS`) is
/// cleared. A worker's code never runs in these processes (its top level
/// runs inside wasm, in the Wizer snapshot), but they read tenant files,
/// and a secret a process never had cannot leak.
const BUILD_ENV: &[&str] = &["PATH", "TMPDIR"];

/// What `npm install` of the pinned toolchain needs besides: its cache and
/// config under `HOME`, and the way to the registry (proxies, CA files).
const INSTALL_ENV: &[&str] = &[
    "HOME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Clear `command`'s environment but for `keep` (and, with `npm_config`,
/// npm's own `npm_config_*` settings).
fn minimal_env(command: &mut Command, keep: &[&str], npm_config: bool) {
    command.env_clear();
    for (name, value) in std::env::vars_os() {
        let Some(text) = name.to_str() else { continue };
        let npm_setting = npm_config && text.to_ascii_lowercase().starts_with("npm_config_");
        if keep.contains(&text) || npm_setting {
            command.env(&name, value);
        }
    }
}

fn install_packages(dir: &Path) -> Result<()> {
    require_tool("node")?;
    require_tool("npm")?;
    eprintln!(
        "installing the JavaScript toolchain (componentize-js, esbuild) into {}",
        dir.display()
    );
    let staging = write_files(dir, NPM_FILES, &[])?;
    let mut npm = Command::new("npm");
    minimal_env(&mut npm, &[BUILD_ENV, INSTALL_ENV].concat(), true);
    let status = npm
        // `npm ci` refuses lockfiles that list platform-specific optional
        // packages for other platforms (npm 11); `install` honours the
        // lockfile all the same.
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&staging)
        .status()
        .context("cannot run npm")?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        bail!(
            "`npm install` failed ({status}) installing the JavaScript toolchain; is the npm registry reachable?"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staging, dir)
        .with_context(|| format!("cannot move the toolchain into {}", dir.display()))
}

fn require_tool(tool: &str) -> Result<()> {
    match Command::new(tool).arg("--version").output() {
        Ok(output) if output.status.success() => Ok(()),
        _ => bail!(
            "building JavaScript workers needs Node.js (18 or newer) and npm on PATH: `{tool} --version` did not run"
        ),
    }
}

fn build_lock() -> Result<Lock> {
    let base = cache_root().join("js-toolchain");
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    Lock::acquire(&base.join(".lock"))
}

/// Install the toolchain now (for CI and container images).
pub fn setup() -> Result<PathBuf> {
    let _lock = build_lock()?;
    toolchain()
}

/// What [`build`] made.
#[derive(Debug)]
pub struct Built {
    pub component: PathBuf,
    /// Taken from the build cache: the bundle had been built before.
    pub cached: bool,
    /// Exported handlers' world, when it was built now.
    pub world: Option<String>,
}

/// How [`build`] builds a worker.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// A component whose instance can serve many requests
    /// (`instance_reuse`).
    pub instance_reuse: bool,
    /// The worker's `alias`, `define`, `rules` and `warm_up`.
    pub bundle: JsBuild,
}

impl BuildOptions {
    /// What `build.mjs --options` reads. The bundle carries the effect of
    /// `alias`, `define` and `rules`, so the build cache (keyed by the
    /// bundle) tells apart two workers that differ only in them; the
    /// warm-up requests are part of the key themselves.
    fn to_json(&self) -> Result<String> {
        let root = if self.bundle.root.as_os_str().is_empty() {
            std::env::current_dir().context("cannot read the current directory")?
        } else {
            std::path::absolute(&self.bundle.root)
                .with_context(|| format!("cannot resolve {}", self.bundle.root.display()))?
        };
        let rules: Vec<serde_json::Value> = self
            .bundle
            .rules
            .iter()
            .map(|rule| serde_json::json!({ "type": rule.module_type.as_str(), "globs": rule.globs }))
            .collect();
        let warm_up: Vec<serde_json::Value> = self
            .bundle
            .warm_up
            .iter()
            .map(|request| {
                let mut entry = serde_json::json!({
                    "method": request.method,
                    "url": request.url,
                    "headers": request.headers,
                });
                if let Some(body) = &request.body {
                    entry["body"] = body.clone().into();
                }
                entry
            })
            .collect();
        Ok(serde_json::json!({
            "alias": self.bundle.alias,
            "define": self.bundle.define,
            "rules": rules,
            "root": root,
            "warmUp": warm_up,
        })
        .to_string())
    }
}

/// Build the worker module `main` into the component `out`.
pub fn build(main: &Path, out: &Path, options: &BuildOptions) -> Result<Built> {
    let options_json = options.to_json()?;
    let _lock = build_lock()?;
    let toolchain = toolchain()?;
    let mut command = Command::new("node");
    minimal_env(&mut command, BUILD_ENV, false);
    command
        .arg(toolchain.join("src/build.mjs"))
        .arg("--main")
        .arg(main)
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(cache_root().join("js-builds"))
        .arg("--options")
        .arg(options_json);
    if options.instance_reuse {
        command.arg("--instance-reuse");
    }
    let output = command.output().context("cannot run node")?;
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stderr);
        bail!("{}", message.trim_end());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .with_context(|| format!("unexpected output from the JS build: {stdout}"))?;
    Ok(Built {
        component: out.to_owned(),
        cached: summary["cached"].as_bool().unwrap_or(false),
        world: summary["world"].as_str().map(str::to_owned),
    })
}

/// A JavaScript or TypeScript module (by its extension) that `isola run`
/// builds before serving, rather than a component.
pub fn is_worker_module(path: &Path) -> bool {
    path.extension()
        .and_then(|extension| extension.to_str())
        .is_some_and(|extension| {
            ["js", "mjs", "cjs", "jsx", "ts", "mts", "cts", "tsx"].contains(&extension)
        })
}

/// Build every worker of `config` that has a `main` module into its
/// `component` path.
pub fn build_workers(config: &Config) -> Result<()> {
    for worker in &config.workers {
        let Some(main) = &worker.main else { continue };
        let started = std::time::Instant::now();
        let options = BuildOptions {
            // A Durable Object keeps its instance across its events, which
            // StarlingMonkey's fetch event (one per instance) cannot serve.
            instance_reuse: worker.run.instance_reuse > 1
                || !worker.run.durable_object_classes.is_empty(),
            bundle: worker.js_build.clone(),
        };
        let built = build(main, &worker.component, &options).with_context(|| {
            format!("worker `{}`: cannot build {}", worker.name, main.display())
        })?;
        tracing::info!(
            worker = %worker.name,
            main = %main.display(),
            cached = built.cached,
            ms = started.elapsed().as_millis() as u64,
            "built JavaScript worker"
        );
    }
    Ok(())
}
