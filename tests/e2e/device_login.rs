//! Device-flow logins (`login = "device"`, RFC 8628) through the real
//! binary against the provider emulator: the login answer carries the user
//! code and the verification URI, the farm polls by itself at the interval
//! (slower after `slow_down`), and a person approving the code at the
//! emulator's page logs the account in; a refusal is a failed login. The
//! farm's browser relogs a device-flow account by its script typing
//! `${user_code}` at `${verification_uri}`; a wrong code needs a person.

use std::time::Duration;

use crate::relogin::{put_script, set_secret};
use crate::support::bed::BrowserSettings;
use crate::support::farm::toml_string;
use crate::support::quirk_provider::{QuirkProvider, Quirks, Seen};
use crate::support::{
    event_kinds, free_port, int_of, json, secs, str_of, wait_for, Bed, Settings, Value,
};

const DEVICE: &str = "devicey";

fn device_bed(quirks: Quirks) -> (Bed, QuirkProvider) {
    device_bed_with(quirks, None)
}

fn device_bed_with(quirks: Quirks, browser: Option<BrowserSettings>) -> (Bed, QuirkProvider) {
    let emulator = QuirkProvider::start(quirks);
    let block = format!(
        "[[provider]]\nname = \"{DEVICE}\"\nlogin = \"device\"\n\
         device_authorization_url = {}\ntoken_url = {}\n\
         client_id = \"device-client\"\nredirect_uri = \"http://127.0.0.1:{}/unused\"\n\
         scopes = [\"openid\", \"offline_access\"]\n",
        toml_string(&emulator.device_authorization_url()),
        toml_string(&emulator.token_url()),
        free_port()
    );
    let mut settings = Settings::default().with_toml(&block);
    if let Some(browser) = browser {
        settings = settings.with_browser(browser);
    }
    (Bed::start(settings), emulator)
}

/// Enters `user_code` at the emulator's device page as `user` (or denies).
fn decide(verification_uri: &str, user_code: &str, user: &str, deny: bool) -> String {
    let mut form = vec![
        ("user_code", user_code.to_owned()),
        ("username", user.to_owned()),
        ("password", format!("{user}-password")),
    ];
    if deny {
        form.push(("action", "deny".into()));
    }
    reqwest::blocking::Client::new()
        .post(verification_uri)
        .form(&form)
        .send()
        .and_then(|r| r.text())
        .expect("the device page answers")
}

fn polls(emulator: &QuirkProvider) -> Vec<Seen> {
    emulator
        .seen()
        .into_iter()
        .filter(|s| s.grant_type() == Some("urn:ietf:params:oauth:grant-type:device_code"))
        .collect()
}

fn start(bed: &Bed, label: &str) -> (i64, Value) {
    bed.add_and_start_login(DEVICE, label)
}

#[test]
fn a_device_login_is_polled_until_the_person_enters_the_code() {
    let (bed, emulator) = device_bed(Quirks {
        device_interval: 1,
        ..Quirks::default()
    });
    let (id, started) = start(&bed, "alice");
    let user_code = str_of(&started, "user_code");
    let verification_uri = str_of(&started, "verification_uri");
    assert!(verification_uri.ends_with("/device"), "{started}");
    assert_eq!(started["interval"], 1, "{started}");
    assert!(started.get("authorize_url").is_none(), "{started}");
    // The device authorization asked for the configured client and scopes.
    let asked = &emulator.seen()[0];
    assert_eq!(asked.path, "/device/code");
    assert_eq!(asked.param("client_id"), Some("device-client"));
    assert_eq!(asked.param("scope"), Some("openid offline_access"));

    // The farm polls while nobody has entered the code.
    std::thread::sleep(Duration::from_millis(3500));
    let pending = polls(&emulator);
    assert!(!pending.is_empty(), "no poll yet");
    assert_eq!(bed.account(id)["state"], "pending_login");
    let page = decide(verification_uri, user_code, "alice", false);
    assert!(page.contains("Device connected"), "{page}");
    let account = bed.wait_state(id, "healthy", secs(20));
    assert_eq!(account["has_refresh_token"], true, "{account}");
    let lease = bed.admin().lease(DEVICE, None);
    assert_eq!(
        emulator.introspect(str_of(&lease, "access_token"))["username"],
        "alice"
    );

    // Never faster than the interval (the emulator would answer slow_down).
    let seen = polls(&emulator);
    for pair in seen.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(900), "polled after {gap:?}");
    }
    assert_eq!(seen.last().unwrap().status, 200);
    let events = bed.events_since(0);
    let kinds = event_kinds(&events);
    assert!(kinds.contains(&"login_completed"), "{kinds:?}");
}

