//! A trapped guest's stack, one frame a line, with the source line of each
//! frame when the component carries DWARF (wasmtime's backtrace details,
//! kept in the compiled artifact and so in the compile cache).
//!
//! wasmtime's own `Display` for a backtrace spreads a frame over two lines
//! and prints a hint about `WASMTIME_BACKTRACE_DETAILS`, which an Isola
//! user cannot act on; this is the one-line form the log, `isola tail` and
//! the tests read.

use std::fmt;

/// Frames kept: wasmtime captures at most 20 (its
/// `wasm_backtrace_max_frames` default), inlined frames may add some.
const MAX_FRAMES: usize = 32;

/// One frame of a guest's stack (an inlined function is a frame of its own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// `module!function`: the core module's name and the demangled
    /// function name, or `<wasm function N>` when the module names none.
    pub function: String,
    /// `file:line[:column]` from the DWARF line table, when there is one.
    pub location: Option<String>,
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(location) => write!(f, "{} ({location})", self.function),
            None => f.write_str(&self.function),
        }
    }
}

/// The frames of a trap, innermost first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backtrace {
    pub frames: Vec<Frame>,
}

impl Backtrace {
    /// The guest stack `error` carries, if it carries one.
    pub fn of(error: &wasmtime::Error) -> Option<Self> {
        let trace = error.downcast_ref::<wasmtime::WasmBacktrace>()?;
        let mut frames = Vec::new();
        for frame in trace.frames() {
            let module = frame.module().name().unwrap_or("<module>");
            if frame.symbols().is_empty() {
                let function = match frame.func_name() {
                    Some(name) => demangle(name),
                    None => format!("<wasm function {}>", frame.func_index()),
                };
                frames.push(Frame {
                    function: format!("{module}!{function}"),
                    location: None,
                });
            }
            for symbol in frame.symbols() {
                let function = symbol
                    .name()
                    .or(frame.func_name())
                    .map(demangle)
                    .unwrap_or_else(|| format!("<wasm function {}>", frame.func_index()));
                let location = symbol
                    .file()
                    .map(|file| match (symbol.line(), symbol.column()) {
                        (Some(line), Some(column)) if column > 0 => {
                            format!("{file}:{line}:{column}")
                        }
                        (Some(line), _) => format!("{file}:{line}"),
                        (None, _) => file.to_owned(),
                    });
                frames.push(Frame {
                    function: format!("{module}!{function}"),
                    location,
                });
            }
            if frames.len() >= MAX_FRAMES {
                frames.truncate(MAX_FRAMES);
                break;
            }
        }
        Some(Backtrace { frames })
    }

    /// `trace` as the log prints it: one frame a line, or `none`.
    pub fn text(trace: Option<&Backtrace>) -> String {
        trace.map_or_else(|| "none".to_owned(), ToString::to_string)
    }

    /// Whether any frame names a source line.
    pub fn has_locations(&self) -> bool {
        self.frames.iter().any(|f| f.location.is_some())
    }
}

impl fmt::Display for Backtrace {
    /// `wasm backtrace:` then one indented, numbered frame a line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("wasm backtrace:")?;
        for (i, frame) in self.frames.iter().enumerate() {
            write!(f, "\n  {i:>2}: {frame}")?;
        }
        Ok(())
    }
}

/// Rust names demangled without their hash; other names as they are.
fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(demangled) => format!("{demangled:#}"),
        Err(_) => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_print_one_a_line_with_their_location() {
        let trace = Backtrace {
            frames: vec![
                Frame {
                    function: "app.wasm!app::boom".into(),
                    location: Some("src/lib.rs:12:5".into()),
                },
                Frame {
                    function: "app.wasm!<wasm function 3>".into(),
                    location: None,
                },
            ],
        };
        assert_eq!(
            trace.to_string(),
            "wasm backtrace:\n   0: app.wasm!app::boom (src/lib.rs:12:5)\n   1: app.wasm!<wasm function 3>"
        );
        assert!(trace.has_locations());
    }

    #[test]
    fn rust_names_lose_their_hash() {
        assert_eq!(
            demangle("_ZN3app4boom17h0123456789abcdefE"),
            "app::boom".to_owned()
        );
        assert_eq!(demangle("js::RunScript"), "js::RunScript");
    }
}
