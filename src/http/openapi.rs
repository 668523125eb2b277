//! `GET /api/openapi.json`: the OpenAPI 3.1 document, generated from the
//! route table ([`super::ROUTES`]) plus the schemas below, so a route
//! cannot be served without being documented (the router is built from the
//! same table and checks it, see `http::endpoint`).

use std::sync::LazyLock;

use serde_json::{json, Map, Value};

use super::{Access, ROUTES};

pub static DOCUMENT: LazyLock<Value> = LazyLock::new(document);

fn document() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let item = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        item[r.method.to_ascii_lowercase()] = operation(r);
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
            "schemas": schemas()
        }
    })
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn operation(r: &super::Route) -> Value {
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
        let media = if req == "ScriptText" {
            "application/toml"
        } else {
            "application/json"
        };
        op["requestBody"] =
            json!({"required": true, "content": {media: {"schema": schema_ref(req)}}});
    }
    let (status, body) = r.ok;
    let content_type = match body {
        Some("Metrics") => "text/plain",
        Some("ScriptText") => "application/toml",
        Some("Png") => "image/png",
        _ => "application/json",
    };
    let mut ok = json!({"description": "success"});
    if let Some(name) = body {
        ok["content"] = json!({content_type: {"schema": schema_ref(name)}});
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
        op["responses"][code] = json!({"description": description, "content": {"application/json": {"schema": schema_ref("Error")}}});
    }
    op
}

fn dt() -> Value {
    json!({"type": ["string", "null"], "format": "date-time"})
}

