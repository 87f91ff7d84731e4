//! Where a worker's code comes from: `component` (a .wasm) or `main` (a
//! JavaScript module), the `build` that `isola dev` runs, and Wrangler's
//! compatibility keys (the bundling keys are `js_build`'s).

use std::path::{Path, PathBuf};

use toml::Spanned;

use crate::error::{Faults, WorkerKeys};
use crate::js_build;
use crate::model::BuildConfig;
use crate::raw::{RawBuild, RawWorker};

/// `build = { command, watch, workdir }`.
pub(super) fn parse_build(
    keys: WorkerKeys,
    build: Option<&RawBuild>,
    base: &Path,
    faults: &mut Faults,
) -> Option<BuildConfig> {
    let b = build?;
    if let Some(command) = &b.command
        && command.get_ref().trim().is_empty()
    {
        faults.push(keys.fault(
            command.span(),
            "build.command",
            "the build command is empty",
        ));
    }
    for pattern in &b.watch {
        if pattern.get_ref().trim().is_empty() {
            faults.push(keys.fault(pattern.span(), "build.watch", "an empty watch pattern"));
        }
    }
    Some(BuildConfig {
        command: b.command.as_ref().map(|c| c.get_ref().clone()),
        watch: b.watch.iter().map(|p| p.get_ref().clone()).collect(),
        workdir: base.join(b.workdir.as_deref().unwrap_or(".")),
    })
}

/// The component's path and, for a JavaScript worker, its entry module; a
/// JavaScript worker's component is `built`, which the CLI writes before
/// loading.
pub(super) fn parse_source(
    keys: WorkerKeys,
    w: &RawWorker,
    has_build: bool,
    base: &Path,
    built: PathBuf,
    faults: &mut Faults,
) -> (PathBuf, Option<PathBuf>) {
    match (&w.component, &w.main) {
        (Some(component), None) => {
            let path = base.join(component.get_ref());
            // A worker with a build command may not be built yet
            // (`isola dev` builds it first; `serve` reports it
            // missing on load).
            if !has_build && !path.is_file() {
                faults.push(keys.fault(
                    component.span(),
                    "component",
                    format!("component file not found: {}", path.display()),
                ));
            }
            (path, None)
        }
        (None, Some(main)) => {
            let path = base.join(main.get_ref());
            if !path.is_file() {
                faults.push(keys.fault(
                    main.span(),
                    "main",
                    format!("worker module not found: {}", path.display()),
                ));
            }
            (built, Some(path))
        }
        (Some(_), Some(main)) => {
            faults.push(keys.fault(
                main.span(),
                "main",
                "give either `component` (a .wasm) or `main` (a JavaScript module), not both",
            ));
            (built, Some(base.join(main.get_ref())))
        }
        (None, None) => {
            faults.push(keys.fault(
                w.name.span(),
                "component",
                "missing `component` (a .wasm) or `main` (a JavaScript module)",
            ));
            (built, None)
        }
    }
}

pub(super) fn compatibility_date(
    keys: WorkerKeys,
    date: Option<&Spanned<toml::Value>>,
    faults: &mut Faults,
) -> Option<String> {
    let date = date?;
    faults.ok(js_build::parse_date(date.get_ref())
        .map_err(|m| keys.fault(date.span(), "compatibility_date", m)))
}

pub(super) fn compatibility_flags(
    keys: WorkerKeys,
    flags: Vec<Spanned<String>>,
    faults: &mut Faults,
) -> Vec<String> {
    flags
        .into_iter()
        .filter_map(|flag| {
            faults.ok(js_build::check_flag(flag.get_ref())
                .map_err(|m| keys.fault(flag.span(), "compatibility_flags", m)))?;
            Some(flag.into_inner())
        })
        .collect()
}
