//! A JSON Schema validator for the subset `/api/openapi.json` uses, to
//! check the farm's answers against the document it serves. A keyword it
//! does not know is a failure, never a silent pass: a schema that grows a
//! new keyword makes the tests say so.

use serde_json::Value;

use super::Resp;

/// Keywords that only annotate.
const ANNOTATIONS: [&str; 4] = ["description", "title", "contentMediaType", "examples"];

/// Problems found validating `value` against `schema`; `doc` resolves `$ref`s.
pub fn validate(doc: &Value, schema: &Value, value: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    check(doc, schema, value, "$", &mut problems);
    problems
}

/// Validates a response against what the document lists for
/// `method template` and its status; an answer the document lists no JSON
/// schema for is itself a problem when it is JSON.
pub fn validate_answer(doc: &Value, method: &str, template: &str, resp: &Resp) -> Vec<String> {
    let what = format!("{method} {template} → {}", resp.status);
    let op = &doc["paths"][template][method.to_ascii_lowercase()];
    if !op.is_object() {
        return vec![format!("{what}: not in the document")];
    }
    let listed = &op["responses"][resp.status.to_string()];
    if !listed.is_object() {
        return vec![format!("{what}: status not listed: {}", resp.text)];
    }
    let is_json = resp
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json"));
    let schema = &listed["content"]["application/json"]["schema"];
    match (is_json, schema.is_null()) {
        (false, _) => Vec::new(),
        (true, true) => vec![format!("{what}: JSON answer without a documented schema")],
        (true, false) => {
            let value: Value = match serde_json::from_str(&resp.text) {
                Ok(v) => v,
                Err(e) => return vec![format!("{what}: not JSON ({e}): {}", resp.text)],
            };
            validate(doc, schema, &value)
                .into_iter()
                .map(|p| format!("{what}: {p} in {}", resp.text))
                .collect()
        }
    }
}

fn type_matches(ty: &str, v: &Value) -> Option<bool> {
    Some(match ty {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        _ => return None,
    })
}

fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn check(doc: &Value, schema: &Value, v: &Value, at: &str, problems: &mut Vec<String>) {
    let obj = match schema {
        Value::Bool(true) => return,
        Value::Bool(false) => return problems.push(format!("{at}: no value is allowed")),
        Value::Object(o) => o,
        other => return problems.push(format!("{at}: schema {other} is not a schema")),
    };
    for (key, kw) in obj {
        match key.as_str() {
            "$ref" => match kw.as_str().and_then(|r| resolve(doc, r)) {
                Some(target) => check(doc, target, v, at, problems),
                None => problems.push(format!("{at}: unresolved $ref {kw}")),
            },
            "type" => {
                let types: Vec<&str> = match kw {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => vec![],
                };
                let mut ok = false;
                for t in &types {
                    match type_matches(t, v) {
                        Some(m) => ok |= m,
                        None => problems.push(format!("{at}: unknown type {t}")),
                    }
                }
                if !ok {
                    problems.push(format!("{at}: {v} is not of type {kw}"));
                }
            }
            "enum" => {
                if !kw.as_array().is_some_and(|all| all.contains(v)) {
                    problems.push(format!("{at}: {v} is not one of {kw}"));
                }
            }
            "const" => {
                if kw != v {
                    problems.push(format!("{at}: {v} is not {kw}"));
                }
            }
            "properties" => {
                if let (Some(props), Some(o)) = (kw.as_object(), v.as_object()) {
                    for (name, sub) in props {
                        if let Some(field) = o.get(name) {
                            check(doc, sub, field, &format!("{at}.{name}"), problems);
                        }
                    }
                }
            }
            "required" => {
                if let (Some(names), Some(o)) = (kw.as_array(), v.as_object()) {
                    for name in names.iter().filter_map(Value::as_str) {
                        if !o.contains_key(name) {
                            problems.push(format!("{at}: required field {name} is missing"));
                        }
                    }
                }
            }
            "additionalProperties" => {
                if let Some(o) = v.as_object() {
                    let known = obj.get("properties").and_then(Value::as_object);
                    for (name, field) in o {
                        if !known.is_some_and(|k| k.contains_key(name)) {
                            check(doc, kw, field, &format!("{at}.{name}"), problems);
                        }
                    }
                }
            }
            "items" => {
                if let Some(items) = v.as_array() {
                    for (i, item) in items.iter().enumerate() {
                        check(doc, kw, item, &format!("{at}[{i}]"), problems);
                    }
                }
            }
            "anyOf" | "oneOf" => {
                let all = kw.as_array().map(Vec::as_slice).unwrap_or_default();
                let passing = all
                    .iter()
                    .filter(|s| validate(doc, s, v).is_empty())
                    .count();
                let ok = if key == "oneOf" {
                    passing == 1
                } else {
                    passing >= 1
                };
                if !ok {
                    problems.push(format!("{at}: {v} matches {passing} of {key} {kw}"));
                }
            }
            "allOf" => {
                for s in kw.as_array().map(Vec::as_slice).unwrap_or_default() {
                    check(doc, s, v, at, problems);
                }
            }
            "minimum" | "maximum" => {
                if let (Some(n), Some(bound)) = (v.as_f64(), kw.as_f64()) {
                    let ok = if key == "minimum" {
                        n >= bound
                    } else {
                        n <= bound
                    };
                    if !ok {
                        problems.push(format!("{at}: {v} is out of {key} {kw}"));
                    }
                }
            }
            "format" => {
                let ok = match (kw.as_str(), v) {
                    (Some("date-time"), Value::String(s)) => {
                        chrono::DateTime::parse_from_rfc3339(s).is_ok()
                    }
                    // Integer widths: `type` and `minimum` carry the check.
                    (Some("int64" | "uint64" | "uint" | "uint32" | "uint128"), _) => true,
                    (Some("date-time"), _) => true,
                    _ => {
                        problems.push(format!("{at}: unknown format {kw}"));
                        true
                    }
                };
                if !ok {
                    problems.push(format!("{at}: {v} is not a {kw}"));
                }
            }
            k if ANNOTATIONS.contains(&k) => {}
            other => problems.push(format!("{at}: unsupported keyword {other}")),
        }
    }
}
