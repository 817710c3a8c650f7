//! Request and response transforms over a client's or an upstream's body and target.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{
    header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING},
    Request, Response, StatusCode, Uri,
};
use serde_json::Value;
use sluice_gateway::{
    config::{RequestTransform, ResponseTransform},
    full,
    pipeline::policy::transform::{RequestTransformer, ResponseTransformer},
    Body,
};

use crate::common::{names_a_field, Input};

/// The JSON operations of a transform, as the config gives them.
struct Ops {
    rename: BTreeMap<String, String>,
    remove: Vec<String>,
    set: BTreeMap<String, toml::Value>,
}

fn ops(input: &mut Input<'_>) -> Ops {
    let counts = input.byte();
    let mut ops = Ops {
        rename: BTreeMap::new(),
        remove: Vec::new(),
        set: BTreeMap::new(),
    };
    for _ in 0..counts % 3 {
        ops.rename.insert(input.text(), input.text());
    }
    for _ in 0..(counts >> 2) % 3 {
        ops.remove.push(input.text());
    }
    for _ in 0..(counts >> 4) % 3 {
        let path = input.text();
        let value = match input.byte() % 5 {
            0 => toml::Value::Integer(i64::from(input.byte())),
            1 => toml::Value::String(input.text()),
            2 => toml::Value::Boolean(input.flag()),
            3 => toml::Value::Array(vec![
                toml::Value::Integer(1),
                toml::Value::String("x".into()),
            ]),
            _ => toml::Value::Table(toml::map::Map::from_iter([(
                "k".to_string(),
                toml::Value::Integer(7),
            )])),
        };
        ops.set.insert(path, value);
    }
    ops
}

fn split(path: &str) -> Vec<&str> {
    path.split('.').collect()
}

/// The reference: rename (take, then put), remove, set; dotted paths of object keys; `put`
/// creates missing objects on the way and changes nothing below a non-object.
/// The deepest nesting of arrays and objects serde_json reads, which the gateway never
/// exceeds in what it writes.
const MAX_NESTING: usize = 127;

