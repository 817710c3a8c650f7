//! Request and response transforms.
//!
//! Request order: headers (rename, remove, set, add) → path (strip prefix, then regex
//! rewrite) → query (remove, rename, add) → JSON body (rename, remove, set). JSON body
//! operations apply to bodies whose `Content-Type` is JSON; they read at most
//! `json_max_bytes` (413 beyond) and refuse a body that is not JSON (400). Field paths are
//! dotted object keys; `set` creates missing objects but never replaces a non-object on the
//! way. A rewritten body is written anew: object keys in order, and numbers as 64-bit
//! integers or correctly rounded doubles (an integer beyond 64 bits, or a decimal of more
//! than 17 digits, reaches the upstream rounded). A rewritten body never nests deeper than
//! a body the gateway reads ([`MAX_NESTING`]): a rename or `set` that would push it past
//! that is a 400 for a request, and leaves a response as the upstream sent it.

use bytes::Bytes;
use hyper::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    http::request::Parts,
    Response, StatusCode, Uri,
};
use regex::Regex;
use serde_json::Value;

use sluice_util::{config::refuse as refuse_field, FieldError};

use super::{refuse, Refusal};
use crate::pipeline::error::ProxyError;
use crate::pipeline::router::is_param;
use crate::{
    config::{RequestTransform, ResponseTransform},
    pipeline::problem::full,
    pipeline::whole_body::{collect_capped, CollectError},
    Body,
};

/// A header name from the config, refused as `field` when it is not one.
fn name(field: &str, s: &str) -> Result<HeaderName, FieldError> {
    HeaderName::from_bytes(s.as_bytes())
        .map_err(|_| FieldError::new(field, format!("{s:?} is not a header name")))
}

/// Header fields from the config; names and values are refused as `field`.
fn pairs(
    field: &str,
    m: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, HeaderValue)>, FieldError> {
    m.iter()
        .map(|(k, v)| {
            let value = HeaderValue::from_str(v)
                .map_err(|_| FieldError::new(field, format!("{v:?} is not a header value")))?;
            Ok((name(field, k)?, value))
        })
        .collect()
}

/// Header names from the config.
fn names<'a>(
    field: &str,
    list: impl IntoIterator<Item = &'a String>,
) -> Result<Vec<HeaderName>, FieldError> {
    list.into_iter().map(|h| name(field, h)).collect()
}

/// A query name or value as it will be written into the target: already URL-encoded.
fn query_safe(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~%+!$'()*,;:@/?".contains(c))
}

