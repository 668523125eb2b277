//! The admin page (`/admin`) in real headless Chromium: `admin_page.mjs`
//! (Node, the project's playwright-core) acts like a person and reports what
//! the page showed; this test sets up the farm and checks the report
//! against the farm's state. Screenshots go to
//! `target/test-artifacts/admin/`.

use std::path::Path;
use std::time::Duration;

use crate::support::bed::BrowserSettings;
use crate::support::process::{clean_command, run_with_deadline};
use crate::support::receiver::Receiver;
use crate::support::upstream::Upstream;
use crate::support::{
    artifacts_dir, int_of, playwright_dir, repo_root, str_of, time_of, wait_for, Bed, Settings,
    Value, CHROMIUM, PROVIDER,
};

/// The whole browser session, Chromium's start included.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `script` (in tests/e2e) against the bed's farm; returns its report.
fn run_page(bed: &Bed, script: &str, env: &[(&str, String)]) -> Value {
    playwright_dir();
    let mut cmd = clean_command("node");
    cmd.arg(repo_root().join("tests/e2e").join(script))
        .current_dir(repo_root())
        .env("CHROMIUM", CHROMIUM)
        .env("FARM_URL", bed.url())
        .env("ADMIN_TOKEN", &bed.admin_token)
        .env("STEP_TIMEOUT_MS", "10000");
    for (name, value) in env {
        cmd.env(name, value);
    }
    let out = run_with_deadline(script, cmd, SCRIPT_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Option<Value> = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok());
    match report {
        Some(r) if out.status.success() && r["error"].is_null() => r,
        _ => panic!(
            "{script} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        ),
    }
}

/// Width and height of a PNG file (from its IHDR chunk).
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    (be(16), be(20))
}

