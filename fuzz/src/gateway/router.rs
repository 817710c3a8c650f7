//! Route matching: hosts, paths (exact, templates, prefixes, regexes), methods, headers and
//! query parameters, in the documented precedence.

use std::{collections::HashMap, path::Path};

use hyper::{header::HeaderValue, HeaderMap};
use regex::Regex;
use sluice_gateway::{
    config::{self, PathMatch, Route},
    pipeline::router::{RequestView, Router},
};

use crate::common::{check_refusal, names_a_field, Input};

fn string(s: impl Into<String>) -> toml::Value {
    toml::Value::String(s.into())
}

/// One `[[route]]` from fuzzed choices.
fn route(input: &mut Input<'_>, i: usize) -> toml::Table {
    let mut r = toml::Table::new();
    r.insert("name".into(), string(format!("r{i}")));
    r.insert("upstream".into(), string("u"));
    let kinds = input.byte();
    let host = match kinds % 6 {
        0 | 1 => None,
        2 => Some("api.example.com".to_string()),
        3 => Some("*.example.com".to_string()),
        4 => Some("*.eu.example.com".to_string()),
        _ => Some(input.text()),
    };
    if let Some(h) = host {
        r.insert("host".into(), string(h));
    }
    let kind = ["exact", "prefix", "template", "regex"][usize::from(kinds >> 3) % 5 % 4];
    if (kinds >> 3) % 5 != 4 {
        let mut path = toml::Table::new();
        path.insert(kind.into(), string(input.text()));
        r.insert("path".into(), toml::Value::Table(path));
    }
    let methods: &[&str] = [&[][..], &["GET"], &["POST", "GET"]][usize::from(input.byte() % 3)];
    if !methods.is_empty() {
        r.insert(
            "methods".into(),
            toml::Value::Array(methods.iter().map(|m| string(*m)).collect()),
        );
    }
    let extra = input.byte();
    if extra & 1 != 0 {
        r.insert(
            "headers".into(),
            toml::Value::Table(toml::Table::from_iter([("x-a".to_string(), string("1"))])),
        );
    }
    if extra & 2 != 0 {
        r.insert(
            "query".into(),
            toml::Value::Table(toml::Table::from_iter([(
                "debug".to_string(),
                string("true"),
            )])),
        );
    }
    r
}

/// Target `router`: a routing table built from fuzzed routes (through the config's checks,
/// as `sluice-gateway` builds it) and a fuzzed request.
///
/// Invariants beyond "no panic":
/// - a refused table names the field;
/// - the route found is the one a reference picks: every route whose conditions all hold,
///   judged from its config by the documented rules (exact or `*.` wildcard host with at
///   least one label; exact path, template segments with non-empty parameters, prefix at a
///   segment boundary, regex; methods; header values; query values, names and values form-
///   decoded and every copy of the name holding the value), ranked by the
///   documented precedence (host exact, longest wildcard, any; path exact, template with
///   more literal segments, longest prefix, regex, any; more constraints), ties in config
///   order;
/// - a template's parameters are the request's segments in their places.
pub fn router(data: &[u8]) {
    let mut input = Input::new(data);
    let count = usize::from(input.byte() % 6) + 1;
    let routes: Vec<toml::Value> = (0..count)
        .map(|i| toml::Value::Table(route(&mut input, i)))
        .collect();
    let mut file = toml::Table::new();
    let table = |pairs: &[(&str, toml::Value)]| {
        toml::Value::Table(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    };
    file.insert(
        "listener".into(),
        toml::Value::Array(vec![table(&[
            ("name", string("l")),
            ("address", string("127.0.0.1:1")),
        ])]),
    );
    file.insert(
        "upstream".into(),
        toml::Value::Array(vec![table(&[
            ("name", string("u")),
            (
                "targets",
                toml::Value::Array(vec![table(&[("address", string("127.0.0.1:2"))])]),
            ),
        ])]),
    );
    file.insert("route".into(), toml::Value::Array(routes));
    let text = toml::to_string(&file).expect("a table is TOML");
    let path = Path::new("fuzz.toml");
    let config = match config::parse(path, &text) {
        Ok(c) => c,
        Err(e) => return check_refusal(&e, path, &text),
    };
    let router = match Router::build(&config.routes) {
        Ok(r) => r,
        Err(e) => {
            assert!(
                names_a_field(&e.field, &text),
                "refusal names no field: {e}"
            );
            return;
        }
    };

    // The request.
    let host = match input.byte() % 4 {
        0 => "api.example.com".to_string(),
        1 => "x.eu.example.com".to_string(),
        2 => "example.com".to_string(),
        _ => input.text().to_ascii_lowercase(),
    };
    let mut path = input.text();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let method = ["GET", "POST", "PUT"][usize::from(input.byte() % 3)];
    let mut headers = HeaderMap::new();
    match input.byte() % 3 {
        0 => {}
        1 => {
            headers.insert("x-a", HeaderValue::from_static("1"));
        }
        _ => {
            headers.insert("x-a", HeaderValue::from_static("2"));
        }
    }
    let query = input.text();
    let view = RequestView {
        host: &host,
        path: &path,
        method,
        headers: &headers,
        query: &query,
    };
    let got = router.find(&view);
    let want = config
        .routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| matches(r, &view).map(|params| (rank(r), i, params)))
        .min_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    match (&got, &want) {
        (None, None) => {}
        (Some(g), Some((_, i, params))) => {
            assert_eq!(g.route, *i, "{host} {method} {path}?{query}: routes {text}");
            assert_eq!(&g.params, params, "template parameters");
        }
        _ => panic!(
            "{host} {method} {path}?{query}: found {:?}, reference {:?}; routes {text}",
            got.as_ref().map(|m| m.route),
            want.as_ref().map(|w| w.1)
        ),
    }
}