/// Query pairs from the config; names must be non-empty.
fn query_pairs(
    m: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, FieldError> {
    m.iter()
        .map(|(k, v)| {
            if k.is_empty() || !query_safe(k) || !query_safe(v) {
                return refuse_field(
                    "query",
                    format!("{k:?} = {v:?}: names and values must be URL-encoded"),
                );
            }
            Ok((k.clone(), v.clone()))
        })
        .collect()
}

/// JSON field operations.
#[derive(Default)]
struct JsonOps {
    rename: Vec<(Vec<String>, Vec<String>)>,
    remove: Vec<Vec<String>>,
    set: Vec<(Vec<String>, Value)>,
    max: usize,
}

/// A dotted JSON field path from the config.
fn path(p: &str) -> Result<Vec<String>, FieldError> {
    if p.is_empty() || p.split('.').any(str::is_empty) {
        return refuse_field("json", format!("{p:?} is not a dotted field path"));
    }
    Ok(p.split('.').map(str::to_string).collect())
}

impl JsonOps {
    /// The JSON operations of a transform; paths are refused as `json`.
    fn build(
        rename: &std::collections::BTreeMap<String, String>,
        remove: &[String],
        set: Vec<(FieldPath, Value)>,
        max: usize,
    ) -> Result<Self, FieldError> {
        Ok(JsonOps {
            rename: path_pairs(rename)?,
            remove: remove.iter().map(|p| path(p)).collect::<Result<_, _>>()?,
            set,
            max,
        })
    }
}

/// A dotted JSON field path, split.
type FieldPath = Vec<String>;

/// Renames between JSON field paths from the config.
fn path_pairs(
    m: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(FieldPath, FieldPath)>, FieldError> {
    m.iter().map(|(a, b)| Ok((path(a)?, path(b)?))).collect()
}

fn take(v: &mut Value, p: &[String]) -> Option<Value> {
    let (last, parents) = p.split_last()?;
    let mut cur = v;
    for k in parents {
        cur = cur.as_object_mut()?.get_mut(k)?;
    }
    cur.as_object_mut()?.remove(last)
}

fn put(v: &mut Value, p: &[String], value: Value) {
    let Some((last, parents)) = p.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        let Some(obj) = cur.as_object_mut() else {
            return;
        };
        cur = obj
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    if let Some(obj) = cur.as_object_mut() {
        obj.insert(last.clone(), value);
    }
}

impl JsonOps {
    fn is_empty(&self) -> bool {
        self.rename.is_empty() && self.remove.is_empty() && self.set.is_empty()
    }

    fn apply(&self, v: &mut Value) {
        for (from, to) in &self.rename {
            if let Some(x) = take(v, from) {
                put(v, to, x);
            }
        }
        for p in &self.remove {
            take(v, p);
        }
        for (p, x) in &self.set {
            put(v, p, x.clone());
        }
    }
}

/// The deepest nesting of arrays and objects a JSON body may have: what `serde_json`
/// reads (its recursion limit of 128 refuses the 128th level). Moving a field deeper, or
/// setting one at a deep path, could otherwise send a body that the gateway, and the many
/// upstreams that parse with the same limit, would refuse.
pub const MAX_NESTING: usize = 127;

/// How deeply `v` nests arrays and objects (a scalar is 0), counted without recursion.
fn nesting(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        deepest = deepest.max(d + 1);
        stack.extend(children.map(|c| (c, d + 1)));
    }
    deepest
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|t| {
            let t = t.trim().to_ascii_lowercase();
            t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// A body compressed or otherwise encoded cannot be read as JSON: it passes unchanged.
fn encoded(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

fn set_length(h: &mut HeaderMap, len: usize) {
    h.remove(header::TRANSFER_ENCODING);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

/// A compiled request transform.
pub struct RequestTransformer {
    rename: Vec<(HeaderName, HeaderName)>,
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    strip_prefix: Option<String>,
    rewrite: Option<(Regex, String)>,
    remove_query: Vec<String>,
    rename_query: Vec<(String, String)>,
    add_query: Vec<(String, String)>,
    set_query: Vec<(String, String)>,
    json: JsonOps,
}

impl TryFrom<&RequestTransform> for RequestTransformer {
    type Error = FieldError;

    /// Compiles a `request_transform`; refusals name its fields.
    fn try_from(t: &RequestTransform) -> Result<Self, FieldError> {
        let strip_prefix = match &t.strip_prefix {
            Some(p) if !p.starts_with('/') => {
                return refuse_field("strip_prefix", "must start with '/'")
            }
            other => other.clone(),
        };
        let rewrite = match &t.rewrite {
            Some(r) => Some((
                Regex::new(&r.regex)
                    .map_err(|e| FieldError::new("rewrite.regex", format!("invalid regex: {e}")))?,
                r.replacement.clone(),
            )),
            None => None,
        };
        let json_set = t
            .json_set
            .iter()
            .map(|(p, v)| {
                let value = serde_json::to_value(v)
                    .map_err(|e| FieldError::new("json_set", format!("{p:?}: {e}")))?;
                Ok((path(p)?, value))
            })
            .collect::<Result<_, FieldError>>()?;
        Ok(RequestTransformer {
            rename: t
                .rename_headers
                .iter()
                .map(|(a, b)| Ok((name("headers", a)?, name("headers", b)?)))
                .collect::<Result<_, FieldError>>()?,
            remove: names("headers", &t.remove_headers)?,
            set: pairs("headers", &t.set_headers)?,
            add: pairs("headers", &t.add_headers)?,
            strip_prefix,
            rewrite,
            remove_query: t.remove_query.clone(),
            rename_query: query_pairs(&t.rename_query)?,
            add_query: query_pairs(&t.add_query)?,
            set_query: query_pairs(&t.set_query)?,
            json: JsonOps::build(&t.json_rename, &t.json_remove, json_set, t.json_max_bytes)?,
        })
    }
}

impl RequestTransformer {
    /// Applies the transform to a request.
    pub async fn apply(&self, parts: &mut Parts, body: Body) -> Result<Body, Refusal> {
        let h = &mut parts.headers;
        for (from, to) in &self.rename {
            let values: Vec<HeaderValue> = h.get_all(from).iter().cloned().collect();
            if !values.is_empty() {
                h.remove(from);
                for v in values {
                    h.append(to.clone(), v);
                }
            }
        }
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
        self.rewrite_target(parts)?;
        if self.json.is_empty() {
            return Ok(body);
        }
        if !is_json(&parts.headers) || encoded(&parts.headers) {
            // Nothing to transform, or a body the route's JSON changes cannot be made to:
            // refused rather than passed unchanged, since the upstream may well read it as
            // JSON all the same (most ignore Content-Type and request Content-Encoding), and
            // a field the route sets or removes would then be the client's to choose.
            if hyper::body::Body::is_end_stream(&body) {
                return Ok(body);
            }
            // A body only its end can show empty (chunked, or HTTP/2 without a length):
            // read up to its first byte, and refuse only one that has one.
            let unsupported = || {
                refuse(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "this route transforms JSON request bodies: send the body as \
                     application/json (or +json), without Content-Encoding",
                )
            };
            return match collect_capped(body, 0).await {
                Ok(empty) => Ok(full(empty.into_bytes())),
                Err(CollectError::Stalled) => Err(refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    "no request body arrived within the listener's body_read_timeout_ms",
                )),
                Err(CollectError::Broken) => Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "request body could not be read",
                )),
                Err(_) => Err(unsupported()),
            };
        }
        let bytes = match collect_capped(body, self.json.max).await {
            Ok(b) => b,
            Err(CollectError::TooLarge) => {
                return Err(refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!(
                        "a JSON body to transform may have at most {} bytes",
                        self.json.max
                    ),
                ))
            }
            Err(CollectError::OverBudget) => {
                return Err(Box::new(ProxyError::OverBudget.into_response()))
            }
            Err(CollectError::Stalled) => {
                return Err(refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    "no request body arrived within the listener's body_read_timeout_ms",
                ))
            }
            Err(_) => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "request body could not be read",
                ))
            }
        };
        if bytes.is_empty() {
            // Nothing to transform (a DELETE with a JSON type, say).
            return Ok(full(bytes.into_bytes()));
        }
        let mut v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            refuse(
                StatusCode::BAD_REQUEST,
                &format!("the request body is not valid JSON: {e}"),
            )
        })?;
        self.json.apply(&mut v);
        let depth = nesting(&v);
        if depth > MAX_NESTING {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                &format!(
                    "after this route's JSON transforms the body would nest {depth} levels \
                     deep; at most {MAX_NESTING} are sent"
                ),
            ));
        }
        let out = Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
        set_length(&mut parts.headers, out.len());
        Ok(full(out))
    }

    fn rewrite_target(&self, parts: &mut Parts) -> Result<(), Refusal> {
        let touches_query = !(self.remove_query.is_empty()
            && self.rename_query.is_empty()
            && self.add_query.is_empty()
            && self.set_query.is_empty());
        if self.strip_prefix.is_none() && self.rewrite.is_none() && !touches_query {
            return Ok(());
        }
        let mut p = parts.uri.path().to_string();
        if let Some(prefix) = &self.strip_prefix {
            let prefix = prefix.trim_end_matches('/');
            if let Some(rest) = p.strip_prefix(prefix) {
                if rest.is_empty() || rest.starts_with('/') {
                    p = if rest.is_empty() {
                        "/".into()
                    } else {
                        rest.to_string()
                    };
                }
            }
        }
        if let Some((re, with)) = &self.rewrite {
            p = re.replace(&p, with.as_str()).into_owned();
            if !p.starts_with('/') {
                p.insert(0, '/');
            }
        }
        let mut q: Vec<(String, Option<String>)> = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (kv.to_string(), None),
            })
            .collect();
        // Names are compared decoded, as the upstream reads them (`%64ebug` is `debug`).
        q.retain(|(k, _)| !self.remove_query.iter().any(|r| is_param(k, r)));
        for (from, to) in &self.rename_query {
            for (k, _) in q.iter_mut().filter(|(k, _)| is_param(k, from)) {
                *k = to.clone();
            }
        }
        q.retain(|(k, _)| !self.set_query.iter().any(|(s, _)| is_param(k, s)));
        q.extend(
            self.set_query
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone()))),
        );
        q.extend(
            self.add_query
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone()))),
        );
        let query: Vec<String> = q
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            })
            .collect();
        let target = if query.is_empty() {
            p
        } else {
            format!("{p}?{}", query.join("&"))
        };
        parts.uri = with_target(&parts.uri, target).ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                "the rewritten target is not a valid URI",
            )
        })?;
        Ok(())
    }
}

