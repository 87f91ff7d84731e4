//! The WIT in `wit/` is the contract guests compile against. These tests
//! build a component that imports *everything* the `isola:worker/worker`
//! world offers and check that the host links all of it, so the vendored
//! wasi WIT (0.2.10, for componentize-js) can never drift from what
//! wasmtime-wasi-http 48 implements without a test failing.

use std::path::{Path, PathBuf};

use isola_config::WorkerRun;
use isola_engine::{EngineOptions, IsolaEngine};
use isola_runtime::{LoadError, Worker};
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::{ManglingAndAbi, Resolve};

fn wit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit")
}

/// A component whose core module imports every function of the world and
/// exports dummy implementations of its exports.
fn component_using_all_of(wit: &Path) -> Vec<u8> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_dir(wit).expect("the WIT parses");
    let world = resolve
        .select_world(&[package], Some("worker"))
        .expect("world `worker`");
    let mut module = wit_component::dummy_module(&resolve, world, ManglingAndAbi::Standard32);
    wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)
        .expect("embedding the world");
    ComponentEncoder::default()
        .module(&module)
        .expect("a valid module")
        .validate(true)
        .encode()
        .expect("a valid component")
}

fn load(component: &[u8]) -> Result<Worker, LoadError> {
    let state = tempfile::tempdir().unwrap();
    let engine = IsolaEngine::new(&EngineOptions::new(state.path().join("cache"))).unwrap();
    let path = Path::new("contract.wasm");
    let loaded = engine.cache().load(engine.engine(), path, component)?;
    let backends = isola_runtime::Backends::embedded(state.path(), 1 << 20).unwrap();
    Worker::from_component(
        &engine,
        "contract",
        &WorkerRun::default(),
        &backends,
        &loaded.component,
        loaded.outcome,
        path,
    )
}

#[test]
fn vendored_wasi_wit_is_pinned_at_0_2_10() {
    for entry in std::fs::read_dir(wit_dir().join("deps")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let package = text
            .lines()
            .find(|l| l.starts_with("package "))
            .unwrap_or_else(|| panic!("{} has no package line", path.display()));
        assert!(
            package.ends_with("@0.2.10;"),
            "{}: {package}",
            path.display()
        );
    }
}

#[test]
fn host_implements_every_import_of_the_worker_world() {
    let component = component_using_all_of(&wit_dir());
    if let Err(e) = load(&component) {
        panic!("the host does not implement the vendored WIT: {e}");
    }
}

#[test]
fn a_drifted_contract_is_detected() {
    // Copy the WIT and change one signature the way a careless vendoring
    // would; the host must refuse the result.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&wit_dir(), copy.path());
    let http = copy.path().join("deps/http.wit");
    let text = std::fs::read_to_string(&http).unwrap();
    let drifted = text.replacen(
        "path-with-query: func() -> option<string>;",
        "path-with-query: func() -> string;",
        1,
    );
    assert_ne!(text, drifted, "the signature to change is in http.wit");
    std::fs::write(&http, drifted).unwrap();

    let component = component_using_all_of(copy.path());
    match load(&component) {
        Err(LoadError::UnknownImport { reason, .. }) => {
            assert!(reason.contains("wasi:http/types"), "{reason}")
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a changed signature must not link"),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
