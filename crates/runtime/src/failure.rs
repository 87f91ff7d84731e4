//! How requests fail: the reasons clients see and what the log gets.

use wasmtime::Trap;

use crate::backtrace::Backtrace;
use crate::body::{Body, full_body};
use crate::request::RequestId;

/// Header naming the reason of a response the host made for a failed request.
pub const ERROR_HEADER: &str = "x-isola-error";

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
    /// Every instance slot stayed busy for the queue timeout: the request
    /// was refused before it ran (`Retry-After` says when to come back).
    Overloaded,
}

/// A limit that can end a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `cpu_ms`: fuel, or the charged CPU time (the backstop for host calls).
    Cpu,
    /// `wall_ms`: the epoch deadline and the host-side timeout.
    Wall,
    /// `memory_mb`.
    Memory,
}

impl Limit {
    /// As the log, the metrics and `x-isola-error` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Cpu => "cpu-limit",
            Limit::Wall => "wall-limit",
            Limit::Memory => "memory-limit",
        }
    }
}

impl Failure {
    pub fn status(self) -> http::StatusCode {
        match self {
            Failure::CpuLimit | Failure::MemoryLimit | Failure::Backend | Failure::Overloaded => {
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
            Failure::Overloaded => "overloaded",
        }
    }

    /// `memory_limit_hit`: the guest was refused memory before it failed,
    /// which is why most languages trap (an allocation failure aborts).
    pub(crate) fn classify(error: &wasmtime::Error, memory_limit_hit: bool) -> Self {
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => Failure::CpuLimit,
            Some(Trap::Interrupt) => Failure::WallLimit,
            _ if memory_limit_hit => Failure::MemoryLimit,
            // The pool refused the instance (a run that took no slot, such
            // as a plugin's, or memory reserved elsewhere): not the guest's
            // fault. wasmtime says so only in its message.
            _ if format!("{error:#}").contains("maximum concurrent") => Failure::Overloaded,
            _ => Failure::Exception,
        }
    }

    /// The limit this failure is, if it is one (rather than a fault).
    pub fn limit(self) -> Option<Limit> {
        match self {
            Failure::CpuLimit => Some(Limit::Cpu),
            Failure::WallLimit => Some(Limit::Wall),
            Failure::MemoryLimit => Some(Limit::Memory),
            _ => None,
        }
    }

    /// The response the client gets: a short body, the reason and the id.
    pub fn response(self, request_id: &RequestId) -> http::Response<Body> {
        let text = format!(
            "{} ({}); request id {request_id}",
            self.status().canonical_reason().unwrap_or("error"),
            self.reason()
        );
        let mut response = error_response(self.status(), self.reason(), &text);
        if self == Failure::Overloaded {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        response
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
    /// The guest's stack when it trapped.
    pub backtrace: Option<Backtrace>,
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

    /// A trap, with the panic the guest reported just before it (a Rust
    /// panic prints its place and message, then traps) when there was one.
    pub fn from_trap(
        error: wasmtime::Error,
        memory_limit_hit: bool,
        pass_through: bool,
        panic: Option<String>,
    ) -> Self {
        let failure = Failure::classify(&error, memory_limit_hit);
        let mut cause = error.root_cause().to_string();
        if let Some(panic) = panic.filter(|_| failure == Failure::Exception) {
            cause = format!("{cause} ({panic})");
        }
        GuestError {
            pass_through,
            failure,
            cause,
            backtrace: Backtrace::of(&error),
        }
    }

    /// The backtrace as the log prints it: one frame a line, or `none`.
    pub fn backtrace_text(&self) -> String {
        Backtrace::text(self.backtrace.as_ref())
    }
}