/// `uri` without the query parameter `key`.
pub fn without_query_param(uri: &Uri, key: &str) -> Option<Uri> {
    let query = uri.query()?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| !is_param(kv.split('=').next().unwrap_or(""), key))
        .collect();
    let target = if kept.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    with_target(uri, target)
}

/// `uri` with a new path and query; scheme and authority (HTTP/2) kept.
fn with_target(uri: &Uri, target: String) -> Option<Uri> {
    let mut b = Uri::builder();
    if let Some(s) = uri.scheme() {
        b = b.scheme(s.clone());
    }
    if let Some(a) = uri.authority() {
        b = b.authority(a.clone());
    }
    b.path_and_query(target).build().ok()
}

/// A compiled response transform.
pub struct ResponseTransformer {
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    json: JsonOps,
}

impl TryFrom<&ResponseTransform> for ResponseTransformer {
    type Error = FieldError;

    /// Compiles a `response_transform`; refusals name its fields.
    fn try_from(t: &ResponseTransform) -> Result<Self, FieldError> {
        Ok(ResponseTransformer {
            set: pairs("headers", &t.set_headers)?,
            remove: names("headers", &t.remove_headers)?,
            json: JsonOps::build(&t.json_rename, &t.json_remove, Vec::new(), t.json_max_bytes)?,
        })
    }
}

