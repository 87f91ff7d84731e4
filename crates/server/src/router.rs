//! Picks the worker for a request by its host and path.
//!
//! When several route patterns match a request, the most specific wins: a
//! literal host beats a wildcard host beats no host, then the longer literal
//! path, then an exact path over a prefix.

use std::cmp::Reverse;

use isola_config::RoutePattern;
use isola_config::route::HostPattern;

/// Route patterns with the index of the worker each belongs to, most
/// specific first, so the first match is the best one.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<(RoutePattern, usize)>,
}

impl Router {
    pub fn new(routes: impl IntoIterator<Item = (RoutePattern, usize)>) -> Self {
        let mut routes: Vec<_> = routes.into_iter().collect();
        routes.sort_by_key(|(pattern, _)| Reverse(specificity(pattern)));
        Router { routes }
    }

    /// The index of the worker serving `host` (may carry a port) and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .find(|(pattern, _)| matches(pattern, host, path))
            .map(|&(_, worker)| worker)
    }
}

/// Does `pattern` match a request for `host` (port ignored) and `path`?
pub fn matches(pattern: &RoutePattern, host: Option<&str>, path: &str) -> bool {
    let host_ok = match pattern.host() {
        HostPattern::Any => true,
        HostPattern::Exact(want) => host.is_some_and(|h| strip_port(h).eq_ignore_ascii_case(want)),
        HostPattern::Suffix(suffix) => host.is_some_and(|h| {
            let h = strip_port(h).to_ascii_lowercase();
            h.ends_with(suffix.as_str())
        }),
    };
    host_ok
        && if pattern.is_prefix() {
            path.starts_with(pattern.path())
        } else {
            path == pattern.path()
        }
}

/// Orders patterns from least to most specific (see the module docs).
fn specificity(pattern: &RoutePattern) -> (u8, usize, usize, bool) {
    let (host_rank, host_len) = match pattern.host() {
        HostPattern::Any => (0, 0),
        HostPattern::Suffix(s) => (1, s.len()),
        HostPattern::Exact(s) => (2, s.len()),
    };
    (
        host_rank,
        host_len,
        pattern.path().len(),
        !pattern.is_prefix(),
    )
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
    fn matches_host_and_path() {
        let m = |pattern, host, path| matches(&p(pattern), host, path);
        assert!(m("/api/*", None, "/api/users"));
        assert!(m("/api/*", Some("x.com"), "/api/"));
        assert!(!m("/api/*", None, "/apix"));
        assert!(!m("/api/*", None, "/api"));
        assert!(m("/health", None, "/health"));
        assert!(!m("/health", None, "/health/x"));
        assert!(m("example.com/*", Some("Example.com:8787"), "/"));
        assert!(!m("example.com/*", Some("other.com"), "/"));
        assert!(!m("example.com/*", None, "/"));
        assert!(m("*.example.com/*", Some("a.example.com"), "/x"));
        assert!(!m("*.example.com/*", Some("example.com"), "/x"));
        assert!(m("*example.com/*", Some("example.com"), "/x"));
        assert!(m("*/*", Some("anything"), "/x"));
        assert!(m("/*", Some("[::1]:80"), "/x"));
    }

    #[test]
    fn orders_by_specificity() {
        let mut patterns = [
            p("/*"),
            p("example.com/api/*"),
            p("/api/*"),
            p("*.example.com/*"),
            p("/api/health"),
            p("example.com/*"),
        ];
        patterns.sort_by_key(specificity);
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

    #[test]
    fn most_specific_route_wins_whatever_the_config_order() {
        let router = Router::new([
            (p("/*"), 0),
            (p("/api/*"), 1),
            (p("api.example.com/*"), 2),
            (p("/api/health"), 3),
        ]);
        assert_eq!(router.route(Some("localhost:8787"), "/"), Some(0));
        assert_eq!(router.route(Some("localhost"), "/api/users"), Some(1));
        assert_eq!(router.route(Some("localhost"), "/api/health"), Some(3));
        assert_eq!(router.route(Some("api.example.com"), "/api/users"), Some(2));
        assert_eq!(Router::new([(p("/api/*"), 0)]).route(None, "/other"), None);
    }
}
