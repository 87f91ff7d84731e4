//! `[backends]`: where binding state lives. A `type` Isola does not
//! implement is an error, and so is a field its type does not have.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use crate::error::{Fault, Faults};
use crate::model::{Backend, BackendTls, BackendsConfig};
use crate::raw::{RawBackend, RawBackends};

/// A `[backends]` field, where it is, and the backend types that have it.
type FieldRule<'a> = (&'a str, Option<Range<usize>>, &'a [&'a str]);

/// `base` is the config file's directory, which certificate files are
/// relative to.
pub(super) fn parse_backends(
    raw: &RawBackends,
    base: &Path,
    faults: &mut Faults,
) -> BackendsConfig {
    let mut config = BackendsConfig::default();
    let kinds: [(&str, &Option<RawBackend>, &[&str]); 6] = [
        ("kv", &raw.kv, &["sqlite", "redis"]),
        ("sql", &raw.sql, &["sqlite", "postgres"]),
        ("blob", &raw.blob, &["fs", "s3"]),
        ("cache", &raw.cache, &["memory", "redis"]),
        ("queue", &raw.queue, &["sqlite", "redis"]),
        ("durable", &raw.durable, &["sqlite", "postgres"]),
    ];
    for (kind, backend, available) in kinds {
        let Some(backend) = backend else { continue };
        let key = format!("backends.{kind}");
        // The other fields mean something only for an available type.
        if !check_fields(&key, kind, backend, available, faults) {
            continue;
        }
        let parsed = parse_backend(&key, backend, base, faults);
        if let Some(mb) = &backend.max_mb {
            if *mb.get_ref() == 0 {
                faults.push(Fault::at(
                    mb.span(),
                    format!("{key}.max_mb"),
                    "must be at least 1",
                ));
            }
            config.cache_max_bytes = mb.get_ref().saturating_mul(1 << 20);
        }
        *match kind {
            "kv" => &mut config.kv,
            "sql" => &mut config.sql,
            "blob" => &mut config.blob,
            "cache" => &mut config.cache,
            "queue" => &mut config.queue,
            _ => &mut config.durable,
        } = parsed;
    }
    config
}

/// The `type` is one of the `available` ones for `kind` (else false), and
/// every other field belongs to that type.
fn check_fields(
    key: &str,
    kind: &str,
    backend: &RawBackend,
    available: &[&str],
    faults: &mut Faults,
) -> bool {
    let kind_name = backend.r#type.get_ref();
    if !available.contains(&kind_name.as_str()) {
        faults.push(Fault::at(
            backend.r#type.span(),
            format!("{key}.type"),
            format!(
                "`{kind_name}` is not an available {kind} backend (available: {})",
                available.join(", ")
            ),
        ));
        return false;
    }
    // Every field but `type` belongs to some backend types only.
    let fields: [FieldRule; 8] = [
        (
            "max_mb",
            backend.max_mb.as_ref().map(Spanned::span),
            &["memory"],
        ),
        (
            "url",
            backend.url.as_ref().map(Spanned::span),
            &["redis", "postgres"],
        ),
        (
            "endpoint",
            backend.endpoint.as_ref().map(Spanned::span),
            &["s3"],
        ),
        (
            "region",
            backend.region.as_ref().map(Spanned::span),
            &["s3"],
        ),
        (
            "bucket",
            backend.bucket.as_ref().map(Spanned::span),
            &["s3"],
        ),
        (
            "ca_file",
            backend.ca_file.as_ref().map(Spanned::span),
            &["redis", "postgres", "s3"],
        ),
        (
            "client_cert",
            backend.client_cert.as_ref().map(Spanned::span),
            &["redis", "postgres"],
        ),
        (
            "client_key",
            backend.client_key.as_ref().map(Spanned::span),
            &["redis", "postgres"],
        ),
    ];
    for (field, span, types) in fields {
        if let Some(span) = span
            && !types.contains(&kind_name.as_str())
        {
            let message = if field == "max_mb" {
                "only the cache backend has a size cap".to_owned()
            } else {
                format!("a `{kind_name}` backend has no `{field}`")
            };
            faults.push(Fault::at(span, format!("{key}.{field}"), message));
        }
    }
    true
}

