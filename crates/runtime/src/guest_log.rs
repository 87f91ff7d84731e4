//! Guest stdout/stderr: each line becomes a log event tagged with the worker
//! and the request id, so interleaved requests stay readable.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::source_map::SourceMap;

/// Longest line kept before it is logged in pieces.
const MAX_LINE: usize = 16 * 1024;

/// Secret values shorter than this are not masked in guest output.
pub(crate) const MIN_MASKED_SECRET: usize = 4;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// The stdout or stderr of one request's instance.
#[derive(Clone)]
pub(crate) struct GuestLog {
    pub worker: Arc<str>,
    /// The request being served: an instance reused across requests
    /// (`instance_reuse`) moves it on.
    pub request_id: Arc<std::sync::RwLock<Arc<str>>>,
    /// Secret values of the worker: never written to the log as they are.
    pub secrets: Arc<[String]>,
    /// The bundle's source map, when the worker has one: stack positions
    /// in a line are logged as the original `file:line:column`.
    pub source_map: Option<Arc<SourceMap>>,
    pub stream: Stream,
    /// The panic the guest last reported on stderr, for the trap's log line.
    pub panic: PanicNote,
}

/// The last Rust panic a run's guest printed on stderr (`thread '…' (id)
/// panicked at file:line:col:` then the message): a panic ends in a trap,
/// and the trap's log line carries it so that cause and place sit together.
#[derive(Clone, Default)]
pub(crate) struct PanicNote(Arc<std::sync::Mutex<PanicState>>);

#[derive(Default)]
struct PanicState {
    text: Option<String>,
    /// The message lines after `panicked at` are still coming.
    open: bool,
    /// Message lines taken so far.
    lines: usize,
}

/// A panic note is kept to this length: a guest may panic with a long
/// message, and the note rides on one log line.
const MAX_PANIC_NOTE: usize = 1024;

impl PanicNote {
    fn observe(&self, line: &str) {
        let mut state = self.0.lock().expect("panic note lock");
        if let Some(rest) = line.strip_prefix("thread '")
            && let Some(at) = rest.find(" panicked at ")
        {
            // Rust 1.90+ puts the thread's id after its name.
            let place = rest[at + 1..].trim_end_matches(':');
            *state = PanicState {
                text: Some(place.to_owned()),
                open: true,
                lines: 0,
            };
            return;
        }
        if !state.open {
            return;
        }
        let separator = if state.lines == 0 { ": " } else { "; " };
        state.lines += 1;
        let text = state.text.get_or_insert_with(String::new);
        if line.starts_with("note: ") || text.len() >= MAX_PANIC_NOTE {
            state.open = false;
            return;
        }
        text.push_str(separator);
        let room = MAX_PANIC_NOTE.saturating_sub(text.len());
        let mut end = line.len().min(room);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        text.push_str(&line[..end]);
    }

    /// The last panic, e.g. `panicked at src/lib.rs:16:20: boom`.
    pub fn get(&self) -> Option<String> {
        self.0.lock().expect("panic note lock").text.clone()
    }

    pub fn clear(&self) {
        *self.0.lock().expect("panic note lock") = PanicState::default();
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter::new(self.clone()))
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter::new(self.clone()))
    }
}

/// Buffers partial lines and logs complete ones. Writes never block: a guest
/// that logs a lot pays in log volume, not in stalls.
struct LineWriter {
    log: GuestLog,
    pending: Vec<u8>,
}

