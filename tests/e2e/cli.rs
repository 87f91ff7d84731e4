//! `isola check`, `compile`, and start-up failures: bad components and bad
//! config files give a clear message naming the file and exit non-zero.

use isola_test_programs as guests;

use crate::support::{Project, cache_entries, run_isola, stderr_of, worker};

/// Each kind of bad component, and the words that must explain it.
fn bad_components(project: &Project) -> Vec<(std::path::PathBuf, &'static str)> {
    let not_wasm = project.path("notes.wasm");
    std::fs::write(&not_wasm, "these are not the bytes you are looking for\n").unwrap();

    // Core modules are adapted as WASI preview 1 modules; this one imports
    // what no adapter provides.
    let core_module = project.path("core.wasm");
    std::fs::write(
        &core_module,
        wat::parse_str("(module (import \"env\" \"f\" (func)))").unwrap(),
    )
    .unwrap();

    let command = project.path("command.wasm");
    std::fs::copy(guests::COMMAND, &command).unwrap();

    let unknown_import = project.path("unknown-import.wasm");
    let component = wat::parse_str(
        r#"(component
             (import "acme:unknown/thing@1.0.0" (instance (export "frob" (func))))
           )"#,
    )
    .unwrap();
    std::fs::write(&unknown_import, component).unwrap();

    vec![
        (not_wasm, "not a WebAssembly file"),
        (
            core_module,
            "is a core WebAssembly module, not a component, and cannot be made one (failed to decode world from module: module was not valid: failed to resolve import `env::f`",
        ),
        (command, "does not export `wasi:http/incoming-handler`"),
        (unknown_import, "acme:unknown/thing@1.0.0"),
    ]
}

