//! Wrangler-style route patterns: `[host]/path[*]`.
//!
//! `example.com/*`, `*.example.com/api/*` and `/api/*` (any host) are valid.
//! A `*` may only open the host or close the path. Which pattern a request
//! matches, and which wins when several do, is the server's router's
//! business.

use std::fmt;

/// The host part of a route pattern, lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// No host, or `*`: any host.
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

    /// The hosts it matches.
    pub fn host(&self) -> &HostPattern {
        &self.host
    }

    /// The literal path, without the closing `*`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether the path closes with `*`: a prefix rather than an exact path.
    pub fn is_prefix(&self) -> bool {
        self.prefix
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_and_path() {
        let p = |s| RoutePattern::parse(s).unwrap();
        assert_eq!(*p("/api/*").host(), HostPattern::Any);
        assert_eq!(*p("*/x").host(), HostPattern::Any);
        assert_eq!(
            *p("*.Example.com/*").host(),
            HostPattern::Suffix(".example.com".into())
        );
        assert_eq!(
            *p("example.com/x").host(),
            HostPattern::Exact("example.com".into())
        );
        assert_eq!(
            (p("/api/*").path(), p("/api/*").is_prefix()),
            ("/api/", true)
        );
        assert_eq!(
            (p("/health").path(), p("/health").is_prefix()),
            ("/health", false)
        );
        assert_eq!(p("/api/*").to_string(), "/api/*");
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
}
