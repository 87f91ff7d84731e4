//! `isola init` and `isola dev` with real cargo builds of Rust guests. The
//! projects share the guests' target directory (and lock file), so cargo
//! compiles only the project's own crate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Server, Tail, client, get, isola};

/// The target directory the test guests were built in.
fn guests_target() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        })
        .unwrap_or_else(|| root.join("target"))
        .join("guests")
}

/// Make `project` build into the shared target directory with the guests'
/// dependency versions.
pub(crate) fn share_builds(project: &Path) {
    let target = guests_target();
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&target, project.join("target")).unwrap();
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-programs/guests/Cargo.lock");
    std::fs::copy(lock, project.join("Cargo.lock")).unwrap();
}

/// `isola` for a guest build: no host flags leak into the wasm build.
pub(crate) fn isola_in(dir: &Path) -> Command {
    let mut command = isola();
    command
        .current_dir(dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    command
}

fn init(dir: &Path, args: &[&str]) {
    let output = isola_in(dir.parent().unwrap())
        .arg("init")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("created"), "{stdout}");
    assert!(
        stdout.contains("isola dev"),
        "says what to run next: {stdout}"
    );
}

/// The template's fixed admin port may be taken (by other tests or other
/// servers on the machine): any free port will do.
fn free_admin_port(project: &Path) {
    let config = std::fs::read_to_string(project.join("isola.toml")).unwrap();
    assert!(config.contains("admin = \"127.0.0.1:8788\""), "{config}");
    std::fs::write(
        project.join("isola.toml"),
        config.replace("admin = \"127.0.0.1:8788\"", "admin = \"127.0.0.1:0\""),
    )
    .unwrap();
}

/// What `isola dev` may answer while the build that leads to the expected
/// answer is under way.
#[derive(Clone, Copy, Debug)]
enum Meanwhile<'a> {
    /// Before the first build: 503 `not-ready`.
    NotReady,
    /// The last good version: 200 with this body.
    Serving(&'a str),
}

