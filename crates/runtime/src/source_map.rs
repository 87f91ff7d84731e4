//! Source maps of JavaScript workers. StarlingMonkey names positions in the
//! one bundle it runs (`fetch@worker.js:1234:7`); when a worker's component
//! has its source map beside it (`worker.wasm.map`, written by `isola
//! build`), the host rewrites such positions in the guest's log lines to the
//! author's own files (`fetch@src/fail.ts:3:9`).
//!
//! The decoder is written here rather than taken from the `sourcemap`
//! crate: that crate brings about a dozen crates this one has nowhere else
//! (bitvec, base64-simd, debugid, data-encoding, ...) with no feature to
//! leave them out, while a lookup needs only `sources` and the VLQ of
//! `mappings` (serde_json is in the tree already).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file name StarlingMonkey's stack frames give the bundle: the name
/// `sdk/js/src/build.mjs` gives the file it hands componentize-js.
pub(crate) const BUNDLE_FILE: &str = "worker.js";

/// A decoded source map: for each line of the bundle, which original file,
/// line and column each of its columns comes from.
#[derive(Debug)]
pub(crate) struct SourceMap {
    sources: Vec<String>,
    /// Where each generated line's segments start in `segments`, plus the
    /// end: line `n` is `segments[lines[n]..lines[n + 1]]`.
    lines: Vec<u32>,
    /// Sorted by column within a line.
    segments: Vec<Segment>,
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    column: u32,
    /// `UNMAPPED` for a segment that maps to no source.
    source: u32,
    line: u32,
    source_column: u32,
}

const UNMAPPED: u32 = u32::MAX;

/// An original position: 1-based line and column, as in stack frames and
/// in esbuild's and TypeScript's messages.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Position<'a> {
    pub source: &'a str,
    pub line: u32,
    pub column: u32,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceMapError {
    #[error("not a source map: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported source map version {0} (3 expected)")]
    Version(u32),
    #[error("malformed mappings at byte {0}")]
    Mappings(usize),
}

#[derive(serde::Deserialize)]
struct RawMap {
    version: u32,
    #[serde(default, rename = "sourceRoot")]
    source_root: Option<String>,
    #[serde(default)]
    sources: Vec<Option<String>>,
    mappings: String,
}

