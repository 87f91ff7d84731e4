//! `isola:worker/http-batch`: a request's head in one call and a whole
//! response in one more, for guests whose bindings make each `wasi:http`
//! call costly (the JavaScript SDK's `instance_reuse` build). Both keep
//! `wasi:http`'s semantics: the same header checks, the same outparam.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::component::Resource;
use wasmtime_wasi::p2::DynOutputStream;
use wasmtime_wasi_http::p2::bindings::http::types::{
    self as wasi, HostFields, HostIncomingRequest as _, HostOutgoingBody as _, Scheme,
};
use wasmtime_wasi_http::p2::body::{HostOutgoingBody, HyperOutgoingBody};
use wasmtime_wasi_http::p2::types::{
    HostIncomingRequest, HostOutgoingResponse, HostResponseOutparam,
};
use wasmtime_wasi_http::{FieldMap, WasiHttpView};

use crate::state::HostState;

mod generated {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "isola:worker/http-batch-import",
        imports: { default: trappable },
        with: {
            "wasi:http/types": wasmtime_wasi_http::p2::bindings::http::types,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
        require_store_data_send: true,
    });
}

use generated::isola::worker::http_batch::{self, RequestHead};

/// The most header bytes a response may carry: `wasi:http`'s own limit for
/// a `fields` (wasmtime-wasi-http's default, which Isola keeps).
const FIELD_SIZE_LIMIT: usize = 128 * 1024;

pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<HostState>,
) -> wasmtime::Result<()> {
    http_batch::add_to_linker::<_, wasmtime::component::HasSelf<HostState>>(linker, |s| s)
}

/// Headers packed as the WIT's `http-batch` has them: `name\nvalue\n` for
/// each, values as text with one char per byte (a Fetch ByteString).
fn pack_headers(entries: &[(String, Vec<u8>)]) -> String {
    let size = entries.iter().map(|(n, v)| n.len() + 2 * v.len() + 2).sum();
    let mut packed = String::with_capacity(size);
    for (name, value) in entries {
        packed.push_str(name);
        packed.push('\n');
        packed.extend(value.iter().map(|&b| char::from(b)));
        packed.push('\n');
    }
    packed
}

/// The inverse of [`pack_headers`] over its UTF-8 bytes; `Err` says what is
/// malformed.
fn unpack_headers(packed: &[u8]) -> Result<Vec<(&str, &str)>, String> {
    let text = std::str::from_utf8(packed).map_err(|_| "the headers are not UTF-8".to_owned())?;
    let mut parts = text.split_terminator('\n');
    let mut headers = Vec::new();
    while let Some(name) = parts.next() {
        let value = parts
            .next()
            .ok_or_else(|| format!("header {name:?} has no value in the packed headers"))?;
        headers.push((name, value));
    }
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the packed headers do not end with a newline".to_owned());
    }
    Ok(headers)
}

/// Text with one char per byte back to its bytes (as [`pack_headers`] makes
/// values); `None` when a char is above U+00FF.
fn latin1_bytes(text: &str) -> Option<Vec<u8>> {
    text.chars().map(|c| u8::try_from(c).ok()).collect()
}

