//! Why a worker or a plugin could not be loaded.

use isola_engine::EngineError;

/// Why a worker could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{path}: imports something Isola does not provide: {reason}")]
    UnknownImport { path: String, reason: String },
    #[error("{path}: does not export `wasi:http/incoming-handler` (the fetch handler): {reason}")]
    NoHandler { path: String, reason: String },
    #[error("cannot set up the host linker: {0}")]
    Linker(String),
    #[error("{path}: {reason}, but the component does not export `isola:worker/{handler}`")]
    MissingHandler {
        path: String,
        handler: &'static str,
        reason: String,
    },
    #[error("worker `{worker}`: cannot open its bindings: {reason}")]
    Bindings { worker: String, reason: String },
    #[error(
        "{path}: {reason}, but the worker's code defines no `{handler}` handler (the component's answer to `isola:worker/handlers`)"
    )]
    NotImplemented {
        path: String,
        handler: &'static str,
        reason: String,
    },
    #[error(
        "{path}: asked which handlers it implements (`isola:worker/handlers`), it failed: {reason}"
    )]
    HandlersQuestion { path: String, reason: String },
}
