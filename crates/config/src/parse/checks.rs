//! Checks that several sections share.

use toml::Spanned;

use crate::error::Fault;

/// A count or budget where zero would make every request fail.
pub(super) fn positive(value: &Spanned<u64>, key: String) -> Result<u64, Fault> {
    if *value.get_ref() == 0 {
        Err(Fault::at(value.span(), key, "must be at least 1"))
    } else {
        Ok(*value.get_ref())
    }
}

/// Names `env` exposes: usable as JS properties and Rust strings alike.
pub(super) fn is_binding_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Queue names as Cloudflare allows them: letters, digits, `-`, `_`.
pub(super) fn check_queue_name(name: &Spanned<String>) -> Result<(), String> {
    let text = name.get_ref();
    let valid = (1..=63).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{text}` is not a valid queue name (1 to 63 letters, digits, `-`, `_`)"
        ))
    }
}