impl SourceMap {
    /// The map beside `component` (`<component>.map`), if there is one.
    /// A missing map is the normal case for components not built by
    /// `isola build`; an unreadable or malformed one is logged and ignored,
    /// so the worker logs bundle positions as without a map.
    pub fn beside(component: &Path) -> Option<Arc<SourceMap>> {
        let path = map_path(component);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read the source map: {e}");
                return None;
            }
        };
        match SourceMap::parse(&bytes) {
            Ok(map) => Some(Arc::new(map)),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring the source map: {e}");
                None
            }
        }
    }

    /// Decode a source map (version 3, as esbuild writes it).
    pub fn parse(json: &[u8]) -> Result<SourceMap, SourceMapError> {
        let raw: RawMap = serde_json::from_slice(json)?;
        if raw.version != 3 {
            return Err(SourceMapError::Version(raw.version));
        }
        let root = raw.source_root.unwrap_or_default();
        let sources = raw
            .sources
            .into_iter()
            .map(|source| {
                let source = source.unwrap_or_default();
                if root.is_empty() {
                    source
                } else {
                    format!("{}/{source}", root.trim_end_matches('/'))
                }
            })
            .collect::<Vec<_>>();
        let (lines, segments) = decode_mappings(&raw.mappings, sources.len())?;
        Ok(SourceMap {
            sources,
            lines,
            segments,
        })
    }

    /// The original position of the bundle's 1-based `line` and `column`:
    /// that of the nearest mapped segment at or before it on its line.
    pub fn lookup(&self, line: u32, column: u32) -> Option<Position<'_>> {
        let line = usize::try_from(line.checked_sub(1)?).ok()?;
        let column = column.checked_sub(1)?;
        let start = *self.lines.get(line)? as usize;
        let end = *self.lines.get(line + 1)? as usize;
        let on_line = &self.segments[start..end];
        let after = on_line.partition_point(|s| s.column <= column);
        let segment = on_line[..after].last()?;
        if segment.source == UNMAPPED {
            return None;
        }
        Some(Position {
            source: &self.sources[segment.source as usize],
            line: segment.line + 1,
            column: segment.source_column + 1,
        })
    }

    /// The original position of the start of the bundle's 1-based `line`
    /// (its first mapped segment), for what names a line but no column.
    pub fn lookup_line(&self, line: u32) -> Option<Position<'_>> {
        let line = usize::try_from(line.checked_sub(1)?).ok()?;
        let start = *self.lines.get(line)? as usize;
        let end = *self.lines.get(line + 1)? as usize;
        let segment = self.segments[start..end]
            .iter()
            .find(|s| s.source != UNMAPPED)?;
        Some(Position {
            source: &self.sources[segment.source as usize],
            line: segment.line + 1,
            column: segment.source_column + 1,
        })
    }

    /// `text` with every bundle position replaced by its original one:
    /// `worker.js:LINE:COLUMN` of stack frames (with or without a directory
    /// before the name), and `"worker.js", LINE` of an Error printed as
    /// source (`(new Error("msg", "worker.js", 12))`, as StarlingMonkey
    /// prints one nested in another value). `None` when there is none to
    /// replace, so lines without frames cost a substring search and no
    /// allocation.
    pub fn rewrite(&self, text: &str) -> Option<String> {
        let mut out = String::new();
        // `text[copied..]` is not in `out` yet.
        let mut copied = 0;
        let mut from = 0;
        while let Some(found) = text[from..].find(BUNDLE_FILE) {
            let name_start = from + found;
            let name_end = name_start + BUNDLE_FILE.len();
            from = name_end;
            let before = text[..name_start].chars().next_back();
            // `myworker.js` is another file; `/tmp/x/worker.js` is the bundle
            // under a path, which goes too.
            let start = match before {
                None => name_start,
                Some('/') => text[..name_start]
                    .rfind(|c: char| c.is_whitespace() || matches!(c, '@' | '(' | '"'))
                    .map_or(0, |i| i + 1),
                Some(c) if c.is_whitespace() || matches!(c, '@' | '(' | '"') => name_start,
                Some(_) => continue,
            };
            if start < copied {
                continue;
            }
            let end = if let Some((line, column, end)) = line_and_column(text, name_end) {
                let Some(position) = self.lookup(line, column) else {
                    continue;
                };
                out.push_str(&text[copied..start]);
                let _ = write!(
                    out,
                    "{}:{}:{}",
                    position.source, position.line, position.column
                );
                end
            } else if let Some((line, end)) =
                quoted_line(text, name_end).filter(|_| before == Some('"'))
            {
                let Some(position) = self.lookup_line(line) else {
                    continue;
                };
                out.push_str(&text[copied..start]);
                let _ = write!(out, "{}\", {}", position.source, position.line);
                end
            } else {
                continue;
            };
            copied = end;
            from = end;
        }
        if copied == 0 {
            return None;
        }
        out.push_str(&text[copied..]);
        Some(out)
    }

    /// [`rewrite`](Self::rewrite), or `text` as it is.
    pub fn rewrite_cow<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.rewrite(text) {
            Some(rewritten) => Cow::Owned(rewritten),
            None => Cow::Borrowed(text),
        }
    }
}

/// Where the map of `component` is: `worker.wasm` → `worker.wasm.map`.
pub(crate) fn map_path(component: &Path) -> PathBuf {
    let mut path = component.as_os_str().to_owned();
    path.push(".map");
    PathBuf::from(path)
}

/// `:LINE:COLUMN` at `text[at..]`: the two numbers and where they end.
fn line_and_column(text: &str, at: usize) -> Option<(u32, u32, usize)> {
    let number = |at: usize| -> Option<(u32, usize)> {
        let rest = text.get(at..)?.strip_prefix(':')?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let value = rest[..digits].parse().ok()?;
        Some((value, at + 1 + digits))
    };
    let (line, at) = number(at)?;
    let (column, at) = number(at)?;
    Some((line, column, at))
}

/// `", LINE` at `text[at..]` (the rest of `"worker.js", 12`): the line
/// and where it ends.
fn quoted_line(text: &str, at: usize) -> Option<(u32, usize)> {
    let rest = text.get(at..)?.strip_prefix("\", ")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let line = rest[..digits].parse().ok()?;
    Some((line, at + 3 + digits))
}

