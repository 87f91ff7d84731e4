//! Durable Object ids: 64 lowercase hex digits, as in Workers.
//!
//! An id is 24 bytes of body and an 8-byte tag binding the body to its
//! namespace, so `idFromString` can refuse an id made for another
//! namespace (or typed by hand) instead of creating a stray object. The
//! body of a named id is a hash of the namespace and the name, so every
//! node and every restart gives a name the same id; a unique id's body is
//! random. The tag is a checksum, not a secret: ids are addresses, and who
//! may reach an object is decided by its worker's bindings.

use sha2::{Digest, Sha256};

const BODY: usize = 24;
const TAG: usize = 8;

/// The id `namespace` gives `name`.
pub fn from_name(namespace: &str, name: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"isola-object-name\0")
        .chain_update(namespace.as_bytes())
        .chain_update(b"\0")
        .chain_update(name.as_bytes())
        .finalize();
    let mut body = [0u8; BODY];
    body.copy_from_slice(&digest[..BODY]);
    with_tag(namespace, &body)
}

/// A new random id in `namespace`.
pub fn unique(namespace: &str) -> Result<String, String> {
    let mut body = [0u8; BODY];
    getrandom::getrandom(&mut body).map_err(|e| format!("no randomness for a new id: {e}"))?;
    Ok(with_tag(namespace, &body))
}

/// `text` in lowercase if it is an id of `namespace`.
pub fn parse(namespace: &str, text: &str) -> Result<String, String> {
    let bytes = decode_hex(text)
        .ok_or_else(|| format!("`{text}` is not a Durable Object id: an id is 64 hex digits"))?;
    let (body, tag) = bytes.split_at(BODY);
    if tag != tag_of(namespace, body) {
        return Err(format!(
            "`{text}` is not an id of this namespace: it was made by another namespace's idFromName or newUniqueId, or by hand"
        ));
    }
    Ok(text.to_ascii_lowercase())
}

fn with_tag(namespace: &str, body: &[u8; BODY]) -> String {
    let mut text = String::with_capacity(2 * (BODY + TAG));
    for byte in body.iter().chain(tag_of(namespace, body).iter()) {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

fn tag_of(namespace: &str, body: &[u8]) -> [u8; TAG] {
    let digest = Sha256::new()
        .chain_update(b"isola-object-tag\0")
        .chain_update(namespace.as_bytes())
        .chain_update(b"\0")
        .chain_update(body)
        .finalize();
    let mut tag = [0u8; TAG];
    tag.copy_from_slice(&digest[..TAG]);
    tag
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 2 * (BODY + TAG) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_gives_the_same_id_in_its_namespace_and_another_elsewhere() {
        let a = from_name("w/Counter", "alice");
        assert_eq!(a, from_name("w/Counter", "alice"));
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(a, from_name("w/Counter", "bob"));
        assert_ne!(a, from_name("w/Room", "alice"));
    }

    #[test]
    fn parse_accepts_its_namespaces_ids_in_any_case_and_refuses_others() {
        let named = from_name("w/Counter", "alice");
        let unique = unique("w/Counter").unwrap();
        assert_ne!(unique, super::unique("w/Counter").unwrap());
        assert_eq!(parse("w/Counter", &named).unwrap(), named);
        assert_eq!(parse("w/Counter", &unique.to_uppercase()).unwrap(), unique);
        let other = parse("w/Room", &named).unwrap_err();
        assert!(other.contains("not an id of this namespace"), "{other}");
        for bad in [
            "",
            "abc",
            &named[..63],
            &format!("{}z", &named[..63]),
            "é".repeat(32).as_str(),
        ] {
            let error = parse("w/Counter", bad).unwrap_err();
            assert!(error.contains("64 hex digits"), "{bad}: {error}");
        }
        let mut flipped = named.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        assert!(parse("w/Counter", std::str::from_utf8(&flipped).unwrap()).is_err());
    }
}
