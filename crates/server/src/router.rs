//! Picks the worker for a request by its host and path.

use isola_config::RoutePattern;
use isola_config::route::by_specificity;

/// Route patterns with the index of the worker each belongs to, most
/// specific first, so the first match is the best one.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<(RoutePattern, usize)>,
}

impl Router {
    pub fn new(routes: impl IntoIterator<Item = (RoutePattern, usize)>) -> Self {
        let mut routes: Vec<_> = routes.into_iter().collect();
        routes.sort_by(|(a, _), (b, _)| by_specificity(b, a));
        Router { routes }
    }

    /// The index of the worker serving `host` (may carry a port) and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .find(|(pattern, _)| pattern.matches(host, path))
            .map(|&(_, worker)| worker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_route_wins_whatever_the_config_order() {
        let p = |s| RoutePattern::parse(s).unwrap();
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
