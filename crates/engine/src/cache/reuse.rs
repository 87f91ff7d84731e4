//! `reuse_code` (`isola dev`): an artifact made from a path's last one when
//! only core modules' data changed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use wasmtime::Engine;

use super::CompileCache;
use super::entry::read_entry;

/// A path's last component: its wasm (as compiled, after `adapt`) and the
/// cache entry holding its artifact.
pub(super) struct Previous {
    wasm: Arc<Vec<u8>>,
    entry: PathBuf,
}

impl CompileCache {
    /// Turn on or off making artifacts from a path's last one when only data
    /// changed (`EngineOptions::reuse_code`).
    pub(crate) fn reuse_code(&mut self, on: bool) {
        self.previous = on.then(Mutex::default);
    }

    /// With `reuse_code`: the artifact of `wasm` made from the last one
    /// compiled or loaded for `path`, if the two differ only in their core
    /// modules' data and that works; `None` (compile it) otherwise.
    pub(super) fn reuse_previous_code(
        &self,
        engine: &Engine,
        path: &Path,
        wasm: &[u8],
    ) -> Option<Vec<u8>> {
        let (previous_wasm, previous_entry) = {
            let previous = self.previous.as_ref()?.lock().expect("previous lock");
            let previous = previous.get(path)?;
            (previous.wasm.clone(), previous.entry.clone())
        };
        if !differs_only_in_data(&previous_wasm, wasm) {
            return None;
        }
        let reused = read_entry(&previous_entry).and_then(|base| {
            engine
                .precompile_component_reusing_code(wasm, &base)
                .map_err(|e| format!("{e:#}"))
        });
        match reused {
            Ok(artifact) => Some(artifact),
            Err(reason) => {
                tracing::info!(component = %path.display(), %reason, "cannot reuse the last compile's code; compiling");
                None
            }
        }
    }

    pub(super) fn remember_previous(&self, path: &Path, wasm: &[u8], entry: &Path) {
        let Some(previous) = &self.previous else {
            return;
        };
        let mut previous = previous.lock().expect("previous lock");
        if previous.get(path).is_some_and(|p| *p.wasm == wasm) {
            return;
        }
        previous.insert(
            path.to_owned(),
            Previous {
                wasm: Arc::new(wasm.to_vec()),
                entry: entry.to_owned(),
            },
        );
    }
}

/// Whether the binary components `old` and `new` differ only in the
/// contents of core modules' data sections: every other section (custom
/// ones too), in every nested module and component, byte for byte the same
/// and in the same order. The sizes of the sections holding a changed data
/// section (and so the offsets of what follows) may differ.
pub(crate) fn differs_only_in_data(old: &[u8], new: &[u8]) -> bool {
    use wasmparser::{Parser, Payload};
    if !Parser::is_component(old) || !Parser::is_component(new) {
        return false;
    }
    let mut old_payloads = Parser::new(0).parse_all(old);
    let mut new_payloads = Parser::new(0).parse_all(new);
    let mut data_differs = false;
    loop {
        let (a, b) = match (old_payloads.next(), new_payloads.next()) {
            (None, None) => return data_differs,
            (Some(Ok(a)), Some(Ok(b))) => (a, b),
            _ => return false,
        };
        if std::mem::discriminant(&a) != std::mem::discriminant(&b) {
            return false;
        }
        let same = match (&a, &b) {
            (Payload::DataSection(a), Payload::DataSection(b)) => {
                data_differs |= old.get(a.range()) != new.get(b.range());
                true
            }
            // Their contents come as the payloads that follow.
            (Payload::ModuleSection { .. }, Payload::ModuleSection { .. })
            | (Payload::ComponentSection { .. }, Payload::ComponentSection { .. }) => true,
            // Within the code section, compared whole at its start.
            (Payload::CodeSectionEntry(_), Payload::CodeSectionEntry(_)) => true,
            (
                Payload::Version {
                    num: a,
                    encoding: x,
                    ..
                },
                Payload::Version {
                    num: b,
                    encoding: y,
                    ..
                },
            ) => a == b && x == y,
            (Payload::End(_), Payload::End(_)) => true,
            _ => match (a.as_section(), b.as_section()) {
                (Some((x, a)), Some((y, b))) => x == y && old.get(a) == new.get(b),
                _ => false,
            },
        };
        if !same {
            return false;
        }
    }
}
