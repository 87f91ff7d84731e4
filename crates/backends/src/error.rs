//! The one error type of every binding call, as the guest sees it.

/// Why a binding call failed, as the guest sees it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BindingError {
    /// The caller broke a documented rule or limit; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// The backend failed (I/O, SQLite's message, ...).
    #[error("{0}")]
    Backend(String),
}

pub type Result<T, E = BindingError> = std::result::Result<T, E>;

/// A [`BindingError::Backend`] carrying `e`'s message.
pub(crate) fn backend_err(e: impl std::fmt::Display) -> BindingError {
    BindingError::Backend(e.to_string())
}
