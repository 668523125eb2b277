//! Refresh: proactive, single-flight, retried when the provider fails for a
//! moment, and an account whose grant is gone is marked, never deleted.

use std::collections::BTreeSet;
use std::thread;

use chrono::{Duration as ChronoDuration, Utc};

use crate::support::{
    int_of, json, secs, str_of, time_of, wait_for, Bed, Settings, Value, PROVIDER,
};

#[test]
fn proactive_refresh_serves_valid_tokens_after_the_first_expires() {
    let bed = Bed::start(Settings::short_tokens());
    let id = bed.logged_in(&["alice"])[0];
    let admin = bed.admin();
    let first = admin.lease(PROVIDER, None);
    let first_token = str_of(&first, "access_token").to_string();
    let first_expiry = time_of(&first, "expires_at");
    let generation = int_of(&bed.account(id), "generation");

    let refreshed = bed.wait_account("the first scheduled refresh", id, secs(10), |a| {
        a["generation"].as_i64() > Some(generation)
    });
    let refreshed_at = time_of(&refreshed, "last_refresh_at");
    assert!(
        refreshed_at < first_expiry,
        "refreshed at {refreshed_at}, after the token expired at {first_expiry}"
    );

    // Until the first token is dead at the provider, and once more after,
    // every token served is live and has min_validity (1 s) left.
    let check_served = || {
        let lease = admin.lease(PROVIDER, None);
        let left = time_of(&lease, "expires_at") - Utc::now();
        // min_validity, less what the answer's trip may take
        assert!(
            left >= ChronoDuration::milliseconds(700),
            "served a token with {left} left: {lease}"
        );
        bed.provider
            .assert_active(str_of(&lease, "access_token"), "alice");
        lease
    };
    wait_for(
        "the first access token to expire at the provider",
        secs(15),
        || {
            check_served();
            match bed.provider.introspect(&first_token) {
                info if info["active"] == false => Ok(()),
                info => Err(info.to_string()),
            }
        },
    );
    let later = check_served();
    assert_ne!(str_of(&later, "access_token"), first_token);

    let stats = bed.provider.stats();
    assert!(
        stats["refresh_grants"]["alice"].as_u64() >= Some(1),
        "{stats}"
    );
    assert_eq!(stats["refresh_failures"], json!({}), "{stats}");
    assert_eq!(stats["grants_revoked"], 0, "{stats}");
    let account = bed.account(id);
    assert_eq!(account["state"], "healthy", "{account}");
    assert!(account["last_error"].is_null(), "{account}");
}

#[test]
fn concurrent_refresh_triggers_send_exactly_one_grant() {
    let bed = Bed::start(Settings::default());
    let id = bed.logged_in(&["carol"])[0];
    let client = bed.client("worker");
    let leases: Vec<Value> = (0..4).map(|_| client.lease(PROVIDER, None)).collect();
    let old_token = str_of(&leases[0], "access_token").to_string();

    // Keep the one grant in flight for a second while every trigger arrives.
    bed.provider.token_delay(1000);
    let admin = bed.admin();
    let refresh_path = format!("/api/accounts/{id}/refresh");
    let answers: Vec<Value> = thread::scope(|s| {
        let refreshes: Vec<_> = (0..8)
            .map(|_| s.spawn(|| admin.post(&refresh_path, json!({})).ok()))
            .collect();
        for lease in &leases {
            s.spawn(|| client.report(lease, "unauthorized", None));
        }
        refreshes
            .into_iter()
            .map(|h| h.join().expect("refresh thread"))
            .collect()
    });
    bed.provider.token_delay(0);

    let outcomes: Vec<&str> = answers.iter().map(|a| str_of(a, "refresh")).collect();
    assert!(
        outcomes
            .iter()
            .all(|o| ["refreshed", "already_fresh"].contains(o)),
        "unexpected refresh outcomes {outcomes:?}"
    );
    assert!(
        outcomes.iter().filter(|o| **o == "refreshed").count() <= 1,
        "{outcomes:?}"
    );
    let stats = bed.provider.stats();
    assert_eq!(
        stats["refresh_grants"]["carol"], 1,
        "not exactly one refresh grant: {stats}"
    );
    assert_eq!(stats["refresh_failures"], json!({}), "{stats}");
    assert_eq!(
        stats["grants_revoked"], 0,
        "reuse detection revoked the grant: {stats}"
    );

    let account = bed.wait_state(id, "healthy", secs(10));
    assert!(account["last_error"].is_null(), "{account}");
    let lease = client.lease(PROVIDER, None);
    assert_ne!(str_of(&lease, "access_token"), old_token);
    bed.provider
        .assert_active(str_of(&lease, "access_token"), "carol");

    // The refresh token chain is intact: the next refresh works too.
    let again = admin.post(&refresh_path, json!({})).ok();
    assert_eq!(again["refresh"], "refreshed", "{again}");
    assert_eq!(bed.provider.refresh_grants("carol"), 2);
    bed.provider.assert_active(
        str_of(&client.lease(PROVIDER, None), "access_token"),
        "carol",
    );
}