/// The documented precedence, smallest first.
fn rank(r: &Route) -> (u8, usize, u8, usize, usize) {
    let (host_rank, longer_host) = match &r.host {
        Some(h) if h.starts_with('*') => (1, usize::MAX - h.len()),
        Some(_) => (0, 0),
        None => (2, 0),
    };
    let (path_rank, more) = match &r.path {
        Some(PathMatch::Exact(_)) => (0, 0),
        Some(PathMatch::Template(t)) => (
            1,
            usize::MAX
                - t.split('/')
                    .skip(1)
                    .filter(|s| !(s.starts_with('{') && s.ends_with('}')))
                    .count(),
        ),
        Some(PathMatch::Prefix(p)) => (2, usize::MAX - p.trim_end_matches('/').len()),
        Some(PathMatch::Regex(_)) => (3, 0),
        None => (4, 0),
    };
    let constraints = usize::from(!r.methods.is_empty()) + r.headers.len() + r.query.len();
    (
        host_rank,
        longer_host,
        path_rank,
        more,
        usize::MAX - constraints,
    )
}

/// Whether `r` matches, with its template's parameters.
fn matches(r: &Route, req: &RequestView<'_>) -> Option<HashMap<String, String>> {
    let host_ok = match r.host.as_deref().map(str::to_ascii_lowercase) {
        None => true,
        Some(h) => match h.strip_prefix("*.") {
            Some(domain) => req
                .host
                .strip_suffix(domain)
                .and_then(|label| label.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty()),
            None => h == req.host,
        },
    };
    let methods_ok = r.methods.is_empty() || r.methods.iter().any(|m| m == req.method);
    let headers_ok = r.headers.iter().all(|(k, v)| {
        req.headers
            .get(k.as_str())
            .is_some_and(|h| h.to_str().ok() == Some(v))
    });
    // Names and values as an upstream decodes them; every value the name is given must be
    // the one matched (a duplicate with another value does not match).
    let query_ok = r.query.iter().all(|(k, v)| {
        let values: Vec<Vec<u8>> = req
            .query
            .split('&')
            .filter_map(|kv| {
                let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
                (model_decode(key) == model_decode(k)).then(|| model_decode(value))
            })
            .collect();
        !values.is_empty() && values.iter().all(|x| x == v.as_bytes())
    });
    if !(host_ok && methods_ok && headers_ok && query_ok) {
        return None;
    }
    let mut params = HashMap::new();
    let path_ok = match &r.path {
        None => true,
        Some(PathMatch::Exact(p)) => req.path == p,
        Some(PathMatch::Prefix(p)) => {
            let p = p.trim_end_matches('/');
            p.is_empty() || req.path == p || req.path.starts_with(&format!("{p}/"))
        }
        Some(PathMatch::Regex(re)) => Regex::new(re)
            .expect("built by the router")
            .is_match(req.path),
        Some(PathMatch::Template(t)) => {
            let want: Vec<&str> = t.split('/').skip(1).collect();
            let have: Vec<&str> = req.path.split('/').skip(1).collect();
            want.len() == have.len()
                && want.iter().zip(&have).all(|(w, h)| {
                    match w.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
                        Some(name) if !h.is_empty() => {
                            params.insert(name.to_string(), h.to_string());
                            true
                        }
                        Some(_) => false,
                        None => w == h,
                    }
                })
        }
    };
    path_ok.then_some(params)
}

/// The model of form decoding (`application/x-www-form-urlencoded`): `+` a space, `%` and two
/// hex digits that byte, anything else (a broken escape included) itself.
fn model_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h * 16 + l);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}