impl http_batch::Host for HostState {
    fn read_head(
        &mut self,
        request: Resource<HostIncomingRequest>,
    ) -> wasmtime::Result<RequestHead> {
        let borrow = || Resource::<HostIncomingRequest>::new_borrow(request.rep());
        let mut http = self.http();
        // An incoming request's method was parsed by hyper: it converts back.
        let method: http::Method = http.method(borrow())?.try_into()?;
        let fields = http.headers(borrow())?;
        let entries = http.entries(Resource::new_borrow(fields.rep()))?;
        http.table.delete(fields)?;
        let headers = pack_headers(&entries);
        let scheme = match http.scheme(borrow())? {
            None | Some(Scheme::Http) => "http".to_owned(),
            Some(Scheme::Https) => "https".to_owned(),
            Some(Scheme::Other(other)) => other,
        };
        // wasmtime-wasi-http takes it from the URI or else the `host`
        // header, which guests never see; an empty `host` leaves it empty.
        let authority = http
            .authority(borrow())?
            .filter(|authority| !authority.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        let path = http.path_with_query(borrow())?;
        let url = format!("{scheme}://{authority}{}", path.as_deref().unwrap_or("/"));
        Ok(RequestHead {
            method: method.as_str().to_owned(),
            url,
            headers,
        })
    }

    fn respond(
        &mut self,
        outparam: Resource<HostResponseOutparam>,
        status: u16,
        headers: Vec<u8>,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        let http = self.http();
        let outparam = http.table.delete(outparam)?;
        let response = head(http.hooks, status, &headers)
            .and_then(|(status, fields)| whole_response(status, fields, body));
        match response {
            Ok(response) => {
                (outparam.send)(Ok(response));
                Ok(Ok(()))
            }
            Err(message) => refused(outparam, message),
        }
    }

    fn respond_streaming(
        &mut self,
        outparam: Resource<HostResponseOutparam>,
        status: u16,
        headers: Vec<u8>,
    ) -> wasmtime::Result<Result<(Resource<HostOutgoingBody>, Resource<DynOutputStream>), String>>
    {
        let mut http = self.http();
        let response = match head(http.hooks, status, &headers) {
            Ok((status, headers)) => http.table.push(HostOutgoingResponse {
                status,
                headers,
                body: None,
            })?,
            Err(message) => return refused(http.table.delete(outparam)?, message),
        };
        // The calls a guest would make, in its order: the body (sized by a
        // content-length, which `head` made sure is one number), its
        // stream, then the response to the client.
        let borrow = Resource::<HostOutgoingResponse>::new_borrow(response.rep());
        let body = wasi::HostOutgoingResponse::body(&mut http, borrow)?
            .map_err(|()| wasmtime::format_err!("a checked response's body is refused"))?;
        let stream = http
            .write(Resource::new_borrow(body.rep()))?
            .map_err(|()| wasmtime::format_err!("a new body's stream is taken"))?;
        wasi::HostResponseOutparam::set(&mut http, outparam, Ok(response))?;
        Ok(Ok((body, stream)))
    }
}

/// Set `outparam` to an error, as a guest may: the client gets a 500, and
/// the guest learns why.
fn refused<T>(
    outparam: HostResponseOutparam,
    message: String,
) -> wasmtime::Result<Result<T, String>> {
    (outparam.send)(Err(wasi::ErrorCode::InternalError(Some(message.clone()))));
    Ok(Err(message))
}

/// A response's status and packed headers, checked as `wasi:http` checks
/// them.
fn head(
    hooks: &mut dyn wasmtime_wasi_http::WasiHttpHooks,
    status: u16,
    packed: &[u8],
) -> Result<(http::StatusCode, FieldMap), String> {
    let status = http::StatusCode::from_u16(status)
        .map_err(|_| format!("{status} is not an HTTP status code"))?;
    let mut fields = FieldMap::new_mutable(FIELD_SIZE_LIMIT);
    for (name, value) in unpack_headers(packed)? {
        let bytes = latin1_bytes(value)
            .ok_or_else(|| format!("header {name:?}: the value has a character above U+00FF"))?;
        fields
            .append(hooks, name.to_owned(), bytes)
            .map_err(|e| format!("header {name:?}: {e}"))?;
    }
    fields.set_immutable();
    Ok((status, fields))
}

/// A response with all of its body, checked as `wasi:http` checks it.
fn whole_response(
    status: http::StatusCode,
    fields: FieldMap,
    body: Vec<u8>,
) -> Result<hyper::Response<HyperOutgoingBody>, String> {
    if let Some(length) = fields.get(http::header::CONTENT_LENGTH) {
        let matches = length
            .to_str()
            .ok()
            .and_then(|l| l.parse::<u64>().ok())
            .is_some_and(|l| l == body.len() as u64);
        if !matches {
            return Err(format!(
                "content-length {length:?} does not match the body's {} bytes",
                body.len()
            ));
        }
    }
    let body = Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed_unsync();
    hyper::Response::try_from(HostOutgoingResponse {
        status,
        headers: fields,
        body: Some(body),
    })
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_headers_round_trip() {
        let entries = vec![
            ("content-type".to_owned(), b"text/plain".to_vec()),
            ("set-cookie".to_owned(), b"a=1".to_vec()),
            ("set-cookie".to_owned(), b"b=2".to_vec()),
            ("x-latin1".to_owned(), vec![b'c', 0xe9, 0xff]),
            ("x-empty".to_owned(), Vec::new()),
        ];
        let packed = pack_headers(&entries);
        assert_eq!(
            packed,
            "content-type\ntext/plain\nset-cookie\na=1\nset-cookie\nb=2\nx-latin1\ncéÿ\nx-empty\n\n"
        );
        let unpacked = unpack_headers(packed.as_bytes()).unwrap();
        let back: Vec<(String, Vec<u8>)> = unpacked
            .into_iter()
            .map(|(n, v)| (n.to_owned(), latin1_bytes(v).unwrap()))
            .collect();
        assert_eq!(back, entries);
        assert_eq!(pack_headers(&[]), "");
        assert_eq!(unpack_headers(b"").unwrap(), vec![]);
    }

    #[test]
    fn a_content_length_goes_out_as_its_number() {
        // What a property run found: "03" is a valid length, sent as "3".
        let hooks = wasmtime_wasi_http::default_hooks();
        let (status, fields) = head(hooks, 100, b"content-length\n03\n").unwrap();
        let response = whole_response(status, fields, vec![0; 3]).unwrap();
        assert_eq!(response.headers()[http::header::CONTENT_LENGTH], "3");
        let (status, fields) = head(hooks, 200, b"content-length\n03\n").unwrap();
        assert!(whole_response(status, fields, vec![0; 2]).is_err());
    }

    #[test]
    fn malformed_packings_are_refused() {
        for (packed, error) in [
            (
                b"content-type\n".as_slice(),
                "header \"content-type\" has no value in the packed headers",
            ),
            (
                b"a\n1\nb",
                "header \"b\" has no value in the packed headers",
            ),
            (b"a\n1", "the packed headers do not end with a newline"),
            (b"a\n\xff\n", "the headers are not UTF-8"),
        ] {
            assert_eq!(unpack_headers(packed).unwrap_err(), error);
        }
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Header names as `wasi:http` hands them over (and junk: packing
    /// only needs them free of newlines).
    fn name() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z0-9!#$%&'*+.^_`|~-]{1,12}", "[^\n]{0,8}",]
    }

    /// Any bytes but a newline, which no header value holds.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            any::<u8>().prop_filter("no newline", |&b| b != b'\n'),
            0..16,
        )
    }

