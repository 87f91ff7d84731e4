//! `[cluster]`: this node's part in a cluster of nodes that share their
//! backends, where each Durable Object runs on one node at a time and the
//! others forward its events there over an internal listener.

use crate::error::{Fault, Faults};
use crate::model::{Backend, BackendsConfig, ClusterConfig};
use crate::raw::RawCluster;

use super::server::address;

/// The cluster settings, checked against the backends they need: leases
/// every node shares (a Redis queue backend) and Durable Object storage
/// every node reaches (PostgreSQL). `None` without a `[cluster]` section,
/// or when a value is at fault.
pub(super) fn parse_cluster(
    raw: Option<RawCluster>,
    backends: &BackendsConfig,
    faults: &mut Faults,
) -> Option<ClusterConfig> {
    let raw = raw?;
    let listen = faults.ok(address(&raw.listen, "cluster.listen", "0.0.0.0:8790"));
    let advertise = faults.ok(advertised(&raw.advertise));
    if !matches!(backends.queue, Backend::Redis { .. }) {
        faults.push(Fault::at(
            raw.listen.span(),
            "cluster",
            "a cluster needs leases every node shares: set `backends.queue` to a `redis` backend",
        ));
    }
    if !matches!(backends.durable, Backend::Postgres { .. }) {
        faults.push(Fault::at(
            raw.listen.span(),
            "cluster",
            "a cluster needs Durable Object storage every node reaches: set `backends.durable` to a `postgres` backend",
        ));
    }
    Some(ClusterConfig {
        listen: listen?,
        advertise: advertise?,
    })
}

/// `advertise`: `http://host:port` (the internal listener speaks plain
/// HTTP), without a path.
fn advertised(value: &toml::Spanned<String>) -> Result<String, Fault> {
    let text = value.get_ref().trim_end_matches('/');
    let fault = |message: String| Fault::at(value.span(), "cluster.advertise", message);
    let Some(authority) = text.strip_prefix("http://") else {
        return Err(fault(format!(
            "`{text}` must start with http:// (the internal listener speaks plain HTTP; keep it on a private network)"
        )));
    };
    if authority.contains(['/', '?', '#', '@']) {
        return Err(fault(format!(
            "`{text}` must be only http://host:port: the other nodes add the path"
        )));
    }
    let port = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.ends_with(':') => port.parse::<u16>().ok(),
        _ => None,
    };
    if port.is_none_or(|port| port == 0) || authority.chars().any(char::is_whitespace) {
        return Err(fault(format!(
            "`{text}` must name a host and a port, such as http://10.0.0.5:8790"
        )));
    }
    Ok(text.to_owned())
}
