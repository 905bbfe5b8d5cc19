//! The OpenAPI document (`vmm/src/api/openapi.yaml`) for tests: loading it, resolving
//! `$ref`s, and checking a JSON body against a schema's required fields and enums.

use serde_json::Value;
use std::path::Path;

/// The parsed document.
pub fn document() -> serde_yaml::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/openapi.yaml");
    let text = std::fs::read_to_string(&path).expect("read openapi.yaml");
    serde_yaml::from_str(&text).expect("openapi.yaml is YAML")
}

/// Checks any answer to `method path` against the document: a documented operation's
/// status must be documented for it (or be one of the unrouted answers) and its body must
/// match the documented schema; error bodies match `ErrorBody`.
pub fn check_any(
    doc: &serde_yaml::Value,
    method: &str,
    path: &str,
    status: u16,
    body: Option<&Value>,
) {
    let at = format!("{method} {path} {status}");
    let endpoint = path.strip_prefix("/api/v1/").unwrap_or("");
    let op = &doc["paths"][format!("/{endpoint}").as_str()][method.to_lowercase().as_str()];
    let documented = !op.is_null() && !op["responses"][status.to_string().as_str()].is_null();
    if documented {
        let resp = resolve(doc, &op["responses"][status.to_string().as_str()]);
        let schema = &resp["content"]["application/json"]["schema"];
        match (schema.is_null(), body) {
            (true, None) => {}
            (true, Some(b)) => panic!("{at}: undocumented body {b}"),
            (false, Some(b)) => check_schema(doc, schema, b, &at),
            (false, None) => panic!("{at}: documented body missing"),
        }
        return;
    }
    let unrouted = &doc["x-unrouted-responses"][status.to_string().as_str()];
    assert!(
        !unrouted.is_null(),
        "{at}: the server answered a status the document does not list"
    );
    if let Some(b) = body {
        check_schema(doc, &doc["components"]["schemas"]["ErrorBody"], b, &at);
    }
}

/// Checks an answer to `method endpoint` with `status` against the document.
pub fn check_answer(
    doc: &serde_yaml::Value,
    method: &str,
    endpoint: &str,
    status: u16,
    body: &Value,
) {
    let op = &doc["paths"][format!("/{endpoint}").as_str()][method.to_lowercase().as_str()];
    let resp = &op["responses"][status.to_string().as_str()];
    assert!(
        !resp.is_null(),
        "{method} {endpoint} {status} is not documented"
    );
    let resp = resolve(doc, resp);
    let schema = &resp["content"]["application/json"]["schema"];
    assert!(
        !schema.is_null(),
        "{method} {endpoint} {status}: no documented body"
    );
    check_schema(doc, schema, body, &format!("{method} {endpoint} {status}"));
}

/// Resolves `$ref`s to components.
pub fn resolve<'a>(doc: &'a serde_yaml::Value, v: &'a serde_yaml::Value) -> &'a serde_yaml::Value {
    match v.get("$ref").and_then(|r| r.as_str()) {
        Some(r) => {
            let mut cur = doc;
            for part in r.trim_start_matches("#/").split('/') {
                cur = &cur[part];
            }
            resolve(doc, cur)
        }
        None => v,
    }
}

/// Checks `body` against a schema's `required` fields (recursively for objects and arrays
/// of objects) and `enum`s.
pub fn check_schema(doc: &serde_yaml::Value, schema: &serde_yaml::Value, body: &Value, at: &str) {
    let schema = resolve(doc, schema);
    if let Some(values) = schema.get("enum").and_then(|e| e.as_sequence()) {
        let allowed: Vec<&str> = values.iter().filter_map(|v| v.as_str()).collect();
        let got = body
            .as_str()
            .unwrap_or_else(|| panic!("{at}: {body} is not a string"));
        assert!(allowed.contains(&got), "{at}: {got:?} not in {allowed:?}");
    }
    if let Some(req) = schema.get("required").and_then(|r| r.as_sequence()) {
        for f in req {
            let f = f.as_str().unwrap();
            assert!(
                body.get(f).is_some(),
                "{at}: required field {f} missing in {body}"
            );
        }
    }
    if let Some(props) = schema.get("properties").and_then(|p| p.as_mapping()) {
        for (k, s) in props {
            let k = k.as_str().unwrap();
            if let Some(v) = body.get(k) {
                check_schema(doc, s, v, &format!("{at}.{k}"));
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), body.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            check_schema(doc, items, v, &format!("{at}[{i}]"));
        }
    }
}
