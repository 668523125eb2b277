//! Bad requests get a 4xx with the JSON error body, and a detail that names
//! the problem where the issue asks for one; nothing breaks the farm.

use reqwest::Method;

use crate::support::{json, str_of, Bed, Settings, Value, PROVIDER};

struct Case {
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
    /// A piece of the detail that names the problem.
    detail: &'static str,
}

fn case(
    method: Method,
    path: impl Into<String>,
    body: Option<&[u8]>,
    status: u16,
    code: &'static str,
    detail: &'static str,
) -> Case {
    Case {
        method,
        path: path.into(),
        body: body.map(<[u8]>::to_vec),
        status,
        code,
        detail,
    }
}

fn json_bytes(value: Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

#[test]
fn bad_requests_get_4xx_json_errors() {
    let bed = Bed::start(Settings::default());
    let id = bed.logged_in(&["tom"])[0];
    let accounts = "/api/accounts";
    let one = format!("/api/accounts/{id}");
    let complete = format!("/api/accounts/{id}/login/complete");
    let forged = json_bytes(
        json!({"redirect_url": format!("{}?code=abc&state=forged", bed.provider.redirect_uri)}),
    );
    let too_big = json_bytes(json!({"provider": PROVIDER, "label": "x".repeat(70 * 1024)}));
    let unknown = 424_242;
    let (post, get, patch, delete) = (Method::POST, Method::GET, Method::PATCH, Method::DELETE);
    let b = |s: &'static str| Some(s.as_bytes());
    let cases = [
        case(
            post.clone(),
            accounts,
            b(r#"{"provider": "demo", "label": "#),
            400,
            "invalid_json",
            "line 1 column",
        ),
        case(
            post.clone(),
            accounts,
            b(r#"{"provider": 5, "label": "x"}"#),
            400,
            "invalid_json",
            "invalid type",
        ),
        case(
            post.clone(),
            accounts,
            b(r#"{"provider": "demo", "label": "x", "colour": "red"}"#),
            400,
            "invalid_json",
            "colour",
        ),
        case(
            post.clone(),
            accounts,
            b(r#"{"provider": "demo"}"#),
            400,
            "invalid_json",
            "label",
        ),
        case(
            post.clone(),
            accounts,
            b(r#"["demo", "x"]"#),
            400,
            "invalid_json",
            "",
        ),
        case(post.clone(), accounts, b(""), 400, "bad_request", "empty"),
        case(
            post.clone(),
            accounts,
            Some(&too_big),
            413,
            "payload_too_large",
            "",
        ),
        case(
            post.clone(),
            accounts,
            b(r#"{"provider": "nope", "label": "x"}"#),
            404,
            "not_found",
            "nope",
        ),
        case(
            post.clone(),
            accounts,
            b(r#"{"provider": "demo", "label": ""}"#),
            400,
            "bad_request",
            "label",
        ),
        case(
            post.clone(),
            accounts,
            b(r#"{"provider": "demo", "label": "tom"}"#),
            409,
            "conflict",
            "tom",
        ),
        case(
            get.clone(),
            format!("/api/accounts/{unknown}"),
            None,
            404,
            "not_found",
            "424242",
        ),
        case(
            get.clone(),
            "/api/accounts/abc",
            None,
            404,
            "not_found",
            "abc",
        ),
        case(
            patch.clone(),
            format!("/api/accounts/{unknown}"),
            b(r#"{"label": "x"}"#),
            404,
            "not_found",
            "",
        ),
        case(
            delete.clone(),
            format!("/api/accounts/{unknown}"),
            None,
            404,
            "not_found",
            "",
        ),
        case(
            post.clone(),
            format!("/api/accounts/{unknown}/login"),
            b("{}"),
            404,
            "not_found",
            "",
        ),
        case(
            post.clone(),
            format!("/api/accounts/{unknown}/login/complete"),
            b(r#"{"redirect_url": "http://127.0.0.1/"}"#),
            404,
            "not_found",
            "",
        ),
        case(
            post.clone(),
            format!("/api/accounts/{unknown}/refresh"),
            b("{}"),
            404,
            "not_found",
            "",
        ),
        case(
            patch.clone(),
            one.clone(),
            b(r#"{"enabled": "yes"}"#),
            400,
            "invalid_json",
            "invalid type",
        ),
        case(
            patch.clone(),
            one.clone(),
            b(r#"{"nickname": "x"}"#),
            400,
            "invalid_json",
            "nickname",
        ),
        case(
            post.clone(),
            complete.clone(),
            b(r#"{"redirect_url": "not a url"}"#),
            400,
            "bad_request",
            "",
        ),
        case(
            post.clone(),
            complete.clone(),
            b(r#"{"url": "http://127.0.0.1/"}"#),
            400,
            "invalid_json",
            "url",
        ),
        case(
            post.clone(),
            complete.clone(),
            Some(&forged),
            409,
            "conflict",
            "",
        ),
        case(
            get.clone(),
            "/credential/next?provider=nope",
            None,
            404,
            "not_found",
            "nope",
        ),
        case(
            get.clone(),
            "/credential/next",
            None,
            400,
            "bad_request",
            "provider",
        ),
        case(
            get.clone(),
            "/credential/next?provider=demo&session=",
            None,
            400,
            "bad_request",
            "session",
        ),
        case(
            post.clone(),
            "/credential/report",
            b(r#"{"lease_id": "lease_nope", "outcome": "ok"}"#),
            404,
            "not_found",
            "lease_nope",
        ),
        case(
            post.clone(),
            "/credential/report",
            b(r#"{"lease_id": "x", "outcome": "great"}"#),
            400,
            "invalid_json",
            "great",
        ),
        case(
            delete.clone(),
            "/credential/lease/lease_nope",
            None,
            404,
            "not_found",
            "",
        ),
        case(
            post.clone(),
            "/api/clients",
            b(r#"{"name": ""}"#),
            400,
            "bad_request",
            "name",
        ),
        case(
            delete.clone(),
            format!("/api/clients/{unknown}"),
            None,
            404,
            "not_found",
            "",
        ),
        case(get.clone(), "/no/such/route", None, 404, "not_found", ""),
    ];
    let admin = bed.admin();
    let mut failures = Vec::new();
    for c in cases {
        let what = format!(
            "{} {} {}",
            c.method,
            c.path,
            String::from_utf8_lossy(c.body.as_deref().unwrap_or_default())
        );
        let resp = admin.send(c.method, &c.path, c.body);
        let problem = resp.error_problem(c.status, c.code).or_else(|| {
            let detail = resp.json()["detail"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (!detail.contains(c.detail))
                .then(|| format!("the detail does not name {:?}: {detail}", c.detail))
        });
        if let Some(p) = problem {
            failures.push(format!(
                "{}: {p}",
                what.chars().take(120).collect::<String>()
            ));
        }
    }
    // A route's path with another method: 405; a path no route has: 404,
    // whatever the method.
    admin
        .send(Method::PUT, accounts, Some(b"{}".to_vec()))
        .expect_error(405, "method_not_allowed");
    for method in [Method::GET, Method::POST, Method::DELETE] {
        admin
            .send(method, "/api/nothing-here", None)
            .expect_error(404, "not_found");
    }

    // Still serving, nothing panicked, nothing changed.
    admin.get("/healthz").ok();
    assert_eq!(bed.account(id)["state"], "healthy");
    bed.provider
        .assert_active(str_of(&admin.lease(PROVIDER, None), "access_token"), "tom");
    assert_eq!(
        bed.provider.code_grants("tom"),
        1,
        "tom was logged in again"
    );
    assert!(
        !bed.farm_log().contains("panicked"),
        "the farm panicked:\n{}",
        bed.farm_log()
    );
    assert!(
        failures.is_empty(),
        "bad requests not answered as they should be:\n{}",
        failures.join("\n")
    );
    let listed = admin.get(accounts).ok();
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(1),
        "a bad request added an account: {listed}"
    );
}
