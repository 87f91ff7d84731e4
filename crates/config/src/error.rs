//! Configuration errors, and the faults the parser finds before it places
//! them in their file.

use std::fmt;
use std::ops::{Deref, Range};
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

impl ConfigError {
    /// The error as a compiler prints it, labelled after its position:
    /// `isola.toml:12:9: error: worker[0].routes: …`.
    pub fn diagnostic(&self) -> String {
        let mut line = String::new();
        self.write(&mut line, Some("error"))
            .expect("writing a String");
        line
    }

    fn write(&self, out: &mut impl fmt::Write, label: Option<&str>) -> fmt::Result {
        write!(out, "{}", self.file.display())?;
        if self.line > 0 {
            write!(out, ":{}:{}", self.line, self.column)?;
        }
        if let Some(label) = label {
            write!(out, ": {label}")?;
        }
        if let Some(key) = &self.key {
            write!(out, ": {key}")?;
        }
        write!(out, ": {}", self.message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, None)
    }
}

/// Every error found in a config file, in file order (errors without a
/// position first); never empty. Displayed one error per line.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    fn one(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

impl Deref for ConfigErrors {
    type Target = [ConfigError];

    fn deref(&self) -> &[ConfigError] {
        &self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// The error for a config file that cannot be read at all.
pub(crate) fn unreadable(path: &Path, error: &std::io::Error) -> ConfigErrors {
    ConfigErrors::one(ConfigError {
        file: path.to_owned(),
        line: 0,
        column: 0,
        key: None,
        message: format!("cannot read: {error}"),
    })
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

/// The faults found so far. Checking goes on past each one, so that one
/// run reports every independent error.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    found: Vec<Fault>,
    /// Where a stand-in value fills a hole already reported (a missing or
    /// mistyped required key): a later fault there only restates it.
    stand_ins: Vec<Range<usize>>,
}

impl Faults {
    pub(crate) fn push(&mut self, fault: Fault) {
        let restated = fault
            .span
            .as_ref()
            .is_some_and(|span| self.stand_ins.contains(span));
        if !restated {
            self.found.push(fault);
        }
    }

    /// `result`'s value, or `None` once its fault is recorded.
    pub(crate) fn ok<T>(&mut self, result: Result<T, Fault>) -> Option<T> {
        result.map_err(|fault| self.push(fault)).ok()
    }

    /// A stand-in value fills `span`: see [`Faults::stand_ins`].
    pub(crate) fn stand_in(&mut self, span: Range<usize>) {
        self.stand_ins.push(span);
    }

    /// The faults as errors of `file`, whose text is `text`, in file order.
    /// `None` if there are none.
    pub(crate) fn locate(mut self, file: &Path, text: &str) -> Option<ConfigErrors> {
        // Stable: faults at one place keep the order they were found in.
        self.found
            .sort_by_key(|fault| fault.span.as_ref().map(|span| span.start));
        let errors: Vec<_> = self
            .found
            .into_iter()
            .map(|fault| fault.locate(file, text))
            .collect();
        (!errors.is_empty()).then_some(ConfigErrors(errors))
    }
}
