//! Unattended nights through the real binary: canary logins
//! (`[browser] canary`, brought forward to every few seconds) in a
//! throwaway profile — a wrong password is found while the account keeps
//! serving, a login as someone else stores nothing — and the morning
//! digest (`[digest] schedule`) delivered to a JSON and a text webhook.

use std::time::Duration;

use crate::browser_engine::support::PASSWORD_SCRIPT;
use crate::relogin::{login_script, put_script, scripted_account, set_secret};
use crate::support::bed::BrowserSettings;
use crate::support::farm::toml_string;
use crate::support::quirk_provider::{QuirkProvider, Quirks};
use crate::support::receiver::Receiver;
use crate::support::{free_port, int_of, json, str_of, wait_for, Bed, Settings, Value, PROVIDER};

/// Canary rounds every 10 s: two accounts start 5 s apart.
const CANARY_EVERY_10S: &str = "*/10 * * * * *";

/// The events of `kind` after event `after`.
fn events_of(bed: &Bed, kind: &str, after: i64) -> Vec<Value> {
    bed.events_since(after)
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

/// Waits until an event of `kind` for account `id` came after `after`.
fn wait_event(bed: &Bed, kind: &str, id: i64, after: i64) -> Value {
    wait_for(
        &format!("{kind} for account {id}"),
        Duration::from_secs(90),
        || {
            events_of(bed, kind, after)
                .into_iter()
                .find(|e| e["account_id"] == id)
                .ok_or_else(|| {
                    format!(
                        "{:?}",
                        crate::support::event_kinds(&bed.events_since(after))
                    )
                })
        },
    )
}

fn last_event_id(bed: &Bed) -> i64 {
    bed.events_since(0).last().map_or(0, |e| int_of(e, "id"))
}

#[test]
fn a_canary_finds_a_wrong_password_while_the_account_keeps_serving_and_the_other_passes() {
    let mut bed = Bed::start(Settings::default().with_browser(BrowserSettings {
        canary: CANARY_EVERY_10S,
        ..BrowserSettings::default()
    }));
    let (broken_user, good_user) = ("canary-ann", "canary-bob");
    let password = |u: &str| format!("{u}-password");
    let broken = scripted_account(
        &bed,
        broken_user,
        &[("password", &password(broken_user))],
        &login_script(broken_user, false),
    );
    let good = scripted_account(
        &bed,
        good_user,
        &[("password", &password(good_user))],
        &login_script(good_user, false),
    );

    // The password changed at the provider's side (here: the farm's copy
    // is wrong). The account's profile still has a live session, which a
    // relogin in that profile would go straight through.
    let cursor = last_event_id(&bed);
    let wrong = "not-the-password-3141";
    set_secret(&bed, broken, "password", wrong);

    let failed = wait_event(&bed, "canary_failed", broken, cursor);
    // A canary that started before the change may still pass: from the
    // first failure on, every one fails, and the account must not move.
    let before = bed.account(broken);
    let good_before = bed.account(good);
    let next = wait_event(&bed, "canary_failed", broken, int_of(&failed, "id"));
    let passed = wait_event(&bed, "canary_passed", good, int_of(&failed, "id"));
    let detail = str_of(&failed, "detail");
    assert!(detail.starts_with("canary login failed: "), "{failed}");
    assert!(detail.contains("line "), "{failed}");
    assert!(!detail.contains(wrong), "the secret leaked: {failed}");
    let data = &failed["data"];
    assert!(data["step"].as_i64().is_some_and(|s| s >= 1), "{failed}");
    assert!(data["line"].as_i64().is_some_and(|l| l > 1), "{failed}");
    let shot = str_of(data, "screenshot");
    assert!(
        shot.starts_with(&bed.layout.artifacts_dir().display().to_string()),
        "{shot}"
    );
    assert!(std::path::Path::new(shot).is_file(), "{shot}");
    assert!(
        data["reason"]
            .as_str()
            .is_some_and(|r| r.contains("Invalid username or password")),
        "{failed}"
    );
    assert!(
        events_of(&bed, "canary_failed", cursor)
            .iter()
            .all(|e| e["account_id"] == broken),
        "only the broken account's canary fails"
    );
    assert_eq!(next["data"]["line"], data["line"], "{next}");
    assert!(str_of(&passed, "detail").contains("its tokens replaced the account's"));
    assert!(
        str_of(&passed, "detail").ends_with("its tokens replaced the account's"),
        "revoke_replaced is off by default: {passed}"
    );
    assert_eq!(bed.provider.stats()["grants_revoked"], 0);

    // The broken account is untouched: healthy, the same tokens, served.
    let after = bed.account(broken);
    assert_eq!(after["state"], "healthy", "{after}");
    assert_eq!(after["generation"], before["generation"], "{after}");
    assert!(after["last_error"].is_null(), "{after}");
    // The good one holds the canary's tokens.
    let good_after = bed.account(good);
    assert!(
        int_of(&good_after, "generation") > int_of(&good_before, "generation"),
        "{good_after}"
    );
    let mut users = Vec::new();
    for _ in 0..2 {
        let lease = bed.admin().lease(PROVIDER, None);
        let user = if lease["account_id"] == broken {
            broken_user
        } else {
            good_user
        };
        bed.provider
            .assert_active(str_of(&lease, "access_token"), user);
        users.push(user);
    }
    users.sort_unstable();
    assert_eq!(users, [broken_user, good_user], "both accounts serve");
    // No throwaway profile is left behind (a canary running at SIGTERM
    // removes its own before the farm exits).
    let status = bed.stop();
    assert!(status.success(), "{status:?}");
    let left: Vec<String> = std::fs::read_dir(bed.layout.profiles_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(".throwaway-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_canary_that_logs_in_as_someone_else_stores_nothing() {
    let emulator = QuirkProvider::start(Quirks::default());
    let block = format!(
        "[[provider]]\nname = \"quirky\"\nauthorize_url = {}\ntoken_url = {}\n\
         client_id = \"quirky-client\"\nredirect_uri = \"http://127.0.0.1:{}/callback\"\n\
         scopes = [\"openid\", \"offline_access\"]\n",
        toml_string(&emulator.authorize_url()),
        toml_string(&emulator.token_url()),
        free_port()
    );
    let bed = Bed::start(
        Settings::default()
            .with_toml(&block)
            .with_browser(BrowserSettings {
                canary: CANARY_EVERY_10S,
                ..BrowserSettings::default()
            }),
    );
    let id = int_of(
        &bed.admin()
            .post(
                "/api/accounts",
                json!({"provider": "quirky", "label": "alice", "priority": 0}),
            )
            .expect(201),
        "id",
    );
    set_secret(&bed, id, "username", "alice");
    set_secret(&bed, id, "password", "alice-password");
    let script = PASSWORD_SCRIPT.replace("provider = \"demo\"", "provider = \"quirky\"");
    put_script(&bed, id, &script).ok();
    let healthy = bed.wait_state(id, "healthy", Duration::from_secs(60));
    assert_eq!(healthy["identity"]["value"], "sub-alice", "{healthy}");

    let cursor = last_event_id(&bed);
    set_secret(&bed, id, "username", "bob");
    set_secret(&bed, id, "password", "bob-password");
    // A canary that started before the change may still pass as alice:
    // from the first refusal on, every canary logs in as bob.
    let first = wait_event(&bed, "canary_failed", id, cursor);
    let before = bed.account(id);
    let token = str_of(&bed.admin().lease("quirky", None), "access_token").to_owned();
    let failed = wait_event(&bed, "canary_failed", id, int_of(&first, "id"));
    let detail = str_of(&failed, "detail");
    assert!(
        detail.contains(
            "logged in as bob@example.test (sub-bob), expected alice@example.test (sub-alice)"
        ) && detail.contains("nothing was stored"),
        "{failed}"
    );
    // Nothing changed: state, tokens, identity; alice's token is served.
    let after = bed.account(id);
    assert_eq!(after["state"], "healthy", "{after}");
    assert_eq!(after["generation"], before["generation"], "{after}");
    assert_eq!(after["identity"], before["identity"], "{after}");
    assert_eq!(
        str_of(&bed.admin().lease("quirky", None), "access_token"),
        token
    );
    let introspection = emulator.introspect(&token);
    assert_eq!(introspection["sub"], "sub-alice", "{introspection}");
    assert!(
        events_of(&bed, "needs_human", cursor).is_empty(),
        "a canary never asks for a person"
    );
}

#[test]
fn the_digest_reaches_a_json_and_a_text_webhook() {
    let as_json = Receiver::start(200);
    let as_text = Receiver::start(200);
    let toml = format!(
        "[digest]\nschedule = \"*/3 * * * * *\"\n{}{}format = \"text\"\n",
        as_json.webhook_toml(&["digest"], 3, None),
        as_text.webhook_toml(&["digest"], 3, None),
    );
    let bed = Bed::start(Settings::default().with_toml(&toml));
    let id = bed.logged_in(&["dora"])[0];
    // The first digest may predate the login; the next one has it.
    let hits = wait_for("a digest with the account", Duration::from_secs(20), || {
        let hits = as_json.hits();
        hits.iter()
            .map(|h| h.json())
            .find(|ev| ev["data"]["providers"][0]["accounts"] == 1)
            .ok_or(format!("{} digests", hits.len()))
    });
    let ev = hits;
    assert_eq!(ev["kind"], "digest", "{ev}");
    let p = &ev["data"]["providers"][0];
    assert_eq!(p["provider"], PROVIDER, "{ev}");
    assert!(
        p["refreshes_ok"].is_u64() && p["needs_person"] == json!([]),
        "{ev}"
    );
    assert!(
        str_of(&ev, "detail").starts_with("relogin-farm digest, "),
        "{ev}"
    );
    let json_hit = &as_json.hits()[0];
    assert_eq!(json_hit.header("content-type"), Some("application/json"));

    let text = as_text.wait_hits(2, Duration::from_secs(20));
    let last = text.last().unwrap();
    assert_eq!(
        last.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let body = String::from_utf8_lossy(&last.body);
    assert!(body.starts_with("relogin-farm digest, "), "{body}");
    assert!(
        body.contains(&format!("{PROVIDER}: 1 accounts; refreshes ")),
        "{body}"
    );
    // The second digest covers only what came after the first.
    let digests = events_of(&bed, "digest", 0);
    assert!(digests.len() >= 2, "{digests:?}");
    assert_eq!(
        digests[1]["data"]["since"], digests[0]["at"],
        "each digest starts where the previous one ended"
    );
    let _ = id;
}

/// `revoke_replaced = true`: the refresh token a canary replaced is revoked
/// at the provider's revocation endpoint (found by discovery). The test
/// provider keeps one grant per user and client, so the revocation ends
/// that grant — why the key is off by default (the first test: no grant
/// revoked).
#[test]
fn revoke_replaced_revokes_the_refresh_token_a_canary_replaced() {
    let bed = Bed::start(
        Settings::default()
            .with_toml("revoke_replaced = true")
            .with_browser(BrowserSettings {
                canary: CANARY_EVERY_10S,
                ..BrowserSettings::default()
            }),
    );
    let user = "canary-cy";
    let id = scripted_account(
        &bed,
        user,
        &[("password", &format!("{user}-password"))],
        &login_script(user, false),
    );
    assert_eq!(bed.provider.stats()["grants_revoked"], 0);
    let passed = wait_event(&bed, "canary_passed", id, 0);
    assert!(
        str_of(&passed, "detail").ends_with("; the replaced refresh token was revoked"),
        "{passed}"
    );
    assert_eq!(bed.provider.stats()["grants_revoked"], 1);
}
