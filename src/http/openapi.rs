//! `GET /api/openapi.json`: the OpenAPI 3.1 document, generated from the
//! route table ([`super::ROUTES`]), with `components/schemas` derived from
//! the Rust types each row names (`schemars`): a route cannot be served
//! without being documented (the router is built from the same table and
//! checks it, see `http::endpoint`), and an answer cannot drift from its
//! schema without a field of its type changing both.

use std::sync::LazyLock;

use schemars::generate::SchemaSettings;
use schemars::SchemaGenerator;
use serde_json::{json, Map, Value};

use super::{Access, Body, ROUTES};

pub static DOCUMENT: LazyLock<Value> = LazyLock::new(document);

/// Where the schemas live in the document.
const SCHEMAS: &str = "/components/schemas";

/// Request bodies are described as they are read (`deny_unknown_fields`
/// → no other properties), answers as they are written.
struct Generators {
    request: SchemaGenerator,
    answer: SchemaGenerator,
}

fn document() -> Value {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = SCHEMAS.into();
        s.meta_schema = None;
    });
    let mut gens = Generators {
        request: settings.clone().for_deserialize().into_generator(),
        answer: settings.for_serialize().into_generator(),
    };
    let error = gens.answer.subschema_for::<super::error::Body>().to_value();
    let mut paths = Map::new();
    for r in ROUTES {
        let item = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        item[r.method.to_ascii_lowercase()] = operation(r, &mut gens, &error);
    }
    let mut schemas = gens.answer.take_definitions(true);
    for (name, schema) in gens.request.take_definitions(true) {
        if let Some(other) = schemas.get(&name) {
            assert_eq!(
                other, &schema,
                "two types are documented as schema {name}: rename one"
            );
        }
        schemas.insert(name, schema);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "relogin-farm",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Keeps OAuth accounts logged in and hands out their tokens with leases. \
                            Every error body is {\"error\": code, \"detail\": sentence}."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer", "description": "The admin token"},
                "client": {"type": "http", "scheme": "bearer", "description": "A client key (or the admin token)"}
            },
            "schemas": schemas
        }
    })
}

/// The `content` of a body: its media type and schema.
fn content(body: Body, generator: &mut SchemaGenerator) -> Value {
    match body {
        Body::Json(schema) => json!({"application/json": {"schema": schema(generator).to_value()}}),
        Body::Text(t) => {
            let mut schema = json!({"type": "string", "description": t.description});
            if !t.media.starts_with("text/") && t.media != "application/toml" {
                schema["contentMediaType"] = json!(t.media);
            }
            json!({t.media: {"schema": schema}})
        }
    }
}

fn operation(r: &super::Route, gens: &mut Generators, error: &Value) -> Value {
    let mut op = json!({
        "summary": r.summary,
        "operationId": format!("{} {}", r.method, r.path),
        "responses": {},
    });
    let mut params: Vec<Value> = r
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    if r.path == "/credential/next" {
        params.push(json!({"name": "provider", "in": "query", "required": true, "schema": {"type": "string"}}));
        params.push(json!({"name": "session", "in": "query", "required": false, "schema": {"type": "string", "maxLength": 200},
                           "description": "Sticky session key (strategy sticky)"}));
    }
    if r.path == "/api/events" {
        params.push(json!({"name": "since", "in": "query", "required": false, "schema": {"type": "integer"},
                           "description": "Return stored events after this id as JSON instead of a stream"}));
        params.push(json!({"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "string"}}));
    }
    if !params.is_empty() {
        op["parameters"] = Value::Array(params);
    }
    if let Some(req) = r.request {
        op["requestBody"] = json!({"required": true, "content": content(req, &mut gens.request)});
    }
    let (status, body) = r.ok;
    let mut ok = json!({"description": "success"});
    if let Some(body) = body {
        ok["content"] = content(body, &mut gens.answer);
        if r.path == "/api/events" {
            ok["content"]["text/event-stream"] = json!({"schema": {"type": "string"}});
        }
    }
    op["responses"][status.to_string()] = ok;
    let mut errors: Vec<(&str, &str)> = Vec::new();
    match r.access {
        Access::Public => {}
        Access::Client => {
            op["security"] = json!([{"client": []}]);
            errors.push(("401", "missing or unknown token"));
        }
        Access::Admin => {
            op["security"] = json!([{"admin": []}]);
            errors.push(("401", "missing or unknown token"));
            errors.push(("403", "a client key used on the admin API"));
        }
    }
    if r.request.is_some() {
        errors.push(("400", "malformed body"));
        errors.push(("413", "body over 64 KiB"));
    }
    if r.path.contains('{') {
        errors.push(("404", "unknown id"));
    }
    if r.path == "/credential/next" {
        errors.push((
            "503",
            "no account can serve now; see Retry-After and retry_after_s",
        ));
    }
    // The routes that wait for the provider, the browser or the disk.
    match (r.method, r.path) {
        ("POST", "/api/accounts") => {
            errors.push(("409", "the provider has an account with this label"))
        }
        ("POST", "/api/accounts/{id}/login/complete") => {
            errors.push(("502", "the provider refused the login"))
        }
        ("POST", "/api/accounts/{id}/refresh") => {
            errors.push(("502", "the provider refused or failed the refresh"))
        }
        ("POST", "/api/accounts/{id}/relogin") => {
            errors.push(("409", "the browser is off or the account is busy"));
            errors.push(("502", "the browser relogin failed (see last_error)"));
        }
        ("POST", "/api/backups") => errors.push(("500", "the backup failed")),
        ("POST", "/api/accounts/{id}/browser/session") => errors.push((
            "409",
            "the browser is off, no slot is free, or the profile is in use (the answer names who)",
        )),
        ("GET", super::REMOTE_SOCKET_PATH) => {
            errors.push(("409", "the session has its socket"));
            errors.push(("426", "not a WebSocket upgrade request"));
        }
        ("POST", "/credential/report") => {
            errors.push(("404", "unknown lease, or another client's"));
            errors.push((
                "409",
                "lease_closed: the lease was released, has expired, or its account was removed; nothing is recorded",
            ));
        }
        _ => {}
    }
    if r.path == super::PROXY_PATH {
        op["responses"]["200"]["description"] = json!("the upstream's answer, streamed as it came");
        errors.extend([
            ("413", "body over the provider's proxy.max_body"),
            ("501", "WebSocket upgrade"),
            ("502", "the upstream could not be reached"),
            (
                "503",
                "no account can serve now; see Retry-After and retry_after_s",
            ),
            (
                "504",
                "the upstream did not answer within proxy.first_byte_timeout",
            ),
        ]);
    }
    for (code, description) in errors {
        op["responses"][code] =
            json!({"description": description, "content": {"application/json": {"schema": error}}});
    }
    op
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_every_schema_exists() {
        let doc = &*DOCUMENT;
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method.to_ascii_lowercase()];
            assert!(
                op.is_object(),
                "{} {} missing from the document",
                r.method,
                r.path
            );
        }
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(
            documented,
            ROUTES.len(),
            "the document has operations the table does not"
        );
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for piece in text.split("#/components/schemas/").skip(1) {
            let name: String = piece.chars().take_while(|c| c.is_alphanumeric()).collect();
            assert!(
                schemas.contains_key(&name),
                "schema {name} is referenced but not defined"
            );
        }
    }
}
