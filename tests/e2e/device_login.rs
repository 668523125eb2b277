//! Device-flow logins (`login = "device"`, RFC 8628) through the real
//! binary against the provider emulator: the login answer carries the user
//! code and the verification URI, the farm polls by itself at the interval
//! (slower after `slow_down`), and a person approving the code at the
//! emulator's page logs the account in; a refusal is a failed login.

use std::time::Duration;

use crate::support::farm::toml_string;
use crate::support::quirk_provider::{QuirkProvider, Quirks, Seen};
use crate::support::{event_kinds, free_port, secs, str_of, Bed, Settings, Value};

const DEVICE: &str = "devicey";

fn device_bed(quirks: Quirks) -> (Bed, QuirkProvider) {
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
    (Bed::start(Settings::default().with_toml(&block)), emulator)
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
