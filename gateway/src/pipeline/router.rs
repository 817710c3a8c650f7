//! Router: picks the route for a request.
//!
//! Precedence, highest first (ties keep config order):
//! 1. host: exact name, then the longest wildcard (`*.a.b.c` before `*.b.c`), then any host;
//! 2. path: exact, then template (more literal segments first), then the longest prefix, then
//!    regex, then any path;
//! 3. more constraints on method, headers and query.
//!
//! Every route's conditions must all hold; the first route in precedence order that matches
//! wins.

use std::collections::HashMap;

use hyper::header::{HeaderMap, HeaderName};
use regex::Regex;
use sluice_util::FieldError;

use crate::config::{PathMatch, Route};

/// A compiled path condition.
#[derive(Debug)]
enum PathRule {
    Any,
    Exact(String),
    Template(Vec<Segment>),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A compiled route condition set, pointing at a route index.
#[derive(Debug)]
struct Compiled {
    index: usize,
    host: HostRule,
    path: PathRule,
    methods: Vec<String>,
    headers: Vec<(HeaderName, String)>,
    query: Vec<(String, String)>,
}

#[derive(Debug)]
enum HostRule {
    Any,
    Exact(String),
    /// The suffix including its leading dot, e.g. `.example.com`.
    Wildcard(String),
}

/// A matched route and the template parameters it captured.
#[derive(Debug, PartialEq, Eq)]
pub struct Match {
    /// Index into the config's routes.
    pub route: usize,
    /// `{param}` values.
    pub params: HashMap<String, String>,
}

/// The request facts routing looks at.
pub struct RequestView<'a> {
    /// Host without port, lower case.
    pub host: &'a str,
    /// Path (no query).
    pub path: &'a str,
    /// Method.
    pub method: &'a str,
    /// Header fields.
    pub headers: &'a HeaderMap,
    /// Raw query string.
    pub query: &'a str,
}

/// The routing table.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Compiled>,
}

fn precedence(c: &Compiled) -> (u8, usize, u8, usize, usize) {
    let (host_rank, host_len) = match &c.host {
        HostRule::Exact(_) => (0, 0),
        HostRule::Wildcard(s) => (1, usize::MAX - s.len()),
        HostRule::Any => (2, 0),
    };
    let (path_rank, path_len) = match &c.path {
        PathRule::Exact(_) => (0, 0),
        PathRule::Template(segs) => (
            1,
            usize::MAX
                - segs
                    .iter()
                    .filter(|s| matches!(s, Segment::Literal(_)))
                    .count(),
        ),
        PathRule::Prefix(p) => (2, usize::MAX - p.len()),
        PathRule::Regex(_) => (3, 0),
        PathRule::Any => (4, 0),
    };
    let constraints = c.methods.len().min(1) + c.headers.len() + c.query.len();
    (
        host_rank,
        host_len,
        path_rank,
        path_len,
        usize::MAX - constraints,
    )
}

impl PathRule {
    /// Compiles a route's path match; a bad regular expression is refused as `regex`.
    fn build(path: Option<&PathMatch>) -> Result<Self, FieldError> {
        Ok(match path {
            None => PathRule::Any,
            Some(PathMatch::Exact(p)) => PathRule::Exact(p.clone()),
            Some(PathMatch::Prefix(p)) => PathRule::Prefix(p.trim_end_matches('/').to_string()),
            Some(PathMatch::Regex(re)) => PathRule::Regex(
                Regex::new(re)
                    .map_err(|e| FieldError::new("regex", format!("invalid regex: {e}")))?,
            ),
            Some(PathMatch::Template(t)) => PathRule::Template(
                t.split('/')
                    .skip(1)
                    .map(
                        |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                            Some(name) => Segment::Param(name.to_string()),
                            None => Segment::Literal(s.to_string()),
                        },
                    )
                    .collect(),
            ),
        })
    }
}

