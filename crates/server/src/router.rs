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

    /// Valid patterns over a small alphabet, so that they often overlap.
    fn pattern() -> impl Strategy<Value = RoutePattern> {
        let host = prop_oneof![
            Just(String::new()),
            Just("*".to_owned()),
            "[aAb]{1,2}(\\.[ab]{1,2}){0,2}",
            "\\*\\.?[ab]{1,2}(\\.[ab]{1,2}){0,1}",
        ];
        (host, "(/[ab]{0,2}){1,3}", any::<bool>()).prop_map(|(host, path, prefix)| {
            let star = if prefix { "*" } else { "" };
            RoutePattern::parse(&format!("{host}{path}{star}")).unwrap()
        })
    }

    /// Request hosts: names near the patterns', with ports, IPv6
    /// literals, and malformed ones.
    fn request_host() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![
            "[aAbB]{0,2}(\\.[aAbB]{1,2}){0,3}(:[0-9]{0,5})?",
            "\\[[0-9a-f:]{0,6}\\]?(:[0-9]{0,5})?",
            "[\\[\\]:.a]{0,6}",
            any::<String>(),
        ])
    }

    fn request_path() -> impl Strategy<Value = String> {
        prop_oneof!["(/[ab]{0,2}){0,4}", any::<String>()]
    }

    fn name_host(host: &HostPattern, pick: &str) -> Option<String> {
        match host {
            HostPattern::Any => None,
            HostPattern::Suffix(s) => Some(format!("{pick}{s}")),
            HostPattern::Exact(h) => Some(h.clone()),
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn the_most_specific_match_wins(
            patterns in proptest::collection::vec(pattern(), 0..8),
            host in request_host(),
            path in request_path(),
        ) {
            let router = Router::new(patterns.iter().cloned().enumerate().map(|(i, p)| (p, i)));
            let matching: Vec<_> = patterns
                .iter()
                .filter(|p| matches(p, host.as_deref(), &path))
                .collect();
            match router.route(host.as_deref(), &path) {
                None => prop_assert!(matching.is_empty()),
                Some(i) => {
                    prop_assert!(matches(&patterns[i], host.as_deref(), &path));
                    let best = matching.iter().map(|p| specificity(p)).max().unwrap();
                    prop_assert_eq!(specificity(&patterns[i]), best);
                }
            }
        }

        #[test]
        fn a_pattern_matches_its_own_host_and_path(
            p in pattern(),
            pick in "[a-z]{0,3}",
            tail in "[a-z/]{0,4}",
            port in proptest::option::of(any::<u16>()),
            upper in any::<bool>(),
        ) {
            let host = name_host(p.host(), &pick).map(|h| {
                let h = if upper { h.to_ascii_uppercase() } else { h };
                match port {
                    Some(port) => format!("{h}:{port}"),
                    None => h,
                }
            });
            prop_assert!(matches(&p, host.as_deref(), p.path()));
            let longer = format!("{}{tail}", p.path());
            prop_assert_eq!(
                matches(&p, host.as_deref(), &longer),
                p.is_prefix() || tail.is_empty()
            );
        }

        #[test]
        fn the_port_and_ascii_case_of_the_host_do_not_matter(
            p in pattern(),
            host in "[aAbB]{1,2}(\\.[aAbB]{1,2}){0,3}",
            port in any::<u16>(),
            path in "(/[ab]{0,2}){1,3}",
        ) {
            let plain = matches(&p, Some(&host), &path);
            let ported = format!("{}:{port}", host.to_ascii_uppercase());
            prop_assert_eq!(matches(&p, Some(&ported), &path), plain);
            prop_assert_eq!(matches(&p, Some(&host.to_ascii_lowercase()), &path), plain);
            // A pattern with a host never matches a request without one.
            if *p.host() != HostPattern::Any {
                prop_assert!(!matches(&p, None, &path));
            }
        }

        #[test]
        fn strip_port_returns_part_of_its_input(
            host in any::<String>(),
            name in "[a-z0-9.-]{0,8}",
            v6 in "[0-9a-f:]{0,8}",
            port in any::<u16>(),
        ) {
            prop_assert!(host.contains(strip_port(&host)));
            prop_assert_eq!(strip_port(&name), name.as_str());
            for (with_port, want) in [
                (format!("{name}:{port}"), &name),
                (format!("[{v6}]"), &v6),
                (format!("[{v6}]:{port}"), &v6),
            ] {
                prop_assert_eq!(strip_port(&with_port), want.as_str());
            }
        }
    }
}
