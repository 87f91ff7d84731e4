//! How requests fail: the reasons clients see and what the log gets.

use wasmtime::Trap;

use crate::{Body, ERROR_HEADER, RequestId, full_body};

/// How a request failed, as the client and the log see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Fuel ran out: the CPU budget was spent.
    CpuLimit,
    /// The guest wanted more memory than `memory_mb`.
    MemoryLimit,
    /// The wall-clock deadline passed.
    WallLimit,
    /// A trap, a panic or an error returned by the guest.
    Exception,
    /// The handler returned without setting a response.
    NoResponse,
    /// The request cannot be given to a guest (e.g. it has no host).
    BadRequest,
    /// The guest failed after a binding call met a failing backend (a
    /// store that is down): the guest did not handle the `backend` error.
    Backend,
}

impl Failure {
    pub fn status(self) -> http::StatusCode {
        match self {
            Failure::CpuLimit | Failure::MemoryLimit | Failure::Backend => {
                http::StatusCode::SERVICE_UNAVAILABLE
            }
            Failure::WallLimit => http::StatusCode::GATEWAY_TIMEOUT,
            Failure::Exception | Failure::NoResponse => http::StatusCode::INTERNAL_SERVER_ERROR,
            Failure::BadRequest => http::StatusCode::BAD_REQUEST,
        }
    }

    /// The value of the `x-isola-error` header.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::CpuLimit => "cpu-limit",
            Failure::MemoryLimit => "memory-limit",
            Failure::WallLimit => "wall-limit",
            Failure::Exception => "exception",
            Failure::NoResponse => "no-response",
            Failure::BadRequest => "bad-request",
            Failure::Backend => "backend",
        }
    }

    /// `memory_limit_hit`: the guest was refused memory before it failed,
    /// which is why most languages trap (an allocation failure aborts).
    pub(crate) fn classify(error: &wasmtime::Error, memory_limit_hit: bool) -> Self {
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => Failure::CpuLimit,
            Some(Trap::Interrupt) => Failure::WallLimit,
            _ if memory_limit_hit => Failure::MemoryLimit,
            _ => Failure::Exception,
        }
    }

    /// Is this one of the limits (rather than a guest fault)?
    pub fn limit(self) -> Option<&'static str> {
        matches!(
            self,
            Failure::CpuLimit | Failure::WallLimit | Failure::MemoryLimit
        )
        .then(|| self.reason())
    }

    /// The response the client gets: a short body, the reason and the id.
    pub fn response(self, request_id: &RequestId) -> http::Response<Body> {
        let text = format!(
            "{} ({}); request id {request_id}",
            self.status().canonical_reason().unwrap_or("error"),
            self.reason()
        );
        error_response(self.status(), self.reason(), &text)
    }
}

/// A response the host makes itself: `x-isola-error: <reason>` and a one-line
/// plain-text body.
pub fn error_response(status: http::StatusCode, reason: &str, text: &str) -> http::Response<Body> {
    http::Response::builder()
        .status(status)
        .header(ERROR_HEADER, reason)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full_body(format!("{text}\n")))
        .expect("valid error response")
}

/// A failed request, ready to be logged.
pub(crate) struct GuestError {
    pub failure: Failure,
    /// One line: what went wrong.
    pub cause: String,
    /// The guest's stack when it trapped, one frame a line.
    pub backtrace: Option<String>,
    /// The guest called `pass-through-on-exception` before failing.
    pub pass_through: bool,
}

impl GuestError {
    pub fn message(failure: Failure, cause: impl Into<String>) -> Self {
        GuestError {
            failure,
            cause: cause.into(),
            backtrace: None,
            pass_through: false,
        }
    }

    /// A failure of the host's own plumbing around the guest.
    pub fn host(failure: Failure, error: wasmtime::Error) -> Self {
        Self::message(failure, format!("{error:#}"))
    }

    pub fn from_trap(error: wasmtime::Error, memory_limit_hit: bool, pass_through: bool) -> Self {
        GuestError {
            pass_through,
            failure: Failure::classify(&error, memory_limit_hit),
            cause: error.root_cause().to_string(),
            backtrace: error
                .downcast_ref::<wasmtime::WasmBacktrace>()
                .map(|bt| bt.to_string()),
        }
    }
}