impl ResponseTransformer {
    /// Applies the transform to an upstream's response to a request (`head`: a HEAD
    /// request). Bodies that cannot be rewritten pass unchanged: responses without a body
    /// (HEAD, 1xx, 204, 304), encoded ones, and ones whose `Content-Length` is over the cap.
    /// A body without a length that runs over the cap is a 502 (part of it has been read);
    /// one that does not parse, or that the transform would nest past [`MAX_NESTING`],
    /// passes unchanged.
    pub async fn apply(&self, resp: Response<Body>, head: bool) -> Response<Body> {
        let (mut parts, body) = resp.into_parts();
        for n in &self.remove {
            parts.headers.remove(n);
        }
        for (n, v) in &self.set {
            parts.headers.insert(n.clone(), v.clone());
        }
        let bodiless = head
            || parts.status.is_informational()
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        let too_long = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n > self.json.max);
        if self.json.is_empty()
            || bodiless
            || too_long
            || !is_json(&parts.headers)
            || encoded(&parts.headers)
        {
            return Response::from_parts(parts, body);
        }
        let bytes = match collect_capped(body, self.json.max).await {
            Ok(b) => b,
            // The upstream has acted on the request: a 503 with `Retry-After` would invite
            // it again, so this is the upstream's body not taken, 502.
            Err(_) => return ProxyError::ResponseBodyUnreadable.into_response(),
        };
        let out = match serde_json::from_slice::<Value>(&bytes) {
            Ok(mut v) => {
                self.json.apply(&mut v);
                if nesting(&v) > MAX_NESTING {
                    bytes.into_bytes()
                } else {
                    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
                }
            }
            Err(_) => bytes.into_bytes(),
        };
        set_length(&mut parts.headers, out.len());
        Response::from_parts(parts, full(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Vec<String> {
        path(s).expect("a valid path")
    }

    #[test]
    fn bad_settings_are_refused_by_field() {
        let refused = |t: RequestTransform| match RequestTransformer::try_from(&t) {
            Err(e) => e.to_string(),
            Ok(_) => String::from("built"),
        };
        let mut t = RequestTransform::default();
        t.set_headers.insert("bad header".into(), "v".into());
        assert_eq!(refused(t), "headers: \"bad header\" is not a header name");
        let mut t = RequestTransform::default();
        t.add_headers.insert("x-a".into(), "line\nbreak".into());
        assert_eq!(
            refused(t),
            "headers: \"line\\nbreak\" is not a header value"
        );
        let t = RequestTransform {
            rewrite: Some(crate::config::policy::Rewrite {
                regex: "([".into(),
                replacement: String::new(),
            }),
            ..Default::default()
        };
        assert!(refused(t).starts_with("rewrite.regex: invalid regex"));
        let t = RequestTransform {
            json_remove: vec!["a..b".into()],
            ..Default::default()
        };
        assert_eq!(refused(t), "json: \"a..b\" is not a dotted field path");
        let mut t = RequestTransform::default();
        t.add_query.insert("a b".into(), "1".into());
        assert!(refused(t).starts_with("query: "));
        let t = RequestTransform {
            strip_prefix: Some("api".into()),
            ..Default::default()
        };
        assert_eq!(refused(t), "strip_prefix: must start with '/'");
        let mut r = ResponseTransform::default();
        r.remove_headers.push("x y".into());
        assert!(ResponseTransformer::try_from(&r).is_err());
    }

    /// A body nested as deeply as the gateway reads may not be pushed deeper by a rename or
    /// a `set` (found by the json_transform fuzz target: the upstream got a body that
    /// neither the gateway nor serde_json would read). `MAX_NESTING` is pinned to what
    /// serde_json reads, so a change there shows here.
    #[test]
    fn transforms_never_nest_past_what_is_read() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(serde_json::from_str::<Value>(&nested(MAX_NESTING)).is_ok());
        assert!(serde_json::from_str::<Value>(&nested(MAX_NESTING + 1)).is_err());
        let deep = format!("{{\"a\": {}}}", nested(MAX_NESTING - 1));
        let v: Value = serde_json::from_str(&deep).expect("JSON");
        assert_eq!(nesting(&v), MAX_NESTING);
        let t = RequestTransformer::try_from(&RequestTransform {
            json_rename: [("a".to_string(), "b.c".to_string())].into(),
            json_max_bytes: 10_000,
            ..Default::default()
        })
        .expect("a transform");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let mut parts = hyper::Request::post("/")
            .header(header::CONTENT_TYPE, "application/json")
            .body(())
            .expect("a request")
            .into_parts()
            .0;
        match rt.block_on(t.apply(&mut parts, full(Bytes::from(deep.clone())))) {
            Err(refused) => assert_eq!(refused.status(), StatusCode::BAD_REQUEST),
            Ok(_) => panic!("a body pushed past the limit was sent"),
        }
        // One level less fits, and moves.
        let fits = format!("{{\"a\": {}}}", nested(MAX_NESTING - 2));
        let Ok(body) = rt.block_on(t.apply(&mut parts, full(Bytes::from(fits)))) else {
            panic!("a body within the limit was refused");
        };
        let out = rt
            .block_on(http_body_util::BodyExt::collect(body))
            .expect("a body")
            .to_bytes();
        let v: Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(nesting(&v), MAX_NESTING);
        // A response pushed past the limit is passed as the upstream sent it.
        let r = ResponseTransformer::try_from(&ResponseTransform {
            json_rename: [("a".to_string(), "b.c".to_string())].into(),
            json_max_bytes: 10_000,
            ..Default::default()
        })
        .expect("a transform");
        let resp = hyper::Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(Bytes::from(deep.clone())))
            .expect("a response");
        let out = rt
            .block_on(http_body_util::BodyExt::collect(
                rt.block_on(r.apply(resp, false)).into_body(),
            ))
            .expect("a body")
            .to_bytes();
        assert_eq!(out, deep.as_bytes());
    }

