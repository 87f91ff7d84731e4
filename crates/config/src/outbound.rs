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
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| fail("only `:port` may follow `]`"))?,
                ),
            };
            (host.to_owned(), port)
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
        if host.contains(['[', ']']) {
            return Err(fail("`[` and `]` may only enclose an IPv6 address"));
        }
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostRule::Any
        } else if let Some(suffix) = host
            .strip_prefix("*.")
            .filter(|s| !s.is_empty() && !s.contains('*'))
        {
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
            // Found by the property tests: text after `]` was dropped (a
            // rule for port 80), and a stray bracket made a rule that
            // allowed nothing.
            "http://[::1]8080",
            "http://[::1]x",
            "http://]",
            "http://a[b:80",
            // And a suffix that is empty or holds another `*`.
            "http://*.",
            "http://*.*",
            "https://*.a*.com",
        ] {
            assert!(OutboundRule::parse(bad).is_err(), "{bad}");
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

    fn adversarial() -> impl Strategy<Value = String> {
        "(https?|\\*|ftp|)(://)?[a-zA-Z0-9*.:\\[\\]/?@ -]{0,16}"
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9-]{1,5}(\\.[a-zA-Z0-9-]{1,5}){0,2}"
    }

    fn scheme() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("http"), Just("https")]
    }

    fn default_port(scheme: &str) -> u16 {
        if scheme == "https" { 443 } else { 80 }
    }

    /// What every accepted rule holds to, whatever its text.
    fn check_accepted(text: &str, rule: &OutboundRule) -> Result<(), TestCaseError> {
        prop_assert_eq!(rule.to_string(), text);
        prop_assert_eq!(&OutboundRule::parse(text).unwrap(), rule);
        prop_assert!(text == "*" || text.contains("://"));
        if let HostRule::Exact(h) | HostRule::Suffix(h) = &rule.host {
            prop_assert!(!h.is_empty());
            prop_assert!(!h.contains(['*', '/', '?']));
            prop_assert!(!h.bytes().any(|b| b.is_ascii_uppercase()));
        }
        if let Some(s) = &rule.scheme {
            prop_assert!(s == "http" || s == "https");
            let other = if s == "http" { "https" } else { "http" };
            prop_assert!(!rule.allows(other, "a.example", 1));
            for port in [80, 443, 1] {
                prop_assert!(!rule.allows(other, "x", port));
            }
        }
        if let HostRule::Exact(h) = &rule.host {
            let port = match rule.port {
                PortRule::Exact(p) => p,
                _ => default_port(rule.scheme.as_deref().unwrap_or("http")),
            };
            let scheme = rule.scheme.as_deref().unwrap_or("http");
            prop_assert!(rule.allows(scheme, h, port));
            prop_assert!(rule.allows(scheme, &h.to_ascii_uppercase(), port));
        }
        prop_assert_eq!(rule.names_host(), rule.host != HostRule::Any);
        Ok(())
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn any_text_parses_or_is_refused(text in any::<String>()) {
            if let Ok(rule) = OutboundRule::parse(&text) {
                check_accepted(&text, &rule)?;
            }
            let _ = parse_override(&text);
        }

        #[test]
        fn adversarial_text_parses_or_is_refused(
            text in adversarial(),
            scheme in scheme(),
            host in "[a-zA-Z.\\[\\]:]{0,8}",
            port in any::<u16>(),
        ) {
            if let Ok(rule) = OutboundRule::parse(&text) {
                check_accepted(&text, &rule)?;
                let _ = rule.allows(scheme, &host, port);
            }
            if let Ok(authority) = parse_override(&text) {
                prop_assert!(!authority.is_empty() && !authority.contains('/'));
            }
        }

        #[test]
        fn a_named_host_is_allowed_exactly(
            scheme in scheme(),
            host in name(),
            port in proptest::option::of(any::<u16>()),
            slash in any::<bool>(),
            other in name(),
            other_port in any::<u16>(),
        ) {
            let text = format!(
                "{scheme}://{host}{}{}",
                port.map(|p| format!(":{p}")).unwrap_or_default(),
                if slash { "/" } else { "" }
            );
            let rule = OutboundRule::parse(&text).unwrap();
            check_accepted(&text, &rule)?;
            let port = port.unwrap_or(default_port(scheme));
            prop_assert!(rule.allows(scheme, &host, port));
            prop_assert!(rule.names_host());
            prop_assert_eq!(
                rule.allows(scheme, &other, port),
                other.eq_ignore_ascii_case(&host)
            );
            prop_assert_eq!(rule.allows(scheme, &host, other_port), other_port == port);
        }

        #[test]
        fn a_suffix_allows_subdomains_only(
            suffix in name(),
            sub in "[a-z0-9-]{1,5}",
            port in any::<u16>(),
        ) {
            let rule = OutboundRule::parse(&format!("*://*.{suffix}:*")).unwrap();
            let sub_host = format!("{sub}.{suffix}");
            prop_assert!(rule.allows("http", &sub_host, port));
            prop_assert!(rule.allows("https", &sub_host.to_ascii_uppercase(), port));
            prop_assert!(!rule.allows("https", &suffix, port));
            let glued = format!("{sub}{suffix}");
            prop_assert!(!rule.allows("https", &glued, port));
        }

        #[test]
        fn an_ipv6_literal_is_allowed_in_brackets(
            v6 in "[0-9a-f]{1,4}(:[0-9a-f]{0,4}){1,4}",
            port in any::<u16>(),
        ) {
            let rule = OutboundRule::parse(&format!("http://[{v6}]:{port}")).unwrap();
            let bracketed = format!("[{v6}]");
            prop_assert!(rule.allows("http", &bracketed, port));
            prop_assert!(rule.allows("http", &v6, port));
            // Text after `]` is a port or nothing.
            for bad in [format!("http://[{v6}]{port}"), format!("http://[{v6}]x")] {
                prop_assert!(OutboundRule::parse(&bad).is_err(), "{:?}", bad);
            }
        }

        #[test]
        fn the_wildcard_allows_everything_but_names_no_host(
            scheme in scheme(),
            host in any::<String>(),
            port in any::<u16>(),
        ) {
            for text in ["*", "*://*:*"] {
                let rule = OutboundRule::parse(text).unwrap();
                prop_assert!(rule.allows(scheme, &host, port));
                prop_assert!(!rule.names_host());
            }
        }
    }
}
