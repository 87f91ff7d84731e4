//! `[server]`.

use std::net::SocketAddr;
use std::path::Path;

use toml::Spanned;

use super::checks::positive;
use crate::error::Fault;
use crate::model::{DEFAULT_STATE_DIR, Secret, ServerConfig};
use crate::outbound::parse_override;
use crate::raw::RawServer;

/// The server's settings, and the `outbound_override` its workers inherit.
pub(super) fn parse_server(
    raw: RawServer,
    base: &Path,
) -> Result<(ServerConfig, Option<String>), Fault> {
    let mut server = ServerConfig::default();
    if let Some(listen) = &raw.listen {
        server.listen = address(listen, "server.listen", "127.0.0.1:8787")?;
    }
    server.state_dir = base.join(raw.state_dir.unwrap_or(DEFAULT_STATE_DIR.into()));
    server.cache_dir = raw.cache_dir.as_ref().map(|dir| base.join(dir));
    if let Some(n) = &raw.max_instances {
        server.max_instances = u32::try_from(positive(n, "server.max_instances".into())?)
            .ok()
            .filter(|&n| n <= 1_000_000)
            .ok_or_else(|| {
                Fault::at(n.span(), "server.max_instances", "must be at most 1000000")
            })?;
    }
    if let Some(fuel) = &raw.fuel_per_ms {
        server.fuel_per_ms = Some(positive(fuel, "server.fuel_per_ms".into())?);
    }
    if let Some(bytes) = raw.max_header_bytes {
        if !(1024..=16 * 1024).contains(bytes.get_ref()) {
            return Err(Fault::at(
                bytes.span(),
                "server.max_header_bytes",
                "must be between 1024 and 16384",
            ));
        }
        server.max_header_bytes = bytes.into_inner();
    }
    if let Some(mb) = raw.max_body_mb {
        server.max_body_bytes = mb.saturating_mul(1 << 20);
    }
    if let Some(ms) = raw.header_timeout_ms {
        server.header_timeout_ms = ms;
    }
    if let Some(on) = raw.server_timing {
        server.server_timing = on;
    }
    if let Some(ms) = raw.shutdown_grace_ms {
        server.shutdown_grace_ms = ms;
    }
    server.colo = raw.colo;
    server.country = raw.country;
    if let Some(header) = raw.trusted_client_ip_header {
        server.trusted_client_ip_header = Some(client_ip_header(header)?);
    }
    if let Some(admin) = &raw.admin {
        let addr = address(admin, "server.admin", "127.0.0.1:8788")?;
        if !addr.ip().is_loopback() && raw.admin_token.is_none() {
            return Err(Fault::at(
                admin.span(),
                "server.admin",
                "an admin listener off loopback needs `admin_token`",
            ));
        }
        server.admin = Some(addr);
    }
    server.admin_token = raw.admin_token.map(Secret::new);
    if let Some(ms) = &raw.outbound_idle_timeout_ms {
        server.outbound_idle_timeout_ms = positive(ms, "server.outbound_idle_timeout_ms".into())?;
    }
    if let Some(n) = &raw.outbound_max_connections_per_origin {
        let key = "server.outbound_max_connections_per_origin";
        server.outbound_max_connections_per_origin = u32::try_from(positive(n, key.into())?)
            .ok()
            .filter(|&n| n <= 100_000)
            .ok_or_else(|| Fault::at(n.span(), key, "must be at most 100000"))?;
    }
    if let Some(ms) = raw.queue_timeout_ms {
        server.queue_timeout_ms = ms;
    }
    if let Some(n) = &raw.max_connections {
        let key = "server.max_connections";
        server.max_connections = u32::try_from(positive(n, key.into())?)
            .ok()
            .filter(|&n| n <= 1_000_000)
            .ok_or_else(|| Fault::at(n.span(), key, "must be at most 1000000"))?;
    }
    if let Some(file) = &raw.outbound_ca_file {
        let path = base.join(file.get_ref());
        if !path.is_file() {
            return Err(Fault::at(
                file.span(),
                "server.outbound_ca_file",
                format!("{} is not a file", path.display()),
            ));
        }
        server.outbound_ca_file = Some(path);
    }
    let outbound_override = match &raw.outbound_override {
        Some(o) => Some(
            parse_override(o.get_ref())
                .map_err(|m| Fault::at(o.span(), "server.outbound_override", m))?,
        ),
        None => None,
    };
    Ok((server, outbound_override))
}

fn address(value: &Spanned<String>, key: &str, example: &str) -> Result<SocketAddr, Fault> {
    value.get_ref().parse().map_err(|_| {
        Fault::at(
            value.span(),
            key,
            format!("`{}` is not an address such as {example}", value.get_ref()),
        )
    })
}

/// `trusted_client_ip_header`, lowercased.
fn client_ip_header(header: Spanned<String>) -> Result<String, Fault> {
    let valid = !header.get_ref().is_empty()
        && header
            .get_ref()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(Fault::at(
            header.span(),
            "server.trusted_client_ip_header",
            format!("`{}` is not a header name", header.get_ref()),
        ));
    }
    Ok(header.into_inner().to_ascii_lowercase())
}
