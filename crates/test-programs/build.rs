//! Build the test guests (`guests/`) and the examples (`guest-examples/`)
//! for wasm32-wasip2 and expose each component's path as a constant, e.g.
//! `COUNTER` or `EXAMPLE_HELLO`.
//!
//! Both workspaces share one target directory so their common dependencies
//! (wasi, wit-bindgen, the SDK) are compiled once.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

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
        "crates/sdk",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let mut constants = String::new();
    for (prefix, workspace) in [
        ("", manifest_dir.join("guests")),
        ("EXAMPLE_", root.join("guest-examples")),
    ] {
        build(&workspace, &target_dir);
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
    let out = PathBuf::from(env("OUT_DIR")).join("components.rs");
    std::fs::write(out, constants).expect("writing components.rs");
}

fn build(workspace: &Path, target_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
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
        "building the guests in {} failed; is the target installed? `rustup target add {TARGET}`",
        workspace.display()
    );
}

/// The component file stems a guest workspace produces: one per member,
/// named after its `[lib]` (cdylib, dashes become underscores) or its binary.
fn artifacts(workspace: &Path) -> Vec<String> {
    let manifest =
        std::fs::read_to_string(workspace.join("Cargo.toml")).expect("workspace manifest");
    let members = manifest
        .split_once("members")
        .and_then(|(_, rest)| rest.split_once('['))
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
        .expect("a `members = [...]` list");
    members
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .map(|member| {
            let member_manifest =
                std::fs::read_to_string(workspace.join(member).join("Cargo.toml"))
                    .expect("member manifest");
            let name = member_manifest
                .lines()
                .find_map(|l| l.strip_prefix("name = "))
                .expect("a package name")
                .trim_matches('"')
                .to_owned();
            if member_manifest.contains("cdylib") {
                name.replace('-', "_")
            } else {
                name
            }
        })
        .collect()
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by cargo"))
}
