//! Bytes on the wire: percent-decoding, writing a whole buffer to a WASI
//! stream, and headers between `http` and `wasi:http`.

use anyhow::{Result, anyhow};
use http::{HeaderMap, HeaderName, HeaderValue};
use wasi::http::types::Fields;

/// Percent-decode a path segment or other URL text (`%2F` → `/`). Invalid
/// escapes are kept as they are; bytes that are not UTF-8 are replaced.
pub fn percent_decode(text: &str) -> String {
    decode(text, false)
}

/// Percent-encode `text` for a header value or path segment: every byte
/// but ASCII letters, digits and `-._~` becomes `%XX`.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Percent-decode a query component, where `+` is also a space.
pub(crate) fn decode_query(text: &str) -> String {
    decode(text, true)
}

fn decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Write all of `bytes`; `blocking-write-and-flush` takes at most 4096 bytes
/// a call.
pub(crate) fn write_all(stream: &wasi::io::streams::OutputStream, bytes: &[u8]) -> Result<()> {
    for piece in bytes.chunks(4096) {
        stream
            .blocking_write_and_flush(piece)
            .map_err(|e| anyhow!("{e:?}"))?;
    }
    Ok(())
}

/// Write all of `bytes` and flush, as [`write_all`] does, but waiting for
/// the stream with the executor, so other tasks run meanwhile.
pub(crate) async fn write_all_async(
    stream: &wasi::io::streams::OutputStream,
    bytes: &[u8],
) -> Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let error = |e| anyhow!("{e:?}");
    let mut rest = bytes;
    while !rest.is_empty() {
        let permitted = stream.check_write().map_err(error)?;
        if permitted == 0 {
            crate::runtime::wait_for(stream.subscribe()).await;
            continue;
        }
        let n = rest
            .len()
            .min(usize::try_from(permitted).unwrap_or(usize::MAX));
        stream.write(&rest[..n]).map_err(error)?;
        rest = &rest[n..];
    }
    stream.flush().map_err(error)?;
    // The flush is done once the stream takes writes again.
    while stream.check_write().map_err(error)? == 0 {
        crate::runtime::wait_for(stream.subscribe()).await;
    }
    Ok(())
}

pub(crate) fn header_map(fields: &Fields) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (name, value) in fields.entries() {
        headers.append(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_bytes(&value)?,
        );
    }
    Ok(headers)
}

pub(crate) fn fields(headers: &HeaderMap) -> Result<Fields> {
    let entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    Fields::from_list(&entries).map_err(|e| anyhow!("bad header: {e:?}"))
}
