//! What a worker's binding calls work on: its bindings resolved at load
//! time, and the host side of each WIT resource a guest holds a handle to.
//! A leaf module: the generated bindings name these types, and the host
//! implementations (`env_bindings`) use them.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use isola_backends::{self as backend, Backends, BindingError};
use isola_config::WorkerConfig;

/// A worker's bindings, resolved once at load time.
pub(crate) struct WorkerBindings {
    pub kv: HashMap<String, backend::kv::KvNamespace>,
    pub sql: HashMap<String, Arc<dyn backend::sql::SqlDatabase>>,
    pub buckets: HashMap<String, String>,
    pub datasets: HashMap<String, String>,
    /// Producer binding → queue name.
    pub queues: HashMap<String, String>,
    pub backends: Backends,
    /// Cache API entries are kept per worker, so one worker can neither read
    /// nor poison another's cache.
    pub cache_scope: String,
}

impl WorkerBindings {
    pub fn new(config: &WorkerConfig, backends: &Backends) -> Result<Self, BindingError> {
        let mut sql = HashMap::new();
        for d1 in &config.d1_databases {
            sql.insert(d1.binding.clone(), backends.sql.open(&d1.database_name)?);
        }
        Ok(WorkerBindings {
            kv: config
                .kv_namespaces
                .iter()
                .map(|kv| {
                    let namespace = backend::kv::KvNamespace::new(backends.kv.clone(), &kv.id);
                    (kv.binding.clone(), namespace)
                })
                .collect(),
            sql,
            buckets: config
                .r2_buckets
                .iter()
                .map(|r2| (r2.binding.clone(), r2.bucket_name.clone()))
                .collect(),
            datasets: config
                .analytics_engine_datasets
                .iter()
                .map(|a| (a.binding.clone(), a.dataset.clone()))
                .collect(),
            queues: config
                .queue_producers
                .iter()
                .map(|p| (p.binding.clone(), p.queue.clone()))
                .collect(),
            backends: backends.clone(),
            cache_scope: config.name.clone(),
        })
    }
}

pub struct KvHandle(pub backend::kv::KvNamespace);
pub struct SqlHandle(pub Arc<dyn backend::sql::SqlDatabase>);
pub struct BucketHandle(pub String);
pub struct CacheHandle(pub String);
pub struct DatasetHandle(pub String);
pub struct ProducerHandle(pub String);

/// An object body being read by the guest.
pub struct BodyHandle {
    pub stream: backend::blob::BodyStream,
    /// What is left of the last chunk the backend gave.
    pub pending: Bytes,
}

/// An object being written by the guest. The backend's upload runs in a
/// task of its own: hashing and writing are storage work, not the guest's,
/// so they must not count against its CPU limit (which measures the
/// guest's thread), and the guest can produce the next chunk meanwhile.
pub struct UploadHandle {
    pub steps: tokio::sync::mpsc::Sender<UploadStep>,
    pub outcome: tokio::sync::oneshot::Receiver<Result<backend::blob::ObjectInfo, BindingError>>,
}

pub enum UploadStep {
    Chunk(Bytes),
    Finish,
}

impl UploadHandle {
    pub fn spawn(mut upload: Box<dyn backend::blob::BlobUpload>) -> Self {
        // A few chunks in flight: enough to overlap, little memory.
        let (steps, mut receiver) = tokio::sync::mpsc::channel(4);
        let (report, outcome) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let result = async {
                while let Some(step) = receiver.recv().await {
                    match step {
                        UploadStep::Chunk(chunk) => upload.write(chunk).await?,
                        UploadStep::Finish => return upload.finish().await.map(Some),
                    }
                }
                // The guest dropped the upload: dropping ours discards it.
                Ok(None)
            }
            .await;
            if let Some(result) = result.transpose() {
                let _ = report.send(result);
            }
        });
        UploadHandle { steps, outcome }
    }

    /// The backend's error once its task has stopped early.
    pub async fn failure(&mut self) -> BindingError {
        match (&mut self.outcome).await {
            Ok(Err(e)) => e,
            _ => BindingError::Backend("the upload was interrupted".into()),
        }
    }
}
