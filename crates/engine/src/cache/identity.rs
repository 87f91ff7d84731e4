//! Remembering a component file's digest by the file's identity.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{CompileCache, sha256_hex, write_atomically};

/// What identifies a file's content without reading it: device, inode,
/// size, and modification and change times to the nanosecond. A warm start
/// then need not read and hash a 14 MB JS component (~15 ms) to find its
/// cache entry. As in git's index and ccache's direct mode, a digest is
/// recorded only for a file left alone for a while (2 s), so a rewrite
/// within the timestamps' granularity cannot keep the old identity. `None`
/// where there are no inodes (non-Unix): the file is always hashed.
pub(super) struct FileIdentity {
    #[cfg(unix)]
    fields: [i64; 7],
}

impl FileIdentity {
    #[cfg(unix)]
    pub(super) fn of(path: &Path) -> std::io::Result<Option<FileIdentity>> {
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
    pub(super) fn of(path: &Path) -> std::io::Result<Option<FileIdentity>> {
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

impl CompileCache {
    /// The digest recorded for the file at `path`, if the file still is
    /// what it was when it was recorded.
    pub(super) fn remembered_digest(
        &self,
        path: &Path,
        identity: Option<&FileIdentity>,
    ) -> Option<String> {
        let identity = identity?;
        let memo = fs::read_to_string(self.digest_memo_path(path)).ok()?;
        let (recorded, digest) = memo.trim_end().rsplit_once(' ')?;
        (recorded == identity.to_string() && digest.len() == 64).then(|| digest.to_owned())
    }

    pub(super) fn remember_digest(
        &self,
        path: &Path,
        identity: Option<&FileIdentity>,
        digest: &str,
    ) {
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
}
