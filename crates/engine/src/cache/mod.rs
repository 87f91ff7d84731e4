//! The on-disk compile cache.
//!
//! An entry is `<sha256 of the wasm>-<engine hash>.cwasm` plus a
//! `.cwasm.crc32` sidecar holding the checksum and length of the artifact.
//! wasmtime's `deserialize_file` checks the artifact's header and engine
//! compatibility but not its body, and a flipped byte in machine code must
//! never run, so every load verifies the checksum first. Entries are written
//! to a temporary file and renamed, so readers never see half an entry.
//! `digests/` remembers which digest a component file had, by the file's
//! identity (see `FileIdentity`), so a warm start need not hash it again.
//!
//! With `reuse_code` (`isola dev`), the cache also remembers the last wasm
//! it compiled or loaded for each path and that wasm's entry. When the path's
//! next component differs from it only in the contents of core modules'
//! data sections (`differs_only_in_data`: a JS worker's edit, whose build
//! changes nothing but the Wizer snapshot's data), its artifact is made from
//! the last one's machine code (the vendored wasmtime's
//! `Engine::precompile_component_reusing_code`) instead of compiled: the
//! same artifact, without translating and hashing every function again.

use std::collections::HashMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::EngineError;

/// Where a loaded component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Already loaded by this process (another worker uses the same wasm).
    Memory,
    /// Loaded from a `.cwasm` file on disk.
    Disk,
    /// Compiled now (and written to the cache).
    Compiled,
}

/// A compiled component and how it was obtained.
#[derive(Clone)]
pub struct LoadedComponent {
    pub component: Component,
    pub outcome: CacheOutcome,
    /// The sha256 of the wasm bytes, hex encoded.
    pub digest: String,
}

/// Counters since start-up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub memory_hits: u64,
    pub disk_hits: u64,
    pub compiled: u64,
    pub discarded: u64,
    /// Loads that found the file's digest by its identity, without reading it.
    pub remembered_digests: u64,
    /// Of `compiled`, the artifacts made from a path's last one's code
    /// (`EngineOptions::reuse_code`).
    pub reused_code: u64,
}

type Slot = Arc<Mutex<Option<Component>>>;

/// The compile cache of one engine.
pub struct CompileCache {
    dir: PathBuf,
    engine_hash: String,
    /// One slot per wasm digest: concurrent loads of the same wasm wait on
    /// the slot's lock, so it is compiled once.
    loaded: Mutex<HashMap<String, Slot>>,
    /// Held while compiling.
    compiling: Mutex<()>,
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    compiled: AtomicU64,
    discarded: AtomicU64,
    remembered_digests: AtomicU64,
    reused_code: AtomicU64,
    /// How long a component file must have been left alone before its
    /// digest is remembered (see [`FileIdentity`]).
    settle: Duration,
    /// With `reuse_code`: each path's last component (see the module's
    /// documentation).
    previous: Option<Mutex<HashMap<PathBuf, Previous>>>,
}

mod entry;
mod identity;
mod reuse;
#[cfg(test)]
mod tests;

pub(crate) use entry::write_atomically;
use entry::{checksum_path, deserialize_artifact, verify_checksum, write_entry};
use identity::FileIdentity;
use reuse::Previous;

