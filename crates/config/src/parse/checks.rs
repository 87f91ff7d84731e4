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

/// [`positive`], and at most `max`.
pub(super) fn between_1_and(value: &Spanned<u64>, key: &str, max: u32) -> Result<u32, Fault> {
    u32::try_from(positive(value, key.into())?)
        .ok()
        .filter(|&n| n <= max)
        .ok_or_else(|| Fault::at(value.span(), key, format!("must be at most {max}")))
}

/// Names `env` exposes: usable as JS properties and Rust strings alike.
pub(super) fn is_binding_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Durable Object class names: JavaScript identifiers, as the classes a
/// worker exports are named.
pub(super) fn is_class_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
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