fn nesting(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(nesting).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

fn reference(v: &mut Value, ops: &Ops) {
    fn take(v: &mut Value, path: &[&str]) -> Option<Value> {
        match path {
            [] => None,
            [last] => v.as_object_mut()?.remove(*last),
            [first, rest @ ..] => take(v.as_object_mut()?.get_mut(*first)?, rest),
        }
    }
    fn put(v: &mut Value, path: &[&str], x: Value) {
        let Some(obj) = v.as_object_mut() else {
            return;
        };
        match path {
            [] => {}
            [last] => {
                obj.insert(last.to_string(), x);
            }
            [first, rest @ ..] => put(
                obj.entry(first.to_string())
                    .or_insert_with(|| Value::Object(Default::default())),
                rest,
                x,
            ),
        }
    }
    for (from, to) in &ops.rename {
        if let Some(x) = take(v, &split(from)) {
            put(v, &split(to), x);
        }
    }
    for p in &ops.remove {
        take(v, &split(p));
    }
    for (p, x) in &ops.set {
        put(
            v,
            &split(p),
            serde_json::to_value(x).expect("a TOML value is JSON"),
        );
    }
}

/// A body's bytes (a transform's bodies are whole in memory).
fn bytes_of(body: Body) -> Bytes {
    super::runtime()
        .block_on(body.collect())
        .map(|c| c.to_bytes())
        .expect("a transformed body reads")
}

/// Target `json_transform`: request and response transforms (JSON body rename, remove and
/// set; the target's prefix strip and query changes) built from fuzzed settings, applied to
/// a fuzzed body and target.
///
/// Invariants beyond "no panic":
/// - a setting refused names its field;
/// - a JSON body within the cap comes out as valid JSON equal to a reference model's result
///   (see `reference`), with a `Content-Length` that is its length and no
///   `Transfer-Encoding`;
/// - a request body over the cap is refused 413, one that is not JSON 400 (a body that is
///   empty, or a transform without JSON operations, passes unchanged);
/// - a response body that is not JSON passes unchanged, one over the cap without a length
///   is a 502, one whose length says it is over the cap passes unchanged;
/// - the rewritten target starts with `/` and ends with the added query parameters.
pub fn json_transform(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let max = usize::from(input.byte()) * 8;
    let ops = ops(&mut input);
    let strip_prefix = (flags & 1 != 0).then(|| input.text());
    let mut add_query = BTreeMap::new();
    if flags & 2 != 0 {
        add_query.insert(input.text(), input.text());
    }
    let remove_query = if flags & 4 != 0 {
        vec![input.text()]
    } else {
        Vec::new()
    };
    // Transforms see the target after normalization: its path starts with '/'.
    let target = Uri::try_from(input.field())
        .ok()
        .filter(|u| u.path().starts_with('/'))
        .unwrap_or_else(|| Uri::from_static("/api/x?a=1"));
    let body = Bytes::copy_from_slice(input.rest());
    let request = RequestTransform {
        json_rename: ops.rename.clone(),
        json_remove: ops.remove.clone(),
        json_set: ops.set.clone(),
        json_max_bytes: max,
        strip_prefix,
        add_query: add_query.clone(),
        remove_query,
        ..Default::default()
    };
    match RequestTransformer::try_from(&request) {
        Err(e) => assert!(names_a_field(&e.field, ""), "refusal names no field: {e}"),
        Ok(t) => {
            // The same target changes alone: whether the target is refused.
            let target_only = RequestTransform {
                json_rename: BTreeMap::new(),
                json_remove: Vec::new(),
                json_set: BTreeMap::new(),
                ..request.clone()
            };
            let target_only = RequestTransformer::try_from(&target_only).expect("built once");
            let target_refused = super::runtime()
                .block_on(target_only.apply(&mut request_parts(&target), full(Bytes::new())))
                .is_err();
            check_request(&t, &ops, max, &target, target_refused, &add_query, &body)
        }
    }
    let response = ResponseTransform {
        json_rename: ops.rename.clone(),
        json_remove: ops.remove.clone(),
        json_max_bytes: max,
        ..Default::default()
    };
    let ops = Ops {
        set: BTreeMap::new(),
        ..ops
    };
    match ResponseTransformer::try_from(&response) {
        Err(e) => assert!(names_a_field(&e.field, ""), "refusal names no field: {e}"),
        Ok(t) => check_response(&t, &ops, max, flags & 8 != 0, &body),
    }
}

fn request_parts(target: &Uri) -> hyper::http::request::Parts {
    Request::builder()
        .method("POST")
        .uri(target.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(())
        .expect("a request")
        .into_parts()
        .0
}

fn check_request(
    t: &RequestTransformer,
    ops: &Ops,
    max: usize,
    target: &Uri,
    target_refused: bool,
    add_query: &BTreeMap<String, String>,
    body: &Bytes,
) {
    let mut parts = request_parts(target);
    let has_json_ops = !ops.rename.is_empty() || !ops.remove.is_empty() || !ops.set.is_empty();
    let result = super::runtime().block_on(t.apply(&mut parts, full(body.clone())));
    let parsed = serde_json::from_slice::<Value>(body);
    let want = parsed.as_ref().ok().map(|v| {
        let mut v = v.clone();
        reference(&mut v, ops);
        v
    });
    let want_status = if target_refused {
        Some(StatusCode::BAD_REQUEST)
    } else if !has_json_ops {
        None
    } else if body.len() > max {
        Some(StatusCode::PAYLOAD_TOO_LARGE)
    } else if (!body.is_empty() && parsed.is_err())
        || want.as_ref().is_some_and(|v| nesting(v) > MAX_NESTING)
    {
        // Not JSON, or JSON the transform would nest past what is read.
        Some(StatusCode::BAD_REQUEST)
    } else {
        None
    };
    let out = match result {
        Err(refusal) => {
            assert_eq!(
                Some(refusal.status()),
                want_status,
                "{} bytes refused",
                body.len()
            );
            return;
        }
        Ok(b) => {
            assert_eq!(want_status, None, "{} bytes passed", body.len());
            bytes_of(b)
        }
    };
    assert!(
        parts.uri.path().starts_with('/'),
        "{target} became {}",
        parts.uri
    );
    if let Some((k, v)) = add_query.iter().next() {
        let query = parts.uri.query().unwrap_or("");
        assert!(query.ends_with(&format!("{k}={v}")), "{query}");
    }
    if !has_json_ops || body.is_empty() {
        assert_eq!(out, *body, "a body without JSON operations changed");
        return;
    }
    let want = want.expect("a body that is not JSON passed");
    let got: Value = serde_json::from_slice(&out).expect("a transformed body is JSON");
    assert_eq!(got, want);
    assert_eq!(
        parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()),
        Some(out.len().to_string().as_str())
    );
    assert!(!parts.headers.contains_key(TRANSFER_ENCODING));
}

fn check_response(t: &ResponseTransformer, ops: &Ops, max: usize, with_length: bool, body: &Bytes) {
    let mut b = Response::builder().header(CONTENT_TYPE, "application/problem+json");
    if with_length {
        b = b.header(CONTENT_LENGTH, body.len());
    }
    let resp = b.body(full(body.clone())).expect("a response");
    let resp = super::runtime().block_on(t.apply(resp, false));
    let status = resp.status();
    let headers = resp.headers().clone();
    let out = bytes_of(resp.into_body());
    let has_json_ops = !ops.rename.is_empty() || !ops.remove.is_empty();
    if !has_json_ops || (with_length && body.len() > max) {
        assert_eq!(out, *body, "a body that cannot be rewritten changed");
        return;
    }
    if body.len() > max {
        assert_eq!(
            status,
            StatusCode::BAD_GATEWAY,
            "a body over the cap without a length"
        );
        return;
    }
    match serde_json::from_slice::<Value>(body) {
        Err(_) => assert_eq!(out, *body, "a body that is not JSON changed"),
        Ok(mut want) => {
            reference(&mut want, ops);
            if nesting(&want) > MAX_NESTING {
                assert_eq!(
                    out, *body,
                    "a body the transform would nest too deeply changed"
                );
            } else {
                let got: Value = serde_json::from_slice(&out).expect("a transformed body is JSON");
                assert_eq!(got, want);
            }
        }
    }
    assert_eq!(
        headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()),
        Some(out.len().to_string().as_str())
    );
}