/// Poll `path` until it answers 200 with `expected`; every answer before
/// that must be what `meanwhile` allows, never an error or a refusal.
async fn wait_for_body(
    server: &Server,
    path: &str,
    expected: &str,
    meanwhile: Meanwhile<'_>,
    within: Duration,
) {
    let client = client();
    let deadline = Instant::now() + within;
    loop {
        let response = client
            .get(server.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}; logs:\n{}", server.logs()));
        let status = response.status().as_u16();
        let reason = response
            .headers()
            .get("x-isola-error")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.text().await.unwrap();
        if status == 200 && body == expected {
            return;
        }
        let allowed = match meanwhile {
            Meanwhile::NotReady => status == 503 && reason.as_deref() == Some("not-ready"),
            Meanwhile::Serving(last) => status == 200 && body == last,
        };
        assert!(
            allowed,
            "waiting for {expected:?} ({meanwhile:?} meanwhile), got {status} {reason:?} {body:?}; logs:\n{}",
            server.logs()
        );
        assert!(
            Instant::now() < deadline,
            "never answered {expected:?}; logs:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `cargo build --release` of a Rust project for wasm32-wasip2, with no
/// host flags leaking into the wasm build.
pub(crate) fn cargo_build_release(project: &Path) {
    let status = Command::new("cargo")
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
        .current_dir(project)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn rust_template_init_then_build_then_serve() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("hello-app");
    init(&project, &["--template", "rust"]);
    free_admin_port(&project);
    share_builds(&project);
    cargo_build_release(&project);
    let server = Server::start_in(&project, &["serve", "--listen", "127.0.0.1:0"], &[]);
    let (status, _, body) = get(&client(), &server.url("/")).await;
    assert_eq!((status, body.as_str()), (200, "Hello from Isola"));
}

/// A template worker that panics in `explode`, at line [`PANIC_LINE`].
const PANICKING_SOURCE: &str = "use isola_sdk::{Ctx, Env, Request, Response, Result};

#[isola_sdk::fetch]
async fn fetch(req: Request, _env: Env, _ctx: Ctx) -> Result<Response> {
    if req.path() == \"/boom\" {
        explode(req.path());
    }
    Ok(Response::text(\"fine\"))
}

#[inline(never)]
fn explode(path: &str) {
    panic!(\"exploded at {path}\");
}
";
const PANIC_LINE: usize = 13;

#[tokio::test(flavor = "multi_thread")]
async fn a_template_workers_panic_names_its_file_and_line_in_the_log_and_in_tail() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("boom-app");
    init(&project, &["--template", "rust"]);
    free_admin_port(&project);
    share_builds(&project);
    assert_eq!(
        PANICKING_SOURCE.lines().nth(PANIC_LINE - 1).map(str::trim),
        Some("panic!(\"exploded at {path}\");")
    );
    std::fs::write(project.join("src/lib.rs"), PANICKING_SOURCE).unwrap();
    cargo_build_release(&project);
    let server = Server::start_in(&project, &["serve", "--listen", "127.0.0.1:0"], &[]);
    let tail = Tail::start(server.admin_addr(), &["--format", "json"]);
    let client = client();
    let (status, _, body) = get(&client, &server.url("/fine")).await;
    assert_eq!((status, body.as_str()), (200, "fine"));

    let (status, id, _) = get(&client, &server.url("/boom")).await;
    assert_eq!(status, 500);
    let id = id.expect("a request id");
    let logs = server.wait_for_log("request failed");
    let line = logs
        .lines()
        .find(|l| l.contains("request failed") && l.contains(&id))
        .unwrap_or_else(|| panic!("no failure line for {id}:\n{logs}"));
    let place = format!("src/lib.rs:{PANIC_LINE}");
    // The panic's message and place ride on the trap's line…
    assert!(
        line.contains(&format!("(panicked at {place}:5: exploded at /boom)")),
        "{line}"
    );
    // …and the frame of `explode` names its source line.
    let frame = line
        .split("\\n")
        .find(|frame| frame.contains("boom_app::explode ("))
        .unwrap_or_else(|| panic!("no frame for explode: {line}"));
    assert!(
        frame.contains(&format!("/boom-app/{place}:")),
        "no source line for explode: {frame}"
    );

    // `isola tail` shows the failure: reason, cause and the guest's frames.
    let event = tail.event_for("/boom");
    let error = &event["error"];
    assert_eq!(error["reason"], "exception", "{event}");
    assert!(
        error["cause"]
            .as_str()
            .unwrap_or("")
            .contains("exploded at /boom"),
        "{event}"
    );
    let frames = error["frames"].as_array().expect("frames");
    assert!(
        frames.iter().any(|f| {
            f["function"]
                .as_str()
                .is_some_and(|name| name.ends_with("boom_app::explode"))
                && f["location"]
                    .as_str()
                    .is_some_and(|l| l.contains(&format!("{place}:")))
        }),
        "{event}"
    );
}

#[tokio::test]
async fn rust_queue_template_runs_under_dev() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("jobs-app");
    init(&project, &["--template", "rust", "--handler", "queue"]);
    share_builds(&project);
    free_admin_port(&project);
    let server = Server::start_in(&project, &["dev", "--listen", "127.0.0.1:0"], &[]);
    wait_for_body(
        &server,
        "/job-1",
        "Hello from Isola; queued",
        Meanwhile::NotReady,
        Duration::from_secs(180),
    )
    .await;
    // The consumer gets the message and logs it with its run id.
    let logs = server.wait_for_log_within(": /job-1", Duration::from_secs(30));
    assert!(
        logs.lines()
            .any(|l| l.contains("isola::guest") && l.contains("job ") && l.contains(": /job-1")),
        "{logs}"
    );
}

const DEV_GUEST: &str = r#"
use std::sync::atomic::{AtomicU64, Ordering};
use isola_sdk::{Ctx, Env, Request, Response, Result};

static SERVED: AtomicU64 = AtomicU64::new(0);

#[isola_sdk::fetch]
async fn fetch(_req: Request, _env: Env, _ctx: Ctx) -> Result<Response> {
    let n = SERVED.fetch_add(1, Ordering::SeqCst) + 1;
    Ok(Response::text(format!("VERSION {n}")))
}
"#;

#[tokio::test]
async fn dev_rebuilds_an_edited_guest_and_survives_a_broken_edit() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("isola-dev-e2e");
    std::fs::create_dir_all(project.join("src")).unwrap();
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../sdk/rust")
        .canonicalize()
        .unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        format!(
            "[package]\nname = \"isola-dev-e2e\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
             [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nisola-sdk = {{ path = {:?} }}\n\n\
             [profile.release]\nopt-level = \"s\"\ndebug = false\n\n[workspace]\n",
            sdk.display().to_string()
        ),
    )
    .unwrap();
    let source = project.join("src/lib.rs");
    std::fs::write(&source, DEV_GUEST.replace("VERSION", "v1")).unwrap();
    std::fs::write(
        project.join("isola.toml"),
        "[[worker]]\nname = \"app\"\ncomponent = \"target/wasm32-wasip2/release/isola_dev_e2e.wasm\"\n\
         build = { command = \"cargo build --release --target wasm32-wasip2\", watch = [\"src/**/*.rs\", \"Cargo.toml\"] }\n",
    )
    .unwrap();
    share_builds(&project);
    let server = Server::start_in(&project, &["dev", "--listen", "127.0.0.1:0"], &[]);
    wait_for_body(
        &server,
        "/",
        "v1 1",
        Meanwhile::NotReady,
        Duration::from_secs(180),
    )
    .await;
    // Dev keeps serve's isolation: module state never survives a request.
    for _ in 0..3 {
        let (status, _, body) = get(&client(), &server.url("/")).await;
        assert_eq!((status, body.as_str()), (200, "v1 1"));
    }

    // Until v2 is built and swapped in, v1 answers every request.
    std::fs::write(&source, DEV_GUEST.replace("VERSION", "v2")).unwrap();
    wait_for_body(
        &server,
        "/",
        "v2 1",
        Meanwhile::Serving("v1 1"),
        Duration::from_secs(120),
    )
    .await;

    // A broken edit: the compiler's error is printed, v2 keeps serving.
    std::fs::write(
        &source,
        DEV_GUEST
            .replace("VERSION", "v3")
            .replace("Ok(Response", "Ok(Respons"),
    )
    .unwrap();
    let logs = server.wait_for_log_within(
        "still serving the last good version",
        Duration::from_secs(120),
    );
    assert!(
        logs.contains("error[E0"),
        "the compiler error is shown:\n{logs}"
    );
    assert!(logs.contains("build failed"), "{logs}");
    let (status, _, body) = get(&client(), &server.url("/")).await;
    assert_eq!((status, body.as_str()), (200, "v2 1"));

    // Fixed again: the next build goes live.
    std::fs::write(&source, DEV_GUEST.replace("VERSION", "v4")).unwrap();
    wait_for_body(
        &server,
        "/",
        "v4 1",
        Meanwhile::Serving("v2 1"),
        Duration::from_secs(120),
    )
    .await;
}

/// Passes once the JS build (issue 8: `main = "*.js"` workers built into
/// components by `load_config`) is merged.
#[tokio::test]
async fn js_template_init_then_serve() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("hello-js");
    init(&project, &["--template", "js"]);
    free_admin_port(&project);
    let index = std::fs::read_to_string(project.join("src/index.js")).unwrap();
    assert!(index.contains("export default {"), "{index}");
    assert!(index.contains("async fetch(request, env, ctx)"), "{index}");
    let config = std::fs::read_to_string(project.join("isola.toml")).unwrap();
    assert!(config.contains("main = \"src/index.js\""), "{config}");
    let server = Server::start_in(&project, &["serve", "--listen", "127.0.0.1:0"], &[]);
    let (status, _, body) = get(&client(), &server.url("/")).await;
    assert_eq!((status, body.as_str()), (200, "Hello from Isola"));
}

/// A build command compiles the worker's sources (with a Rust guest, its
/// `build.rs` and macros run), so it runs without the secrets `isola` was
/// given; the toolchain's own variables stay.
#[tokio::test]
async fn a_build_command_never_sees_the_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("isola.toml"),
        format!(
            "[[worker]]\nname = \"hello\"\ncomponent = \"hello.wasm\"\n\
             secrets = [\"DB_PASSWORD\"]\n\
             build = {{ command = \"env > build-env.txt && cp {} hello.wasm\", watch = [\"src/*\"] }}\n",
            isola_test_programs::EXAMPLE_HELLO
        ),
    )
    .unwrap();
    let server = Server::start_in(
        dir.path(),
        &["dev", "--listen", "127.0.0.1:0"],
        &[
            ("ISOLA_SECRET_DB_PASSWORD", "hunter2-dev"),
            ("ISOLA_ADMIN_TOKEN", "admin-token-dev"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret-dev"),
            ("CARGO_HOME_FOR_THE_TEST", "kept"),
        ],
    );
    // Served once built: the hello example's own answer, nothing else.
    wait_for_body(
        &server,
        "/",
        "Hello from Isola!\n",
        Meanwhile::NotReady,
        Duration::from_secs(60),
    )
    .await;
    let seen = std::fs::read_to_string(dir.path().join("build-env.txt")).unwrap();
    assert!(seen.contains("CARGO_HOME_FOR_THE_TEST=kept"), "{seen}");
    assert!(seen.contains("PATH="), "{seen}");
    for secret in ["hunter2-dev", "admin-token-dev", "aws-secret-dev"] {
        assert!(!seen.contains(secret), "the build command saw {secret}");
    }
}

