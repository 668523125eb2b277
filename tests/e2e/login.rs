//! Both ways to finish a login: pasting the redirect URL, and the loopback
//! listener on the provider's redirect URI.

use crate::support::{browser, json, str_of, Bed, Settings, PROVIDER};

#[test]
fn login_by_pasting_the_redirect_url() {
    let bed = Bed::start(Settings::default());
    let id = bed.add_account("alice", 0);
    let authorize_url = bed.start_login(id);
    assert!(
        authorize_url.starts_with(&format!("{}/auth?", bed.provider.issuer)),
        "{authorize_url}"
    );
    for param in [
        "code_challenge=",
        "code_challenge_method=S256",
        "state=",
        "response_type=code",
    ] {
        assert!(
            authorize_url.contains(param),
            "the authorize URL lacks {param}: {authorize_url}"
        );
    }

    let redirect_url = browser::sign_in(&authorize_url, "alice");
    assert!(
        redirect_url.starts_with(&bed.provider.redirect_uri),
        "{redirect_url}"
    );
    let complete = format!("/api/accounts/{id}/login/complete");
    let account = bed
        .admin()
        .post(&complete, json!({"redirect_url": redirect_url}))
        .ok();
    assert_eq!(account["id"], id);
    assert_eq!(account["state"], "healthy", "{account}");
    assert_eq!(account["has_refresh_token"], true, "{account}");
    assert!(account["last_error"].is_null(), "{account}");

    let lease = bed.admin().lease(PROVIDER, None);
    assert_eq!(lease["account_id"], id);
    bed.provider
        .assert_active(str_of(&lease, "access_token"), "alice");
    assert_eq!(bed.provider.code_grants("alice"), 1);

    // Pasting the same URL again must not replay the code at the provider
    // (a replayed code revokes its grant).
    bed.admin()
        .post(&complete, json!({"redirect_url": redirect_url}))
        .expect_error(409, "conflict");
    assert_eq!(bed.provider.code_grants("alice"), 1);
    assert_eq!(bed.provider.stats()["grants_revoked"], 0);
    bed.provider
        .assert_active(str_of(&lease, "access_token"), "alice");
    assert_eq!(bed.account(id)["state"], "healthy");
}

#[test]
fn login_by_loopback_redirect() {
    let bed = Bed::start(Settings::default());
    let id = bed.add_account("bob", 0);
    let account = bed.login_by_loopback(id, "bob");
    assert_eq!(account["has_refresh_token"], true, "{account}");
    assert!(account["expires_at"].is_string(), "{account}");

    let lease = bed.admin().lease(PROVIDER, None);
    assert_eq!(lease["account_id"], id);
    assert_eq!(lease["label"], "bob");
    bed.provider
        .assert_active(str_of(&lease, "access_token"), "bob");
    assert_eq!(bed.provider.code_grants("bob"), 1);

    // A second login of the same account through the loopback replaces its
    // tokens with a new grant's.
    let again = bed.login_by_loopback(id, "bob");
    assert!(
        again["generation"].as_i64() > account["generation"].as_i64(),
        "{account} then {again}"
    );
    assert_eq!(bed.provider.code_grants("bob"), 2);
    let lease = bed.admin().lease(PROVIDER, None);
    bed.provider
        .assert_active(str_of(&lease, "access_token"), "bob");
}