#[test]
fn transient_token_endpoint_failures_are_retried_with_backoff() {
    let bed = Bed::start(Settings::short_tokens());
    let id = bed.logged_in(&["dave"])[0];
    let before = bed.account(id);
    let generation = int_of(&before, "generation");
    let due = time_of(&before, "expires_at") - ChronoDuration::seconds(2);

    bed.provider.token_fail(2, 503);
    let mut states = BTreeSet::new();
    let mut errors = BTreeSet::new();
    let refreshed = wait_for("the refresh to succeed after two 503s", secs(15), || {
        let a = bed.account(id);
        states.insert(str_of(&a, "state").to_string());
        if let Some(message) = a["last_error"]["message"].as_str() {
            errors.insert(message.to_string());
        }
        if a["generation"].as_i64() > Some(generation) {
            Ok(a)
        } else {
            Err(a.to_string())
        }
    });
    assert!(
        states.iter().all(|s| s == "healthy" || s == "refreshing"),
        "the account left healthy: {states:?}"
    );
    assert!(
        errors.iter().all(|e| e.contains("retry")),
        "last_error while backing off: {errors:?}"
    );
    assert_eq!(refreshed["state"], "healthy", "{refreshed}");
    assert!(refreshed["last_error"].is_null(), "{refreshed}");
    assert_eq!(
        int_of(&refreshed, "generation"),
        generation + 1,
        "{refreshed}"
    );
    // Two backoffs of at least half of 300 ms and 600 ms lie between the
    // first attempt (at the due time) and the success.
    let refreshed_at = time_of(&refreshed, "last_refresh_at");
    assert!(
        refreshed_at >= due + ChronoDuration::milliseconds(400),
        "refreshed at {refreshed_at}, too soon after the due time {due} for two backoffs"
    );

    assert_eq!(
        bed.metric("relogin_farm_refreshes_total{result=\"failed\"}"),
        2.0
    );
    let stats = bed.provider.stats();
    assert_eq!(stats["refresh_grants"]["dave"], 1, "{stats}");
    assert_eq!(stats["grants_revoked"], 0, "{stats}");
    bed.provider.assert_active(
        str_of(&bed.admin().lease(PROVIDER, None), "access_token"),
        "dave",
    );
}

#[test]
fn revoked_grant_marks_the_account_needs_relogin_not_deleted() {
    let bed = Bed::start(Settings::default());
    let id = bed.logged_in(&["erin"])[0];
    assert!(
        bed.provider.revoke("erin") >= 1,
        "the provider revoked nothing"
    );

    bed.admin()
        .post(&format!("/api/accounts/{id}/refresh"), json!({}))
        .expect_error(502, "refresh_failed");
    let account = bed.account(id);
    assert_eq!(account["state"], "needs_relogin", "{account}");
    let message = account["last_error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no last_error: {account}"));
    assert!(message.contains("invalid_grant"), "{message}");
    time_of(&account["last_error"], "at");
    let listed = bed.admin().get("/api/accounts").ok();
    assert!(
        listed
            .as_array()
            .is_some_and(|all| all.iter().any(|a| a["id"] == id)),
        "the account is gone: {listed}"
    );
    let unavailable = bed
        .admin()
        .next(PROVIDER, None)
        .expect_error(503, "no_account_available");
    assert!(
        unavailable["retry_after_s"].as_i64() >= Some(1),
        "{unavailable}"
    );

    // A new login brings it back.
    let account = bed.login_by_paste(id, "erin");
    assert_eq!(account["state"], "healthy", "{account}");
    assert!(account["last_error"].is_null(), "{account}");
    bed.provider.assert_active(
        str_of(&bed.admin().lease(PROVIDER, None), "access_token"),
        "erin",
    );
}