/// Decode `mappings`: one group of segments per generated line (`;`
/// between lines, `,` between segments), each segment 1, 4 or 5 base64
/// VLQ fields, all but the generated column relative to the previous
/// segment's across lines.
fn decode_mappings(
    mappings: &str,
    source_count: usize,
) -> Result<(Vec<u32>, Vec<Segment>), SourceMapError> {
    let bytes = mappings.as_bytes();
    let mut lines = vec![0u32];
    let mut segments = Vec::with_capacity(bytes.len() / 4);
    let (mut source, mut line, mut source_column) = (0i64, 0i64, 0i64);
    let mut column = 0i64;
    let mut at = 0;
    let mut line_start = 0;
    let close_line = |segments: &mut Vec<Segment>, lines: &mut Vec<u32>, line_start: usize| {
        // esbuild writes segments in column order; sort in case another
        // tool did not, since lookups bisect.
        segments[line_start..].sort_by_key(|s| s.column);
        lines.push(u32::try_from(segments.len()).unwrap_or(u32::MAX));
    };
    while at < bytes.len() {
        match bytes[at] {
            b';' => {
                close_line(&mut segments, &mut lines, line_start);
                line_start = segments.len();
                column = 0;
                at += 1;
                continue;
            }
            b',' => {
                at += 1;
                continue;
            }
            _ => {}
        }
        let segment_start = at;
        let mut fields = [0i64; 5];
        let mut count = 0;
        while at < bytes.len() && !matches!(bytes[at], b',' | b';') {
            if count == fields.len() {
                return Err(SourceMapError::Mappings(segment_start));
            }
            let (value, next) = vlq(bytes, at).ok_or(SourceMapError::Mappings(at))?;
            fields[count] = value;
            count += 1;
            at = next;
        }
        column += fields[0];
        let segment = match count {
            1 => Segment {
                column: to_u32(column, segment_start)?,
                source: UNMAPPED,
                line: 0,
                source_column: 0,
            },
            4 | 5 => {
                source += fields[1];
                line += fields[2];
                source_column += fields[3];
                let index = to_u32(source, segment_start)?;
                if index as usize >= source_count {
                    return Err(SourceMapError::Mappings(segment_start));
                }
                Segment {
                    column: to_u32(column, segment_start)?,
                    source: index,
                    line: to_u32(line, segment_start)?,
                    source_column: to_u32(source_column, segment_start)?,
                }
            }
            _ => return Err(SourceMapError::Mappings(segment_start)),
        };
        segments.push(segment);
    }
    close_line(&mut segments, &mut lines, line_start);
    Ok((lines, segments))
}

fn to_u32(value: i64, at: usize) -> Result<u32, SourceMapError> {
    u32::try_from(value).map_err(|_| SourceMapError::Mappings(at))
}

/// One base64 VLQ number at `bytes[at..]`: 5 bits a digit, least
/// significant first, 0x20 marking that more follow; the lowest bit of the
/// result is the sign.
fn vlq(bytes: &[u8], mut at: usize) -> Option<(i64, usize)> {
    let mut value: u64 = 0;
    let mut shift = 0;
    loop {
        let digit = base64(*bytes.get(at)?)?;
        at += 1;
        if shift > 60 {
            return None;
        }
        value |= u64::from(digit & 0x1f) << shift;
        shift += 5;
        if digit & 0x20 == 0 {
            break;
        }
    }
    let magnitude = i64::try_from(value >> 1).ok()?;
    Some((
        if value & 1 == 1 {
            -magnitude
        } else {
            magnitude
        },
        at,
    ))
}