#[test]
fn a_refused_device_login_fails_and_stops_polling() {
    let (bed, emulator) = device_bed(Quirks {
        device_interval: 1,
        ..Quirks::default()
    });
    let (id, started) = start(&bed, "bob");
    decide(
        str_of(&started, "verification_uri"),
        str_of(&started, "user_code"),
        "bob",
        true,
    );
    let deadline = std::time::Instant::now() + secs(15);
    while !event_kinds(&bed.events_since(0)).contains(&"login_failed") {
        assert!(
            std::time::Instant::now() < deadline,
            "no login_failed event"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let polled = polls(&emulator).len();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(polls(&emulator).len(), polled, "polling stopped");
    assert_eq!(bed.account(id)["state"], "pending_login");
}

/// A device-flow provider's login script: the verification page, the code
/// the farm got (or `code` as typed), the user's sign-in, approve.
fn device_script(code: &str) -> String {
    format!(
        r##"provider = "{DEVICE}"
[[step]]
goto = "${{verification_uri}}"
[[step]]
fill = "#user_code"
value = "{code}"
[[step]]
fill = "#username"
value = "${{secret:username}}"
[[step]]
fill = "#password"
value = "${{secret:password}}"
[[step]]
click = "#submit"
"##
    )
}

/// A device-flow bed (polls every second) with the farm's browser, and an
/// account for alice, not logged in.
fn device_account() -> (Bed, QuirkProvider, i64) {
    device_account_with(BrowserSettings::default())
}

fn device_account_with(browser: BrowserSettings) -> (Bed, QuirkProvider, i64) {
    let (bed, emulator) = device_bed_with(
        Quirks {
            device_interval: 1,
            ..Quirks::default()
        },
        Some(browser),
    );
    let id = int_of(
        &bed.admin()
            .post(
                "/api/accounts",
                json!({"provider": DEVICE, "label": "alice", "priority": 0}),
            )
            .expect(201),
        "id",
    );
    (bed, emulator, id)
}

/// A device-flow bed with the farm's browser; alice's account, logged in
/// by its script (`${user_code}` typed at `${verification_uri}`).
fn scripted_device_account() -> (Bed, QuirkProvider, i64) {
    scripted_device_account_with(BrowserSettings::default())
}

fn scripted_device_account_with(browser: BrowserSettings) -> (Bed, QuirkProvider, i64) {
    let (bed, emulator, id) = device_account_with(browser);
    set_secret(&bed, id, "username", "alice");
    set_secret(&bed, id, "password", "alice-password");
    // A code-flow script (`${authorize_url}`) could never run here.
    let code_flow = put_script(
        &bed,
        id,
        &format!("provider = \"{DEVICE}\"\n[[step]]\ngoto = \"${{authorize_url}}\"\n"),
    )
    .expect_error(400, "invalid_script");
    assert!(
        str_of(&code_flow, "detail")
            .starts_with("invalid login script: line 2: ${authorize_url} is not set in this login"),
        "{code_flow}"
    );
    put_script(&bed, id, &device_script("${user_code}")).ok();
    let account = bed.wait_state(id, "healthy", secs(60));
    assert_eq!(account["identity"]["value"], "sub-alice", "{account}");
    (bed, emulator, id)
}

fn lease_token(bed: &Bed) -> String {
    str_of(&bed.admin().lease(DEVICE, None), "access_token").to_owned()
}

/// The refresh token dies: the refresh says so, the account needs a relogin.
fn kill_refresh_token(bed: &Bed, emulator: &QuirkProvider, id: i64) {
    emulator.set(|q| q.dead = Some("invalid_grant".into()));
    bed.admin()
        .post(&format!("/api/accounts/{id}/refresh"), json!({}));
    emulator.set(|q| q.dead = None);
}

#[test]
fn a_dead_device_account_is_relogged_by_its_script_typing_the_user_code() {
    let (bed, emulator, id) = scripted_device_account();
    let before = bed.account(id);
    let old_token = lease_token(&bed);
    let cursor = bed.events_since(0).last().map_or(0, |e| int_of(e, "id"));
    kill_refresh_token(&bed, &emulator, id);
    // The ladder logs it in again through a new device code.
    wait_for("the device relogin", secs(60), || {
        let account = bed.account(id);
        (account["state"] == "healthy"
            && int_of(&account, "generation") > int_of(&before, "generation"))
        .then_some(account)
        .ok_or_else(|| format!("{}", bed.account(id)))
    });
    let kinds: Vec<String> = bed
        .events_since(cursor)
        .iter()
        .filter(|e| e["account_id"] == id)
        .map(|e| str_of(e, "kind").to_owned())
        .collect();
    assert!(
        kinds.iter().any(|k| k == "relogin_succeeded")
            && kinds.iter().any(|k| k == "login_completed"),
        "{kinds:?}"
    );
    // The new token is served, and it is alice's.
    let new_token = lease_token(&bed);
    assert_ne!(new_token, old_token);
    assert_eq!(emulator.introspect(&new_token)["username"], "alice");
    // Two device codes were redeemed: the first login and the relogin.
    let redeemed = polls(&emulator).iter().filter(|s| s.status == 200).count();
    assert_eq!(redeemed, 2);
}

#[test]
fn a_wrong_code_typed_by_the_script_needs_a_human_once_and_changes_nothing() {
    let (bed, emulator, id) = scripted_device_account();
    put_script(&bed, id, &device_script("WRONG-CODE")).ok();
    let cursor = bed.events_since(0).last().map_or(0, |e| int_of(e, "id"));
    let before = bed.account(id);
    kill_refresh_token(&bed, &emulator, id);
    let account = bed.wait_state(id, "needs_human", secs(60));
    let message = str_of(&account["last_error"], "message");
    assert!(
        message.starts_with("browser relogin failed: the device login did not complete (last step run: step 5 (line 13, click #submit))")
            && message.contains("polls of the provider found the login not approved")
            && message.contains("the page says: unknown code"),
        "{message}"
    );
    // Nothing changed but the state; the ladder backs off.
    assert_eq!(account["generation"], before["generation"], "{account}");
    assert_eq!(account["expires_at"], before["expires_at"], "{account}");
    std::thread::sleep(Duration::from_secs(3));
    let needs_human = bed
        .events_since(cursor)
        .into_iter()
        .filter(|e| e["kind"] == "needs_human" && e["account_id"] == id)
        .count();
    assert_eq!(needs_human, 1);
    let redeemed = polls(&emulator).iter().filter(|s| s.status == 200).count();
    assert_eq!(redeemed, 1, "only the first login's code");
}

/// The events of account `id` after event `after`.
fn events_of(bed: &Bed, id: i64, after: i64) -> Vec<Value> {
    bed.events_since(after)
        .into_iter()
        .filter(|e| e["account_id"] == id)
        .collect()
}

/// Waits for an event of `kind` of account `id` after event `after`.
fn wait_event(bed: &Bed, kind: &str, id: i64, after: i64) -> Value {
    wait_for(&format!("{kind} of account {id}"), secs(90), || {
        let events = events_of(bed, id, after);
        events
            .iter()
            .find(|e| e["kind"] == kind)
            .cloned()
            .ok_or_else(|| format!("{:?}", event_kinds(&events)))
    })
}

#[test]
fn a_device_account_s_canary_types_a_code_of_its_own_and_a_wrong_one_changes_nothing() {
    let (bed, emulator, id) = scripted_device_account_with(BrowserSettings {
        canary: "*/10 * * * * *",
        ..BrowserSettings::default()
    });
    let before = bed.account(id);
    let old_token = lease_token(&bed);
    let cursor = bed.events_since(0).last().map_or(0, |e| int_of(e, "id"));

    // A canary round logs alice in through a device code of its own.
    let passed = wait_event(&bed, "canary_passed", id, cursor);
    assert!(
        str_of(&passed, "detail").starts_with("canary login passed in ")
            && str_of(&passed, "detail").contains("(sub-alice); its tokens replaced the account's"),
        "{passed}"
    );
    let after = bed.account(id);
    assert_eq!(after["state"], "healthy", "{after}");
    assert!(
        int_of(&after, "generation") > int_of(&before, "generation"),
        "{after}"
    );
    let new_token = lease_token(&bed);
    assert_ne!(new_token, old_token);
    assert_eq!(emulator.introspect(&new_token)["username"], "alice");
    // A canary is not a relogin: the account's state never moved. (The
    // first login's `relogin_succeeded` may come after the cursor: it is
    // announced a moment after the account is healthy.)
    let events = events_of(&bed, id, cursor);
    let kinds = event_kinds(&events);
    assert!(
        !kinds.iter().any(|k| [
            "needs_relogin",
            "relogin_started",
            "relogin_failed",
            "needs_human",
            "login_started"
        ]
        .contains(k)),
        "{kinds:?}"
    );
    assert!(
        polls(&emulator).iter().filter(|s| s.status == 200).count() >= 2,
        "the first login's code and the canary's"
    );

    // A script that types a wrong code: the canary fails where the login
    // stalled, and the account keeps its state and serves its tokens.
    put_script(&bed, id, &device_script("WRONG-CODE")).ok();
    let changed = bed.events_since(0).last().map_or(0, |e| int_of(e, "id"));
    // A canary that started before the change may still pass: from the
    // first failure on, every canary types the wrong code.
    let failed = wait_event(&bed, "canary_failed", id, changed);
    let settled = bed.account(id);
    let next = wait_event(&bed, "canary_failed", id, int_of(&failed, "id"));
    assert!(
        str_of(&next, "detail")
            .starts_with("canary login failed: the device login did not complete"),
        "{next}"
    );
    assert_eq!(next["data"]["line"], 13, "{next}");
    let account = bed.account(id);
    assert_eq!(account["state"], "healthy", "{account}");
    assert_eq!(account["generation"], settled["generation"], "{account}");
    assert!(account["last_error"].is_null(), "{account}");
    let served = lease_token(&bed);
    assert_eq!(emulator.introspect(&served)["username"], "alice");
}

#[test]
fn a_takeover_of_a_device_account_starts_at_its_code_and_ends_when_the_poll_succeeds() {
    use crate::remote_browser::{auth, connect, open_session, runtime, send_json, until_text};
    let (bed, emulator, id) = device_account();
    let started = open_session(&bed, id, json!({"mode": "takeover"}));
    let session_id = str_of(&started, "session_id").to_owned();
    runtime().block_on(async {
        let mut socket = connect(&bed, &session_id).await;
        auth(&bed, &mut socket).await;
        let url = until_text(&mut socket, "url", secs(15)).await;
        assert!(str_of(&url, "url").ends_with("/device"), "{url}");
        // The code is in the page already (verification_uri_complete):
        // past it, the person signs in and approves.
        for message in [
            json!({"type": "click", "x": 5, "y": 5}),
            json!({"type": "key", "key": "Tab"}),
            json!({"type": "key", "key": "Tab"}),
            json!({"type": "type", "text": "alice"}),
            json!({"type": "key", "key": "Tab"}),
            json!({"type": "type", "text": "alice-password"}),
            json!({"type": "key", "key": "Enter"}),
        ] {
            send_json(&mut socket, message).await;
        }
        let done = until_text(&mut socket, "done", secs(30)).await;
        assert_eq!(
            (&done["account_state"], &done["detail"]),
            (&json!("healthy"), &json!("logged in")),
            "{done}"
        );
        until_text(&mut socket, "closed", secs(20)).await;
    });
    assert_eq!(emulator.introspect(&lease_token(&bed))["username"], "alice");
    assert!(
        event_kinds(&bed.events_since(0)).contains(&"login_completed"),
        "the poll stored the tokens"
    );
}

/// `view` on a device-flow account (no authorize URL) opens the root of the
/// provider's site, and starts no login.
#[test]
fn a_view_of_a_device_account_opens_the_providers_site_without_a_login() {
    use crate::remote_browser::{auth, connect, open_session, runtime, until_text};
    let (bed, _emulator, id) = device_account();
    let before = bed.events_since(0).len();
    let started = open_session(&bed, id, json!({"mode": "view"}));
    let session_id = str_of(&started, "session_id").to_owned();
    runtime().block_on(async {
        let mut socket = connect(&bed, &session_id).await;
        auth(&bed, &mut socket).await;
        let url = until_text(&mut socket, "url", secs(15)).await;
        let url = str_of(&url, "url").to_owned();
        assert!(
            url.starts_with("http://127.0.0.1:")
                && url.trim_end_matches('/').matches('/').count() == 2,
            "not the root of the provider's site: {url}"
        );
    });
    let later = bed.events_since(0);
    assert!(
        !event_kinds(&later[before..]).contains(&"login_started"),
        "a view started a login"
    );
}

/// A device authorization whose `verification_uri` is not a URL is refused
/// before any poll starts: nobody (no person, no browser) is sent there, and
/// the provider is not polled for a code nobody can enter.
#[test]
fn a_verification_uri_that_is_not_a_url_starts_no_poll() {
    let (bed, emulator) = device_bed(Quirks {
        device_interval: 1,
        verification_uri: Some("see the leaflet".into()),
        ..Quirks::default()
    });
    let id = int_of(
        &bed.admin()
            .post(
                "/api/accounts",
                json!({"provider": DEVICE, "label": "carol", "priority": 0}),
            )
            .expect(201),
        "id",
    );
    let refused = bed
        .admin()
        .post(&format!("/api/accounts/{id}/login"), json!({}));
    assert!(refused.status >= 400, "{refused:?}");
    assert!(
        refused.text.contains("verification URI") && refused.text.contains("see the leaflet"),
        "{refused:?}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(polls(&emulator).len(), 0, "a poll started");
}
