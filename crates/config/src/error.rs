//! Configuration errors, and the faults the parser finds before it places
//! them in their file.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A configuration error, located in its file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column; 0 when the error has no position (e.g. the
    /// file cannot be read).
    pub line: usize,
    pub column: usize,
    /// The key at fault, as a dotted path such as `worker[0].routes`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A fault before it is placed in its file: the span and the key at fault.
/// [`Fault::locate`] turns it into a [`ConfigError`].
#[derive(Debug)]
pub(crate) struct Fault {
    span: Option<Range<usize>>,
    key: Option<String>,
    message: String,
}

impl Fault {
    pub(crate) fn new(
        span: Option<Range<usize>>,
        key: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Fault {
            span,
            key,
            message: message.into(),
        }
    }

    /// A fault at `span` in `key`.
    pub(crate) fn at(
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Fault::new(Some(span), Some(key.into()), message)
    }

    /// The error as it names its line and column in `text`, read from `file`.
    pub(crate) fn locate(self, file: &Path, text: &str) -> ConfigError {
        let (line, column) = self.span.map_or((0, 0), |s| line_col(text, s.start));
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            key: self.key,
            message: self.message,
        }
    }
}

/// The keys of `[[worker]]` number `.0`, as errors name them:
/// `worker[0].routes`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkerKeys(pub(crate) usize);

impl WorkerKeys {
    pub(crate) fn key(self, field: &str) -> String {
        format!("worker[{}].{field}", self.0)
    }

    pub(crate) fn fault(
        self,
        span: Range<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> Fault {
        Fault::at(span, self.key(field), message)
    }
}
