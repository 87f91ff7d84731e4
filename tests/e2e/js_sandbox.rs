//! A worker's code runs only inside wasm: building a JavaScript worker
//! (`isola build`, `serve` and `dev` with `main = "…"`) must not run its
//! module on the host. `tests/js/hostile.js` tries, at its top level, to
//! write files, spawn a process, read the host's secrets and `/etc/passwd`,
//! and call out over HTTP; every attempt must fail (the build still
//! succeeds: the code simply cannot reach the host), no file may appear and
//! no secret may reach the component or the log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support::{Server, client, isola, stderr_of};

const SECRET: &str = "hunter2-a3f9c1";
const CLOUD_SECRET: &str = "wJalrXUtnFEMI-K7MDENG";

/// The host environment of every `isola` these tests start: a secret for
/// the worker and a cloud credential that nothing should ever see.
fn secret_env() -> [(&'static str, &'static str); 2] {
    [
        ("ISOLA_SECRET_DB_PASSWORD", SECRET),
        ("AWS_SECRET_ACCESS_KEY", CLOUD_SECRET),
    ]
}

/// Counts the connections a loopback listener accepts: where the worker's
/// top level would send what it found.
struct Exfil {
    url: String,
    connections: Arc<AtomicUsize>,
}

impl Exfil {
    async fn listen() -> Exfil {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        Exfil { url, connections }
    }
}

/// `tests/js/hostile.js` written into `dir` with its markers filled in;
/// a fresh nonce makes it a new build.
fn hostile_module(dir: &Path, exfil: &Exfil, nonce: &str) -> PathBuf {
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/js/hostile.js"),
    )
    .unwrap();
    let marker = dir.join("pwned").display().to_string();
    let module = template
        .replace("MARKER", &marker)
        .replace("EXFIL", &exfil.url)
        .replace("NONCE", nonce);
    let path = dir.join("hostile.js");
    std::fs::write(&path, module).unwrap();
    path
}

fn nonce(name: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{now}-{}", std::process::id())
}

/// Nothing the module tried reached the host: no marker file, and the
/// secrets are neither in `component` nor in `logs`.
fn assert_nothing_escaped(dir: &Path, component: &Path, logs: &str) {
    let markers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("pwned"))
        .collect();
    assert!(
        markers.is_empty(),
        "the worker's code wrote {markers:?} on the host"
    );
    let bytes = std::fs::read(component).unwrap();
    for secret in [SECRET, CLOUD_SECRET] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} is in the built component"
        );
        assert!(!logs.contains(secret), "{secret} is in the log:\n{logs}");
    }
}

