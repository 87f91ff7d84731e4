//! Core modules built for WASI preview 1, made into components.
//!
//! `spin build` and `cargo build --target wasm32-wasip1` produce core
//! modules, not components; Spin makes them components when it loads them.
//! Isola does the same, the way `wasm-tools component new --adapt` does:
//! wasmtime's preview-1 adapter (the build that matches Isola's wasmtime)
//! turns the module's `wasi_snapshot_preview1` imports into WASI 0.2
//! imports, and the `component-type` sections that wit-bindgen leaves in a
//! module (spin-sdk's `#[http_component]` among them) name its exports,
//! `wasi:http/incoming-handler` for a worker.

use std::borrow::Cow;
use std::path::Path;

use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};

use crate::EngineError;

/// `wasm` as a component: the bytes themselves when they already are one
/// (or are text, which wasmtime parses), else the component made from the
/// core module.
pub(crate) fn as_component<'a>(path: &Path, wasm: &'a [u8]) -> Result<Cow<'a, [u8]>, EngineError> {
    if !wasmparser::Parser::is_core_wasm(wasm) {
        return Ok(Cow::Borrowed(wasm));
    }
    let refused = |reason: String| EngineError::CoreModule {
        path: path.to_owned(),
        reason,
    };
    // A module with `_start` is a command (`fn main`): the command adapter
    // gives it `wasi:cli/run`, so it is refused later as what it is, a
    // component that is not a worker. Anything else is a reactor.
    let adapter = if exports_start(wasm) {
        WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER
    } else {
        WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER
    };
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(wasm)
        .and_then(|encoder| encoder.adapter("wasi_snapshot_preview1", adapter))
        .and_then(|mut encoder| encoder.encode())
        .map_err(|e| refused(format!("{e:#}")))?;
    tracing::info!(
        component = %path.display(),
        "made a component of a WASI preview 1 core module"
    );
    Ok(Cow::Owned(component))
}

fn exports_start(module: &[u8]) -> bool {
    wasmparser::Parser::new(0)
        .parse_all(module)
        .filter_map(Result::ok)
        .any(|payload| match payload {
            wasmparser::Payload::ExportSection(exports) => exports
                .into_iter()
                .filter_map(Result::ok)
                .any(|export| export.name == "_start"),
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapt(wat: &str) -> Result<Vec<u8>, EngineError> {
        let module = wat::parse_str(wat).unwrap();
        as_component(Path::new("m.wasm"), &module).map(Cow::into_owned)
    }

    /// The names a component exports at its top level.
    fn exports(component: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        let mut depth = 0;
        for payload in wasmparser::Parser::new(0).parse_all(component) {
            match payload.unwrap() {
                wasmparser::Payload::ModuleSection { .. }
                | wasmparser::Payload::ComponentSection { .. } => depth += 1,
                wasmparser::Payload::End(_) => depth -= 1,
                wasmparser::Payload::ComponentExportSection(section) if depth == 0 => {
                    names.extend(section.into_iter().map(|e| e.unwrap().name.name.to_owned()));
                }
                _ => {}
            }
        }
        names
    }

    const WASI_MODULE: &str = r#"(module
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 1)
        (func (export "EXPORT") i32.const 0 call $exit))"#;

    #[test]
    fn a_component_is_used_as_it_is() {
        let component = wat::parse_str("(component)").unwrap();
        let adapted = as_component(Path::new("c.wasm"), &component).unwrap();
        assert!(matches!(adapted, Cow::Borrowed(_)));
    }

    #[test]
    fn a_wasi_command_module_becomes_a_command_component() {
        let component = adapt(&WASI_MODULE.replace("EXPORT", "_start")).unwrap();
        assert!(wasmparser::Parser::is_component(&component));
        let exports = exports(&component);
        assert!(
            exports
                .iter()
                .any(|name| name.starts_with("wasi:cli/run@0.2")),
            "{exports:?}"
        );
    }

    #[test]
    fn a_wasi_reactor_module_becomes_a_component_without_run() {
        let component = adapt(&WASI_MODULE.replace("EXPORT", "f")).unwrap();
        assert!(wasmparser::Parser::is_component(&component));
        assert!(exports(&component).is_empty());
    }

    #[test]
    fn a_module_with_imports_no_adapter_provides_is_refused_with_the_reason() {
        let error = adapt(r#"(module (import "env" "f" (func)))"#).unwrap_err();
        let EngineError::CoreModule { path, reason } = &error else {
            panic!("{error}");
        };
        assert_eq!(path, Path::new("m.wasm"));
        assert!(reason.contains("env::f"), "{reason}");
        assert!(
            error.to_string().contains("build for wasm32-wasip2"),
            "{error}"
        );
    }
}
