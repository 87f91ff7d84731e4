//! Cache entries on disk: an artifact beside its checksum sidecar, written
//! atomically and verified before every load.

use std::fs;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

pub(super) fn deserialize_artifact(
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

pub(super) fn checksum_path(entry: &Path) -> PathBuf {
    let mut name = entry.as_os_str().to_owned();
    name.push(".crc32");
    PathBuf::from(name)
}

/// The sidecar's one line, written and checked by the same format.
fn checksum_line(crc: u32, len: u64) -> String {
    format!("{crc:08x} {len}\n")
}

pub(super) fn verify_checksum(entry: &Path) -> Result<(), String> {
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
pub(super) fn read_entry(entry: &Path) -> Result<Vec<u8>, String> {
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

pub(super) fn write_entry(entry: &Path, artifact: &[u8]) -> std::io::Result<()> {
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
