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
use std::time::{Duration, Instant, SystemTime};

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

/// A path's last component: its wasm (as compiled, after `adapt`) and the
/// cache entry holding its artifact.
struct Previous {
    wasm: Arc<Vec<u8>>,
    entry: PathBuf,
}

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

    /// Turn on or off making artifacts from a path's last one when only data
    /// changed (`EngineOptions::reuse_code`).
    pub(crate) fn reuse_code(&mut self, on: bool) {
        self.previous = on.then(Mutex::default);
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

    /// With `reuse_code`: the artifact of `wasm` made from the last one
    /// compiled or loaded for `path`, if the two differ only in their core
    /// modules' data and that works; `None` (compile it) otherwise.
    fn reuse_previous_code(&self, engine: &Engine, path: &Path, wasm: &[u8]) -> Option<Vec<u8>> {
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

    fn remember_previous(&self, path: &Path, wasm: &[u8], entry: &Path) {
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

    /// The digest recorded for the file at `path`, if the file still is
    /// what it was when it was recorded.
    fn remembered_digest(&self, path: &Path, identity: Option<&FileIdentity>) -> Option<String> {
        let identity = identity?;
        let memo = fs::read_to_string(self.digest_memo_path(path)).ok()?;
        let (recorded, digest) = memo.trim_end().rsplit_once(' ')?;
        (recorded == identity.to_string() && digest.len() == 64).then(|| digest.to_owned())
    }

    fn remember_digest(&self, path: &Path, identity: Option<&FileIdentity>, digest: &str) {
        let Some(identity) = identity.filter(|identity| identity.settled(self.settle)) else {
            return;
        };
        let memo = self.digest_memo_path(path);
        let written = memo
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| write_atomically(&memo, format!("{identity} {digest}\n").as_bytes()));
        if let Err(e) = written {
            tracing::debug!(memo = %memo.display(), "cannot record a component digest: {e}");
        }
    }

    fn digest_memo_path(&self, path: &Path) -> PathBuf {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let key = sha256_hex(absolute.as_os_str().as_encoded_bytes());
        self.dir.join("digests").join(key)
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

fn deserialize_artifact(
    engine: &Engine,
    entry: &Path,
    artifact: &[u8],
) -> wasmtime::Result<Component> {
    // Prefer the file just written: it is mmapped, so its pages are shared
    // and reclaimable instead of living on the heap.
    if verify_checksum(entry).is_ok() {
        // SAFETY: written by us a moment ago from `artifact`, checksum verified.
        #[allow(unsafe_code)]
        if let Ok(component) = unsafe { Component::deserialize_file(engine, entry) } {
            return Ok(component);
        }
    }
    // SAFETY: `artifact` was produced by `precompile_component` of this engine.
    #[allow(unsafe_code)]
    unsafe {
        Component::deserialize(engine, artifact)
    }
}

fn checksum_path(entry: &Path) -> PathBuf {
    let mut name = entry.as_os_str().to_owned();
    name.push(".crc32");
    PathBuf::from(name)
}

/// The sidecar's one line, written and checked by the same format.
fn checksum_line(crc: u32, len: u64) -> String {
    format!("{crc:08x} {len}\n")
}

fn verify_checksum(entry: &Path) -> Result<(), String> {
    use std::io::Read;
    // Streamed through a small buffer: a JS artifact is ~45 MB, and reading
    // it whole took a fresh 45 MB of heap (page faults, then `munmap`) on
    // every start.
    let mut file = fs::File::open(entry).map_err(|e| format!("unreadable: {e}"))?;
    let mut buffer = vec![0; 256 << 10];
    let mut crc = crc32fast::Hasher::new();
    let mut len = 0u64;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                crc.update(&buffer[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("unreadable: {e}")),
        }
    }
    matches_recorded_checksum(entry, crc.finalize(), len)
}

/// An entry's artifact, read whole and checked against its checksum.
fn read_entry(entry: &Path) -> Result<Vec<u8>, String> {
    let artifact = fs::read(entry).map_err(|e| format!("unreadable: {e}"))?;
    matches_recorded_checksum(entry, crc32fast::hash(&artifact), artifact.len() as u64)?;
    Ok(artifact)
}

/// Whether `crc` and `len` are what was recorded beside `entry` when it was
/// written.
fn matches_recorded_checksum(entry: &Path, crc: u32, len: u64) -> Result<(), String> {
    let expected = fs::read_to_string(checksum_path(entry))
        .map_err(|e| format!("missing checksum file: {e}"))?;
    if checksum_line(crc, len) == expected {
        Ok(())
    } else {
        Err("checksum mismatch (truncated or corrupted)".into())
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

fn write_entry(entry: &Path, artifact: &[u8]) -> std::io::Result<()> {
    write_atomically(
        &checksum_path(entry),
        checksum_line(crc32fast::hash(artifact), artifact.len() as u64).as_bytes(),
    )?;
    write_atomically(entry, artifact)
}

/// Write `bytes` to a temporary file beside `path` and rename it there, so
/// readers (in this process or another) never see half a file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    // Unique per process and per write: compiler threads write concurrently.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// What identifies a file's content without reading it: device, inode,
/// size, and modification and change times to the nanosecond. A warm start
/// then need not read and hash a 14 MB JS component (~15 ms) to find its
/// cache entry. As in git's index and ccache's direct mode, a digest is
/// recorded only for a file left alone for a while (2 s), so a rewrite
/// within the timestamps' granularity cannot keep the old identity. `None`
/// where there are no inodes (non-Unix): the file is always hashed.
struct FileIdentity {
    #[cfg(unix)]
    fields: [i64; 7],
}

impl FileIdentity {
    #[cfg(unix)]
    fn of(path: &Path) -> std::io::Result<Option<FileIdentity>> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path)?;
        Ok(Some(FileIdentity {
            fields: [
                m.dev() as i64,
                m.ino() as i64,
                m.size() as i64,
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            ],
        }))
    }

    #[cfg(not(unix))]
    fn of(path: &Path) -> std::io::Result<Option<FileIdentity>> {
        fs::metadata(path).map(|_| None)
    }

    /// Whether the file was last modified or changed over `settle` ago.
    fn settled(&self, settle: Duration) -> bool {
        #[cfg(unix)]
        {
            let [.., mtime, mtime_ns, ctime, ctime_ns] = self.fields;
            let at = |secs: i64, nanos: i64| {
                Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
            };
            let last = at(mtime, mtime_ns).max(at(ctime, ctime_ns));
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            now.checked_sub(last).is_some_and(|age| age > settle)
        }
        #[cfg(not(unix))]
        {
            let _ = settle;
            false
        }
    }
}

impl std::fmt::Display for FileIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        #[cfg(unix)]
        for (i, field) in self.fields.iter().enumerate() {
            write!(f, "{}{field}", if i == 0 { "" } else { " " })?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_COMPONENT: &[u8] = b"(component)";

    /// Damage `entry` so that wasmtime's own header checks still pass.
    fn flip_middle_byte(entry: &Path) {
        let mut bytes = fs::read(entry).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        fs::write(entry, &bytes).unwrap();
    }

    fn engine() -> Engine {
        Engine::new(&crate::engine_config(&crate::EngineOptions::new("unused"))).unwrap()
    }

    #[test]
    fn entry_name_is_digest_and_engine_hash() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = CompileCache::open(&engine, dir.path()).unwrap();
        let name = cache.entry_path(EMPTY_COMPONENT);
        let name = name.file_name().unwrap().to_str().unwrap();
        let (digest, rest) = name.split_once('-').unwrap();
        assert_eq!(digest, sha256_hex(EMPTY_COMPONENT));
        assert_eq!(rest, format!("{}.cwasm", engine_hash(&engine)));
        assert_eq!(engine_hash(&engine), engine_hash(&self::engine()));
    }

    #[test]
    fn compiles_once_then_loads_from_memory_and_disk() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = CompileCache::open(&engine, dir.path()).unwrap();
        let path = Path::new("empty.wat");
        assert_eq!(
            cache.load(&engine, path, EMPTY_COMPONENT).unwrap().outcome,
            CacheOutcome::Compiled
        );
        assert_eq!(
            cache.load(&engine, path, EMPTY_COMPONENT).unwrap().outcome,
            CacheOutcome::Memory
        );
        assert!(cache.entry_path(EMPTY_COMPONENT).exists());

        let fresh = CompileCache::open(&engine, dir.path()).unwrap();
        assert_eq!(
            fresh.load(&engine, path, EMPTY_COMPONENT).unwrap().outcome,
            CacheOutcome::Disk
        );
    }

    #[test]
    fn damaged_entries_are_discarded_and_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let path = Path::new("empty.wat");
        CompileCache::open(&engine, dir.path())
            .unwrap()
            .load(&engine, path, EMPTY_COMPONENT)
            .unwrap();
        let entry = CompileCache::open(&engine, dir.path())
            .unwrap()
            .entry_path(EMPTY_COMPONENT);

        // A flipped byte in the middle: wasmtime's own header checks pass.
        flip_middle_byte(&entry);
        let cache = CompileCache::open(&engine, dir.path()).unwrap();
        assert_eq!(
            cache.load(&engine, path, EMPTY_COMPONENT).unwrap().outcome,
            CacheOutcome::Compiled
        );
        assert_eq!(cache.stats().discarded, 1);

        // Truncated, and then missing its checksum.
        let len = fs::metadata(&entry).unwrap().len();
        fs::File::options()
            .write(true)
            .open(&entry)
            .unwrap()
            .set_len(len / 3)
            .unwrap();
        let cache = CompileCache::open(&engine, dir.path()).unwrap();
        assert_eq!(
            cache.load(&engine, path, EMPTY_COMPONENT).unwrap().outcome,
            CacheOutcome::Compiled
        );
        fs::remove_file(checksum_path(&entry)).unwrap();
        let cache = CompileCache::open(&engine, dir.path()).unwrap();
        assert_eq!(
            cache.load(&engine, path, EMPTY_COMPONENT).unwrap().outcome,
            CacheOutcome::Compiled
        );
        assert_eq!(
            CompileCache::open(&engine, dir.path())
                .unwrap()
                .load(&engine, path, EMPTY_COMPONENT)
                .unwrap()
                .outcome,
            CacheOutcome::Disk
        );
    }

    #[test]
    fn warm_loads_find_a_settled_file_by_its_identity_and_notice_changes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache_dir = dir.path().join("cache");
        let open = || CompileCache {
            settle: Duration::ZERO,
            ..CompileCache::open(&engine, &cache_dir).unwrap()
        };
        let file = dir.path().join("worker.wat");
        fs::write(&file, EMPTY_COMPONENT).unwrap();
        let first = open();
        let loaded = first.load_file(&engine, file.clone()).unwrap();
        assert_eq!(loaded.outcome, CacheOutcome::Compiled);
        assert_eq!(first.stats().remembered_digests, 0);

        // Found by identity: not read, not hashed.
        let warm = open();
        let loaded = warm.load_file(&engine, file.clone()).unwrap();
        assert_eq!(
            (loaded.outcome, loaded.digest),
            (CacheOutcome::Disk, sha256_hex(EMPTY_COMPONENT))
        );
        assert_eq!(warm.stats().remembered_digests, 1);

        // A damaged entry found through the remembered digest is still
        // discarded, and the file read and compiled again.
        let entry = warm.entry_path(EMPTY_COMPONENT);
        flip_middle_byte(&entry);
        let repaired = open();
        let loaded = repaired.load_file(&engine, file.clone()).unwrap();
        assert_eq!(loaded.outcome, CacheOutcome::Compiled);
        assert_eq!(
            (
                repaired.stats().discarded,
                repaired.stats().remembered_digests
            ),
            (1, 0)
        );

        // New content: the identity no longer matches, so the file is read.
        let other: &[u8] = b"(component (core module))";
        fs::write(&file, other).unwrap();
        let changed = open();
        let loaded = changed.load_file(&engine, file.clone()).unwrap();
        assert_eq!(
            (loaded.outcome, loaded.digest),
            (CacheOutcome::Compiled, sha256_hex(other))
        );
        assert_eq!(changed.stats().remembered_digests, 0);

        // A file changed a moment ago is hashed every time until it settles.
        let cautious = || CompileCache::open(&engine, &dir.path().join("cautious")).unwrap();
        cautious().load_file(&engine, file.clone()).unwrap();
        let again = cautious();
        assert_eq!(
            again.load_file(&engine, file.clone()).unwrap().outcome,
            CacheOutcome::Disk
        );
        assert_eq!(again.stats().remembered_digests, 0);
    }

    #[test]
    fn refuses_what_is_not_webassembly() {
        let path = Path::new("x.wasm");
        assert!(matches!(
            check_is_wasm(path, b"#!/bin/sh\necho hi\n"),
            Err(EngineError::NotWasm { .. })
        ));
        assert!(check_is_wasm(path, EMPTY_COMPONENT).is_ok());
        // Core modules are adapted when compiled.
        assert!(check_is_wasm(path, b"\0asm\x01\0\0\0").is_ok());
    }

    /// A component of two core modules, each with a memory, a data segment
    /// and functions (one called through a table), differing between
    /// calls only in `data_a` (whose length moves module `b`'s code) and
    /// `data_b`; `extra` adds a function to `b`.
    fn two_module_component(data_a: &str, data_b: &str, extra: bool) -> Vec<u8> {
        let extra = if extra {
            "(func (export \"extra\"))"
        } else {
            ""
        };
        wat::parse_str(format!(
            r#"(component
              (core module $a
                (memory (export "memory") 1)
                (type $t (func (result i32)))
                (table 2 funcref)
                (elem (i32.const 0) $one $two)
                (data (i32.const 16) "{data_a}")
                (func $one (result i32) i32.const 16 i32.load)
                (func $two (result i32) i32.const 20 i32.load)
                (func (export "get") (result i32)
                  (call_indirect (type $t) (i32.const 0))
                  (call_indirect (type $t) (i32.const 1))
                  i32.add)
                (func (export "boom") unreachable))
              (core module $b
                (memory 1)
                (data (i32.const 0) "{data_b}")
                (func (export "get") (result i32) i32.const 0 i32.load)
                (func (export "boom") (call $deeper))
                (func $deeper unreachable)
                {extra})
              (core instance $ia (instantiate $a))
              (core instance $ib (instantiate $b))
              (func (export "a") (result u32) (canon lift (core func $ia "get")))
              (func (export "b") (result u32) (canon lift (core func $ib "get")))
              (func (export "boom-b") (canon lift (core func $ib "boom"))))"#
        ))
        .unwrap()
    }

    fn le(bytes: &[u8]) -> u32 {
        u32::from_le_bytes(bytes[..4].try_into().unwrap())
    }

    /// The ELF sections of an artifact, by name, in order.
    fn sections(artifact: &[u8]) -> Vec<(String, Vec<u8>)> {
        use object::{Object as _, ObjectSection as _};
        let elf = object::read::elf::ElfFile64::<object::Endianness>::parse(artifact).unwrap();
        elf.sections()
            .map(|s| (s.name().unwrap().to_owned(), s.data().unwrap().to_vec()))
            .collect()
    }

    fn call(engine: &Engine, artifact: &[u8], export: &str) -> Result<u32, String> {
        // SAFETY: made by this engine's precompile functions in this test.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, artifact) }.unwrap();
        let linker = wasmtime::component::Linker::<()>::new(engine);
        let mut store = wasmtime::Store::new(engine, ());
        store.set_fuel(u64::MAX).unwrap();
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = linker.instantiate(&mut store, &component).unwrap();
        if export == "boom-b" {
            let f = instance
                .get_typed_func::<(), ()>(&mut store, export)
                .unwrap();
            let trap = f.call(&mut store, ()).unwrap_err();
            let frames = trap.downcast_ref::<wasmtime::WasmBacktrace>().unwrap();
            return Err(format!("{frames}"));
        }
        let f = instance
            .get_typed_func::<(), (u32,)>(&mut store, export)
            .unwrap();
        Ok(f.call(&mut store, ()).unwrap().0)
    }

    #[test]
    fn an_artifact_made_from_anothers_code_is_the_one_compiled() {
        let engine = engine();
        let old = two_module_component("abcdefgh", "wxyz", false);
        // Longer data in `a`: `b`'s code moves; other data in `b`.
        let new = two_module_component("ABCDEFGHijklmnopqrstuvwxyz0123456789", "WXYZ", false);
        assert!(differs_only_in_data(&old, &new));
        let base = engine.precompile_component(&old).unwrap();
        let fresh = engine.precompile_component(&new).unwrap();
        let reused = engine
            .precompile_component_reusing_code(&new, &base)
            .unwrap();
        let (fresh_sections, reused_sections) = (sections(&fresh), sections(&reused));
        let names = |s: &[(String, Vec<u8>)]| s.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&fresh_sections), names(&reused_sections));
        for ((name, fresh), (_, reused)) in fresh_sections.iter().zip(&reused_sections) {
            assert!(fresh == reused, "section {name} differs");
        }
        assert!(
            fresh == reused,
            "the artifacts differ outside their sections"
        );

        assert_eq!(call(&engine, &reused, "a"), Ok(le(b"ABCD") + le(b"EFGH")));
        assert_eq!(call(&engine, &reused, "b"), Ok(le(b"WXYZ")));
        assert_eq!(call(&engine, &base, "a"), Ok(le(b"abcd") + le(b"efgh")));
        // The trap's frames as a fresh compile gives them.
        let trap = call(&engine, &reused, "boom-b").unwrap_err();
        assert!(trap.contains("b!deeper"), "{trap}");
        assert_eq!(trap, call(&engine, &fresh, "boom-b").unwrap_err());

        // Nothing moved: the same, too.
        let same_length = two_module_component("ABCDEFGH", "WXYZ", false);
        let reused = engine
            .precompile_component_reusing_code(&same_length, &base)
            .unwrap();
        assert!(reused == engine.precompile_component(&same_length).unwrap());
    }

    #[test]
    fn code_is_reused_only_when_data_alone_differs() {
        let engine = engine();
        let old = two_module_component("abcdefgh", "wxyz", false);
        let base = engine.precompile_component(&old).unwrap();
        // Another function: refused by the check and by wasmtime.
        let extra = two_module_component("abcdefgh", "wxyz", true);
        assert!(!differs_only_in_data(&old, &extra));
        assert!(
            engine
                .precompile_component_reusing_code(&extra, &base)
                .is_err()
        );
        // Other code, same shape: refused by the check.
        let mut changed = old.clone();
        let at = changed
            .windows(3)
            .position(|w| w == [0x41, 0x10, 0x28]) // i32.const 16; i32.load
            .unwrap();
        changed[at + 1] = 0x11;
        assert!(!differs_only_in_data(&old, &changed));
        // Identical binaries, text, core modules and garbage are not it.
        assert!(!differs_only_in_data(&old, &old));
        assert!(!differs_only_in_data(EMPTY_COMPONENT, EMPTY_COMPONENT));
        assert!(!differs_only_in_data(&old, b"\0asm\x01\0\0\0"));
        assert!(!differs_only_in_data(&old, &old[..old.len() / 2]));
        // Not an artifact.
        assert!(
            engine
                .precompile_component_reusing_code(&old, b"nope")
                .is_err()
        );
    }

    #[test]
    fn the_cache_reuses_a_paths_last_code_when_data_alone_changed() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let mut cache = CompileCache::open(&engine, dir.path()).unwrap();
        cache.reuse_code(true);
        let path = Path::new("worker.wasm");
        let old = two_module_component("abcdefgh", "wxyz", false);
        let new = two_module_component("ABCDEFGHIJ", "WXYZ", false);
        let extra = two_module_component("abcdefgh", "wxyz", true);
        assert_eq!(
            cache.load(&engine, path, &old).unwrap().outcome,
            CacheOutcome::Compiled
        );
        assert_eq!(cache.stats().reused_code, 0);
        assert_eq!(
            cache.load(&engine, path, &new).unwrap().outcome,
            CacheOutcome::Compiled
        );
        assert_eq!(cache.stats().reused_code, 1);
        assert!(
            fs::read(cache.entry_path(&new)).unwrap() == engine.precompile_component(&new).unwrap()
        );
        // Code changed: compiled.
        cache.load(&engine, path, &extra).unwrap();
        assert_eq!((cache.stats().compiled, cache.stats().reused_code), (3, 1));
        // Another path's last component is not this one's.
        let other = two_module_component("0123", "wxyz", false);
        cache
            .load(&engine, Path::new("other.wasm"), &other)
            .unwrap();
        assert_eq!(cache.stats().reused_code, 1);
        // A damaged last entry: compiled.
        flip_middle_byte(&cache.entry_path(&other));
        let again = two_module_component("01234", "wxyz", false);
        cache
            .load(&engine, Path::new("other.wasm"), &again)
            .unwrap();
        assert_eq!(cache.stats().reused_code, 1);

        // Without the option nothing is reused.
        let plain = CompileCache::open(&engine, &dir.path().join("plain")).unwrap();
        plain.load(&engine, path, &old).unwrap();
        plain.load(&engine, path, &new).unwrap();
        assert_eq!(plain.stats().reused_code, 0);
    }
}