#[test]
fn check_accepts_a_good_config() {
    let project = Project::new(&worker("hello", guests::EXAMPLE_HELLO, &["/*"]));
    let output = run_isola(&["check", project.config().to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok (1 worker)"));
}

#[test]
fn bad_components_are_refused_by_check_and_serve() {
    let project = Project::new("");
    let config_path = project.config();
    let config_arg = config_path.to_str().unwrap();
    for (component, problem) in bad_components(&project) {
        let config = worker("bad", component.to_str().unwrap(), &["/*"]);
        std::fs::write(project.config(), config).unwrap();
        for command in ["check", "serve"] {
            let mut args = vec![command, config_arg];
            if command == "serve" {
                args.extend(["--listen", "127.0.0.1:0"]);
            }
            let output = run_isola(&args);
            let stderr = stderr_of(&output);
            assert_eq!(
                output.status.code(),
                Some(1),
                "{command} {component:?}: {stderr}"
            );
            assert!(
                output.stdout.is_empty(),
                "{command} must not start listening"
            );
            assert!(
                stderr.contains(component.to_str().unwrap()),
                "{command} names the file: {stderr}"
            );
            assert!(
                stderr.contains(problem),
                "{command} says {problem:?}: {stderr}"
            );
        }
    }
}

#[test]
fn bad_config_errors_name_file_line_and_key() {
    let hello = guests::EXAMPLE_HELLO;
    let cases = [
        (
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\ncolour = \"blue\"\n{}",
                worker("w", hello, &["/*"])
            ),
            ":3:1",
            "unknown field `colour`",
        ),
        (
            worker("w", hello, &["/api/*", "/a*b"]),
            ":4:21",
            "worker[0].routes: bad route pattern `/a*b`",
        ),
        (
            worker("w", "does-not-exist.wasm", &["/*"]),
            ":3:13",
            "worker[0].component: component file not found",
        ),
        (
            format!("{}cpu_ms = \"lots\"\n", worker("w", hello, &["/*"])),
            ":5:10",
            "invalid type: string \"lots\", expected u64",
        ),
    ];
    for (text, place, message) in cases {
        let project = Project::new(&text);
        for command in ["check", "serve"] {
            let output = run_isola(&[command, project.config().to_str().unwrap()]);
            let stderr = stderr_of(&output);
            assert_eq!(output.status.code(), Some(1), "{stderr}");
            // `check` labels each error as a compiler does.
            let label = if command == "check" { " error:" } else { "" };
            let located = format!("{}{place}:{label} {message}", project.config().display());
            assert!(
                stderr.contains(&located),
                "expected {located:?} in:\n{stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}

/// Eight independent errors of eight kinds: `check` reports each at its
/// file:line:column, in file order, then how many, and exits 1; `serve`
/// refuses the same config with the same errors. Once fixed, `check`
/// passes without a word on stderr.
#[test]
fn check_reports_every_config_error_at_once() {
    let hello = guests::EXAMPLE_HELLO;
    let secret = "ISOLA_E2E_CHECK_NEVER_SET";
    let broken = format!(
        "[server]
listen = \"127.0.0.1:0\"
colour = \"blue\"
[[worker]]
name = \"hello\"
component = {hello:?}
routes = [\"/api/*\", \"/a*b\"]
cpu_ms = \"lots\"
secrets = [\"{secret}\"]
[worker.triggers]
crons = [\"61 * * * *\"]
[[worker]]
name = \"other\"
component = \"missing.wasm\"
routes = [\"/api/*\"]
services = [{{ binding = \"AUTH\", service = \"nobody\" }}]
"
    );
    let project = Project::new(&broken);
    let config = project.config();
    let file = config.display();
    let expected = [
        // serde lists every `[server]` key after this.
        format!("{file}:3:1: error: unknown field `colour`, expected one of `listen`, "),
        format!(
            "{file}:7:21: error: worker[0].routes: bad route pattern `/a*b`: `*` may only end the path"
        ),
        format!("{file}:8:10: error: invalid type: string \"lots\", expected u64"),
        format!(
            "{file}:9:12: error: worker[0].secrets: secret `{secret}` has no value: set $ISOLA_SECRET_{secret} or add `{secret}=...` to {}",
            project.path(".dev.vars").display()
        ),
        format!(
            "{file}:11:10: error: worker[0].triggers.crons: `61 * * * *` is not a valid cron expression: Component error: Number out of bounds."
        ),
        format!(
            "{file}:14:13: error: worker[1].component: component file not found: {}",
            project.path("missing.wasm").display()
        ),
        format!(
            "{file}:15:11: error: worker[1].routes: route `/api/*` is already used by worker `hello`"
        ),
        format!("{file}:16:43: error: worker[1].services: no worker is named `nobody`"),
    ];

    let output = run_isola(&["check", config.to_str().unwrap()]);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty(), "{stderr}");
    let reported: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(&file.to_string()))
        .collect();
    assert_eq!(reported.len(), expected.len(), "{stderr}");
    for (line, expected) in reported.iter().zip(&expected) {
        let exact = !expected.ends_with(", ");
        assert!(
            if exact {
                line == expected
            } else {
                line.starts_with(expected.as_str())
            },
            "got      {line}\nexpected {expected}\nin:\n{stderr}"
        );
    }
    assert_eq!(stderr.lines().last(), Some("error: 8 errors"), "{stderr}");

    // `serve` reads the config with the same loader: the same errors.
    let output = run_isola(&["serve", config.to_str().unwrap()]);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for expected in &expected {
        let plain = expected.replacen(": error: ", ": ", 1);
        assert!(stderr.contains(&plain), "expected {plain:?} in:\n{stderr}");
    }

    let fixed = format!(
        "[server]
listen = \"127.0.0.1:0\"
[[worker]]
name = \"hello\"
component = {hello:?}
routes = [\"/api/*\"]
cpu_ms = 50
secrets = [\"{secret}\"]
[[worker]]
name = \"other\"
component = {hello:?}
routes = [\"/other/*\"]
services = [{{ binding = \"AUTH\", service = \"hello\" }}]
"
    );
    std::fs::write(&config, fixed).unwrap();
    std::fs::write(project.path(".dev.vars"), format!("{secret}=s3cret\n")).unwrap();
    let output = run_isola(&["check", config.to_str().unwrap()]);
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{file}: ok (2 workers)\n")
    );
}

#[test]
fn compile_fills_the_cache_ahead_of_serving() {
    let config = [
        worker("hello", guests::EXAMPLE_HELLO, &["/*"]),
        worker("router", guests::EXAMPLE_ROUTER, &["/api/*"]),
    ]
    .concat();
    let project = Project::new(&config);
    let output = run_isola(&["compile", project.config().to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(cache_entries(&project.path(".isola")).len(), 2);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("hello: ") && stdout.contains("(Compiled)"),
        "{stdout}"
    );

    let again = run_isola(&["compile", project.config().to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&again.stdout)
            .matches("(Disk)")
            .count()
            == 2
    );

    let missing = run_isola(&["compile", "/nonexistent/x.wasm"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr_of(&missing).contains("/nonexistent/x.wasm: file not found"));
}

#[test]
fn the_shipped_examples_config_is_valid() {
    // guest-examples/isola.toml points at guest-examples/target; the test
    // build puts the same components in target/guests.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("guest-examples/isola.toml")).unwrap();
    let built = std::path::Path::new(guests::EXAMPLE_HELLO)
        .parent()
        .unwrap();
    let text = text
        .replace(
            "\"target/wasm32-wasip2/release/",
            &format!("\"{}/", built.display()),
        )
        .replace(
            "main = \"js/",
            &format!("main = \"{}/guest-examples/js/", root.display()),
        )
        // The JS tests' compile cache already holds these workers.
        .replace(
            "state_dir = \"../.isola\"",
            &format!(
                "state_dir = \".isola\"\ncache_dir = {:?}",
                crate::js::shared_cache().display().to_string()
            ),
        );
    crate::js::warm_up();
    let project = Project::new(&text);
    let output = run_isola(&["check", project.config().to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
}
