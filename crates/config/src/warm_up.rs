//! `warm_up`: requests a JavaScript worker's build runs through the
//! worker's own `fetch` inside the Wizer snapshot step, so that the code
//! they reach is compiled (and its shapes and caches built) in the snapshot
//! every fresh instance starts from.
//!
//! ```toml
//! warm_up = [
//!   "/api/users/7",
//!   "https://example.com/health",
//!   { method = "POST", url = "/api/users", headers = { "content-type" = "application/json" }, body = '{"name":"Ada"}' },
//! ]
//! ```

use toml::Spanned;

use crate::js_build::KeyError;

/// Where a path entry is resolved: the URL the worker sees for
/// `warm_up = ["/x"]` is `http://localhost/x`.
pub const WARM_UP_ORIGIN: &str = "http://localhost";

/// One `warm_up` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmUpRequest {
    /// An HTTP method token (`GET`, `POST`, ...).
    pub method: String,
    /// An absolute `http(s)://` URL (a path entry resolved against
    /// [`WARM_UP_ORIGIN`]).
    pub url: String,
    /// (name, value) pairs.
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

impl WarmUpRequest {
    /// A `GET` of `target`, a path or an absolute http(s) URL (as a
    /// string entry of `warm_up`, or `isola build --warm-up`).
    pub fn get(target: &str) -> Result<WarmUpRequest, String> {
        Ok(WarmUpRequest {
            method: "GET".into(),
            url: warm_up_url(target)?,
            headers: Vec::new(),
            body: None,
        })
    }
}

/// A path (`/api/users/7`, resolved against [`WARM_UP_ORIGIN`]) or an
/// absolute `http://` / `https://` URL with a host.
pub fn warm_up_url(target: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "`{target}` is neither a path (\"/api/users/7\") nor an absolute http(s) URL (\"https://example.com/api\")"
        )
    };
    if target.is_empty() || target.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    if let Some(path) = target.strip_prefix('/') {
        // `//host/x` would be another origin's URL.
        if path.starts_with('/') {
            return Err(bad());
        }
        return Ok(format!("{WARM_UP_ORIGIN}{target}"));
    }
    let rest = ["http://", "https://"]
        .iter()
        .find_map(|scheme| target.strip_prefix(scheme))
        .ok_or_else(bad)?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains('@') {
        return Err(bad());
    }
    Ok(target.to_owned())
}

/// RFC 9110's token: what a method and a header name are made of.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `warm_up`: every entry checked, each error naming its entry
/// (`warm_up[1].method`).
pub(crate) fn parse(
    raw: Option<Spanned<Vec<Spanned<toml::Value>>>>,
) -> (Vec<WarmUpRequest>, Vec<KeyError>) {
    let mut requests = Vec::new();
    let mut errors = Vec::new();
    for (i, entry) in raw
        .map(Spanned::into_inner)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let span = entry.span();
        match parse_entry(entry.get_ref()) {
            Ok(request) => requests.push(request),
            Err((field, message)) => errors.push((span, format!("warm_up[{i}]{field}"), message)),
        }
    }
    (requests, errors)
}

