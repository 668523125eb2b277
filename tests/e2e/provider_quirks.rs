//! Token endpoints that bend the textbook, through the real binary against
//! the provider emulator (`support::quirk_provider`), configured with
//! manual `authorize_url`/`token_url`: rate limits and challenge pages are
//! waited out (never `needs_relogin`), a provider's own "dead" answer is
//! one, a JWT without `expires_in` lives until its `exp`, and a refresh
//! answer without a refresh token keeps the old one working.

use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{DateTime, Utc};

use crate::support::farm::toml_string;
use crate::support::quirk_provider::{QuirkProvider, Quirks, Seen};
use crate::support::{
    event_kinds, free_port, int_of, json, secs, str_of, time_of, Bed, Settings, Value,
};

/// The emulated provider's name in `farm.toml`.
pub(crate) const QUIRKY: &str = "quirky";

/// A bed whose farm also has the provider `quirky`, the emulator with `quirks`.
fn quirky_bed(quirks: Quirks) -> (Bed, QuirkProvider) {
    quirky_bed_with(quirks, |_| String::new())
}

/// [`quirky_bed`] with more keys in the provider's block (`extra` gets the
/// emulator, for its URLs).
pub(crate) fn quirky_bed_with(
    quirks: Quirks,
    extra: impl FnOnce(&QuirkProvider) -> String,
) -> (Bed, QuirkProvider) {
    let emulator = QuirkProvider::start(quirks);
    let extra = extra(&emulator);
    let mut keys = String::new();
    if !extra.contains("token_url") {
        keys = format!("token_url = {}\n", toml_string(&emulator.token_url()));
    }
    keys.push_str(&extra);
    let block = format!(
        "[[provider]]\nname = \"{QUIRKY}\"\nauthorize_url = {}\n\
         client_id = \"quirky-client\"\nredirect_uri = \"http://127.0.0.1:{}/callback\"\n\
         scopes = [\"openid\", \"offline_access\"]\n{keys}",
        toml_string(&emulator.authorize_url()),
        free_port()
    );
    let bed = Bed::start(Settings::default().with_toml(&block));
    (bed, emulator)
}

/// Adds an account of `quirky`, starts its login and signs `user` in on
/// the emulator's form; returns the account id and what the form's
/// submission answered (status, and the redirect URL or the page).
pub(crate) fn signed_in(bed: &Bed, user: &str) -> (i64, u16, String) {
    let (id, started) = bed.add_and_start_login(QUIRKY, user);
    let (status, answer) = QuirkProvider::sign_in(str_of(&started, "authorize_url"), user);
    (id, status, answer)
}

/// Adds an account of `quirky` and logs `user` in, pasting the redirect
/// URL; returns the account id.
pub(crate) fn logged_in(bed: &Bed, user: &str) -> i64 {
    let (id, status, redirect_url) = signed_in(bed, user);
    assert_eq!(status, 302, "{redirect_url}");
    pasted(bed, id, &redirect_url);
    id
}

/// Finishes the account's login with the redirect URL, which must work.
pub(crate) fn pasted(bed: &Bed, id: i64, redirect_url: &str) -> Value {
    let account = bed
        .admin()
        .post(
            &format!("/api/accounts/{id}/login/complete"),
            json!({"redirect_url": redirect_url}),
        )
        .ok();
    assert_eq!(account["state"], "healthy", "{account}");
    account
}

pub(crate) fn refreshes(emulator: &QuirkProvider) -> Vec<Seen> {
    emulator
        .seen()
        .into_iter()
        .filter(|s| s.grant_type() == Some("refresh_token"))
        .collect()
}

/// Waits until the account's generation passed `generation`.
pub(crate) fn refreshed_past(bed: &Bed, id: i64, generation: i64, within: Duration) -> Value {
    bed.wait_account("a refresh that went through", id, within, |a| {
        a["generation"].as_i64() > Some(generation)
    })
}

pub(crate) fn never_needed_a_relogin(bed: &Bed) {
    let events = bed.events_since(0);
    let kinds = event_kinds(&events);
    assert!(!kinds.contains(&"needs_relogin"), "{kinds:?}");
}