/// One client looping `next` → `report unauthorized` (with a slow token
/// endpoint, as when it drove 183 grants in 10 s): reports on a token that
/// was just issued, or already replaced, coalesce.
#[test]
fn an_unauthorized_loop_from_one_client_drives_at_most_a_handful_of_grants() {
    let bed = Bed::start(Settings::default());
    let id = bed.logged_in(&["gina"])[0];
    let client = bed.client("looping-worker");
    bed.provider.token_delay(400);
    let started = std::time::Instant::now();
    let (mut reports, mut unavailable) = (0, 0);
    while started.elapsed() < secs(6) {
        let answer = client.next(PROVIDER, None);
        if answer.status == 503 {
            unavailable += 1;
            continue;
        }
        client.report(&answer.ok(), "unauthorized", None);
        reports += 1;
    }
    bed.provider.token_delay(0);
    let grants = bed.provider.refresh_grants("gina");
    eprintln!("{reports} reports, {unavailable} answers 503, {grants} refresh grants");
    assert!(reports >= 50, "the loop hardly ran: {reports} reports");
    assert!(
        grants <= 3,
        "{grants} refresh grants from {reports} reports in 6 s"
    );
    let stats = bed.provider.stats();
    assert_eq!(stats["grants_revoked"], 0, "{stats}");
    assert_eq!(stats["refresh_failures"], json!({}), "{stats}");
    let account = bed.wait_state(id, "healthy", secs(10));
    assert!(account["last_error"].is_null(), "{account}");
}

#[test]
fn a_client_over_its_rate_is_answered_429_with_retry_after() {
    let bed = Bed::start(Settings {
        client_rate: Some("5/s"),
        ..Settings::default()
    });
    bed.logged_in(&["hank"]);
    let client = bed.client("eager");
    let leases: Vec<Value> = (0..5).map(|_| client.lease(PROVIDER, None)).collect();
    let over = client.next(PROVIDER, None);
    let body = over.expect_error(429, "rate_limited");
    assert_eq!(over.header("retry-after"), Some("1"), "{body}");
    assert_eq!(body["retry_after_s"], 1, "{body}");
    assert!(
        str_of(&body, "detail").contains("rotation.client_rate"),
        "{body}"
    );
    let report = client.post(
        "/credential/report",
        json!({"lease_id": leases[0]["lease_id"], "outcome": "ok"}),
    );
    report.expect_error(429, "rate_limited");
    // Per client key: another key, and the admin token, are not held back.
    bed.client("patient").lease(PROVIDER, None);
    bed.admin().lease(PROVIDER, None);
    // The bucket refills: five a second.
    thread::sleep(std::time::Duration::from_millis(1100));
    client.lease(PROVIDER, None);
    client.report(&leases[0], "ok", None);
}

/// The token endpoint keeps failing past the token's expiry: the stored
/// state still says active, but the API and `/metrics` say `expired`, as
/// `/credential/next` answers 503.
#[test]
fn an_account_past_its_token_expiry_shows_expired_everywhere() {
    let bed = Bed::start(Settings::short_tokens());
    let id = bed.logged_in(&["iris"])[0];
    let expires = time_of(&bed.account(id), "expires_at");
    bed.provider.token_fail(1000, 503);
    let account = bed.wait_state(id, "expired", secs(15));
    assert!(Utc::now() >= expires, "{account}");
    assert!(
        str_of(&account["last_error"], "message").contains("will retry"),
        "{account}"
    );
    assert_eq!(
        bed.metric("relogin_farm_accounts{provider=\"demo\",state=\"expired\"}"),
        1.0
    );
    bed.admin()
        .next(PROVIDER, None)
        .expect_error(503, "no_account_available");
    bed.provider.token_fail(0, 503);
    bed.wait_state(id, "healthy", secs(15));
}
