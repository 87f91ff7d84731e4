//! The host types behind the WIT resources a guest holds (`bindgen!` maps
//! each resource to one of these): a leaf, which the generated bindings
//! and the capability modules both use.

use std::sync::Arc;

use bytes::Bytes;
use isola_backends::{self as backend, BindingError};

/// An open KV namespace.
pub struct KvHandle(pub(super) backend::kv::KvNamespace);

/// An open SQL database.
pub struct SqlHandle(pub(super) Arc<dyn backend::sql::SqlDatabase>);

/// An open cache, by name.
pub struct CacheHandle(pub(super) String);

/// A stored response's body being read: what is left of it. Shared with
/// its endpoint, which may take it all.
pub struct CacheBodyHandle(pub(super) std::sync::Arc<std::sync::Mutex<Bytes>>);

/// A response being stored; `None` once its endpoint took it over.
pub struct CacheUploadHandle(
    pub(super) std::sync::Arc<std::sync::Mutex<Option<Box<dyn backend::cache::CacheUpload>>>>,
);

/// An open analytics dataset, by name.
pub struct DatasetHandle(pub(super) String);

/// An open queue producer, by queue name.
pub struct ProducerHandle(pub(super) String);

/// An open bucket, by name.
pub struct BucketHandle(pub(super) String);

/// An object body being read by the guest.
pub struct BodyHandle {
    pub(super) stream: backend::blob::BodyStream,
    /// What is left of the last chunk the backend gave.
    pub(super) pending: Bytes,
}

/// An object being written by the guest. The backend's upload runs in a
/// task of its own: hashing and writing are storage work, not the guest's,
/// so they must not count against its CPU limit (which measures the
/// guest's thread), and the guest can produce the next chunk meanwhile.
pub struct UploadHandle {
    pub(super) steps: tokio::sync::mpsc::Sender<UploadStep>,
    pub(super) outcome:
        tokio::sync::oneshot::Receiver<Result<backend::blob::ObjectInfo, BindingError>>,
}

pub(super) enum UploadStep {
    Chunk(Bytes),
    Finish,
}

impl UploadHandle {
    pub(super) fn spawn(mut upload: Box<dyn backend::blob::BlobUpload>) -> Self {
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
    pub(super) async fn failure(&mut self) -> BindingError {
        match (&mut self.outcome).await {
            Ok(Err(e)) => e,
            _ => BindingError::Backend("the upload was interrupted".into()),
        }
    }
}