#[test]
fn rate_limited_refreshes_wait_as_told_then_succeed_without_a_relogin() {
    let (bed, emulator) = quirky_bed(Quirks {
        access_ttl: 4,
        ..Quirks::default()
    });
    let id = logged_in(&bed, "alice");
    let generation = int_of(&bed.account(id), "generation");
    // Two 429s saying "2 s", where the farm's own backoff would be 300 ms.
    emulator.set(|q| {
        q.rate_limit = 2;
        q.retry_after = Some("2".into());
    });
    let account = refreshed_past(&bed, id, generation, secs(20));
    assert_eq!(account["state"], "healthy", "{account}");
    let seen = refreshes(&emulator);
    let statuses: Vec<u16> = seen.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [429, 429, 200]);
    for pair in seen.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(1900), "retried after {gap:?}");
    }
    // The same refresh token each time: nothing was spent on a 429.
    let presented: Vec<&str> = seen
        .iter()
        .map(|s| s.param("refresh_token").unwrap())
        .collect();
    assert!(
        presented.iter().all(|t| *t == presented[0]),
        "{presented:?}"
    );

    // Retry-After-Ms comes first (1.5 s, not the 30 s of Retry-After).
    let generation = int_of(&account, "generation");
    emulator.set(|q| {
        q.rate_limit = 1;
        q.retry_after = Some("30".into());
        q.retry_after_ms = Some(1500);
    });
    refreshed_past(&bed, id, generation, secs(15));
    let seen = refreshes(&emulator);
    let last = &seen[seen.len() - 2..];
    assert_eq!((last[0].status, last[1].status), (429, 200));
    let gap = last[1].at - last[0].at;
    assert!(
        (Duration::from_millis(1400)..Duration::from_secs(10)).contains(&gap),
        "retried after {gap:?}"
    );
    never_needed_a_relogin(&bed);
}

