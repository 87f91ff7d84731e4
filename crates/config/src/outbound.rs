//! `allowed_outbound_hosts` entries (Spin's syntax).
//!
//! An entry is `scheme://host[:port]`: scheme `http`, `https` or `*`; host a
//! name, `*.suffix` or `*`; port a number or `*`, defaulting to the
//! scheme's. A bare `*` is short for `*://*:*`. An entry that names its host
//! (exactly or by suffix) also reaches loopback and private addresses; the
//! wildcard host reaches public addresses only, so `"*"` never opens the
//! host's own network by accident.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    Any,
    Suffix(String),
    Exact(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortRule {
    SchemeDefault,
    Any,
    Exact(u16),
}

/// One parsed `allowed_outbound_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRule {
    text: String,
    /// `None`: http or https.
    scheme: Option<String>,
    host: HostRule,
    port: PortRule,
}

impl OutboundRule {
    pub fn parse(text: &str) -> Result<Self, String> {
        let fail = |why: &str| format!("bad outbound host `{text}`: {why}");
        if text == "*" {
            return Ok(OutboundRule {
                text: text.to_owned(),
                scheme: None,
                host: HostRule::Any,
                port: PortRule::Any,
            });
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| fail("write scheme://host[:port], e.g. https://api.example.com"))?;
        let scheme = match scheme {
            "*" => None,
            "http" | "https" => Some(scheme.to_owned()),
            _ => return Err(fail("the scheme must be http, https or *")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains('/') || rest.contains('?') {
            return Err(fail("give only scheme, host and port, no path"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| fail("unclosed `[`"))?;
            (host.to_owned(), after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host.to_owned(), Some(port)),
                None => (rest.to_owned(), None),
            }
        };
        let port = match port {
            None => PortRule::SchemeDefault,
            Some("*") => PortRule::Any,
            Some(p) => PortRule::Exact(
                p.parse()
                    .map_err(|_| fail("the port must be a number or *"))?,
            ),
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostRule::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            HostRule::Suffix(format!(".{suffix}"))
        } else if host.contains('*') || host.is_empty() {
            return Err(fail("`*` may only be the whole host or start it as `*.`"));
        } else {
            HostRule::Exact(host)
        };
        Ok(OutboundRule {
            text: text.to_owned(),
            scheme,
            host,
            port,
        })
    }

    /// Does this entry cover a request to `scheme://host:port`?
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == scheme);
        let default_port = match scheme {
            "https" => 443,
            _ => 80,
        };
        let port_ok = match self.port {
            PortRule::Any => true,
            PortRule::Exact(p) => p == port,
            PortRule::SchemeDefault => port == default_port,
        };
        let host_ok = match &self.host {
            HostRule::Any => true,
            HostRule::Suffix(suffix) => host.ends_with(suffix.as_str()),
            HostRule::Exact(h) => *h == host,
        };
        scheme_ok && port_ok && host_ok
    }

    /// Whether the entry names its host, which lets it reach loopback and
    /// private addresses.
    pub fn names_host(&self) -> bool {
        self.host != HostRule::Any
    }
}

impl fmt::Display for OutboundRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `outbound_override` must be a plain `http://host:port`; the authority.
pub(crate) fn parse_override(text: &str) -> Result<String, String> {
    let authority = text
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| format!("`{text}` is not of the form http://host:port"))?;
    Ok(authority.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> OutboundRule {
        OutboundRule::parse(s).unwrap()
    }

    #[test]
    fn matching() {
        assert!(rule("https://api.example.com").allows("https", "api.example.com", 443));
        assert!(!rule("https://api.example.com").allows("http", "api.example.com", 80));
        assert!(!rule("https://api.example.com").allows("https", "api.example.com", 8443));
        assert!(rule("http://127.0.0.1:9000").allows("http", "127.0.0.1", 9000));
        assert!(rule("http://127.0.0.1:*").allows("http", "127.0.0.1", 1234));
        assert!(rule("*://*.example.com:*").allows("http", "a.b.example.com", 81));
        assert!(!rule("https://*.example.com").allows("https", "example.com", 443));
        assert!(rule("http://[::1]:8080").allows("http", "[::1]", 8080));
        assert!(rule("*").allows("https", "anything.test", 1));
        assert!(!rule("*").names_host());
        assert!(rule("http://localhost:1").names_host());
    }

    #[test]
    fn rejects_malformed_entries() {
        for bad in [
            "api.example.com",
            "ftp://x.com",
            "https://x.com/path",
            "https://x.com:port",
            "https://a*b.com",
            "https://",
        ] {
            assert!(OutboundRule::parse(bad).is_err(), "{bad}");
        }
    }
}
