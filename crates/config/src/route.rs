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

    /// Text made of the characters the grammar cares about.
    fn adversarial() -> impl Strategy<Value = String> {
        "[*/.:?#a-cA-C0-9 \t\n\u{0}\u{e9}\u{3000}-]{0,20}"
    }

    /// The pattern written back from its parts.
    fn render(p: &RoutePattern) -> String {
        let host = match p.host() {
            HostPattern::Any => String::new(),
            HostPattern::Suffix(s) => format!("*{s}"),
            HostPattern::Exact(h) => h.clone(),
        };
        let star = if p.is_prefix() { "*" } else { "" };
        format!("{host}{}{star}", p.path())
    }

    fn check_accepted(text: &str, p: &RoutePattern) -> Result<(), TestCaseError> {
        prop_assert_eq!(p.as_str(), text);
        prop_assert_eq!(p.to_string(), text);
        prop_assert_eq!(&RoutePattern::parse(p.as_str()).unwrap(), p);
        // The parts say all there is to say: written back, they parse the
        // same (the text aside, whose host case is kept).
        let again = RoutePattern::parse(&render(p)).unwrap();
        prop_assert_eq!(
            (again.host(), again.path(), again.is_prefix()),
            (p.host(), p.path(), p.is_prefix())
        );
        prop_assert!(p.path().starts_with('/'));
        prop_assert!(!p.path().contains('*'));
        prop_assert_eq!(p.is_prefix(), text.ends_with('*') && text != "*");
        prop_assert!(!text.contains("://") && !text.contains('?') && !text.contains('#'));
        prop_assert!(!text.chars().any(|c| c.is_whitespace() || c.is_control()));
        if let HostPattern::Suffix(h) | HostPattern::Exact(h) = p.host() {
            prop_assert!(!h.is_empty());
            prop_assert!(!h.contains(['*', ':', '/']));
            prop_assert!(!h.bytes().any(|b| b.is_ascii_uppercase()));
        }
        Ok(())
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9][a-zA-Z0-9-]{0,6}"
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._~%!$&'()+,;=@-]{0,6}"
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn any_text_parses_or_is_refused(text in any::<String>()) {
            if let Ok(p) = RoutePattern::parse(&text) {
                check_accepted(&text, &p)?;
            }
        }

        #[test]
        fn adversarial_text_parses_or_is_refused(text in adversarial()) {
            if let Ok(p) = RoutePattern::parse(&text) {
                check_accepted(&text, &p)?;
            }
        }

        #[test]
        fn well_formed_patterns_parse_to_their_parts(
            host in prop_oneof![
                Just(None),
                Just(Some("*".to_owned())),
                proptest::collection::vec(label(), 1..4).prop_map(|l| Some(l.join("."))),
                proptest::collection::vec(label(), 1..3).prop_map(|l| Some(format!("*.{}", l.join(".")))),
                proptest::collection::vec(label(), 1..3).prop_map(|l| Some(format!("*{}", l.join(".")))),
            ],
            segments in proptest::collection::vec(segment(), 1..4),
            prefix in any::<bool>(),
        ) {
            let path = format!("/{}", segments.join("/"));
            let text = format!(
                "{}{path}{}",
                host.as_deref().unwrap_or(""),
                if prefix { "*" } else { "" }
            );
            let p = RoutePattern::parse(&text).unwrap();
            check_accepted(&text, &p)?;
            prop_assert_eq!(p.path(), path.as_str());
            prop_assert_eq!(p.is_prefix(), prefix);
            let want = match host.as_deref() {
                None | Some("*") => HostPattern::Any,
                Some(h) => match h.strip_prefix('*') {
                    Some(rest) => HostPattern::Suffix(rest.to_ascii_lowercase()),
                    None => HostPattern::Exact(h.to_ascii_lowercase()),
                },
            };
            prop_assert_eq!(p.host(), &want);
        }

        #[test]
        fn a_star_anywhere_else_is_refused(
            before in "[a-z]{1,4}",
            after in "[a-z]{1,4}",
            prefix in any::<bool>(),
        ) {
            let star = if prefix { "*" } else { "" };
            for bad in [
                format!("{before}*{after}.com/x{star}"),
                format!("*{before}*.com/x{star}"),
                format!("/{before}*{after}{star}"),
                format!("/{before}*/{after}{star}"),
            ] {
                prop_assert!(RoutePattern::parse(&bad).is_err(), "{:?}", bad);
            }
        }
    }
}