#[test]
fn the_page_signs_in_shows_accounts_live_and_creates_a_working_client_key() {
    // A webhook that fails at once on the page's client key: the page shows it.
    let failing_hook = Receiver::start(503);
    // A proxied provider whose usage endpoint is polled every second.
    let upstream = Upstream::start();
    let proxy = format!(
        "[provider.proxy]\nupstream = \"{0}\"\nusage_url = \"{0}/api/oauth/usage\"\n\
         usage_schedule = \"* * * * * *\"",
        upstream.url
    );
    let bed = Bed::start(
        Settings::default()
            .with_toml(&proxy)
            .with_toml(&failing_hook.webhook_toml(&["client_created"], 1, None)),
    );
    let ids = bed.logged_in(&["ann", "bob"]);
    let (refresh_id, disable_id) = (ids[0], ids[1]);
    // A lease, so the usage page has one to show; its account's token gets
    // an answer from the usage endpoint.
    let lease = bed.admin().lease(PROVIDER, None);
    let usage_id = int_of(&lease, "account_id");
    upstream.usage_answer(
        str_of(&lease, "access_token"),
        r#"{"five_hour":{"utilization":42.0}}"#,
    );
    // A proxied request: its answer's rate-limit headers become the quota
    // of the account that served it (the admin token serves as a client key:
    // the page must be the one to make the first).
    let served = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .expect("a client")
        .post(format!("{}/proxy/{PROVIDER}/v1/messages", bed.url()))
        .header("x-api-key", &bed.admin_token)
        .body(r#"{"model":"m","max_tokens":1,"messages":[]}"#)
        .send()
        .expect("a proxied answer");
    assert_eq!(served.status(), 200);
    let quota_id: i64 = served.headers()["x-relogin-account"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("x-relogin-account");
    wait_for("the usage report", Duration::from_secs(10), || {
        let quota = &bed.account(usage_id)["quota"];
        match quota["usage"].is_object() {
            true => Ok(()),
            false => Err(format!("no usage yet: {quota}")),
        }
    });
    assert_eq!(
        bed.admin().get("/api/clients").ok(),
        serde_json::json!([]),
        "no client key before the page makes one"
    );
    let grants_before = bed.provider.refresh_grants("ann");
    let artifacts = artifacts_dir("admin");

    let page = run_page(
        &bed,
        "admin_page.mjs",
        &[
            ("REFRESH_ID", refresh_id.to_string()),
            ("DISABLE_ID", disable_id.to_string()),
            ("CLIENT_NAME", "made-in-the-page".to_string()),
            ("ARTIFACTS", artifacts.display().to_string()),
        ],
    );

    // A wrong token is refused and nothing is kept.
    let refused = &page["refused"];
    assert_eq!(refused["message"], "token refused", "{page}");
    assert_eq!(
        (&refused["tabs_hidden"], &refused["stored"]),
        (&Value::Bool(true), &Value::from(0)),
        "{page}"
    );
    let refused_errors = page["console"]["refused"]
        .as_array()
        .expect("console messages");
    assert!(
        refused_errors
            .iter()
            .all(|m| m.as_str().is_some_and(|m| m.contains("401"))),
        "besides the 401: {page}"
    );

    // Signed in: the token is in session storage, never in the URL.
    let signed_in = &page["signed_in"];
    assert_eq!(signed_in["token_in_url"], false, "{page}");
    assert_eq!(signed_in["token_in_session_storage"], true, "{page}");
    assert_eq!(signed_in["signin_hidden"], true, "{page}");

    // The seeded accounts, as the farm has them.
    let mut listed: Vec<(i64, String, String)> = page["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .map(|a| {
            (
                int_of(a, "id"),
                str_of(a, "label").to_string(),
                str_of(a, "state").to_string(),
            )
        })
        .collect();
    listed.sort();
    let expected: Vec<(i64, String, String)> = ids
        .iter()
        .zip(["ann", "bob"])
        .map(|(id, label)| (*id, label.to_string(), "healthy".to_string()))
        .collect();
    assert_eq!(listed, expected, "{page}");

    // The quota column: the served account's 5-hour window from the
    // upstream's headers (25 % used, a countdown to its reset), and the
    // usage endpoint's answer on the account it was polled for.
    let quota_of = |id: i64| {
        page["quota"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("no quota cell for account {id}: {page}"))
    };
    let served_quota = quota_of(quota_id);
    let window = &served_quota["windows"][0];
    assert_eq!(
        (&window["name"], &window["used"], &window["text"]),
        (
            &Value::from("unified 5h"),
            &Value::from("0.25"),
            &Value::from("25% used")
        ),
        "{page}"
    );
    assert!(
        str_of(window, "reset").contains('m'),
        "no countdown to the reset: {page}"
    );
    let polled = quota_of(usage_id);
    let answer: Value = serde_json::from_str(str_of(&polled, "usage"))
        .unwrap_or_else(|e| panic!("the usage shown is not the JSON answer ({e}): {page}"));
    assert_eq!(answer["five_hour"]["utilization"], 42.0, "{page}");
    upstream.assert_never_saw(&bed.admin_token);

    // "Refresh now": one refresh at the provider; its refresh_ok event came
    // in through the event stream and the row shows the new expiry.
    let refresh = &page["refresh"];
    assert_eq!(
        bed.provider.refresh_grants("ann"),
        grants_before + 1,
        "{page}"
    );
    let events = bed.admin().get("/api/events?since=0").ok();
    let event = events
        .as_array()
        .and_then(|all| all.iter().find(|e| e["id"] == refresh["event_id"]));
    let event = event.unwrap_or_else(|| {
        panic!(
            "the page's refresh_ok event {} is not in {events}",
            refresh["event_id"]
        )
    });
    assert_eq!(
        (&event["kind"], &event["account_id"]),
        (&Value::from("refresh_ok"), &Value::from(refresh_id)),
        "{event}"
    );
    assert!(
        time_of(refresh, "expires_after") > time_of(refresh, "expires_before"),
        "{refresh}"
    );
    assert_eq!(
        time_of(refresh, "expires_after"),
        time_of(&bed.account(refresh_id), "expires_at"),
        "{refresh}"
    );
    assert_eq!(refresh["state"], "healthy", "{refresh}");

    // Disabled behind the page's back, and the page showed it by itself.
    assert_eq!(bed.account(disable_id)["state"], "disabled");

    // The key the page showed works for a client.
    let client = &page["client"];
    assert_eq!(
        client["listed"],
        serde_json::json!(["made-in-the-page"]),
        "{client}"
    );
    let key = str_of(client, "key");
    assert!(!key.is_empty() && key != bed.admin_token, "{client}");
    let clients = bed.admin().get("/api/clients").ok();
    assert_eq!(
        (
            clients[0]["name"].as_str(),
            clients[0]["revoked_at"].is_null()
        ),
        (Some("made-in-the-page"), true),
        "{clients}"
    );
    let lease = bed.api(Some(key)).lease(PROVIDER, None);
    assert_eq!(
        lease["account_id"], refresh_id,
        "the only enabled account: {lease}"
    );
    bed.provider
        .assert_active(str_of(&lease, "access_token"), "ann");

    // The webhook that gave up on the page's client_created is shown failing.
    assert_eq!(failing_hook.hits().len(), 1);
    let hook = &page["webhooks"][0];
    assert_eq!(
        (&hook["given_up"], &hook["failing"]),
        (&Value::from("1"), &Value::Bool(true)),
        "{page}"
    );
    assert!(str_of(hook, "last_error").contains("503"), "{page}");

    // "Back up now" took one, and the page lists what the farm has.
    let backups = bed.admin().get("/api/backups").ok();
    assert_eq!(
        page["backups"],
        serde_json::json!([backups[0]["file"]]),
        "{page}"
    );

    // One document all along (no reload), live updates on, no errors.
    assert_eq!(
        (&page["marker"], &page["documents"]),
        (&Value::from("same document"), &Value::from(1)),
        "{page}"
    );
    assert_eq!(page["live_status_on"], true, "{page}");
    assert_eq!(
        page["console"]["normal"],
        serde_json::json!([]),
        "console errors on the normal path: {page}"
    );
    assert_eq!(
        page["alerts"],
        serde_json::json!([]),
        "alerts on the normal path: {page}"
    );

    // Screenshots of every tab, and of the accounts at phone width.
    for tab in ["accounts", "usage", "clients", "events"] {
        let (width, _) = png_size(&artifacts.join(format!("{tab}.png")));
        assert_eq!(width, 1280, "{tab}.png");
    }
    let (width, height) = png_size(&artifacts.join("accounts-phone.png"));
    assert_eq!(width, 390, "accounts-phone.png is {width}x{height}");
    let phone = &page["phone"];
    assert!(
        int_of(phone, "scroll_width") <= int_of(phone, "inner_width"),
        "the page scrolls sideways at phone width: {phone}"
    );
}

/// A person with only a phone: `/admin/#record=ID` at 390×844 records the
/// account's login in the farm's own browser with taps and key presses on
/// the live view, saves the proposed script, and the farm proves it in a
/// throwaway profile. Screenshots in `target/test-artifacts/admin-remote/`.
#[test]
fn at_phone_width_the_page_records_a_login_in_the_remote_browser_and_proves_it() {
    let bed = Bed::start(Settings::default().with_browser(BrowserSettings::default()));
    let user = "pia";
    let id = bed.add_account(user, 0);
    let artifacts = artifacts_dir("admin-remote");
    let page = run_page(
        &bed,
        "admin_remote.mjs",
        &[
            ("ACCOUNT_ID", id.to_string()),
            ("USER", user.to_string()),
            ("ARTIFACTS", artifacts.display().to_string()),
            ("STEP_TIMEOUT_MS", "20000".to_string()),
        ],
    );
    assert_eq!(page["console"], serde_json::json!([]), "{page}");
    assert!(
        page["scroll_width"].as_u64().unwrap() <= 390,
        "no sideways scrolling: {page}"
    );
    assert!(page["canvas"]["width"].as_u64().unwrap() <= 390, "{page}");
    let script = str_of(&page, "script");
    assert!(script.contains("${secret:password}"), "{script}");
    assert!(!script.contains(&format!("{user}-password")), "{script}");
    let proof = str_of(&page, "proof_state");
    assert!(
        proof.starts_with("Proved in a fresh browser profile"),
        "{proof}"
    );
    assert!(proof.contains("Healthy"), "{proof}");
    let account = bed.account(id);
    assert_eq!(account["state"], "healthy", "{account}");
    assert_eq!(account["has_login_script"], true, "{account}");
    for shot in [
        "remote-phone-login",
        "remote-phone-recorded",
        "remote-phone-proved",
    ] {
        let (width, _) = png_size(Path::new(str_of(&page["screenshots"], shot)));
        assert_eq!(width, 390, "{shot}");
    }
}