fn schemas() -> Value {
    let account = json!({
        "type": "object",
        "required": ["id", "provider", "label", "state", "priority", "enabled", "leases_24h"],
        "properties": {
            "id": {"type": "integer"},
            "provider": {"type": "string"},
            "label": {"type": "string"},
            "state": {"enum": ["healthy", "refreshing", "cooling_down", "pending_login", "needs_relogin", "needs_human", "disabled"]},
            "priority": {"type": "integer"},
            "enabled": {"type": "boolean"},
            "expires_at": dt(),
            "cooldown_until": dt(),
            "last_refresh_at": dt(),
            "last_used_at": dt(),
            "last_error": {"type": ["object", "null"], "properties": {"at": dt(), "message": {"type": "string"},
                "screenshot": {"type": ["string", "null"], "description": "path of GET /api/accounts/{id}/screenshot"}}},
            "leases_24h": {"type": "integer"},
            "has_refresh_token": {"type": "boolean"},
            "generation": {"type": "integer"},
            "created_at": dt()
        }
    });
    let counts = json!({"type": "object", "properties": {
        "leases": {"type": "integer"}, "ok": {"type": "integer"}, "rate_limited": {"type": "integer"},
        "unauthorized": {"type": "integer"}, "error": {"type": "integer"}}});
    let usage_row = json!({"type": "object", "properties": {"id": {"type": ["integer", "null"]}, "last_hour": counts, "last_day": counts}});
    let event = json!({"type": "object", "required": ["id", "at", "kind", "detail"], "properties": {
        "id": {"type": "integer"}, "at": dt(), "kind": {"enum": crate::config::EVENT_KINDS},
        "account_id": {"type": ["integer", "null"]}, "detail": {"type": "string"}}});
    let client = json!({"type": "object", "required": ["id", "name", "created_at"], "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"}, "created_at": dt(), "revoked_at": dt()}});
    let mut all = json!({
        "Error": {"type": "object", "required": ["error", "detail"], "properties": {
            "error": {"type": "string"}, "detail": {"type": "string"}, "retry_after_s": {"type": "integer"}}},
        "Health": {"type": "object", "properties": {"status": {"enum": ["ok", "degraded"]}, "accounts": {"type": "integer"},
            "detail": {"type": "string", "description": "Why it is degraded (then the status is 503)"}}},
        "Metrics": {"type": "string", "description": "Prometheus text exposition format"},
        "CredentialLease": {"type": "object",
            "required": ["account_id", "label", "provider", "access_token", "token_type", "expires_at", "lease_id", "lease_expires_at"],
            "properties": {
                "account_id": {"type": "integer"}, "label": {"type": "string"}, "provider": {"type": "string"},
                "access_token": {"type": "string"}, "token_type": {"type": "string"}, "expires_at": dt(),
                "lease_id": {"type": "string"}, "lease_expires_at": dt()}},
        "Report": {"type": "object", "required": ["lease_id", "outcome"], "additionalProperties": false, "properties": {
            "lease_id": {"type": "string"},
            "outcome": {"enum": ["ok", "rate_limited", "unauthorized", "error"]},
            "retry_after_s": {"type": "integer", "minimum": 0}}},
        "Recorded": {"type": "object", "properties": {"recorded": {"const": true}}},
        "ProviderList": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "client_id": {"type": "string"}, "redirect_uri": {"type": "string"},
            "scopes": {"type": "array", "items": {"type": "string"}}}}},
        "Account": account,
        "AccountList": {"type": "array", "items": schema_ref("Account")},
        "NewAccount": {"type": "object", "required": ["provider", "label"], "additionalProperties": false, "properties": {
            "provider": {"type": "string"}, "label": {"type": "string", "minLength": 1, "maxLength": 100},
            "priority": {"type": "integer"}}},
        "AccountPatch": {"type": "object", "additionalProperties": false, "properties": {
            "label": {"type": "string"}, "priority": {"type": "integer"}, "enabled": {"type": "boolean"}}},
        "LoginStarted": {"type": "object", "properties": {
            "account_id": {"type": "integer"}, "authorize_url": {"type": "string"}, "expires_at": dt(),
            "listening": {"type": "boolean"}}},
        "LoginComplete": {"type": "object", "required": ["redirect_url"], "additionalProperties": false, "properties": {
            "redirect_url": {"type": "string"}}},
        "Usage": {"type": "object", "properties": {
            "generated_at": dt(),
            "per_account": {"type": "array", "items": usage_row},
            "per_client": {"type": "array", "items": usage_row},
            "recent": {"type": "array", "items": {"type": "object", "properties": {
                "lease_id": {"type": "string"}, "account_id": {"type": "integer"}, "client_id": {"type": ["integer", "null"]},
                "session": {"type": ["string", "null"]}, "issued_at": dt(), "expires_at": dt(), "released_at": dt(),
                "outcome": {"type": ["string", "null"]}}}}}},
        "Event": event,
        "EventList": {"type": "array", "items": schema_ref("Event")},
        "WebhookList": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"}, "target": {"type": "string"}, "events": {"type": "array", "items": {"type": "string"}},
            "delivered": {"type": "integer"}, "failed_attempts": {"type": "integer"}, "given_up": {"type": "integer"},
            "dropped": {"type": "integer"}, "last_success_at": dt(), "last_error": {"type": ["string", "null"]},
            "last_error_at": dt()}}},
        "Client": client,
        "ClientList": {"type": "array", "items": schema_ref("Client")},
        "NewClient": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 100}}},
        "ClientCreated": {"type": "object", "required": ["id", "name", "key"], "properties": {
            "id": {"type": "integer"}, "name": {"type": "string"},
            "key": {"type": "string", "description": "Shown once; only its hash is stored"}}},
        "ScriptText": {"type": "string", "description": "A login script (TOML); see the README"},
        "ScriptAttached": {"type": "object", "properties": {
            "account_id": {"type": "integer"}, "steps": {"type": "integer"},
            "required_secrets": {"type": "array", "items": {"type": "string"}},
            "missing_secrets": {"type": "array", "items": {"type": "string"}}}},
        "SecretList": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "updated_at": dt()}}},
        "SecretValue": {"type": "object", "required": ["value"], "additionalProperties": false, "properties": {
            "value": {"type": "string"}}},
        "ReloginDone": {"type": "object", "description": "The account, plus `relogin`: {elapsed_ms, steps_acted, session_expires_at}"},
        "BrowserInfo": {"type": "object", "properties": {
            "account_id": {"type": "integer"}, "browser_enabled": {"type": "boolean"}, "has_login_script": {"type": "boolean"},
            "profile_present": {"type": "boolean"}, "profile_bytes": {"type": "integer"},
            "in_use_by": {"type": ["string", "null"]}, "last_run_at": dt(), "last_outcome": {"type": ["string", "null"]},
            "session_expires_at": dt()}},
        "Png": {"type": "string", "contentMediaType": "image/png"},
        "OpenApi": {"type": "object"}
    });
    // Added outside the literal above, which is at `json!`'s recursion limit.
    all["Backup"] = json!({"type": "object", "required": ["file", "bytes", "created_at"], "properties": {
        "file": {"type": "string", "description": "File name in backup.dir"}, "bytes": {"type": "integer"},
        "created_at": dt()}});
    all["BackupList"] = json!({"type": "array", "items": schema_ref("Backup")});
    all["Account"]["properties"]["quota"] = json!({"type": ["object", "null"],
        "description": "The last rate-limit headers the proxy saw for this account",
        "properties": {"at": dt(), "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "resets_at": dt()}});
    all
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
