//! Build the test guests (`guests/`), the examples (`guest-examples/`) and
//! the example plugin host's plugin (`examples/plugin-host/guests/`) for
//! wasm32-wasip2 and expose each component's path as a constant, e.g.
//! `COUNTER`, `EXAMPLE_HELLO` or `PLUGIN_FILTER`. The guests in [`WASIP1_GUESTS`] are also
//! built for wasm32-wasip1, as `spin build` builds them: core modules, not
//! components (`SPIN_HELLO_WASIP1`).
//!
//! Both workspaces share one target directory so their common dependencies
//! (wasi, wit-bindgen, the SDK) are compiled once.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const WASIP1: &str = "wasm32-wasip1";
/// Test guests also built as WASI preview 1 core modules.
const WASIP1_GUESTS: &[&str] = &["spin-hello"];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .join("../..")
        .canonicalize()
        .expect("repository root");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        })
        .unwrap_or_else(|| root.join("target"))
        .join("guests");

    for watched in [
        "crates/test-programs/guests",
        "guest-examples",
        "examples/plugin-host/guests",
        "examples/plugin-host/wit",
        "sdk/rust",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let mut constants = String::new();
    for (prefix, workspace) in [
        ("", manifest_dir.join("guests")),
        ("EXAMPLE_", root.join("guest-examples")),
        ("PLUGIN_", root.join("examples/plugin-host/guests")),
    ] {
        build(&workspace, &target_dir, TARGET, &[]);
        for name in artifacts(&workspace) {
            let path = target_dir
                .join(TARGET)
                .join("release")
                .join(format!("{name}.wasm"));
            assert!(path.is_file(), "expected {} to be built", path.display());
            let constant = format!("{prefix}{}", name.replace('-', "_").to_uppercase());
            writeln!(
                constants,
                "pub const {constant}: &str = {:?};",
                path.display().to_string()
            )
            .unwrap();
        }
    }
    let guests = manifest_dir.join("guests");
    let packages: Vec<&str> = WASIP1_GUESTS
        .iter()
        .flat_map(|package| ["-p", *package])
        .collect();
    build(&guests, &target_dir, WASIP1, &packages);
    for name in WASIP1_GUESTS {
        let file = name.replace('-', "_");
        let path = target_dir
            .join(WASIP1)
            .join("release")
            .join(format!("{file}.wasm"));
        assert!(path.is_file(), "expected {} to be built", path.display());
        writeln!(
            constants,
            "pub const {}_WASIP1: &str = {:?};",
            file.to_uppercase(),
            path.display().to_string()
        )
        .unwrap();
    }
    let out = PathBuf::from(env("OUT_DIR")).join("components.rs");
    std::fs::write(out, constants).expect("writing components.rs");
}

fn build(workspace: &Path, target_dir: &Path, target: &str, packages: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", target])
        .args(packages)
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        // Flags meant for the host build must not leak into the guests'.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .expect("running cargo for the guest components");
    assert!(
        status.success(),
        "building the guests in {} failed; is the target installed? `rustup target add {target}`",
        workspace.display()
    );
}

/// The component file stems a guest workspace produces: one per member,
/// named after its `[lib]` (cdylib, dashes become underscores) or its binary.
fn artifacts(workspace: &Path) -> Vec<String> {
    let read = |path: PathBuf| -> toml::Table {
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.parse()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let root = read(workspace.join("Cargo.toml"));
    let members = root["workspace"]["members"]
        .as_array()
        .expect("workspace members");
    members
        .iter()
        .map(|member| {
            let member = member.as_str().expect("member paths are strings");
            let manifest = read(workspace.join(member).join("Cargo.toml"));
            let name = manifest["package"]["name"]
                .as_str()
                .expect("a package name");
            let is_cdylib = manifest
                .get("lib")
                .and_then(|lib| lib.get("crate-type"))
                .and_then(|types| types.as_array())
                .is_some_and(|types| types.iter().any(|t| t.as_str() == Some("cdylib")));
            if is_cdylib {
                name.replace('-', "_")
            } else {
                name.to_owned()
            }
        })
        .collect()
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by cargo"))
}