impl CompileCache {
    pub(crate) fn open(engine: &Engine, dir: &Path) -> Result<Self, EngineError> {
        fs::create_dir_all(dir).map_err(|source| EngineError::CacheDir {
            path: dir.to_owned(),
            source,
        })?;
        Ok(CompileCache {
            dir: dir.to_owned(),
            engine_hash: engine_hash(engine),
            loaded: Mutex::default(),
            compiling: Mutex::default(),
            memory_hits: AtomicU64::new(0),
            disk_hits: AtomicU64::new(0),
            compiled: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            remembered_digests: AtomicU64::new(0),
            reused_code: AtomicU64::new(0),
            settle: Duration::from_secs(2),
            previous: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            memory_hits: self.memory_hits.load(Ordering::Relaxed),
            disk_hits: self.disk_hits.load(Ordering::Relaxed),
            compiled: self.compiled.load(Ordering::Relaxed),
            discarded: self.discarded.load(Ordering::Relaxed),
            remembered_digests: self.remembered_digests.load(Ordering::Relaxed),
            reused_code: self.reused_code.load(Ordering::Relaxed),
        }
    }

    /// The cache file an artifact for `wasm` would live in.
    pub fn entry_path(&self, wasm: &[u8]) -> PathBuf {
        self.entry_path_for(&sha256_hex(wasm))
    }

    /// The cache file for the wasm whose sha256 is `digest` (hex).
    pub fn entry_path_for(&self, digest: &str) -> PathBuf {
        self.dir
            .join(format!("{digest}-{}.cwasm", self.engine_hash))
    }

    pub(crate) fn load_file(
        &self,
        engine: &Engine,
        path: PathBuf,
    ) -> Result<LoadedComponent, EngineError> {
        let read_error = |source| EngineError::Read {
            path: path.clone(),
            source,
        };
        let identity = FileIdentity::of(&path).map_err(read_error)?;
        // Reusing code needs the wasm of every load, so the file is read.
        if self.previous.is_none()
            && let Some(digest) = self.remembered_digest(&path, identity.as_ref())
            && let Some(loaded) = self.lookup(engine, &path, digest, None)?
        {
            self.remembered_digests.fetch_add(1, Ordering::Relaxed);
            return Ok(loaded);
        }
        let wasm = fs::read(&path).map_err(read_error)?;
        let loaded = self.load(engine, &path, &wasm)?;
        self.remember_digest(&path, identity.as_ref(), &loaded.digest);
        Ok(loaded)
    }

    /// Compile `wasm` (read from `path`, named in errors) or load it from the
    /// cache.
    pub fn load(
        &self,
        engine: &Engine,
        path: &Path,
        wasm: &[u8],
    ) -> Result<LoadedComponent, EngineError> {
        check_is_wasm(path, wasm)?;
        let loaded = self.lookup(engine, path, sha256_hex(wasm), Some(wasm))?;
        Ok(loaded.expect("a lookup given the wasm compiles it"))
    }

    /// The component for the wasm whose sha256 is `digest`: from memory,
    /// from disk, or compiled from `wasm` when that is given (`None` when it
    /// is not and nothing is cached).
    fn lookup(
        &self,
        engine: &Engine,
        path: &Path,
        digest: String,
        wasm: Option<&[u8]>,
    ) -> Result<Option<LoadedComponent>, EngineError> {
        let slot = self
            .loaded
            .lock()
            .expect("compile cache lock poisoned")
            .entry(digest.clone())
            .or_default()
            .clone();
        let mut slot = slot.lock().expect("compile cache slot poisoned");
        if let Some(component) = slot.as_ref() {
            self.memory_hits.fetch_add(1, Ordering::Relaxed);
            if let Some(wasm) = wasm
                && self.previous.is_some()
                && let Ok(wasm) = crate::adapt::as_component(path, wasm)
            {
                self.remember_previous(path, &wasm, &self.entry_path_for(&digest));
            }
            return Ok(Some(LoadedComponent {
                component: component.clone(),
                outcome: CacheOutcome::Memory,
                digest,
            }));
        }
        let entry = self.entry_path_for(&digest);
        let (component, outcome) = match self.load_entry(engine, &entry) {
            Some(component) => {
                self.disk_hits.fetch_add(1, Ordering::Relaxed);
                tracing::info!(component = %path.display(), entry = %entry.display(), "compile cache hit");
                if let Some(wasm) = wasm
                    && self.previous.is_some()
                    && let Ok(wasm) = crate::adapt::as_component(path, wasm)
                {
                    self.remember_previous(path, &wasm, &entry);
                }
                (component, CacheOutcome::Disk)
            }
            None => {
                let Some(wasm) = wasm else {
                    return Ok(None);
                };
                // One compilation at a time: each one already spreads its
                // functions over every core, and the next one then finds
                // the functions it shares with this one (all of the JS
                // engine, for JS workers) in the incremental cache instead
                // of compiling them a second time in parallel.
                let _one_at_a_time = self.compiling.lock().expect("compile lock");
                let started = Instant::now();
                // The entry stays under the digest of the file as given, so
                // a core module is adapted only when it is compiled.
                let wasm = crate::adapt::as_component(path, wasm)?;
                let compile_error = |e: wasmtime::Error| EngineError::Compile {
                    path: path.to_owned(),
                    reason: format!("{e:#}"),
                };
                let reused = self.reuse_previous_code(engine, path, &wasm);
                let artifact = match &reused {
                    Some(artifact) => artifact.clone(),
                    None => engine.precompile_component(&wasm).map_err(compile_error)?,
                };
                self.compiled.fetch_add(1, Ordering::Relaxed);
                if reused.is_some() {
                    self.reused_code.fetch_add(1, Ordering::Relaxed);
                }
                release_freed_heap();
                tracing::info!(
                    component = %path.display(),
                    entry = %entry.display(),
                    compile_ms = started.elapsed().as_millis() as u64,
                    reused_code = reused.is_some(),
                    "compile cache miss: compiled"
                );
                if let Err(e) = write_entry(&entry, &artifact) {
                    // A read-only or full cache directory costs a recompile
                    // next time; it must not stop the worker from serving.
                    tracing::warn!(entry = %entry.display(), "cannot write compile cache entry: {e}");
                }
                let component = match deserialize_artifact(engine, &entry, &artifact) {
                    Ok(component) => component,
                    // An artifact made from another's code that does not
                    // load: compile after all (never expected).
                    Err(e) if reused.is_some() => {
                        tracing::warn!(component = %path.display(), "the artifact made from the last one's code does not load ({e:#}); compiling");
                        let _ = fs::remove_file(&entry);
                        let artifact = engine.precompile_component(&wasm).map_err(compile_error)?;
                        if let Err(e) = write_entry(&entry, &artifact) {
                            tracing::warn!(entry = %entry.display(), "cannot write compile cache entry: {e}");
                        }
                        deserialize_artifact(engine, &entry, &artifact).map_err(compile_error)?
                    }
                    Err(e) => return Err(compile_error(e)),
                };
                self.remember_previous(path, &wasm, &entry);
                (component, CacheOutcome::Compiled)
            }
        };
        *slot = Some(component.clone());
        Ok(Some(LoadedComponent {
            component,
            outcome,
            digest,
        }))
    }

    /// Load a cache entry if it exists and is intact; a damaged or foreign
    /// entry is logged, deleted and reported as absent.
    fn load_entry(&self, engine: &Engine, entry: &Path) -> Option<Component> {
        if !entry.exists() {
            return None;
        }
        match verify_checksum(entry).and_then(|()| {
            // SAFETY: the file was written by this cache (its checksum
            // matches what we recorded when we wrote it) and wasmtime checks
            // that it was compiled by a compatible engine.
            #[allow(unsafe_code)]
            unsafe {
                Component::deserialize_file(engine, entry).map_err(|e| format!("{e:#}"))
            }
        }) {
            Ok(component) => Some(component),
            Err(reason) => {
                self.discarded.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(entry = %entry.display(), %reason, "discarding damaged compile cache entry; recompiling");
                let _ = fs::remove_file(entry);
                let _ = fs::remove_file(checksum_path(entry));
                None
            }
        }
    }
}

/// Refuse what is not WebAssembly at all before hashing and compiling it.
/// Components pass, and so do core modules: they are adapted (see `adapt`)
/// when compiled.
fn check_is_wasm(path: &Path, wasm: &[u8]) -> Result<(), EngineError> {
    if wasmparser::Parser::is_component(wasm) || wasmparser::Parser::is_core_wasm(wasm) {
        return Ok(());
    }
    // The WebAssembly text format is accepted too (wasmtime parses it), so
    // only reject what is neither binary wasm nor plausible WAT.
    let looks_like_wat = std::str::from_utf8(wasm)
        .map(|text| text.trim_start().starts_with('(') || text.trim_start().starts_with(";;"))
        .unwrap_or(false);
    if looks_like_wat {
        Ok(())
    } else {
        Err(EngineError::NotWasm {
            path: path.to_owned(),
        })
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A stable digest of everything that makes an artifact loadable by this
/// engine (wasmtime version, target, compiler settings).
fn engine_hash(engine: &Engine) -> String {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            unreachable!("only `write` is used")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex(&hasher.0.finalize()[..8])
}

/// Give the heap Cranelift freed back to the system. Compiling a JS
/// component (StarlingMonkey, ~14 MB of wasm) peaks at a few hundred MB of
/// heap spread over the compile threads' malloc arenas, and glibc keeps all
/// of it; without this a server that compiled one JS worker idles at
/// ~370 MB instead of ~50 MB.
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas
    // to the kernel; it takes no pointers and is thread-safe.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}
