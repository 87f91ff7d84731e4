//! Cranelift's incremental compilation cache, kept on disk beside the
//! component cache.
//!
//! Every JavaScript worker carries the same ~9 MB StarlingMonkey engine, so
//! its functions compile to the same machine code in every worker: with this
//! cache the second JS worker reuses the first one's compiled functions and
//! compiles in a fraction of the time. Rust guests benefit less (their
//! standard-library functions repeat across guests).
//!
//! Entries are files named by the SHA-256 of Cranelift's key, written to a
//! temporary file and renamed, so concurrent compilers (several `isola`
//! processes sharing a state dir) never see half an entry. Cranelift checks
//! what it reads back (a stale or corrupt entry is recompiled), so a bad
//! file costs time, never correctness.

use std::borrow::Cow;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use wasmtime::CacheStore;

use crate::cache::write_atomically;

#[derive(Debug)]
pub(crate) struct IncrementalCache {
    dir: PathBuf,
}

impl IncrementalCache {
    pub(crate) fn new(dir: PathBuf) -> Self {
        IncrementalCache { dir }
    }

    fn path_for(&self, key: &[u8]) -> PathBuf {
        let digest = format!("{:x}", Sha256::digest(key));
        // 256 subdirectories keep directories small (tens of thousands of
        // functions per JS engine).
        self.dir.join(&digest[..2]).join(&digest[2..])
    }
}

impl CacheStore for IncrementalCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        std::fs::read(self.path_for(key)).ok().map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let path = self.path_for(key);
        let dir = path.parent().expect("entries live in a subdirectory");
        std::fs::create_dir_all(dir).is_ok() && write_atomically(&path, &value).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_reads_back_entries_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let cache = IncrementalCache::new(dir.path().to_owned());
        assert!(cache.get(b"key").is_none());
        assert!(cache.insert(b"key", b"value".to_vec()));
        assert_eq!(cache.get(b"key").as_deref(), Some(&b"value"[..]));
        assert!(cache.insert(b"key", b"newer".to_vec()));
        assert_eq!(cache.get(b"key").as_deref(), Some(&b"newer"[..]));
        assert!(cache.get(b"other").is_none());
    }
}