/// One save is a burst of file-system events (a truncate, writes, a close),
/// and the build itself reads the config and the sources: `isola dev`
/// builds once for it, and a syntax error is reported once, not once per
/// event.
#[tokio::test]
async fn dev_reports_one_failed_build_per_save_and_serves_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("save-once");
    init(&project, &["--template", "js"]);
    free_admin_port(&project);
    let index = project.join("src/index.js");
    let source = std::fs::read_to_string(&index).unwrap();
    assert!(source.contains("\"Hello from Isola\""), "{source}");
    let server = Server::start_in(&project, &["dev", "--listen", "127.0.0.1:0"], &[]);
    wait_for_body(
        &server,
        "/",
        "Hello from Isola",
        Meanwhile::NotReady,
        Duration::from_secs(300),
    )
    .await;
    server.wait_for_log("watching for changes");

    // One save of a syntax error.
    std::fs::write(
        &index,
        source.replace(
            "new Response(\"Hello from Isola\")",
            "new Response((\"broken\"",
        ),
    )
    .unwrap();
    server.wait_for_log_within("build failed", Duration::from_secs(60));
    // Time for any further build the same save might set off.
    std::thread::sleep(Duration::from_secs(5));
    let logs = server.flushed_logs();
    let failures: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("build failed"))
        .collect();
    assert_eq!(failures.len(), 1, "one error for one save:\n{logs}");
    assert!(
        failures[0].contains("src/index.js")
            && failures[0].contains("still serving the last good version"),
        "{}",
        failures[0]
    );
    assert_eq!(
        logs.lines()
            .filter(|line| line.contains("changed: "))
            .count(),
        1,
        "one rebuild for one save:\n{logs}"
    );
    let (status, _, body) = get(&client(), &server.url("/")).await;
    assert_eq!((status, body.as_str()), (200, "Hello from Isola"));

    // The fix goes live.
    std::fs::write(
        &index,
        source.replace("\"Hello from Isola\"", "\"Hello again\""),
    )
    .unwrap();
    wait_for_body(
        &server,
        "/",
        "Hello again",
        Meanwhile::Serving("Hello from Isola"),
        Duration::from_secs(300),
    )
    .await;
    let logs = server.flushed_logs();
    assert_eq!(
        logs.lines()
            .filter(|line| line.contains("build failed"))
            .count(),
        1,
        "{logs}"
    );
}

