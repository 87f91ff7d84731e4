//! CPU profiles of single requests, taken on demand from the admin
//! listener (`POST /profile`) and kept under `<state_dir>/profiles`: each
//! profile is `<name>.json` (the Firefox profiler's format) beside
//! `<name>.meta.json` (worker, request, samples), where `<name>` is
//! `<unix ms>-<worker>-<request id>`. The oldest are removed past
//! [`MAX_PROFILES`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use isola_runtime::{ProfileRequest, ProfileSink, RequestProfile};
use serde::{Deserialize, Serialize};

/// Profiles kept on disk; a new one past this removes the oldest.
pub const MAX_PROFILES: usize = 100;
/// Requests one `POST /profile` may arm.
pub const MAX_COUNT: u32 = 100;
/// Longest sampling interval, in milliseconds.
pub const MAX_INTERVAL_MS: u64 = 1000;

/// What `GET /profiles` lists for one profile.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProfileEntry {
    /// The file to fetch: `GET /profiles/<file>`.
    pub file: String,
    pub worker: String,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub samples: u64,
    pub bytes: u64,
    /// When the request finished, in Unix milliseconds.
    pub time_ms: u64,
}

/// The profiles directory of one server.
#[derive(Clone)]
pub struct ProfileStore {
    dir: Arc<PathBuf>,
}

impl ProfileStore {
    pub fn new(state_dir: &Path) -> Self {
        ProfileStore {
            dir: Arc::new(state_dir.join("profiles")),
        }
    }

    /// What to arm a worker with: `count` requests (under `path_prefix`),
    /// sampled every `interval`, written here.
    pub fn request(
        &self,
        count: u32,
        path_prefix: Option<String>,
        interval: Duration,
    ) -> ProfileRequest {
        ProfileRequest {
            count,
            path_prefix,
            interval,
            sink: self.sink(),
        }
    }

    fn sink(&self) -> ProfileSink {
        let store = self.clone();
        Arc::new(move |profile: RequestProfile| {
            let store = store.clone();
            // Off the guest's thread: the file may be megabytes.
            tokio::task::spawn_blocking(move || {
                if let Err(e) = store.write(&profile) {
                    tracing::warn!(worker = %profile.worker, request_id = %profile.request_id,
                        dir = %store.dir.display(), "cannot keep the profile: {e}");
                }
            });
        })
    }

    fn write(&self, profile: &RequestProfile) -> std::io::Result<()> {
        std::fs::create_dir_all(&*self.dir)?;
        let time_ms = crate::telemetry::unix_ms();
        let name = format!("{time_ms}-{}-{}", profile.worker, profile.request_id);
        let entry = ProfileEntry {
            file: format!("{name}.json"),
            worker: profile.worker.to_string(),
            request_id: profile.request_id.to_string(),
            method: profile.method.clone(),
            path: profile.path.clone(),
            samples: profile.samples,
            bytes: profile.json.len() as u64,
            time_ms,
        };
        // The profile first, its listing second: a listed profile is whole.
        write_atomically(&self.dir.join(&entry.file), &profile.json)?;
        let meta = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        write_atomically(&self.dir.join(format!("{name}.meta.json")), &meta)?;
        tracing::info!(worker = %entry.worker, request_id = %entry.request_id,
            samples = entry.samples, file = %entry.file, "request profiled");
        self.prune()
    }

    /// Remove the oldest profiles past [`MAX_PROFILES`].
    fn prune(&self) -> std::io::Result<()> {
        let entries = self.list()?;
        for old in entries.iter().skip(MAX_PROFILES) {
            let stem = old.file.trim_end_matches(".json");
            let _ = std::fs::remove_file(self.dir.join(format!("{stem}.meta.json")));
            let _ = std::fs::remove_file(self.dir.join(&old.file));
        }
        Ok(())
    }

    /// The profiles kept, newest first.
    pub fn list(&self) -> std::io::Result<Vec<ProfileEntry>> {
        let read = match std::fs::read_dir(&*self.dir) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut entries: Vec<ProfileEntry> = read
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".meta.json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect();
        entries.sort_by(|a, b| (b.time_ms, &b.file).cmp(&(a.time_ms, &a.file)));
        Ok(entries)
    }

    /// The profile `file`, as listed; `None` for a name that is not one.
    pub fn read(&self, file: &str) -> Option<Vec<u8>> {
        let listed = file.ends_with(".json")
            && !file.ends_with(".meta.json")
            && !file.starts_with('.')
            && file
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !listed {
            return None;
        }
        std::fs::read(self.dir.join(file)).ok()
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes)?;
    std::fs::rename(partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(worker: &str, id: &str) -> RequestProfile {
        RequestProfile {
            worker: worker.into(),
            request_id: id.into(),
            method: "GET".into(),
            path: "/x".into(),
            samples: 3,
            json: b"{\"meta\":{}}".to_vec(),
        }
    }

    #[test]
    fn profiles_are_listed_newest_first_read_back_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProfileStore::new(dir.path());
        assert!(store.list().unwrap().is_empty());
        store.write(&profile("app", "aaaa")).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        store.write(&profile("app", "bbbb")).unwrap();
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].request_id, "bbbb");
        assert_eq!((listed[0].samples, listed[0].path.as_str()), (3, "/x"));
        assert_eq!(
            store.read(&listed[1].file).as_deref(),
            Some(&b"{\"meta\":{}}"[..])
        );
        for bad in ["../x.json", "x.meta.json", ".json", "a/b.json", "x.txt"] {
            assert!(store.read(bad).is_none(), "{bad}");
        }
        for i in 0..MAX_PROFILES {
            store.write(&profile("app", &format!("id{i:04}"))).unwrap();
        }
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), MAX_PROFILES);
        assert!(listed.iter().all(|e| e.request_id != "aaaa"));
    }
}