/// One entry; an error is the field below `warm_up[i]` (`""` for the entry
/// itself, `".method"`) and its message.
fn parse_entry(value: &toml::Value) -> Result<WarmUpRequest, (String, String)> {
    let table = match value {
        toml::Value::String(target) => {
            return WarmUpRequest::get(target).map_err(|m| (String::new(), m));
        }
        toml::Value::Table(table) => table,
        other => {
            return Err((
                String::new(),
                format!(
                    "`{other}` is not a request: write a path (\"/api/users/7\"), a URL, or a table such as {{ method = \"POST\", url = \"/api/users\", body = \"...\" }}"
                ),
            ));
        }
    };
    let string = |key: &str| -> Result<Option<&str>, (String, String)> {
        match table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(text)) => Ok(Some(text)),
            Some(other) => Err((format!(".{key}"), format!("`{other}` is not a string"))),
        }
    };
    if let Some(key) = table
        .keys()
        .find(|key| !["method", "url", "headers", "body"].contains(&key.as_str()))
    {
        return Err((
            format!(".{key}"),
            format!("unknown key `{key}`: a request has `method`, `url`, `headers` and `body`"),
        ));
    }
    let method = string("method")?.unwrap_or("GET");
    if !is_token(method) {
        return Err((
            ".method".into(),
            format!("`{method}` is not an HTTP method (such as GET or POST)"),
        ));
    }
    let method = match method.to_ascii_uppercase().as_str() {
        // Fetch normalises these six; the rest are case-sensitive.
        normal @ ("DELETE" | "GET" | "HEAD" | "OPTIONS" | "POST" | "PUT") => normal.to_owned(),
        "CONNECT" | "TRACE" | "TRACK" => {
            return Err((
                ".method".into(),
                format!("`{method}` cannot be sent by fetch (a forbidden method)"),
            ));
        }
        _ => method.to_owned(),
    };
    let Some(url) = string("url")? else {
        return Err((
            ".url".into(),
            "missing: the request's path (\"/api/users\") or absolute http(s) URL".into(),
        ));
    };
    let url = warm_up_url(url).map_err(|m| (".url".into(), m))?;
    let mut headers = Vec::new();
    match table.get("headers") {
        None => {}
        Some(toml::Value::Table(list)) => {
            for (name, value) in list {
                let field = format!(".headers.{name:?}");
                if !is_token(name) {
                    return Err((field, format!("`{name}` is not a header name")));
                }
                let toml::Value::String(value) = value else {
                    return Err((field, format!("`{value}` is not a string")));
                };
                if value.chars().any(|c| matches!(c, '\r' | '\n' | '\0')) {
                    return Err((field, "a header value cannot hold CR, LF or NUL".into()));
                }
                headers.push((name.clone(), value.clone()));
            }
        }
        Some(other) => {
            return Err((
                ".headers".into(),
                format!(
                    "`{other}` is not a table of header names and values, such as {{ \"content-type\" = \"application/json\" }}"
                ),
            ));
        }
    }
    let body = string("body")?.map(str::to_owned);
    if body.is_some() && (method == "GET" || method == "HEAD") {
        return Err((
            ".body".into(),
            format!("a {method} request cannot have a body"),
        ));
    }
    Ok(WarmUpRequest {
        method,
        url,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn config(keys: &str, main: bool) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        for file in ["worker.js", "app.wasm"] {
            std::fs::write(dir.path().join(file), "").unwrap();
        }
        let source = if main {
            "main = \"worker.js\""
        } else {
            "component = \"app.wasm\""
        };
        let text = format!("[[worker]]\nname = \"w\"\n{source}\n{keys}");
        Config::parse(&dir.path().join("isola.toml"), &text).map_err(|e| {
            e.to_string()
                .replace(&dir.path().display().to_string(), "DIR")
        })
    }

    #[test]
    fn paths_urls_and_tables_parse() {
        let config = config(
            concat!(
                "warm_up = [\n",
                "  \"/api/users/7?x=1\",\n",
                "  \"https://example.com:8443/a\",\n",
                "  { method = \"post\", url = \"/api/users\", headers = { \"content-type\" = \"application/json\", x-a = \"1\" }, body = '{\"name\":\"Ada\"}' },\n",
                "  { url = \"http://x.test\" },\n",
                "  { method = \"PATCH\", url = \"/p\" },\n",
                "]\n",
            ),
            true,
        )
        .unwrap();
        let get = |url: &str| WarmUpRequest {
            method: "GET".into(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
        };
        assert_eq!(
            config.workers[0].js_build.warm_up,
            [
                get("http://localhost/api/users/7?x=1"),
                get("https://example.com:8443/a"),
                WarmUpRequest {
                    method: "POST".into(),
                    url: "http://localhost/api/users".into(),
                    headers: vec![
                        ("content-type".into(), "application/json".into()),
                        ("x-a".into(), "1".into()),
                    ],
                    body: Some("{\"name\":\"Ada\"}".into()),
                },
                get("http://x.test"),
                WarmUpRequest {
                    method: "PATCH".into(),
                    ..get("http://localhost/p")
                },
            ]
        );
        // None by default.
        assert!(config_ok("").workers[0].js_build.warm_up.is_empty());
    }

    fn config_ok(keys: &str) -> Config {
        config(keys, true).unwrap()
    }

    #[test]
    fn bad_entries_name_the_entry_and_its_key() {
        for (keys, expected) in [
            (
                "warm_up = [\"/\", { method = \"GE T\", url = \"/\" }]",
                "DIR/isola.toml:4:17: worker[0].warm_up[1].method: `GE T` is not an HTTP method (such as GET or POST)",
            ),
            (
                "warm_up = [{ method = \"CONNECT\", url = \"/\" }]",
                "DIR/isola.toml:4:12: worker[0].warm_up[0].method: `CONNECT` cannot be sent by fetch (a forbidden method)",
            ),
            (
                "warm_up = [\"ftp://example.com/x\"]",
                "DIR/isola.toml:4:12: worker[0].warm_up[0]: `ftp://example.com/x` is neither a path (\"/api/users/7\") nor an absolute http(s) URL (\"https://example.com/api\")",
            ),
            (
                "warm_up = [\"api/users\"]",
                "DIR/isola.toml:4:12: worker[0].warm_up[0]: `api/users` is neither a path",
            ),
            (
                "warm_up = [\"//other.example/x\"]",
                "DIR/isola.toml:4:12: worker[0].warm_up[0]: `//other.example/x` is neither a path",
            ),
            (
                "warm_up = [\"http:///x\"]",
                "DIR/isola.toml:4:12: worker[0].warm_up[0]: `http:///x` is neither a path",
            ),
            (
                "warm_up = [{ url = \"mailto:a@b\" }]",
                "DIR/isola.toml:4:12: worker[0].warm_up[0].url: `mailto:a@b` is neither a path",
            ),
            (
                "warm_up = [{ method = \"POST\" }]",
                "DIR/isola.toml:4:12: worker[0].warm_up[0].url: missing: the request's path",
            ),
            (
                "warm_up = [{ url = \"/\", body = \"x\" }]",
                "DIR/isola.toml:4:12: worker[0].warm_up[0].body: a GET request cannot have a body",
            ),
            (
                "warm_up = [{ url = \"/\", headers = { \"a b\" = \"1\" } }]",
                "DIR/isola.toml:4:12: worker[0].warm_up[0].headers.\"a b\": `a b` is not a header name",
            ),
            (
                "warm_up = [{ url = \"/\", headers = { a = 1 } }]",
                "DIR/isola.toml:4:12: worker[0].warm_up[0].headers.\"a\": `1` is not a string",
            ),
            (
                "warm_up = [{ url = \"/\", headers = [\"a\"] }]",
                "DIR/isola.toml:4:12: worker[0].warm_up[0].headers: `[\"a\"]` is not a table",
            ),
            (
                "warm_up = [{ url = \"/\", methd = \"POST\" }]",
                "DIR/isola.toml:4:12: worker[0].warm_up[0].methd: unknown key `methd`",
            ),
            (
                "warm_up = [7]",
                "DIR/isola.toml:4:12: worker[0].warm_up[0]: `7` is not a request",
            ),
            (
                "warm_up = \"/\"",
                "DIR/isola.toml:4:11: invalid type: string \"/\", expected a sequence",
            ),
        ] {
            let error = config(keys, true).map(|_| ()).expect_err(keys);
            assert!(
                error.starts_with(expected),
                "{keys}\n  got      {error}\n  expected {expected}"
            );
        }
    }

    #[test]
    fn warm_up_is_for_javascript_workers() {
        let error = config("warm_up = [\"/\"]", false).map(|_| ()).unwrap_err();
        assert_eq!(
            error,
            "DIR/isola.toml:4:11: worker[0].warm_up: `warm_up` runs requests through a JavaScript worker's fetch when it is built; this worker has a `component`, not a `main` module"
        );
    }
}