impl LineWriter {
    fn new(log: GuestLog) -> Self {
        LineWriter {
            log,
            pending: Vec::new(),
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&bytes[..newline]);
            self.emit();
            bytes = &bytes[newline + 1..];
        }
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= MAX_LINE {
            // A long line is logged in pieces; a secret the next write
            // completes must not be cut in two (each half would escape the
            // mask), so the end that could start one stays for the next.
            let cut = safe_cut(&self.pending, &self.log.secrets);
            let rest = self.pending.split_off(cut);
            self.emit();
            self.pending = rest;
        }
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.pending);
        let line = line.trim_end_matches('\r');
        // Only workers with a map pay for the search, and only lines that
        // name the bundle for a new string.
        let line = match &self.log.source_map {
            Some(map) => map.rewrite_cow(line),
            None => std::borrow::Cow::Borrowed(line),
        };
        let line = mask_secrets(&line, &self.log.secrets);
        let GuestLog {
            worker, request_id, ..
        } = &self.log;
        let request_id = request_id.read().expect("request id lock").clone();
        match self.log.stream {
            Stream::Stdout => {
                tracing::info!(target: "isola::guest", worker = %worker, request_id = %request_id, stream = "stdout", "{line}")
            }
            Stream::Stderr => {
                self.log.panic.observe(&line);
                tracing::warn!(target: "isola::guest", worker = %worker, request_id = %request_id, stream = "stderr", "{line}")
            }
        }
        self.pending.clear();
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Where to end the piece of a long line that is logged now: no secret
/// occurrence may straddle the cut, and the last bytes that could begin a
/// secret completed by a later write stay behind.
fn safe_cut(pending: &[u8], secrets: &[String]) -> usize {
    let masked = secrets.iter().filter(|s| s.len() >= MIN_MASKED_SECRET);
    let longest = masked.clone().map(String::len).max().unwrap_or(0);
    let mut cut = pending.len().saturating_sub(longest.saturating_sub(1));
    // Move left past any whole occurrence the cut would split.
    for secret in masked {
        let needle = secret.as_bytes();
        let from = cut.saturating_sub(needle.len() - 1);
        let window = &pending[from..(cut + needle.len() - 1).min(pending.len())];
        if let Some(at) = window.windows(needle.len()).position(|w| w == needle) {
            let start = from + at;
            if start < cut && cut < start + needle.len() {
                cut = start;
            }
        }
    }
    cut
}

/// `text` with every secret value replaced by `[secret]`: a guest may print
/// a secret by mistake, and the log never shows it. Very short values are
/// left alone: masking them would garble ordinary text and hide little.
pub(crate) fn mask_secrets(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= MIN_MASKED_SECRET) {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "[secret]");
        }
    }
    text
}

#[cfg(test)]
mod panic_tests {
    use super::PanicNote;

    #[test]
    fn a_panic_and_its_message_make_one_note() {
        let note = PanicNote::default();
        note.observe("unrelated");
        assert_eq!(note.get(), None);
        note.observe("thread '<unnamed>' (1) panicked at src/lib.rs:16:20:");
        note.observe("guest panicked on purpose");
        note.observe("second line");
        note.observe(
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        );
        note.observe("later stderr");
        assert_eq!(
            note.get().as_deref(),
            Some("panicked at src/lib.rs:16:20: guest panicked on purpose; second line")
        );
        note.clear();
        assert_eq!(note.get(), None);
    }

    #[test]
    fn a_long_message_is_cut_on_a_char_boundary() {
        let note = PanicNote::default();
        note.observe("thread 'main' panicked at a.rs:1:1:");
        note.observe(&"é".repeat(2000));
        let text = note.get().unwrap();
        assert!(text.len() <= super::MAX_PANIC_NOTE + 2, "{}", text.len());
        assert!(text.starts_with("panicked at a.rs:1:1: é"));
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;

    #[test]
    fn a_long_line_is_never_cut_inside_a_secret() {
        let secrets = vec!["supersecretvalue".to_owned()];
        // The write ends with the secret's first half: it stays behind.
        let mut pending = vec![b'a'; MAX_LINE - 4];
        pending.extend_from_slice(b"supersec");
        let cut = safe_cut(&pending, &secrets);
        assert!(!String::from_utf8_lossy(&pending[..cut]).contains("sup"));
        assert!(pending[cut..].ends_with(b"supersec"));
        // A whole secret across the naive cut is kept whole on one side.
        let mut pending = vec![b'a'; MAX_LINE - 6];
        pending.extend_from_slice(b"supersecretvalue");
        pending.extend_from_slice(&[b'b'; 20]);
        let cut = safe_cut(&pending, &secrets);
        let (logged, kept) = (&pending[..cut], &pending[cut..]);
        let whole_on_one_side = mask_secrets(&String::from_utf8_lossy(logged), &secrets)
            .contains("[secret]")
            || String::from_utf8_lossy(kept).contains("supersecretvalue");
        assert!(whole_on_one_side);
        assert!(!String::from_utf8_lossy(logged).ends_with("supersec"));
        // Without secrets a piece is the whole buffer.
        assert_eq!(safe_cut(&pending, &[]), pending.len());
    }
}
