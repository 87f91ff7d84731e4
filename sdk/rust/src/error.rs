//! How binding calls fail.

use std::fmt;

use crate::bindings::isola::worker::types::Error as WitError;

/// Why a binding call (KV, D1, R2, Cache API, Analytics Engine) failed.
///
/// Binding methods return [`anyhow::Error`]; when the failure came from the
/// binding this is the error inside, so a handler can tell the cases apart:
///
/// ```ignore
/// match kv.get_text("key").await {
///     Ok(value) => { /* ... */ }
///     Err(error) => match error.downcast_ref::<BindingError>() {
///         Some(BindingError::Invalid(why)) => return Ok(Response::text(why.clone()).with_status(400)),
///         Some(BindingError::SubrequestLimit(_)) => return Ok(Response::empty(429)),
///         _ => return Err(error),
///     },
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindingError {
    /// An argument broke a documented rule or limit (key too long, value too
    /// large, unknown binding name...); the message says which.
    Invalid(String),
    /// The request has made as many subrequests and binding calls as its
    /// `subrequests` limit allows.
    SubrequestLimit(String),
    /// The backend failed. For D1 this is the database's own message.
    Backend(String),
}

impl BindingError {
    /// `invalid`, `subrequest-limit` or `backend`.
    pub fn kind(&self) -> &'static str {
        match self {
            BindingError::Invalid(_) => "invalid",
            BindingError::SubrequestLimit(_) => "subrequest-limit",
            BindingError::Backend(_) => "backend",
        }
    }

    /// What went wrong, as the host put it.
    pub fn message(&self) -> &str {
        match self {
            BindingError::Invalid(message)
            | BindingError::SubrequestLimit(message)
            | BindingError::Backend(message) => message,
        }
    }

    /// The binding error inside `error`, if it is one.
    pub fn find(error: &anyhow::Error) -> Option<&BindingError> {
        error.downcast_ref()
    }
}

/// `<kind>: <message>`, e.g. `invalid: key is longer than 512 bytes`.
impl fmt::Display for BindingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for BindingError {}

impl From<WitError> for BindingError {
    fn from(error: WitError) -> Self {
        match error {
            WitError::Invalid(message) => BindingError::Invalid(message),
            WitError::SubrequestLimit(message) => BindingError::SubrequestLimit(message),
            WitError::Backend(message) => BindingError::Backend(message),
        }
    }
}

/// Turn a binding call's result into the SDK's.
pub(crate) fn check<T>(result: Result<T, WitError>) -> anyhow::Result<T> {
    result.map_err(|error| BindingError::from(error).into())
}
