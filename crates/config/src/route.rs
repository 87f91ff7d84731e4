//! Wrangler-style route patterns: `[host]/path[*]`.
//!
//! `example.com/*`, `*.example.com/api/*` and `/api/*` (any host) are valid.
//! A `*` may only open the host or close the path. When several patterns
//! match a request, the most specific wins: a literal host beats a wildcard
//! host beats no host, then the longer literal path, then an exact path over
//! a prefix.

use std::cmp::Ordering;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `*.example.com` matches `a.example.com`; `*example.com` also matches
    /// `example.com` itself (both are Cloudflare forms).
    Suffix(String),
    Exact(String),
}

/// A parsed route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    text: String,
    host: HostPattern,
    path: String,
    prefix: bool,
}

/// Why a route pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad route pattern `{pattern}`: {reason}")]
pub struct RouteError {
    pub pattern: String,
    pub reason: &'static str,
}

impl RoutePattern {
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let fail = |reason| RouteError {
            pattern: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(fail("it is empty"));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("it contains whitespace"));
        }
        if text.contains("://") {
            return Err(fail("routes have no scheme; write `example.com/*`"));
        }
        if text.contains('?') || text.contains('#') {
            return Err(fail("routes match paths only, not queries or fragments"));
        }
        let Some(slash) = text.find('/') else {
            return Err(fail("it has no path; write `example.com/*` or `/*`"));
        };
        let (host, path) = text.split_at(slash);
        let host = if host.is_empty() {
            HostPattern::Any
        } else {
            let host = host.to_ascii_lowercase();
            if host.contains(':') {
                return Err(fail("a route host cannot have a port"));
            }
            match host.strip_prefix('*') {
                Some(rest) if rest.contains('*') => {
                    return Err(fail("`*` may only start the host"));
                }
                Some("") => HostPattern::Any,
                Some(rest) => HostPattern::Suffix(rest.to_owned()),
                None if host.contains('*') => {
                    return Err(fail("`*` may only start the host"));
                }
                None => HostPattern::Exact(host),
            }
        };
        let (path, prefix) = match path.strip_suffix('*') {
            Some(literal) => (literal, true),
            None => (path, false),
        };
        if path.contains('*') {
            return Err(fail("`*` may only end the path"));
        }
        Ok(RoutePattern {
            text: text.to_owned(),
            host,
            path: path.to_owned(),
            prefix,
        })
    }

    /// Does this pattern match a request for `host` (port ignored) and `path`?
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(want) => {
                host.is_some_and(|h| strip_port(h).eq_ignore_ascii_case(want))
            }
            HostPattern::Suffix(suffix) => host.is_some_and(|h| {
                let h = strip_port(h).to_ascii_lowercase();
                h.ends_with(suffix.as_str())
            }),
        };
        host_ok
            && if self.prefix {
                path.starts_with(&self.path)
            } else {
                path == self.path
            }
    }

    /// Orders patterns from least to most specific.
    pub fn specificity(&self) -> impl Ord + use<> {
        let host_rank = match self.host {
            HostPattern::Any => 0,
            HostPattern::Suffix(_) => 1,
            HostPattern::Exact(_) => 2,
        };
        let host_len = match &self.host {
            HostPattern::Any => 0,
            HostPattern::Suffix(s) | HostPattern::Exact(s) => s.len(),
        };
        (host_rank, host_len, self.path.len(), !self.prefix)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Compare two patterns by specificity (see the module docs).
pub fn by_specificity(a: &RoutePattern, b: &RoutePattern) -> Ordering {
    a.specificity().cmp(&b.specificity())
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // An IPv6 literal: `[::1]:8787`.
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RoutePattern {
        RoutePattern::parse(s).unwrap()
    }

    #[test]
    fn parses_and_matches() {
        assert!(p("/api/*").matches(None, "/api/users"));
        assert!(p("/api/*").matches(Some("x.com"), "/api/"));
        assert!(!p("/api/*").matches(None, "/apix"));
        assert!(!p("/api/*").matches(None, "/api"));
        assert!(p("/health").matches(None, "/health"));
        assert!(!p("/health").matches(None, "/health/x"));
        assert!(p("example.com/*").matches(Some("Example.com:8787"), "/"));
        assert!(!p("example.com/*").matches(Some("other.com"), "/"));
        assert!(!p("example.com/*").matches(None, "/"));
        assert!(p("*.example.com/*").matches(Some("a.example.com"), "/x"));
        assert!(!p("*.example.com/*").matches(Some("example.com"), "/x"));
        assert!(p("*example.com/*").matches(Some("example.com"), "/x"));
        assert!(p("*/*").matches(Some("anything"), "/x"));
        assert!(p("/*").matches(Some("[::1]:80"), "/x"));
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in [
            "",
            "example.com",
            "https://example.com/*",
            "/a/*/b",
            "ex*ample.com/*",
            "example.com:8080/*",
            "/a b",
            "/search?q=*",
            "*.*.com/*",
        ] {
            assert!(
                RoutePattern::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn most_specific_wins() {
        let mut patterns = [
            p("/*"),
            p("example.com/api/*"),
            p("/api/*"),
            p("*.example.com/*"),
            p("/api/health"),
            p("example.com/*"),
        ];
        patterns.sort_by(by_specificity);
        let order: Vec<_> = patterns.iter().map(|p| p.as_str()).collect();
        assert_eq!(
            order,
            [
                "/*",
                "/api/*",
                "/api/health",
                "*.example.com/*",
                "example.com/*",
                "example.com/api/*"
            ]
        );
    }
}
