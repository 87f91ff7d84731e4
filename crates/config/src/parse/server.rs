//! `[server]`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::checks::{between_1_and, positive};
use crate::error::{Fault, Faults};
use crate::model::{DEFAULT_STATE_DIR, Secret, ServerConfig};
use crate::outbound::parse_override;
use crate::raw::RawServer;

/// The server's settings, and the `outbound_override` its workers inherit;
/// a value at fault keeps its default.
pub(super) fn parse_server(
    raw: RawServer,
    base: &Path,
    faults: &mut Faults,
) -> (ServerConfig, Option<String>) {
    let mut server = ServerConfig::default();
    if let Some(listen) = &raw.listen
        && let Some(addr) = faults.ok(address(listen, "server.listen", "127.0.0.1:8787"))
    {
        server.listen = addr;
    }
    server.state_dir = base.join(raw.state_dir.unwrap_or(DEFAULT_STATE_DIR.into()));
    server.cache_dir = raw.cache_dir.as_ref().map(|dir| base.join(dir));
    if let Some(n) = &raw.max_instances
        && let Some(n) = faults.ok(between_1_and(n, "server.max_instances", 1_000_000))
    {
        server.max_instances = n;
    }
    if let Some(fuel) = &raw.fuel_per_ms {
        server.fuel_per_ms = faults.ok(positive(fuel, "server.fuel_per_ms".into()));
    }
    if let Some(bytes) = raw.max_header_bytes {
        if (1024..=16 * 1024).contains(bytes.get_ref()) {
            server.max_header_bytes = bytes.into_inner();
        } else {
            faults.push(Fault::at(
                bytes.span(),
                "server.max_header_bytes",
                "must be between 1024 and 16384",
            ));
        }
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
        server.trusted_client_ip_header = faults.ok(client_ip_header(header));
    }
    if let Some(admin) = &raw.admin
        && let Some(addr) = faults.ok(address(admin, "server.admin", "127.0.0.1:8788"))
    {
        if !addr.ip().is_loopback() && raw.admin_token.is_none() {
            faults.push(Fault::at(
                admin.span(),
                "server.admin",
                "an admin listener off loopback needs `admin_token`",
            ));
        }
        server.admin = Some(addr);
    }
    server.admin_token = raw.admin_token.map(Secret::new);
    if let Some(ms) = &raw.outbound_idle_timeout_ms
        && let Some(ms) = faults.ok(positive(ms, "server.outbound_idle_timeout_ms".into()))
    {
        server.outbound_idle_timeout_ms = ms;
    }
    if let Some(n) = &raw.outbound_max_connections_per_origin
        && let Some(n) = faults.ok(between_1_and(
            n,
            "server.outbound_max_connections_per_origin",
            100_000,
        ))
    {
        server.outbound_max_connections_per_origin = n;
    }
    if let Some(ms) = raw.queue_timeout_ms {
        server.queue_timeout_ms = ms;
    }
    if let Some(n) = &raw.max_connections
        && let Some(n) = faults.ok(between_1_and(n, "server.max_connections", 1_000_000))
    {
        server.max_connections = n;
    }
    if let Some(s) = &raw.durable_object_idle_s
        && let Some(s) = faults.ok(between_1_and(s, "server.durable_object_idle_s", 3600))
    {
        server.durable_object_idle = Duration::from_secs(s.into());
    }
    if let Some(file) = &raw.outbound_ca_file {
        let path = base.join(file.get_ref());
        if path.is_file() {
            server.outbound_ca_file = Some(path);
        } else {
            faults.push(Fault::at(
                file.span(),
                "server.outbound_ca_file",
                format!("{} is not a file", path.display()),
            ));
        }
    }
    let outbound_override = raw.outbound_override.as_ref().and_then(|o| {
        faults.ok(parse_override(o.get_ref())
            .map_err(|m| Fault::at(o.span(), "server.outbound_override", m)))
    });
    (server, outbound_override)
}

pub(super) fn address(
    value: &Spanned<String>,
    key: &str,
    example: &str,
) -> Result<SocketAddr, Fault> {
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
