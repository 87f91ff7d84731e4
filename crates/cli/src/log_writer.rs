//! Where log lines go: stderr, in batches when it is not a terminal.
//!
//! Every request ends with an access line. Written straight to stderr that
//! is one `write` system call per request: ~4% of a hello request's server
//! CPU with stderr on a file (`perf record` of `isola serve` under `wrk`).
//! Instead, lines are appended to a buffer that goes out in one write every
//! [`FLUSH_EVERY`], once it holds [`FLUSH_AT`] bytes, with any warning or
//! error (which are written at once), and when the process ends
//! ([`FlushOnDrop`]). An info line may thus reach the log up to
//! [`FLUSH_EVERY`] late. On a terminal every line is written at once, so
//! logs and progress bars keep their order.
//!
//! Hand-rolled rather than `tracing-appender`'s non-blocking writer: that one
//! wakes its writer thread per line when idle and drops lines when full;
//! this one is a `Vec` behind a mutex and never drops a line.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Longest an info line waits in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A buffer this full is written out at once.
const FLUSH_AT: usize = 64 << 10;

/// A `MakeWriter` for the log layer; see the module docs.
#[derive(Clone)]
pub struct LogWriter {
    buffer: Option<Arc<Buffer>>,
}

/// Lines not yet written out.
pub struct Buffer(Mutex<Vec<u8>>);

impl Buffer {
    fn flush(&self) {
        // stderr's lock first: two flushes never reorder lines.
        let mut stderr = std::io::stderr().lock();
        let pending = std::mem::take(&mut *self.0.lock().expect("log buffer lock"));
        if !pending.is_empty() {
            let _ = stderr.write_all(&pending);
        }
    }
}

impl LogWriter {
    /// A writer for stderr, and the guard that writes out what is buffered
    /// when dropped.
    pub fn stderr() -> (LogWriter, FlushOnDrop) {
        if std::io::stderr().is_terminal() {
            return (LogWriter { buffer: None }, FlushOnDrop(None));
        }
        let buffer = Arc::new(Buffer(Mutex::new(Vec::with_capacity(FLUSH_AT))));
        let weak = Arc::downgrade(&buffer);
        std::thread::Builder::new()
            .name("isola-log".into())
            .spawn(move || flush_periodically(weak))
            .expect("spawning the log flusher thread");
        (
            LogWriter {
                buffer: Some(buffer.clone()),
            },
            FlushOnDrop(Some(buffer)),
        )
    }
}

fn flush_periodically(buffer: Weak<Buffer>) {
    loop {
        std::thread::sleep(FLUSH_EVERY);
        match buffer.upgrade() {
            Some(buffer) => buffer.flush(),
            None => return,
        }
    }
}

/// Writes out the buffered lines when dropped: hold it until the end of
/// `main`, and drop it before printing anything that must follow the logs.
pub struct FlushOnDrop(Option<Arc<Buffer>>);

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        if let Some(buffer) = &self.0 {
            buffer.flush();
        }
    }
}

/// One log line on its way out.
pub enum LineWriter<'a> {
    Direct(std::io::Stderr),
    Buffered { buffer: &'a Buffer, urgent: bool },
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        match &self.buffer {
            None => LineWriter::Direct(std::io::stderr()),
            Some(buffer) => LineWriter::Buffered {
                buffer,
                urgent: false,
            },
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter<'a> {
        match self.make_writer() {
            LineWriter::Buffered { buffer, .. } => LineWriter::Buffered {
                buffer,
                urgent: *meta.level() <= tracing::Level::WARN,
            },
            direct => direct,
        }
    }
}

impl Write for LineWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            LineWriter::Direct(stderr) => stderr.write(data),
            LineWriter::Buffered { buffer, .. } => {
                let full = {
                    let mut pending = buffer.0.lock().expect("log buffer lock");
                    pending.extend_from_slice(data);
                    pending.len() >= FLUSH_AT
                };
                if full {
                    buffer.flush();
                }
                Ok(data.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            LineWriter::Direct(stderr) => stderr.flush(),
            LineWriter::Buffered { .. } => Ok(()),
        }
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if let LineWriter::Buffered {
            buffer,
            urgent: true,
        } = self
        {
            buffer.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_lines_wait_and_warnings_flush_them_in_order() {
        let buffer = Arc::new(Buffer(Mutex::new(Vec::new())));
        let writer = LogWriter {
            buffer: Some(buffer.clone()),
        };
        writeln!(writer.make_writer(), "info line").unwrap();
        assert_eq!(buffer.0.lock().unwrap().as_slice(), b"info line\n");
        let mut urgent = match writer.make_writer() {
            LineWriter::Buffered { buffer, .. } => LineWriter::Buffered {
                buffer,
                urgent: true,
            },
            LineWriter::Direct(_) => unreachable!(),
        };
        writeln!(urgent, "warning").unwrap();
        assert_eq!(
            buffer.0.lock().unwrap().as_slice(),
            b"info line\nwarning\n",
            "held until the warning's writer is done"
        );
        drop(urgent);
        assert!(buffer.0.lock().unwrap().is_empty(), "written out");
    }
}