/// The pinned JavaScript toolchain's `tsc`: `isola build --setup` installs
/// the toolchain and says where.
pub(crate) fn toolchain_tsc() -> PathBuf {
    let output = isola().args(["build", "--setup"]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let sdk = stdout
        .lines()
        .find_map(|l| l.strip_prefix("JavaScript toolchain ready in "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let tsc = Path::new(sdk.trim())
        .parent()
        .unwrap()
        .join("node_modules/.bin/tsc");
    assert!(tsc.is_file(), "typescript is pinned: {}", tsc.display());
    tsc
}

/// `tsc --noEmit` on `project`: (passed, its output).
pub(crate) fn type_check(tsc: &Path, project: &Path) -> (bool, String) {
    let output = Command::new(tsc)
        .args(["--noEmit", "-p"])
        .arg(project)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `isola init --template ts` writes a TypeScript worker whose `env` is
/// typed by what `isola types` writes from isola.toml: the pinned `tsc`
/// accepts it, refuses a binding or a var value the config does not have,
/// and the worker builds and serves.
#[tokio::test]
async fn ts_template_type_checks_against_isola_types_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("hello-ts");
    init(&project, &["--template", "ts", "--handler", "scheduled"]);
    free_admin_port(&project);
    let config = std::fs::read_to_string(project.join("isola.toml")).unwrap();
    assert!(config.contains("main = \"src/index.ts\""), "{config}");
    let declared = std::fs::read_to_string(project.join("worker-configuration.d.ts")).unwrap();
    assert!(
        declared.contains("interface Env {\n  KV: KVNamespace;\n}"),
        "{declared}"
    );

    // A var, and `isola types` again: it becomes a string literal.
    std::fs::write(
        project.join("isola.toml"),
        format!("{config}vars = {{ GREETING = \"hello\" }}\n"),
    )
    .unwrap();
    let output = isola_in(&project).arg("types").output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let declared = std::fs::read_to_string(project.join("worker-configuration.d.ts")).unwrap();
    assert!(
        declared.contains("interface Env {\n  GREETING: \"hello\";\n  KV: KVNamespace;\n}"),
        "{declared}"
    );
    let index = project.join("src/index.ts");
    let source = std::fs::read_to_string(&index).unwrap();
    assert!(
        source.contains("satisfies ExportedHandler<Env>"),
        "{source}"
    );
    let typed = source.replace(
        "return new Response(\"Hello from Isola\");",
        "const greeting: \"hello\" = env.GREETING;\n    return new Response(`Hello from Isola, ${greeting}`);",
    );
    assert_ne!(typed, source);
    std::fs::write(&index, &typed).unwrap();

    let tsc = toolchain_tsc();
    let (passed, output) = type_check(&tsc, &project);
    assert!(passed, "tsc: {output}");

    // The types constrain: a binding the config lacks, a var's other value.
    for (broken, error) in [
        (
            typed.replace("env.KV.put(", "env.CACHE.put("),
            "Property 'CACHE' does not exist on type 'Env'",
        ),
        (
            typed.replace("const greeting: \"hello\"", "const greeting: \"bye\""),
            "Type '\"hello\"' is not assignable to type '\"bye\"'",
        ),
    ] {
        assert_ne!(broken, typed);
        std::fs::write(&index, &broken).unwrap();
        let (passed, output) = type_check(&tsc, &project);
        assert!(!passed, "tsc accepted:\n{broken}");
        assert!(output.contains(error), "{output}");
    }
    std::fs::write(&index, &typed).unwrap();

    let server = Server::start_in(&project, &["serve", "--listen", "127.0.0.1:0"], &[]);
    let (status, _, body) = get(&client(), &server.url("/")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "Hello from Isola, hello"),
        "{}",
        server.logs()
    );
}