/// The backend a checked entry describes; a value at fault stays empty.
fn parse_backend(key: &str, backend: &RawBackend, base: &Path, faults: &mut Faults) -> Backend {
    let kind_name = backend.r#type.get_ref();
    let mut required = |value: &Option<Spanned<String>>, field: &str| {
        let value = value
            .as_ref()
            .map(|v| v.get_ref().clone())
            .filter(|v| !v.is_empty());
        if value.is_none() {
            faults.push(Fault::at(
                backend.r#type.span(),
                format!("{key}.{field}"),
                format!("a `{kind_name}` backend needs `{field}`"),
            ));
        }
        value.unwrap_or_default()
    };
    match kind_name.as_str() {
        "redis" | "postgres" => {
            let url = required(&backend.url, "url");
            let url_fault = |message: &str| {
                Fault::new(
                    backend.url.as_ref().map(Spanned::span),
                    Some(format!("{key}.url")),
                    message,
                )
            };
            let scheme = if kind_name == "redis" {
                ["redis://", "rediss://"].as_slice()
            } else {
                ["postgres://", "postgresql://"].as_slice()
            };
            // A missing URL is reported above.
            if !url.is_empty() && !scheme.iter().any(|s| url.starts_with(s)) {
                faults.push(url_fault(&format!(
                    "must start with {}",
                    scheme.join(" or ")
                )));
            }
            let tls = parse_tls(key, backend, base, true, faults);
            if kind_name == "redis" {
                if !url.is_empty() && !url.starts_with("rediss://") && tls != BackendTls::default()
                {
                    faults.push(url_fault("certificate files need a `rediss://` (TLS) URL"));
                }
                Backend::Redis { url, tls }
            } else {
                let tls_mode = ["require", "verify-full"]
                    .iter()
                    .any(|mode| url.contains(&format!("sslmode={mode}")));
                if !url.is_empty() && !tls_mode && tls != BackendTls::default() {
                    faults.push(url_fault(
                        "certificate files need `sslmode=verify-full` (or `require`) in the URL",
                    ));
                }
                Backend::Postgres { url, tls }
            }
        }
        "s3" => {
            let bucket = required(&backend.bucket, "bucket");
            let endpoint = backend.endpoint.as_ref().map(|e| e.get_ref().clone());
            if let Some(e) = &backend.endpoint
                && !(e.get_ref().starts_with("http://") || e.get_ref().starts_with("https://"))
            {
                faults.push(Fault::at(
                    e.span(),
                    format!("{key}.endpoint"),
                    "must start with http:// or https://",
                ));
            }
            Backend::S3 {
                endpoint,
                region: backend
                    .region
                    .as_ref()
                    .map_or_else(|| "us-east-1".to_owned(), |r| r.get_ref().clone()),
                bucket,
                tls: parse_tls(key, backend, base, false, faults),
            }
        }
        _ => Backend::Embedded,
    }
}

/// `ca_file`, and with `client_certs` `client_cert` and `client_key`
/// (without, `check_fields` refuses them), relative to `base`: each must be
/// a file, and a client certificate comes with its key.
fn parse_tls(
    key: &str,
    backend: &RawBackend,
    base: &Path,
    client_certs: bool,
    faults: &mut Faults,
) -> BackendTls {
    let mut file = |value: &Option<Spanned<String>>, field: &str| {
        let value = value.as_ref()?;
        let path = base.join(value.get_ref());
        if !path.is_file() {
            faults.push(Fault::at(
                value.span(),
                format!("{key}.{field}"),
                format!("{} is not a file", path.display()),
            ));
        }
        // Kept when missing: whether the pair is complete is another
        // question.
        Some(path)
    };
    let ca_file = file(&backend.ca_file, "ca_file");
    if !client_certs {
        return BackendTls {
            ca_file,
            ..BackendTls::default()
        };
    }
    let tls = BackendTls {
        ca_file,
        client_cert: file(&backend.client_cert, "client_cert"),
        client_key: file(&backend.client_key, "client_key"),
    };
    for (present, absent, span) in [
        ("client_cert", "client_key", backend.client_cert.as_ref()),
        ("client_key", "client_cert", backend.client_key.as_ref()),
    ] {
        if let Some(span) = span
            && tls.client_cert.is_some() != tls.client_key.is_some()
        {
            faults.push(Fault::at(
                span.span(),
                format!("{key}.{present}"),
                format!("`{present}` needs `{absent}`"),
            ));
        }
    }
    tls
}
