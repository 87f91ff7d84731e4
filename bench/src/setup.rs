//! Everything a run uses: the programs (Isola, `wasmtime serve`, workerd,
//! the native hyper server, `wrk`), the guests, the work directory, and
//! how each server is started.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::load::{self, Load, Server};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository root")
}

/// A program from the environment variable `var`, or `default` (a path,
/// or a name looked up in `PATH`); `None` when it is not there.
pub fn tool(var: &str, default: Option<PathBuf>) -> Option<PathBuf> {
    let path = std::env::var_os(var).map(PathBuf::from).or(default)?;
    if path.components().count() > 1 {
        return path.is_file().then_some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(&path))
        .find(|candidate| candidate.is_file())
}

/// The first line `program arg` prints (stdout, then stderr).
pub fn version(program: &Path, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// The extra worker keys that give the JS worker its KV namespace.
pub const JS_KV: &str = "kv_namespaces = [{ binding = \"KV\", id = \"bench\" }]";

/// Everything the run uses.
pub struct Setup {
    pub isola: PathBuf,
    pub native: PathBuf,
    pub wrk: PathBuf,
    pub wasmtime: Option<PathBuf>,
    pub workerd: Option<PathBuf>,
    pub workerd_config: PathBuf,
    pub rust_guest: PathBuf,
    /// The JS worker's source, `bench/workers/worker.js`.
    pub js_main: PathBuf,
    pub js_guest: PathBuf,
    /// The same worker built with `--instance-reuse`.
    pub js_reuse_guest: PathBuf,
    pub work: tempfile::TempDir,
    pub pin: bool,
}

impl Setup {
    /// Find the programs (Isola and the native server beside this
    /// executable unless `ISOLA_BIN` says otherwise) and, when `js_hello`,
    /// build the JS worker, plain and with `--instance-reuse`, into a work
    /// directory (a run of one section that does not use it skips that).
    pub fn prepare(js_hello: bool) -> Setup {
        let repo = repo();
        let release = std::env::current_exe()
            .expect("the bench's own path")
            .parent()
            .expect("its directory")
            .to_owned();
        let isola = tool("ISOLA_BIN", Some(release.join("isola")))
            .expect("isola not found: `cargo build --profile dist -p isola` and set ISOLA_BIN");
        let work = tempfile::tempdir().expect("a work directory");
        let js_main = repo.join("bench/workers/worker.js");
        let js_guest = work.path().join("worker.wasm");
        let js_reuse_guest = work.path().join("worker-reuse.wasm");
        if js_hello {
            eprintln!("building the JS worker…");
            build_js(&isola, &js_main, &js_guest, None, false);
            build_js(&isola, &js_main, &js_reuse_guest, None, true);
        }
        Setup {
            isola,
            native: release.join("native-hello"),
            wrk: tool("WRK_BIN", Some("wrk".into())).expect("wrk not found: apt-get install wrk"),
            wasmtime: tool("WASMTIME_BIN", None),
            workerd: tool("WORKERD_BIN", None),
            workerd_config: repo.join("bench/workerd/config.capnp"),
            rust_guest: PathBuf::from(isola_test_programs::BENCH),
            js_main,
            js_guest,
            js_reuse_guest,
            work,
            pin: load::can_pin(),
        }
    }

    pub fn load(&self, connections: u32, duration: Duration) -> Load<'_> {
        Load {
            wrk: &self.wrk,
            connections,
            duration,
            script: None,
            pin: self.pin,
            sample_pss: false,
        }
    }

    fn log(&self, name: &str) -> PathBuf {
        self.work.path().join(format!("{name}.log"))
    }

    /// The state directory of the Rust side-by-side server; scaling starts
    /// its server on it, with the compile cache warm.
    pub fn rust_state(&self) -> PathBuf {
        self.work.path().join("isola-rust")
    }

    /// The guests Isola serves in the memory and start-up sections: name,
    /// component, extra worker keys.
    pub fn isola_guests(&self) -> [(&'static str, &PathBuf, &'static str); 2] {
        [
            ("Rust", &self.rust_guest, ""),
            ("JS", &self.js_guest, JS_KV),
        ]
    }

    /// `isola serve` of one worker on every path, with `extra` worker keys.
    pub fn isola(&self, name: &str, component: &Path, extra: &str, state: &Path) -> Server {
        self.isola_probing(name, component, extra, state, "/")
    }

    /// [`Setup::isola`] for a worker that answers 200 on `probe` instead of
    /// `/`.
    pub fn isola_probing(
        &self,
        name: &str,
        component: &Path,
        extra: &str,
        state: &Path,
        probe: &str,
    ) -> Server {
        let addr = load::free_addr();
        let config = self.work.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"{addr}\"\nstate_dir = {state:?}\nmax_instances = 2000\n\n\
                 [[worker]]\nname = \"{name}\"\ncomponent = {component:?}\nroutes = [\"/*\"]\n{extra}\n"
            ),
        )
        .expect("writing an isola config");
        let mut command = Command::new(&self.isola);
        command.arg("serve").arg(&config);
        Server::start(command, addr, probe, &self.log(name), self.pin)
    }

    pub fn wasmtime(&self, name: &str, reuse: bool) -> Option<Server> {
        let reuse: &[&str] = if reuse {
            &["--max-instance-reuse-count", "1000000"]
        } else {
            &[]
        };
        self.wasmtime_with(name, reuse)
    }

    /// `wasmtime serve -S cli=y` of the Rust guest with `args` added;
    /// `None` without wasmtime.
    pub fn wasmtime_with(&self, name: &str, args: &[&str]) -> Option<Server> {
        let wasmtime = self.wasmtime.as_ref()?;
        let addr = load::free_addr();
        let mut command = Command::new(wasmtime);
        command
            .args(["serve", "-S", "cli=y", "--addr"])
            .arg(addr.to_string())
            .args(args)
            .arg(&self.rust_guest);
        Some(Server::start(command, addr, "/", &self.log(name), self.pin))
    }

    pub fn workerd(&self) -> Option<Server> {
        self.workerd_with("workerd", &self.workerd_config, &[], "/")
    }

    /// workerd serving `config` (its `http` socket on a free port) with
    /// `args` added, once it answers 200 on `probe`; `None` without workerd.
    pub fn workerd_with(
        &self,
        name: &str,
        config: &Path,
        args: &[&std::ffi::OsStr],
        probe: &str,
    ) -> Option<Server> {
        self.workerd_env(name, config, args, &[], probe)
    }

    /// [`Setup::workerd_with`] with environment variables `env` (for a
    /// config's `fromEnvironment` bindings).
    pub fn workerd_env(
        &self,
        name: &str,
        config: &Path,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
        probe: &str,
    ) -> Option<Server> {
        let workerd = self.workerd.as_ref()?;
        let addr = load::free_addr();
        let mut command = Command::new(workerd);
        command
            .arg("serve")
            .arg(config)
            .arg("--socket-addr")
            .arg(format!("http={addr}"))
            .args(args)
            .envs(env.iter().copied());
        Some(Server::start(
            command,
            addr,
            probe,
            &self.log(name),
            self.pin,
        ))
    }

    pub fn native(&self) -> Server {
        let addr = load::free_addr();
        let mut command = Command::new(&self.native);
        command.arg(addr.to_string());
        Server::start(command, addr, "/", &self.log("native-hello"), self.pin)
    }
}

