//! Who may call what: the admin token, client keys, revoked keys. Every
//! protected route of the farm's own route table is probed.

use relogin_farm::http::{Access, ROUTES};
use reqwest::Method;

use crate::support::api::probe_body;
use crate::support::{int_of, json, str_of, Api, Bed, Resp, Settings, PROVIDER};

/// Sends a request to every route that needs `access`, with `{id}` and
/// `{lease_id}` filled in, and a JSON body where the method takes one.
fn each_route(api: &Api, access: Access, id: i64, lease_id: &str) -> Vec<(String, Resp)> {
    ROUTES
        .iter()
        .filter(|r| r.access == access)
        .map(|r| {
            let path = r
                .path
                .replace("{id}", &id.to_string())
                .replace("{lease_id}", lease_id);
            let method: Method = r.method.parse().expect("a method name");
            (
                format!("{method} {path}"),
                api.send(method.clone(), &path, probe_body(&method)),
            )
        })
        .collect()
}

#[test]
fn missing_or_wrong_credentials_are_401_json() {
    let bed = Bed::start(Settings::default());
    let id = bed.add_account("quinn", 0);
    let (_, key) = bed.new_client("worker");
    let admin = bed.admin_token.as_str();
    let wrong = [
        None,
        Some("Bearer".to_string()),
        Some("Bearer ".to_string()),
        Some("Bearer not-the-token".to_string()),
        Some(format!("Basic {admin}")),
        Some(format!("Bearer {admin}x")),
        Some(format!("Bearer {}", &admin[..admin.len() - 1])),
        Some(format!("Bearer {key}{admin}")),
    ];
    let mut bodies = Vec::new();
    for header in &wrong {
        let api = bed.admin().with_authorization(header.as_deref());
        for access in [Access::Admin, Access::Client] {
            for (route, resp) in each_route(&api, access, id, "lease_0") {
                assert_eq!(resp.status, 401, "{route} with {header:?}: {}", resp.text);
                bodies.push(resp.expect_error(401, "unauthorized"));
                let challenge = resp.header("www-authenticate").unwrap_or_default();
                assert!(
                    challenge.starts_with("Bearer"),
                    "{route}: WWW-Authenticate {challenge:?}"
                );
            }
        }
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "401 bodies differ by what was wrong: {bodies:?}"
    );
    // Nothing was done on the way.
    assert_eq!(bed.account(id)["state"], "pending_login");
    assert_eq!(
        bed.admin()
            .get("/api/clients")
            .ok()
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[test]
fn client_keys_reach_credentials_but_not_the_admin_api() {
    let bed = Bed::start(Settings::default());
    let id = bed.logged_in(&["rose"])[0];
    let (_, key) = bed.new_client("worker");
    let client = bed.api(Some(&key));

    for (route, resp) in each_route(&client, Access::Admin, id, "lease_0") {
        assert_eq!(resp.status, 403, "{route} with a client key: {}", resp.text);
        resp.expect_error(403, "forbidden");
    }
    let lease = client.lease(PROVIDER, None);
    bed.provider
        .assert_active(str_of(&lease, "access_token"), "rose");
    client.report(&lease, "ok", None);
    client
        .delete(&format!("/credential/lease/{}", str_of(&lease, "lease_id")))
        .expect(204);
    // The admin token works on the credential routes too.
    bed.admin().lease(PROVIDER, None);
    // The key is shown once and never listed.
    let listed = bed.admin().get("/api/clients").ok();
    assert!(
        !listed.to_string().contains(&key),
        "GET /api/clients shows the key: {listed}"
    );
    assert_eq!(bed.account(id)["state"], "healthy");
}

#[test]
fn a_revoked_client_key_is_401() {
    let bed = Bed::start(Settings::default());
    bed.logged_in(&["sam"]);
    let (revoked_id, revoked_key) = bed.new_client("old");
    let (_, other_key) = bed.new_client("other");
    let (revoked, other) = (bed.api(Some(&revoked_key)), bed.api(Some(&other_key)));
    let old_lease = revoked.lease(PROVIDER, None);

    bed.admin()
        .delete(&format!("/api/clients/{revoked_id}"))
        .expect(204);
    revoked
        .next(PROVIDER, None)
        .expect_error(401, "unauthorized");
    revoked
        .post(
            "/credential/report",
            json!({"lease_id": old_lease["lease_id"], "outcome": "ok"}),
        )
        .expect_error(401, "unauthorized");
    let clients = bed.admin().get("/api/clients").ok();
    let row = clients
        .as_array()
        .and_then(|all| all.iter().find(|c| c["id"] == revoked_id).cloned());
    assert!(
        row.is_some_and(|c| c["revoked_at"].is_string()),
        "not shown as revoked: {clients}"
    );

    // Other keys are unaffected, and one client cannot touch another's lease.
    let lease = other.lease(PROVIDER, None);
    let third = bed.client("third");
    third
        .post(
            "/credential/report",
            json!({"lease_id": lease["lease_id"], "outcome": "rate_limited"}),
        )
        .expect_error(404, "not_found");
    assert_eq!(
        bed.account(int_of(&lease, "account_id"))["state"],
        "healthy"
    );
}

/// The `Bearer` scheme is case-insensitive (RFC 9110 §11.1), for the admin
/// token and client keys alike.
#[test]
fn the_bearer_scheme_is_matched_case_insensitively() {
    let bed = Bed::start(Settings::default());
    bed.logged_in(&["tess"]);
    let (_, key) = bed.new_client("worker");
    let admin = bed.admin_token.as_str();
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let as_admin = bed
            .admin()
            .with_authorization(Some(&format!("{scheme} {admin}")));
        as_admin.get("/api/accounts").ok();
        let as_client = bed
            .admin()
            .with_authorization(Some(&format!("{scheme}  {key}")));
        as_client.lease(PROVIDER, None);
        as_client
            .get("/api/accounts")
            .expect_error(403, "forbidden");
    }
}
