//! Small helpers every backend uses: hex, key-prefix bounds, the clock,
//! poison-free locks.

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Locks a mutex, ignoring poisoning: the guarded SQLite connection stays
/// consistent even if a thread panicked while holding it (SQLite rolls back
/// an unfinished statement itself).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Inverse of [`hex`]; `None` for anything else.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The smallest string greater than every string that starts with `prefix`
/// (`None` if there is none). SQLite's BINARY collation compares UTF-8 bytes,
/// and UTF-8 byte order is code point order, so `key >= prefix AND key <
/// successor` selects exactly the keys with that prefix and can use the
/// index, with no LIKE wildcards to escape.
pub(crate) fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 + 1 {
            0xD800 => Some('\u{E000}'),
            n => char::from_u32(n),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_bounds_exactly_the_prefixed_strings() {
        assert_eq!(prefix_successor("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_successor("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_successor("\u{10FFFF}"), None);
        assert_eq!(prefix_successor(""), None);
        let succ = prefix_successor("a/").unwrap();
        for key in ["a/", "a/b", "a/\u{10FFFF}\u{10FFFF}"] {
            assert!(key.as_bytes() < succ.as_bytes(), "{key}");
        }
        for key in ["a0", "b", "a\u{10FFFF}"] {
            assert!(key.as_bytes() >= succ.as_bytes(), "{key}");
        }
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(unhex("00abff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é0"), None);
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        fn config() -> ProptestConfig {
            ProptestConfig {
                cases: 256,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn hex_round_trips_and_unhex_takes_only_hex(
                bytes in any::<Vec<u8>>(),
                text in prop_oneof![any::<String>(), "[0-9a-fA-F+ -]{0,8}"],
            ) {
                prop_assert_eq!(unhex(&hex(&bytes)), Some(bytes));
                if let Some(decoded) = unhex(&text) {
                    prop_assert_eq!(hex(&decoded), text.to_ascii_lowercase());
                }
            }

            #[test]
            fn the_successor_bounds_exactly_the_prefixed_strings(
                prefix in prop_oneof![any::<String>(), "[a\u{d7ff}\u{e000}\u{10ffff}]{0,3}"],
                rest in prop_oneof![any::<String>(), "[\u{0}\u{10ffff}]{0,3}"],
                other in any::<String>(),
            ) {
                match prefix_successor(&prefix) {
                    Some(succ) => {
                        let prefixed = format!("{prefix}{rest}");
                        prop_assert!(prefixed.as_bytes() < succ.as_bytes());
                        if !other.starts_with(&prefix) && other >= prefix {
                            prop_assert!(other.as_bytes() >= succ.as_bytes());
                        }
                    }
                    None => prop_assert!(prefix.chars().all(|c| c == char::MAX)),
                }
            }
        }

        #[test]
        fn unhex_refuses_a_sign() {
            // Found by `hex_round_trips_and_unhex_takes_only_hex`:
            // `u8::from_str_radix` takes a leading `+`, so "+f" decoded.
            assert_eq!(unhex("+f"), None);
            assert_eq!(unhex("+f+f"), None);
        }
    }
}