/// Build the JS worker with `isola build` (`--instance-reuse` when asked);
/// a unique marker makes it a cold build (the build cache cannot answer)
/// and a distinct component.
pub fn build_js(
    isola: &Path,
    main: &Path,
    out: &Path,
    marker: Option<&str>,
    instance_reuse: bool,
) -> Duration {
    try_build_js(isola, main, out, marker, instance_reuse)
        .unwrap_or_else(|e| panic!("isola build failed: {e}"))
}

/// [`build_js`], answering `isola build`'s stderr when it fails.
pub fn try_build_js(
    isola: &Path,
    main: &Path,
    out: &Path,
    marker: Option<&str>,
    instance_reuse: bool,
) -> Result<Duration, String> {
    let source = std::fs::read_to_string(main).expect("reading the JS worker");
    let entry = match marker {
        Some(marker) => {
            let copy = main.with_file_name(format!("bench-{}-{marker}.js", std::process::id()));
            std::fs::write(
                &copy,
                format!("{source}\nglobalThis.__isolaBenchBuild = {marker:?};\n"),
            )
            .expect("writing the marked copy");
            copy
        }
        None => main.to_owned(),
    };
    let started = Instant::now();
    let mut command = Command::new(isola);
    command.arg("build").arg(&entry).arg("-o").arg(out);
    if instance_reuse {
        command.arg("--instance-reuse");
    }
    let output = command.output().expect("running isola build");
    let elapsed = started.elapsed();
    if marker.is_some() {
        let _ = std::fs::remove_file(&entry);
    }
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(elapsed)
}