impl Compiled {
    fn build(index: usize, r: &Route) -> Result<Self, FieldError> {
        Ok(Compiled {
            index,
            host: match &r.host {
                None => HostRule::Any,
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => HostRule::Wildcard(suffix.to_ascii_lowercase()),
                    None => HostRule::Exact(h.to_ascii_lowercase()),
                },
            },
            path: PathRule::build(r.path.as_ref()).map_err(|e| e.under("path"))?,
            methods: r.methods.clone(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| {
                    let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                        FieldError::new("headers", format!("{k:?} is not a header name"))
                    })?;
                    Ok((name, v.clone()))
                })
                .collect::<Result<_, FieldError>>()?,
            query: r
                .query
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

impl Router {
    /// Compiles the routes (checked as data by [`crate::config`]); a route whose match
    /// cannot be compiled is refused as `route[i].path…`.
    pub fn build(routes: &[Route]) -> Result<Self, FieldError> {
        let mut compiled = routes
            .iter()
            .enumerate()
            .map(|(i, r)| Compiled::build(i, r).map_err(|e| e.under(&format!("route[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        // Stable: equal precedence keeps config order.
        compiled.sort_by_key(precedence);
        Ok(Router { routes: compiled })
    }

    /// The route for a request, if any.
    pub fn find(&self, req: &RequestView<'_>) -> Option<Match> {
        let host = req.host;
        for c in &self.routes {
            let host_ok = match &c.host {
                HostRule::Any => true,
                HostRule::Exact(h) => h == host,
                HostRule::Wildcard(suffix) => {
                    host.len() > suffix.len() && host.ends_with(suffix.as_str())
                }
            };
            if !host_ok {
                continue;
            }
            if !c.methods.is_empty() && !c.methods.iter().any(|m| m == req.method) {
                continue;
            }
            if !c
                .headers
                .iter()
                .all(|(k, v)| req.headers.get(k).and_then(|h| h.to_str().ok()) == Some(v.as_str()))
            {
                continue;
            }
            if !c.query.iter().all(|(k, v)| query_holds(req.query, k, v)) {
                continue;
            }
            let mut params = HashMap::new();
            let path_ok = match &c.path {
                PathRule::Any => true,
                PathRule::Exact(p) => p == req.path,
                PathRule::Prefix(p) => {
                    p.is_empty()
                        || req.path == p
                        || (req.path.starts_with(p.as_str())
                            && req.path.as_bytes().get(p.len()) == Some(&b'/'))
                }
                PathRule::Regex(re) => re.is_match(req.path),
                PathRule::Template(segs) => {
                    let parts: Vec<&str> = req.path.split('/').skip(1).collect();
                    parts.len() == segs.len()
                        && segs.iter().zip(&parts).all(|(s, p)| match s {
                            Segment::Literal(l) => l == p,
                            Segment::Param(name) => {
                                if p.is_empty() {
                                    return false;
                                }
                                params.insert(name.clone(), (*p).to_string());
                                true
                            }
                        })
                }
            };
            if path_ok {
                return Some(Match {
                    route: c.index,
                    params,
                });
            }
        }
        None
    }
}

/// The values (raw) `query` gives parameter `key`, in order. Names are compared decoded, as
/// an upstream reads them: `?api%5Fkey=` is the parameter `api_key` to every query parser,
/// and a route, a credential check or a transform that looked for the raw name alone would
/// miss what the upstream then acts on.
pub fn query_values<'a>(query: &'a str, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    query.split('&').filter_map(move |kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        is_param(k, key).then_some(v)
    })
}

/// Whether `query` gives parameter `key` and every value it gives it decodes to `value`: a
/// duplicate with another value (`?admin=0&admin=1`, where PHP or Rack read the last) does
/// not match.
pub fn query_holds(query: &str, key: &str, value: &str) -> bool {
    let mut values = query_values(query, key).peekable();
    values.peek().is_some() && values.all(|v| form_decode(v) == value.as_bytes())
}

/// Whether the query parameter names `raw` and `key` are the same once decoded (a name in
/// the config is URL-encoded as one in a request is).
pub fn is_param(raw: &str, key: &str) -> bool {
    let encoded = |s: &str| s.bytes().any(|b| b == b'%' || b == b'+');
    if encoded(raw) || encoded(key) {
        form_decode(raw) == form_decode(key)
    } else {
        raw == key
    }
}

/// `application/x-www-form-urlencoded` decoding of a query parameter's name or value: `%XX`
/// as that byte, `+` as a space; a broken escape is kept as it is.
pub fn form_decode(v: &str) -> Vec<u8> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let escaped = (c == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            // Two hex digits: `from_str_radix` alone would take a sign (`%+5`).
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (c, escaped) {
            (_, Some(x)) => {
                out.push(x);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (c, None) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parts_are_form_decoded() {
        assert_eq!(form_decode("a%2Bb+c%zz%4"), b"a+b c%zz%4");
        assert_eq!(form_decode("%+5%-1"), b"% 5%-1", "a sign is no hex digit");
    }

    #[test]
    fn query_names_are_compared_decoded() {
        let q = "a%5Fb=1&api_key=2&x+y=3&%61pi%5fkey=4";
        let first = |q, k| query_values(q, k).next();
        assert_eq!(first(q, "a_b"), Some("1"));
        assert_eq!(first(q, "x y"), Some("3"));
        assert_eq!(first(q, "api_key"), Some("2"));
        assert_eq!(first("%61pi%5fkey=4", "api_key"), Some("4"));
        assert_eq!(first(q, "a%5Fb"), Some("1"), "a config name is encoded too");
        assert_eq!(first(q, "a_c"), None);
        assert_eq!(query_values(q, "api_key").collect::<Vec<_>>(), ["2", "4"]);
    }
    use crate::config::parse;
    use std::path::Path;

    fn router(routes: &str) -> (Router, Vec<String>) {
        let text = format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\n[[upstream]]\nname = \"u\"\ntargets = [{{ address = \"127.0.0.1:2\" }}]\n{routes}"
        );
        let c = parse(Path::new("t.toml"), &text).expect("valid");
        let names = c.routes.iter().map(|r| r.name.clone()).collect();
        (Router::build(&c.routes).expect("compiles"), names)
    }

    fn find(
        r: &(Router, Vec<String>),
        host: &str,
        method: &str,
        path_q: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let (path, query) = path_q.split_once('?').unwrap_or((path_q, ""));
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        let view = RequestView {
            host,
            path,
            method,
            headers: &map,
            query,
        };
        r.0.find(&view).map(|m| r.1[m.route].clone())
    }

    const ROUTES: &str = r#"
[[route]]
name = "any"
upstream = "u"
[[route]]
name = "prefix-api"
path = { prefix = "/api" }
upstream = "u"
[[route]]
name = "prefix-api-v1"
path = { prefix = "/api/v1/" }
upstream = "u"
[[route]]
name = "regex-v"
path = { regex = "^/v[0-9]+/" }
upstream = "u"
[[route]]
name = "template"
path = { template = "/api/users/{id}" }
upstream = "u"
[[route]]
name = "exact"
path = { exact = "/api/users/me" }
upstream = "u"
[[route]]
name = "post-only"
path = { prefix = "/api" }
methods = ["POST"]
upstream = "u"
[[route]]
name = "canary"
path = { prefix = "/api" }
headers = { "x-canary" = "1" }
upstream = "u"
[[route]]
name = "debug-query"
path = { prefix = "/api" }
query = { debug = "true" }
upstream = "u"
[[route]]
name = "wild"
host = "*.example.com"
upstream = "u"
[[route]]
name = "wild-deeper"
host = "*.eu.example.com"
upstream = "u"
[[route]]
name = "exact-host"
host = "api.example.com"
upstream = "u"
"#;

    #[test]
    fn precedence_is_as_documented() {
        let r = router(ROUTES);
        let f =
            |host, method, path, headers: &[(&str, &str)]| find(&r, host, method, path, headers);
        assert_eq!(f("x", "GET", "/", &[]).as_deref(), Some("any"));
        assert_eq!(f("x", "GET", "/api", &[]).as_deref(), Some("prefix-api"));
        assert_eq!(f("x", "GET", "/api/x", &[]).as_deref(), Some("prefix-api"));
        assert_eq!(
            f("x", "GET", "/apix", &[]).as_deref(),
            Some("any"),
            "prefix stops at a segment boundary"
        );
        assert_eq!(
            f("x", "GET", "/api/v1/things", &[]).as_deref(),
            Some("prefix-api-v1"),
            "longest prefix"
        );
        assert_eq!(f("x", "GET", "/v2/x", &[]).as_deref(), Some("regex-v"));
        assert_eq!(
            f("x", "GET", "/api/users/42", &[]).as_deref(),
            Some("template"),
            "template before prefix"
        );
        assert_eq!(
            f("x", "GET", "/api/users/me", &[]).as_deref(),
            Some("exact"),
            "exact before template"
        );
        assert_eq!(
            f("x", "POST", "/api/x", &[]).as_deref(),
            Some("post-only"),
            "more constraints first"
        );
        assert_eq!(
            f("x", "GET", "/api/x", &[("x-canary", "1")]).as_deref(),
            Some("canary")
        );
        assert_eq!(
            f("x", "GET", "/api/x?a=1&debug=true", &[]).as_deref(),
            Some("debug-query")
        );
        assert_eq!(
            f("x", "GET", "/api/x?%64ebug=tru%65", &[]).as_deref(),
            Some("debug-query"),
            "name and value compared as the upstream decodes them"
        );
        assert_eq!(
            f("x", "GET", "/api/x?debug=true&debug=false", &[]).as_deref(),
            Some("prefix-api"),
            "a duplicate with another value does not match"
        );
        assert_eq!(
            f("x", "GET", "/api/x?debug=false", &[]).as_deref(),
            Some("prefix-api")
        );
        assert_eq!(
            f("a.example.com", "GET", "/api/x", &[]).as_deref(),
            Some("wild"),
            "any host's paths rank below a host match"
        );
        assert_eq!(
            f("a.eu.example.com", "GET", "/", &[]).as_deref(),
            Some("wild-deeper"),
            "longest wildcard"
        );
        assert_eq!(
            f("api.example.com", "GET", "/", &[]).as_deref(),
            Some("exact-host")
        );
        assert_eq!(
            f("example.com", "GET", "/", &[]).as_deref(),
            Some("any"),
            "*.example.com needs a label"
        );
    }

    #[test]
    fn template_parameters_are_captured() {
        let r = router(ROUTES);
        let view = RequestView {
            host: "x",
            path: "/api/users/42",
            method: "GET",
            headers: &HeaderMap::new(),
            query: "",
        };
        let m = r.0.find(&view).expect("match");
        assert_eq!(m.params.get("id").map(String::as_str), Some("42"));
    }

    #[test]
    fn no_match_without_catch_all() {
        let r = router("[[route]]\nname = \"only\"\npath = { exact = \"/x\" }\nupstream = \"u\"\n");
        assert_eq!(find(&r, "h", "GET", "/y", &[]), None);
    }
}