#[test]
fn a_challenge_page_is_transient() {
    let (bed, emulator) = quirky_bed(Quirks {
        access_ttl: 4,
        ..Quirks::default()
    });
    let id = logged_in(&bed, "alice");
    let generation = int_of(&bed.account(id), "generation");
    emulator.set(|q| q.challenge = 2);
    let failed = bed.wait_account("a failed refresh", id, secs(10), |a| {
        a["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("403"))
    });
    assert_ne!(failed["state"], "needs_relogin", "{failed}");
    let account = refreshed_past(&bed, id, generation, secs(15));
    assert_eq!(account["state"], "healthy", "{account}");
    let statuses: Vec<u16> = refreshes(&emulator).iter().map(|s| s.status).collect();
    assert_eq!(statuses, [403, 403, 200]);
    never_needed_a_relogin(&bed);
}

#[test]
fn a_token_answer_over_a_mebibyte_is_not_read_and_retried() {
    // Non-rotating: an answer not read does not spend the refresh token.
    let (bed, emulator) = quirky_bed(Quirks {
        access_ttl: 4,
        static_refresh_tokens: true,
        ..Quirks::default()
    });
    let id = logged_in(&bed, "alice");
    let generation = int_of(&bed.account(id), "generation");
    emulator.set(|q| q.pad_bytes = 1 << 20);
    let failed = bed.wait_account("a refused answer", id, secs(10), |a| {
        a["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("over 1048576 bytes"))
    });
    assert_eq!(failed["generation"], generation, "{failed}");
    // Just under the limit is read.
    emulator.set(|q| q.pad_bytes = 1 << 19);
    let account = refreshed_past(&bed, id, generation, secs(10));
    assert_eq!(account["state"], "healthy", "{account}");
    never_needed_a_relogin(&bed);
}

#[test]
fn a_refresh_token_reused_answer_needs_a_relogin() {
    let (bed, emulator) = quirky_bed(Quirks {
        access_ttl: 4,
        ..Quirks::default()
    });
    let id = logged_in(&bed, "alice");
    emulator.set(|q| q.dead = Some("refresh_token_reused".into()));
    let account = bed.wait_state(id, "needs_relogin", secs(10));
    let message = str_of(&account["last_error"], "message");
    assert!(message.contains("refresh_token_reused"), "{message}");
    let statuses: Vec<u16> = refreshes(&emulator).iter().map(|s| s.status).collect();
    assert_eq!(statuses, [401], "one answer is enough, no retries");
    assert_eq!(account["has_refresh_token"], true, "{account}");
}

/// The `exp` claim of a JWT.
fn jwt_exp(token: &str) -> DateTime<Utc> {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: Value = serde_json::from_slice(&bytes).unwrap();
    DateTime::from_timestamp(claims["exp"].as_i64().unwrap(), 0).unwrap()
}

#[test]
fn a_jwt_without_expires_in_expires_at_its_exp() {
    // Ten minutes: not the hour a missing lifetime would default to.
    let (bed, _emulator) = quirky_bed(Quirks {
        access_ttl: 600,
        omit_expires_in: true,
        ..Quirks::default()
    });
    let id = logged_in(&bed, "alice");
    let lease = bed.admin().lease(QUIRKY, None);
    let exp = jwt_exp(str_of(&lease, "access_token"));
    assert!(exp > Utc::now() + chrono::Duration::minutes(9), "{exp}");
    assert_eq!(time_of(&lease, "expires_at"), exp, "{lease}");
    assert_eq!(time_of(&bed.account(id), "expires_at"), exp);
}

#[test]
fn refreshes_without_a_new_refresh_token_keep_working() {
    let (bed, emulator) = quirky_bed(Quirks {
        access_ttl: 3,
        omit_refresh_token: true,
        ..Quirks::default()
    });
    let id = logged_in(&bed, "alice");
    let generation = int_of(&bed.account(id), "generation");
    let started = Instant::now();
    let account = bed.wait_account("two refreshes", id, secs(15), |a| {
        a["generation"].as_i64() >= Some(generation + 2)
    });
    assert!(started.elapsed() < secs(15));
    assert_eq!(account["state"], "healthy", "{account}");
    assert_eq!(account["has_refresh_token"], true, "{account}");
    let seen = refreshes(&emulator);
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen.iter().all(|s| s.status == 200), "{seen:?}");
    let first = seen[0].param("refresh_token").unwrap();
    assert!(
        seen.iter().all(|s| s.param("refresh_token") == Some(first)),
        "the one refresh token, each time"
    );
    assert!(emulator.refresh_grants("alice") >= 2);
    let lease = bed.admin().lease(QUIRKY, None);
    let info = emulator.introspect(str_of(&lease, "access_token"));
    assert_eq!(
        (info["active"].clone(), info["username"].clone()),
        (json!(true), json!("alice")),
        "{info}"
    );
    never_needed_a_relogin(&bed);
}

/// The `code#state` a paste page shows.
fn shown_code(page: &str) -> String {
    let after = page
        .split("<code id=\"code\">")
        .nth(1)
        .unwrap_or_else(|| panic!("no code on {page}"));
    after.split("</code>").next().unwrap().replace("&amp;", "&")
}

#[test]
fn a_code_shown_to_paste_finishes_the_login_with_its_state_checked() {
    let (bed, emulator) = quirky_bed(Quirks {
        paste_page: true,
        ..Quirks::default()
    });
    let admin = bed.admin();
    let (id, status, page) = signed_in(&bed, "alice");
    assert_eq!(status, 200, "{page}");
    let shown = shown_code(&page);
    let (code, _state) = shown.split_once('#').expect("code#state");
    let complete = format!("/api/accounts/{id}/login/complete");
    // Another login's state: refused, and this login stays pending.
    let wrong = admin.post(&complete, json!({"code": format!("{code}#not-the-state")}));
    assert_eq!(wrong.status, 409, "{}", wrong.text);
    for bad in [
        json!({}),
        json!({"code": shown, "redirect_url": "http://x/"}),
    ] {
        let resp = admin.post(&complete, bad);
        assert_eq!(resp.status, 400, "{}", resp.text);
        assert!(resp.json()["error"].is_string(), "{}", resp.text);
    }
    let account = admin.post(&complete, json!({"code": shown})).ok();
    assert_eq!(account["state"], "healthy", "{account}");
    let lease = admin.lease(QUIRKY, None);
    assert_eq!(
        emulator.introspect(str_of(&lease, "access_token"))["username"],
        "alice"
    );

    // A bare code (some pages show no state): PKCE binds it to the login.
    let (bob, _, page) = signed_in(&bed, "bob");
    let shown = shown_code(&page);
    let bare = shown.split('#').next().unwrap();
    // A mistyped code fails at the provider (a failed login, as a bad
    // redirect URL's code); the login stays pending for the right one.
    let complete = format!("/api/accounts/{bob}/login/complete");
    let mistyped = admin.post(&complete, json!({"code": "mistyped"}));
    assert_eq!(mistyped.status, 502, "{}", mistyped.text);
    assert_eq!(
        mistyped.json()["error"],
        "login_failed",
        "{}",
        mistyped.text
    );
    let account = admin
        .post(
            &format!("/api/accounts/{bob}/login/complete"),
            json!({"code": bare}),
        )
        .ok();
    assert_eq!(account["state"], "healthy", "{account}");
}

/// An admin who hangs up during `POST /api/accounts/{id}/refresh` does not
/// cancel the refresh: the provider has already spent the old refresh token
/// (rotation with reuse detection) when its answer comes, and a cancelled
/// refresh would drop the new one — the account would need a relogin.
#[test]
fn a_client_hanging_up_mid_refresh_loses_no_rotated_token() {
    let (bed, emulator) = quirky_bed(Quirks::default());
    let id = logged_in(&bed, "alice");
    let generation = int_of(&bed.account(id), "generation");
    emulator.set(|q| q.token_delay_ms = 1500);
    let impatient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let hung_up = impatient
        .post(format!("{}/api/accounts/{id}/refresh", bed.url()))
        .bearer_auth(&bed.admin_token)
        .send();
    assert!(hung_up.is_err(), "the client was to give up first");
    let account = refreshed_past(&bed, id, generation, secs(10));
    assert_eq!(account["state"], "healthy", "{account}");
    emulator.set(|q| q.token_delay_ms = 0);
    // The rotated refresh token was kept: the next refresh is granted.
    let refreshed = bed
        .admin()
        .post(&format!("/api/accounts/{id}/refresh"), json!({}))
        .ok();
    assert_eq!(refreshed["state"], "healthy", "{refreshed}");
    assert_eq!(refreshed["refresh"], "refreshed", "{refreshed}");
    assert!(refreshes(&emulator).iter().all(|s| s.status == 200));
    let lease = bed.admin().lease(QUIRKY, None);
    let info = emulator.introspect(str_of(&lease, "access_token"));
    assert_eq!(info["active"], true, "{info}");
    never_needed_a_relogin(&bed);
}