    fn packed_text() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            any::<Vec<u8>>(),
            proptest::collection::vec(
                proptest::sample::select(&[b'a', b'\n', b':', 0xc3, 0xa9, 0xff, b' '][..]),
                0..16,
            ),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn packed_headers_round_trip(
            entries in proptest::collection::vec((name(), value()), 0..8),
        ) {
            let packed = pack_headers(&entries);
            prop_assert_eq!(packed.chars().filter(|&c| c == '\n').count(), 2 * entries.len());
            let unpacked = unpack_headers(packed.as_bytes()).unwrap();
            let back: Vec<(String, Vec<u8>)> = unpacked
                .into_iter()
                .map(|(n, v)| (n.to_owned(), latin1_bytes(v).unwrap()))
                .collect();
            prop_assert_eq!(back, entries);
        }

        #[test]
        fn unpacking_accepts_exactly_the_well_formed(packed in packed_text()) {
            let well_formed = std::str::from_utf8(&packed).is_ok_and(|text| {
                text.is_empty()
                    || (text.ends_with('\n') && text.matches('\n').count() % 2 == 0)
            });
            match unpack_headers(&packed) {
                Ok(headers) => {
                    prop_assert!(well_formed);
                    let again: String = headers
                        .iter()
                        .map(|(n, v)| format!("{n}\n{v}\n"))
                        .collect();
                    prop_assert_eq!(again.as_bytes(), &packed[..]);
                }
                Err(message) => {
                    prop_assert!(!well_formed);
                    prop_assert!(!message.is_empty());
                }
            }
        }

        #[test]
        fn latin1_is_one_char_per_byte(bytes in any::<Vec<u8>>(), text in any::<String>()) {
            let chars: String = bytes.iter().map(|&b| char::from(b)).collect();
            prop_assert_eq!(latin1_bytes(&chars), Some(bytes));
            prop_assert_eq!(
                latin1_bytes(&text).is_some(),
                text.chars().all(|c| u32::from(c) <= 0xff)
            );
        }

        #[test]
        fn a_response_is_built_or_refused(
            status in prop_oneof![any::<u16>(), 100u16..600],
            entries in proptest::collection::vec(
                (
                    prop_oneof![
                        name(),
                        Just("content-length".to_owned()),
                        Just("Content-Type".to_owned()),
                        Just("connection".to_owned()),
                    ],
                    prop_oneof![
                        value(),
                        "[0-9]{1,3}".prop_map(String::into_bytes),
                        "[ -~]{0,12}".prop_map(String::into_bytes),
                    ],
                ),
                0..6,
            ),
            body in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let packed = pack_headers(&entries);
            let hooks = wasmtime_wasi_http::default_hooks();
            let response = head(hooks, status, packed.as_bytes())
                .and_then(|(status, fields)| whole_response(status, fields, body.clone()));
            match response {
                Ok(response) => {
                    prop_assert_eq!(response.status().as_u16(), status);
                    for (name, value) in &entries {
                        // wasi:http writes a content-length as its number
                        // ("03" as "3"): checked below.
                        if name == "content-length" {
                            continue;
                        }
                        let values: Vec<&[u8]> = response
                            .headers()
                            .get_all(name.as_str())
                            .iter()
                            .map(|v| v.as_bytes())
                            .collect();
                        prop_assert!(values.contains(&value.as_slice()), "{} missing", name);
                    }
                    let declared = entries.iter().any(|(name, _)| name == "content-length");
                    match response.headers().get(http::header::CONTENT_LENGTH) {
                        Some(length) => {
                            prop_assert!(declared);
                            let want = body.len().to_string();
                            prop_assert_eq!(length.as_bytes(), want.as_bytes());
                        }
                        None => prop_assert!(!declared),
                    }
                }
                Err(message) => prop_assert!(!message.is_empty()),
            }
        }
    }
}
