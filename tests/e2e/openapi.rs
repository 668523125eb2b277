//! `GET /api/openapi.json` against the router of the running binary: every
//! documented operation is routed, with the access the document declares,
//! and what the document does not list is not.

use std::collections::BTreeSet;

use relogin_farm::http::ROUTES;
use reqwest::Method;

use crate::support::api::probe_body;
use crate::support::browser::sign_in;
use crate::support::schema::validate_answer;
use crate::support::{int_of, json, str_of, Api, Bed, Resp, Settings, Value, PROVIDER};

/// Methods probed on each documented path.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// `method path` with every `{param}` replaced by `7` (and a [`probe_body`]).
fn probe(api: &Api, method: &Method, template: &str) -> Resp {
    let path: String = template
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') && seg.ends_with('}') {
                "7"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    api.send(method.clone(), &path, probe_body(method))
}

/// Whether the answer is the router's own "no such route" 404 or a 405.
fn unrouted(resp: &Resp) -> bool {
    resp.status == 405 || (resp.status == 404 && resp.text.contains("no such route"))
}

#[test]
fn the_document_and_the_router_agree() {
    let bed = Bed::start(Settings::default());
    let anonymous = bed.api(None);
    let resp = anonymous.get("/api/openapi.json");
    let doc = resp.ok();
    assert!(
        resp.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        resp.headers
    );
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "openapi: {}",
        doc["openapi"]
    );
    assert!(
        doc["info"]["title"].is_string() && doc["info"]["version"].is_string(),
        "{}",
        doc["info"]
    );
    let paths = doc["paths"].as_object().expect("paths is an object");
    assert!(paths.len() >= 10, "{} paths", paths.len());

    let mut problems = Vec::new();
    let mut operations = 0;
    for (template, item) in paths {
        assert!(template.starts_with('/'), "path {template}");
        for method in METHODS {
            let op: &Value = &item[method.as_str().to_ascii_lowercase()];
            let what = format!("{method} {template}");
            if op.is_null() {
                // Not documented: the router must not serve it either.
                let resp = probe(&bed.admin(), &method, template);
                if !unrouted(&resp) {
                    problems.push(format!(
                        "{what} is not documented but answers {}: {}",
                        resp.status, resp.text
                    ));
                }
                continue;
            }
            operations += 1;
            assert!(
                op["responses"].is_object() && op["summary"].is_string(),
                "{what}: {op}"
            );
            // Without a token: a secured operation is a 401, an open one is served.
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            let resp = probe(&anonymous, &method, template);
            let expected = if secured {
                resp.status == 401
            } else if template == relogin_farm::http::REMOTE_SOCKET_PATH {
                // Public to the router (its first message authenticates);
                // an unknown session is a 404 before any upgrade.
                resp.status == 404
            } else {
                (200..300).contains(&resp.status)
            };
            if unrouted(&resp) || !expected {
                problems.push(format!(
                    "{what} (secured: {secured}) without a token answers {}: {}",
                    resp.status, resp.text
                ));
            }
            if !op["responses"][resp.status.to_string()].is_object() {
                problems.push(format!(
                    "{what} answers {} without a token, which its responses do not list",
                    resp.status
                ));
            }
            // With the admin token (ids that do not exist): routed, and no
            // undocumented server error.
            let resp = probe(&bed.admin(), &method, template);
            if unrouted(&resp)
                || resp.status >= 500 && !op["responses"][resp.status.to_string()].is_object()
            {
                problems.push(format!(
                    "{what} with the admin token answers {}: {}",
                    resp.status, resp.text
                ));
            }
        }
    }
    assert!(
        operations >= paths.len(),
        "{operations} operations on {} paths",
        paths.len()
    );
    for path in [
        "/api/nope",
        "/api/accounts/7/nope",
        "/api/openapi.yaml",
        "/credential",
        "/credential/lease",
        "/api",
    ] {
        let resp = bed.admin().get(path);
        if resp.error_problem(404, "not_found").is_some() || !resp.text.contains("no such route") {
            problems.push(format!(
                "GET {path} is not in the document but answers {}: {}",
                resp.status, resp.text
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the document and the router disagree:\n{}",
        problems.join("\n")
    );
}

/// Calls every route against the running farm, each the way it succeeds,
/// and validates each JSON answer against the schema the served document
/// gives for its route and status (errors against `Error`). The relogin
/// answer needs the browser: `relogin.rs` validates it the same way.
#[test]
fn every_answer_matches_its_documented_schema() {
    let webhook = "[[webhook]]\nurl = \"http://127.0.0.1:9/hook\"\nevents = [\"account_added\"]\nmax_attempts = 1\n";
    let bed = Bed::start(Settings::default().with_toml(webhook));
    let doc = bed.api(None).get("/api/openapi.json").ok();
    let id = bed.logged_in(&["uma"])[0];
    let (_, key) = bed.new_client("worker");
    let (admin, client, anonymous) = (bed.admin(), bed.api(Some(&key)), bed.api(None));

    let mut problems = Vec::new();
    let mut answered = BTreeSet::new();
    let mut call =
        |api: &Api, method: Method, template: &str, path: &str, body: Option<Vec<u8>>| {
            let resp = api.send(method.clone(), path, body);
            problems.extend(validate_answer(&doc, method.as_str(), template, &resp));
            if (200..300).contains(&resp.status) {
                answered.insert(format!("{method} {template}"));
            }
            resp
        };
    let body = |v: Value| Some(v.to_string().into_bytes());
    let account = format!("/api/accounts/{id}");

    call(&anonymous, Method::GET, "/healthz", "/healthz", None);
    call(
        &anonymous,
        Method::GET,
        "/api/openapi.json",
        "/api/openapi.json",
        None,
    );
    call(&admin, Method::GET, "/metrics", "/metrics", None);
    let next = format!("/credential/next?provider={PROVIDER}");
    let lease = call(&client, Method::GET, "/credential/next", &next, None).ok();
    let report = json!({"lease_id": lease["lease_id"], "outcome": "ok"});
    call(
        &client,
        Method::POST,
        "/credential/report",
        "/credential/report",
        body(report),
    );
    let lease = call(&admin, Method::GET, "/credential/next", &next, None).ok();
    let release = format!("/credential/lease/{}", str_of(&lease, "lease_id"));
    call(
        &admin,
        Method::DELETE,
        "/credential/lease/{lease_id}",
        &release,
        None,
    );
    call(
        &admin,
        Method::GET,
        "/api/providers",
        "/api/providers",
        None,
    );
    call(&admin, Method::GET, "/api/accounts", "/api/accounts", None);
    call(&admin, Method::GET, "/api/accounts/{id}", &account, None);
    let added = body(json!({"provider": PROVIDER, "label": "vic"}));
    let other = call(
        &admin,
        Method::POST,
        "/api/accounts",
        "/api/accounts",
        added,
    )
    .expect(201);
    let other = format!("/api/accounts/{}", int_of(&other, "id"));
    let patch = body(json!({"priority": 3, "enabled": true}));
    call(&admin, Method::PATCH, "/api/accounts/{id}", &other, patch);
    let login = format!("{other}/login");
    let started = call(
        &admin,
        Method::POST,
        "/api/accounts/{id}/login",
        &login,
        body(json!({})),
    )
    .ok();
    let redirect_url = sign_in(str_of(&started, "authorize_url"), "vic");
    let complete = body(json!({"redirect_url": redirect_url}));
    let path = format!("{other}/login/complete");
    call(
        &admin,
        Method::POST,
        "/api/accounts/{id}/login/complete",
        &path,
        complete,
    );
    let path = format!("{account}/refresh");
    let refreshed = call(
        &admin,
        Method::POST,
        "/api/accounts/{id}/refresh",
        &path,
        body(json!({})),
    )
    .ok();
    assert_eq!(refreshed["refresh"], "refreshed", "{refreshed}");
    let script = format!(
        "provider = \"{PROVIDER}\"\n[[step]]\nfill = \"#password\"\nvalue = \"${{secret:password}}\"\n"
    );
    let path = format!("{account}/script");
    let attached = call(
        &admin,
        Method::PUT,
        "/api/accounts/{id}/script",
        &path,
        Some(script.into_bytes()),
    );
    assert_eq!(attached.status, 200, "{}", attached.text);
    call(
        &admin,
        Method::GET,
        "/api/accounts/{id}/script",
        &path,
        None,
    );
    let secret = format!("{account}/secrets/password");
    let value = body(json!({"value": "hunter2"}));
    call(
        &admin,
        Method::PUT,
        "/api/accounts/{id}/secrets/{name}",
        &secret,
        value,
    );
    let path = format!("{account}/secrets");
    call(
        &admin,
        Method::GET,
        "/api/accounts/{id}/secrets",
        &path,
        None,
    );
    call(
        &admin,
        Method::DELETE,
        "/api/accounts/{id}/secrets/{name}",
        &secret,
        None,
    );
    let path = format!("{account}/script");
    call(
        &admin,
        Method::DELETE,
        "/api/accounts/{id}/script",
        &path,
        None,
    );
    let path = format!("{account}/browser");
    call(
        &admin,
        Method::GET,
        "/api/accounts/{id}/browser",
        &path,
        None,
    );
    call(
        &admin,
        Method::DELETE,
        "/api/accounts/{id}/browser",
        &path,
        None,
    );
    // Without a failed browser run there is no screenshot: a documented 404.
    let path = format!("{account}/screenshot");
    call(
        &admin,
        Method::GET,
        "/api/accounts/{id}/screenshot",
        &path,
        None,
    )
    .expect(404);
    // Without the browser the relogin fails: a documented error.
    let path = format!("{account}/relogin");
    let failed = call(
        &admin,
        Method::POST,
        "/api/accounts/{id}/relogin",
        &path,
        body(json!({})),
    );
    assert!(failed.status >= 400, "{}", failed.text);
    call(&admin, Method::GET, "/api/usage", "/api/usage", None);
    call(
        &admin,
        Method::GET,
        "/api/events",
        "/api/events?since=0",
        None,
    );
    call(&admin, Method::GET, "/api/webhooks", "/api/webhooks", None);
    call(
        &admin,
        Method::POST,
        "/api/backups",
        "/api/backups",
        body(json!({})),
    );
    call(&admin, Method::GET, "/api/backups", "/api/backups", None);
    call(&admin, Method::GET, "/api/clients", "/api/clients", None);
    let named = body(json!({"name": "another"}));
    let created = call(&admin, Method::POST, "/api/clients", "/api/clients", named).expect(201);
    let path = format!("/api/clients/{}", int_of(&created, "id"));
    call(&admin, Method::DELETE, "/api/clients/{id}", &path, None);
    call(&admin, Method::DELETE, "/api/accounts/{id}", &other, None);
    // Errors are documented answers too.
    call(
        &anonymous,
        Method::GET,
        "/api/accounts",
        "/api/accounts",
        None,
    );
    call(&client, Method::GET, "/api/accounts", "/api/accounts", None);
    call(
        &admin,
        Method::GET,
        "/api/accounts/{id}",
        "/api/accounts/999999",
        None,
    );
    call(
        &admin,
        Method::POST,
        "/api/accounts",
        "/api/accounts",
        body(json!({"provider": 1})),
    );

    let not_answered: Vec<String> = ROUTES
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .filter(|r| {
            !answered.contains(r)
                && r != "POST /api/accounts/{id}/relogin"
                // Needs the browser too: `remote_browser.rs` validates it.
                && r != "POST /api/accounts/{id}/script/prove"
                && r != "GET /api/accounts/{id}/screenshot"
                // The remote browser needs the browser: `remote_browser.rs`
                // validates its answers the same way.
                && !r.ends_with("/browser/session")
                && !r.ends_with(relogin_farm::http::REMOTE_SOCKET_PATH)
                // The upstream's answer, passed through: no schema of ours
                // (tests/e2e/proxy.rs checks what the proxy adds to it).
                && !r.ends_with(relogin_farm::http::PROXY_PATH)
        })
        .collect();
    assert!(
        problems.is_empty(),
        "answers that do not match the document:\n{}",
        problems.join("\n")
    );
    assert!(
        not_answered.is_empty(),
        "no successful answer checked for {not_answered:?}"
    );
    // The documented types are the answers' types: nothing drifted by hand.
    let account = &doc["components"]["schemas"]["Account"]["properties"];
    for field in ["has_login_script", "browser"] {
        assert!(
            account[field].is_object(),
            "Account lacks {field}: {account}"
        );
    }
}