/// What the worker's top level saw at build time, as it answers it (and
/// what the same attempts see at run time): every attempt refused, none of
/// the host's secrets or files among them. Returns the answer.
async fn assert_build_saw_nothing(server: &Server, nonce: &str) -> serde_json::Value {
    // `dev` answers 503 until its first build is loaded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let response = loop {
        let response = client().get(server.url("/")).send().await.unwrap();
        if response.status() != 503 || std::time::Instant::now() > deadline {
            break response;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(response.status(), 200, "{}", server.logs());
    let report: serde_json::Value = response.json().await.unwrap();
    assert_eq!(report["nonce"], nonce, "{report}");
    for phase in ["atBuild", "atRequest"] {
        for attempt in ["write", "spawn", "secrets", "passwd", "require"] {
            let seen = report[phase][attempt].as_str().unwrap_or_default();
            assert!(
                seen.starts_with("refused: "),
                "{phase}.{attempt} was not refused: {}",
                report[phase][attempt]
            );
        }
    }
    // A fetch is refused (synchronously, or by a rejected promise); the
    // listener that counts connections has the last word.
    for phase in ["atBuild", "atRequest"] {
        assert_ne!(report[phase]["fetched"], "reached", "{report}");
    }
    let text = report.to_string();
    assert!(
        !text.contains(SECRET) && !text.contains(CLOUD_SECRET),
        "{text}"
    );
    assert!(!text.contains("root:"), "/etc/passwd leaked: {text}");
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn isola_build_never_runs_the_module_on_the_host() {
    let exfil = Exfil::listen().await;
    let dir = tempfile::tempdir().unwrap();
    let nonce = nonce("build");
    let module = hostile_module(dir.path(), &exfil, &nonce);
    let component = dir.path().join("hostile.wasm");
    let output = isola()
        .current_dir(dir.path())
        .envs(secret_env())
        .args(["build", "hostile.js", "-o", "hostile.wasm"])
        .output()
        .unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr_of(&output)
    );
    assert!(output.status.success(), "{}", logs);
    assert!(module.is_file());
    assert_nothing_escaped(dir.path(), &component, &logs);

    // Served with the compile cache the JS tests share.
    std::fs::write(
        dir.path().join("isola.toml"),
        format!(
            "[server]\ncache_dir = {:?}\n\n[[worker]]\nname = \"hostile\"\ncomponent = \"hostile.wasm\"\n",
            crate::js::shared_cache().display().to_string()
        ),
    )
    .unwrap();
    let server = Server::start_in(
        dir.path(),
        &["serve", "isola.toml", "--listen", "127.0.0.1:0"],
        &secret_env(),
    );
    assert_build_saw_nothing(&server, &nonce).await;
    assert_nothing_escaped(dir.path(), &component, &server.logs());
    assert_eq!(exfil.connections.load(Ordering::SeqCst), 0);
}

/// `serve` (`dev` when `dev`) of a config whose worker is the hostile
/// module, with a secret the worker may read at run time only.
async fn served_by(command: &str) {
    let exfil = Exfil::listen().await;
    let dir = tempfile::tempdir().unwrap();
    let nonce = nonce(command);
    hostile_module(dir.path(), &exfil, &nonce);
    std::fs::write(
        dir.path().join("isola.toml"),
        format!(
            "[server]\ncache_dir = {:?}\n\n[[worker]]\nname = \"hostile\"\nmain = \"hostile.js\"\nsecrets = [\"DB_PASSWORD\"]\n",
            crate::js::shared_cache().display().to_string()
        ),
    )
    .unwrap();
    let server = Server::start_in(
        dir.path(),
        &[command, "isola.toml", "--listen", "127.0.0.1:0"],
        &secret_env(),
    );
    let report = assert_build_saw_nothing(&server, &nonce).await;
    let component = dir.path().join(".isola/build/hostile.wasm");
    assert_nothing_escaped(dir.path(), &component, &server.logs());
    // The worker gets its secret through its binding, at run time only.
    assert_eq!(
        report["env"],
        serde_json::json!(["DB_PASSWORD"]),
        "{report}"
    );
    assert_eq!(exfil.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_builds_a_main_module_without_running_it_on_the_host() {
    served_by("serve").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_builds_a_main_module_without_running_it_on_the_host() {
    served_by("dev").await;
}

/// Which handlers a module defines is asked of the built component: a
/// worker without `scheduled` is refused a cron with a clear error, and one
/// that defines it (the `scheduled` example) is accepted.
#[test]
fn the_component_says_which_handlers_the_module_defines() {
    let example = |name: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../guest-examples/js/{name}/worker.js"))
            .canonicalize()
            .unwrap()
            .display()
            .to_string()
    };
    let config = |name: &str| {
        format!(
            "[server]\ncache_dir = {:?}\n\n[[worker]]\nname = \"cron\"\nmain = {:?}\ntriggers.crons = [\"*/5 * * * *\"]\n",
            crate::js::shared_cache().display().to_string(),
            example(name)
        )
    };
    let project = crate::support::Project::new(&config("hello"));
    let output = crate::support::run_isola(&["check", project.config().to_str().unwrap()]);
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "worker `cron` has `triggers.crons`, but the worker's code defines no `scheduled` handler"
        ),
        "{stderr}"
    );

    let project = crate::support::Project::new(&config("scheduled"));
    let output = crate::support::run_isola(&["check", project.config().to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
}