fn base64(byte: u8) -> Option<u8> {
    Some(match byte {
        b'A'..=b'Z' => byte - b'A',
        b'a'..=b'z' => byte - b'a' + 26,
        b'0'..=b'9' => byte - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bundle lines 1 and 2 map to `src/a.ts` 10:5 and 11:1 (at columns 1
    /// and 5 of line 2), line 3 to `src/b.ts` 2:3; line 2's column 9 on is
    /// unmapped.
    fn map() -> SourceMap {
        // Segments: [0,0,9,4]; [0,0,1,-4],[4,0,0,0],[4]; [0,1,-9,2]
        let json = r#"{"version":3,"sources":["src/a.ts","src/b.ts"],"mappings":"AASI;AACJ,IAAA,I;ACTE","names":[]}"#;
        SourceMap::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn decodes_vlq() {
        assert_eq!(vlq(b"A", 0), Some((0, 1)));
        assert_eq!(vlq(b"C", 0), Some((1, 1)));
        assert_eq!(vlq(b"D", 0), Some((-1, 1)));
        assert_eq!(vlq(b"gB", 0), Some((16, 2)));
        assert_eq!(vlq(b"2H", 0), Some((123, 2)));
        assert_eq!(vlq(b"g", 0), None, "a continuation with nothing after it");
        assert_eq!(vlq(b"!", 0), None);
    }

    #[test]
    fn looks_up_the_nearest_segment_at_or_before_a_column() {
        let map = map();
        let at = |line, column| {
            map.lookup(line, column)
                .map(|p| format!("{}:{}:{}", p.source, p.line, p.column))
        };
        assert_eq!(at(1, 1).as_deref(), Some("src/a.ts:10:5"));
        assert_eq!(at(1, 40).as_deref(), Some("src/a.ts:10:5"));
        assert_eq!(at(2, 1).as_deref(), Some("src/a.ts:11:1"));
        assert_eq!(at(2, 5).as_deref(), Some("src/a.ts:11:1"));
        assert_eq!(at(2, 8).as_deref(), Some("src/a.ts:11:1"));
        assert_eq!(at(2, 9), None, "an unmapped segment");
        assert_eq!(at(3, 2).as_deref(), Some("src/b.ts:2:3"));
        assert_eq!(at(4, 1), None, "past the last line");
        assert_eq!(at(0, 1), None);
        assert_eq!(at(1, 0), None);
    }

    #[test]
    fn rewrites_every_bundle_frame_of_a_line_and_nothing_else() {
        let map = map();
        assert_eq!(
            map.rewrite("fail@worker.js:1:7\nfetch@worker.js:3:2")
                .as_deref(),
            Some("fail@src/a.ts:10:5\nfetch@src/b.ts:2:3")
        );
        assert_eq!(
            map.rewrite("Error: boom at /tmp/abc/worker.js:2:5, then (worker.js:3:1)")
                .as_deref(),
            Some("Error: boom at src/a.ts:11:1, then (src/b.ts:2:3)")
        );
        // Unmapped, not a position, another file, no frame at all.
        assert_eq!(map.rewrite("f@worker.js:2:9"), None);
        assert_eq!(map.rewrite("see worker.js for details"), None);
        assert_eq!(map.rewrite("worker.js:1"), None);
        assert_eq!(map.rewrite("f@myworker.js:1:1"), None);
        assert_eq!(map.rewrite("hello from console.log"), None);
        assert_eq!(
            map.rewrite("a@worker.js:2:9 b@worker.js:1:3 (ünïcode)")
                .as_deref(),
            Some("a@worker.js:2:9 b@src/a.ts:10:5 (ünïcode)")
        );
        // An Error printed as source names the file and line only.
        assert_eq!(
            map.rewrite(r#"{ e: (new Error("x", "worker.js", 2)) }"#)
                .as_deref(),
            Some(r#"{ e: (new Error("x", "src/a.ts", 11)) }"#)
        );
        assert_eq!(map.rewrite(r#"("worker.js", 9)"#), None);
        assert_eq!(map.rewrite(r#"(worker.js", 2)"#), None);
    }

    #[test]
    fn rejects_malformed_maps() {
        for json in [
            r#"{"version":2,"sources":[],"mappings":""}"#,
            r#"{"version":3,"sources":["a"],"mappings":"AAAA,!"}"#,
            r#"{"version":3,"sources":["a"],"mappings":"ACAA"}"#,
            r#"{"version":3,"sources":["a"],"mappings":"AA"}"#,
            r#"{"version":3,"sources":["a"],"mappings":"AAAAAA"}"#,
            r#"{"version":3,"sources":["a"],"mappings":"AADA"}"#,
            "not json",
        ] {
            assert!(SourceMap::parse(json.as_bytes()).is_err(), "{json}");
        }
    }

    #[test]
    fn applies_the_source_root_and_finds_the_map_beside_a_component() {
        let dir = tempfile::tempdir().unwrap();
        let component = dir.path().join("worker.wasm");
        assert!(SourceMap::beside(&component).is_none());
        std::fs::write(
            dir.path().join("worker.wasm.map"),
            r#"{"version":3,"sourceRoot":"app/","sources":["x.ts"],"mappings":"AAAA"}"#,
        )
        .unwrap();
        let map = SourceMap::beside(&component).expect("the map is read");
        assert_eq!(
            map.rewrite("f@worker.js:1:1").as_deref(),
            Some("f@app/x.ts:1:1")
        );
        std::fs::write(dir.path().join("worker.wasm.map"), "{").unwrap();
        assert!(
            SourceMap::beside(&component).is_none(),
            "a malformed map is ignored"
        );
    }
}
