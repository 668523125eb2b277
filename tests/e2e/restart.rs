//! Restarts: a graceful one keeps everything, `kill -9` in the middle of a
//! refresh leaves the account recoverable, a wrong store key is refused.

use std::thread;
use std::time::Duration;

use reqwest::Method;

use crate::support::{
    int_of, json, poll, random_store_key, secs, str_of, time_of, Bed, Settings, Value, PROVIDER,
};

/// The accounts as `GET /api/accounts` lists them, by id.
fn accounts(bed: &Bed) -> Vec<Value> {
    let mut all = bed
        .admin()
        .get("/api/accounts")
        .ok()
        .as_array()
        .cloned()
        .expect("an array of accounts");
    all.sort_by_key(|a| int_of(a, "id"));
    all
}

#[test]
fn restart_keeps_accounts_clients_and_tokens() {
    let mut bed = Bed::start(Settings::default());
    let users = ["alice", "bob"];
    let ids = bed.logged_in(&users);
    let (_, key) = bed.new_client("worker");
    let tokens: Vec<String> = (0..2)
        .map(|_| str_of(&bed.api(Some(&key)).lease(PROVIDER, None), "access_token").to_string())
        .collect();
    let before = accounts(&bed);

    bed.restart();

    let after = accounts(&bed);
    assert_eq!(
        after.len(),
        before.len(),
        "before: {before:?}\nafter: {after:?}"
    );
    for (b, a) in before.iter().zip(&after) {
        for field in [
            "id",
            "label",
            "provider",
            "priority",
            "enabled",
            "generation",
            "has_refresh_token",
        ] {
            assert_eq!(
                a[field], b[field],
                "{field} changed across the restart: {b} -> {a}"
            );
        }
        assert_same_ms(a, b, "expires_at");
        // stored at shutdown, and in the lease log
        assert_same_ms(a, b, "last_used_at");
        assert_eq!(a["state"], "healthy", "{a}");
        assert_eq!(a["leases_24h"], 1, "lease history lost: {a}");
    }
    // The client key still works and the stored tokens are served as they were.
    let client = bed.api(Some(&key));
    for _ in &users {
        let lease = client.lease(PROVIDER, None);
        let token = str_of(&lease, "access_token");
        assert!(
            tokens.contains(&token.to_string()),
            "after the restart a new token is served: {lease}"
        );
        bed.provider.assert_active(token, str_of(&lease, "label"));
    }
    for user in users {
        assert_eq!(
            bed.provider.code_grants(user),
            1,
            "{user} was logged in again"
        );
    }
    // The stored refresh token is usable.
    let refreshed = bed
        .admin()
        .post(&format!("/api/accounts/{}/refresh", ids[0]), json!({}))
        .ok();
    assert_eq!(refreshed["refresh"], "refreshed", "{refreshed}");
    assert_eq!(bed.provider.refresh_grants("alice"), 1);

    // When each account was last used is kept too.
    for (b, a) in before.iter().zip(&after) {
        assert!(b["last_used_at"].is_string(), "{b}");
        assert!(
            a["last_used_at"].is_string(),
            "last_used_at lost across the restart: {b} -> {a}"
        );
        assert_same_ms(a, b, "last_used_at");
    }
}

/// Asserts that the `field` of `after` is `before`'s time (the store keeps
/// milliseconds).
fn assert_same_ms(after: &Value, before: &Value, field: &str) {
    let (a, b) = (time_of(after, field), time_of(before, field));
    assert_eq!(
        a.timestamp_millis(),
        b.timestamp_millis(),
        "{field} changed across the restart: {before} -> {after}"
    );
}

#[test]
fn kill_9_during_a_refresh_leaves_the_account_recoverable() {
    let mut bed = Bed::start(Settings::default());
    let id = bed.logged_in(&["frank"])[0];
    let generation = int_of(&bed.account(id), "generation");

    bed.provider.token_delay(2000);
    let admin = bed.admin();
    let path = format!("/api/accounts/{id}/refresh");
    let in_flight =
        thread::spawn(move || admin.try_send(Method::POST, &path, Some(b"{}".to_vec())));
    bed.wait_state(id, "refreshing", secs(10));
    thread::sleep(Duration::from_millis(500)); // the grant request reaches the provider
    bed.kill9();
    let answer = in_flight.join().expect("the refresh request thread");
    assert!(
        answer.is_err(),
        "the killed farm answered the refresh: {answer:?}"
    );

    // The provider completes the orphaned grant (unless the request never
    // left the farm): the refresh token the farm stored is spent, and the
    // new one died with the process. Restart only once that is settled.
    let orphan = poll(secs(5), || match bed.provider.refresh_grants("frank") {
        1 => Ok(()),
        n => Err(format!("{n} refresh grants")),
    });
    eprintln!("the orphaned grant: {orphan:?}");
    bed.provider.token_delay(0);
    bed.start_farm();

    // The interrupted refresh is retried at start: it either succeeds (new
    // generation) or finds the grant dead (needs_relogin). Never gone.
    let settled = bed.wait_account("the interrupted refresh to be retried", id, secs(15), |a| {
        a["state"] == "needs_relogin"
            || (a["state"] == "healthy" && a["generation"].as_i64() > Some(generation))
    });
    eprintln!("after kill -9 and restart: {settled}");
    assert_eq!(accounts(&bed).len(), 1, "the account is gone");
    if settled["state"] == "needs_relogin" {
        assert!(settled["last_error"]["message"].is_string(), "{settled}");
        bed.admin()
            .next(PROVIDER, None)
            .expect_error(503, "no_account_available");
    } else {
        bed.provider.assert_active(
            str_of(&bed.admin().lease(PROVIDER, None), "access_token"),
            "frank",
        );
    }

    let account = bed.login_by_paste(id, "frank");
    assert_eq!(account["state"], "healthy", "{account}");
    bed.provider.assert_active(
        str_of(&bed.admin().lease(PROVIDER, None), "access_token"),
        "frank",
    );
}

#[test]
fn a_wrong_store_key_is_refused_at_start() {
    let mut bed = Bed::start(Settings::default());
    let id = bed.logged_in(&["gina"])[0];
    assert!(bed.stop().success());

    let wrong_key = random_store_key();
    let failure = match bed.try_start_farm(Some(&wrong_key)) {
        Ok(()) => panic!("the farm started with the wrong store key"),
        Err(f) => f,
    };
    let status = failure
        .status
        .unwrap_or_else(|| panic!("the farm hung instead of refusing:\n{}", failure.log));
    assert!(!status.success(), "exit status {status}");
    let message = failure.log.to_lowercase();
    assert!(
        message.contains("store key") && message.contains("does not match"),
        "no clear message about the store key:\n{}",
        failure.log
    );
    for secret in [&wrong_key, &bed.store_key] {
        assert!(
            !failure.log.contains(secret.as_str()),
            "the log shows a store key:\n{}",
            failure.log
        );
    }

    // With the right key everything is still there.
    bed.start_farm();
    assert_eq!(bed.account(id)["state"], "healthy");
    bed.provider.assert_active(
        str_of(&bed.admin().lease(PROVIDER, None), "access_token"),
        "gina",
    );
}
