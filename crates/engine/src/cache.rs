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
    /// How long a component file must have been left alone before its
    /// digest is remembered (see [`FileIdentity`]).
    settle: Duration,
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
            settle: Duration::from_secs(2),
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
        if let Some(digest) = self.remembered_digest(&path, identity.as_ref())
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
                let artifact =
                    engine
                        .precompile_component(&wasm)
                        .map_err(|e| EngineError::Compile {
                            path: path.to_owned(),
                            reason: format!("{e:#}"),
                        })?;
                self.compiled.fetch_add(1, Ordering::Relaxed);
                release_freed_heap();
                tracing::info!(
                    component = %path.display(),
                    entry = %entry.display(),
                    compile_ms = started.elapsed().as_millis() as u64,
                    "compile cache miss: compiled"
                );
                if let Err(e) = write_entry(&entry, &artifact) {
                    // A read-only or full cache directory costs a recompile
                    // next time; it must not stop the worker from serving.
                    tracing::warn!(entry = %entry.display(), "cannot write compile cache entry: {e}");
                }
                let component = deserialize_artifact(engine, &entry, &artifact).map_err(|e| {
                    EngineError::Compile {
                        path: path.to_owned(),
                        reason: format!("{e:#}"),
                    }
                })?;
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
    let expected = fs::read_to_string(checksum_path(entry))
        .map_err(|e| format!("missing checksum file: {e}"))?;
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
    if checksum_line(crc.finalize(), len) == expected {
        Ok(())
    } else {
        Err("checksum mismatch (truncated or corrupted)".into())
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
}