    /// Numbers a transform does not touch keep their value: a double's shortest form reads
    /// back as the same double (the json_transform fuzz target found 5e57 coming back as
    /// 5.0000000000000004e57: `fuzz/regressions/json_transform/`).
    #[test]
    fn untouched_numbers_keep_their_value() {
        let ops = JsonOps {
            remove: vec![p("x")],
            max: 1000,
            ..Default::default()
        };
        let text = concat!(
            "[5e57, 0.30000000000000004, 1e-7, 18446744073709551615, -9223372036854775808, ",
            "5000000000000000000000000000000000000000000000000000000555550005]"
        );
        let mut body: Value =
            serde_json::from_str(&format!("{{\"x\": 1, \"n\": {text}}}")).expect("JSON");
        ops.apply(&mut body);
        let out: Value =
            serde_json::from_slice(&serde_json::to_vec(&body).expect("written")).expect("JSON");
        let want: Value = serde_json::from_str(text).expect("JSON");
        assert_eq!(out, json!({ "n": want }));
        for (n, s) in out["n"]
            .as_array()
            .expect("array")
            .iter()
            .zip(text.split(", "))
        {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                assert_eq!(
                    f,
                    s.trim_matches(['[', ']']).parse::<f64>().expect("a double")
                );
            }
        }
    }

    #[test]
    fn json_ops_rename_then_remove_then_set() {
        let ops = JsonOps {
            rename: vec![(p("user.name"), p("name"))],
            remove: vec![p("secret"), p("missing.deep")],
            set: vec![(p("meta.source"), json!("sluice")), (p("n.x"), json!(1))],
            max: 100,
        };
        let mut v = json!({"user": {"name": "a", "id": 1}, "secret": "s", "n": 5});
        ops.apply(&mut v);
        assert_eq!(
            v,
            json!({"user": {"id": 1}, "name": "a", "n": 5, "meta": {"source": "sluice"}})
        );
    }
}
