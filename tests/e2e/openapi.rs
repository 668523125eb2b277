//! `GET /api/openapi.json` against the router of the running binary: every
//! documented operation is routed, with the access the document declares,
//! and what the document does not list is not.

use reqwest::Method;

use crate::support::api::probe_body;
use crate::support::{Api, Bed, Resp, Settings, Value};

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
