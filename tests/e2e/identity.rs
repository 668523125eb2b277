//! Identity pinning through the real binary against the provider emulator
//! (`support::quirk_provider`, users alice and bob): the first login pins
//! whose tokens an account holds; a later login as someone else — pasted,
//! or by the farm's own browser — stores nothing, the account goes
//! `needs_human` and keeps serving its own still-valid token; a second
//! account as an identity already held is refused with 409; the identity
//! can be a nested claim of a JWT access token or come from userinfo.

use std::time::Duration;

use reqwest::Method;

use crate::browser_engine::support::PASSWORD_SCRIPT;
use crate::relogin::set_secret;
use crate::support::bed::BrowserSettings;
use crate::support::farm::toml_string;
use crate::support::quirk_provider::{QuirkProvider, Quirks};
use crate::support::{event_kinds, free_port, int_of, json, str_of, Bed, Settings, Value};

const QUIRKY: &str = "quirky";

/// A bed whose farm has the provider `quirky` (a new emulator), with the
/// extra provider keys `extra` (such as `identity = {…}`).
fn bed_with(extra: &str, browser: bool) -> (Bed, QuirkProvider) {
    bed_on(QuirkProvider::start(Quirks::default()), extra, browser)
}

/// A bed on a running emulator.
fn bed_on(emulator: QuirkProvider, extra: &str, browser: bool) -> (Bed, QuirkProvider) {
    let block = format!(
        "[[provider]]\nname = \"{QUIRKY}\"\nauthorize_url = {}\ntoken_url = {}\n\
         client_id = \"quirky-client\"\nredirect_uri = \"http://127.0.0.1:{}/callback\"\n\
         scopes = [\"openid\", \"offline_access\"]\n{extra}\n",
        toml_string(&emulator.authorize_url()),
        toml_string(&emulator.token_url()),
        free_port()
    );
    let mut settings = Settings::default().with_toml(&block);
    if browser {
        settings = settings.with_browser(BrowserSettings::default());
    }
    (Bed::start(settings), emulator)
}

fn add_account(bed: &Bed, label: &str) -> i64 {
    let account = bed
        .admin()
        .post(
            "/api/accounts",
            json!({"provider": QUIRKY, "label": label, "priority": 0}),
        )
        .expect(201);
    int_of(&account, "id")
}

/// Starts a login of account `id`, signs `user` in on the emulator and
/// pastes the redirect URL: the farm's answer.
fn paste_login(bed: &Bed, id: i64, user: &str) -> crate::support::Resp {
    let admin = bed.admin();
    let started = admin
        .post(&format!("/api/accounts/{id}/login"), json!({}))
        .ok();
    let (status, redirect_url) = QuirkProvider::sign_in(str_of(&started, "authorize_url"), user);
    assert_eq!(status, 302, "{redirect_url}");
    admin.post(
        &format!("/api/accounts/{id}/login/complete"),
        json!({"redirect_url": redirect_url}),
    )
}

fn lease_token(bed: &Bed) -> String {
    let lease = bed.client("identity-test").lease(QUIRKY, None);
    str_of(&lease, "access_token").to_owned()
}

/// The account refused a login as bob: nothing of alice's changed, it needs
/// a person, says why, and still serves alice's live token.
fn refused_and_still_alices(
    bed: &Bed,
    emulator: &QuirkProvider,
    id: i64,
    before: &Value,
    token: &str,
) {
    let expected =
        "logged in as bob@example.test (sub-bob), expected alice@example.test (sub-alice)";
    let account = bed.wait_state(id, "needs_human", Duration::from_secs(30));
    assert!(
        account["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(expected)),
        "{account}"
    );
    assert_eq!(account["generation"], before["generation"], "{account}");
    assert_eq!(account["expires_at"], before["expires_at"], "{account}");
    assert_eq!(
        account["identity"],
        json!({"value": "sub-alice", "display": "alice@example.test"})
    );
    let events = bed.events_since(0);
    let needs_human: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "needs_human" && e["account_id"] == id)
        .collect();
    assert_eq!(needs_human.len(), 1, "{events:?}");
    assert!(
        needs_human[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains(expected)),
        "{needs_human:?}"
    );
    // The token served is alice's old one, and the provider says it is live.
    assert_eq!(lease_token(bed), token);
    let introspection = emulator.introspect(token);
    assert_eq!(
        (&introspection["active"], &introspection["sub"]),
        (&json!(true), &json!("sub-alice")),
        "{introspection}"
    );
}

#[test]
fn a_login_as_someone_else_stores_nothing_and_alices_token_is_still_served() {
    let (mut bed, emulator) = bed_with("", false);
    let id = add_account(&bed, "alice");
    let account = paste_login(&bed, id, "alice").ok();
    assert_eq!(account["state"], "healthy", "{account}");
    assert_eq!(
        account["identity"],
        json!({"value": "sub-alice", "display": "alice@example.test"})
    );
    let token = lease_token(&bed);
    let events = bed.events_since(0);
    assert!(
        events.iter().any(|e| e["kind"] == "login_completed"
            && e["detail"] == "login completed as alice@example.test (sub-alice)"),
        "{events:?}"
    );

    // The person logs in as bob on alice's account: 409, nothing stored.
    let refused = paste_login(&bed, id, "bob").expect_error(409, "conflict");
    assert!(
        str_of(&refused, "detail").starts_with(
            "logged in as bob@example.test (sub-bob), expected alice@example.test (sub-alice)"
        ),
        "{refused}"
    );
    refused_and_still_alices(&bed, &emulator, id, &account, &token);

    // After a restart the pin and the refusal are still there.
    bed.restart();
    let after = bed.account(id);
    assert_eq!(
        (&after["state"], &after["identity"]["value"]),
        (&json!("needs_human"), &json!("sub-alice"))
    );
    assert_eq!(lease_token(&bed), token);

    // Alice again: accepted, the account is healthy with new tokens.
    let again = paste_login(&bed, id, "alice").ok();
    assert_eq!(again["state"], "healthy", "{again}");
    assert!(again["last_error"].is_null(), "{again}");
    assert!(int_of(&again, "generation") > int_of(&account, "generation"));
}

#[test]
fn a_second_account_as_a_held_identity_is_refused_with_409() {
    let (bed, _emulator) = bed_with("", false);
    let first = add_account(&bed, "alice");
    paste_login(&bed, first, "alice").ok();
    let second = add_account(&bed, "alice-again");
    let refused = paste_login(&bed, second, "alice").expect_error(409, "conflict");
    let detail = str_of(&refused, "detail");
    assert!(
        detail.contains(&format!(
            "alice@example.test (sub-alice) is already account {first} (\"alice\")"
        )),
        "{detail}"
    );
    let account = bed.account(second);
    assert_eq!(account["state"], "pending_login", "{account}");
    assert_eq!(
        (&account["generation"], &account["has_refresh_token"]),
        (&json!(0), &json!(false))
    );
    assert!(account["identity"].is_null(), "{account}");
    // Only the first account serves.
    let lease = bed.client("identity-test").lease(QUIRKY, None);
    assert_eq!(int_of(&lease, "account_id"), first);
    // Bob is welcome on the second account.
    let bob = paste_login(&bed, second, "bob").ok();
    assert_eq!(bob["identity"]["value"], "sub-bob", "{bob}");
}

#[test]
fn the_identity_can_be_a_nested_claim_of_the_access_token() {
    let (bed, _emulator) = bed_with(
        "identity = { from = \"access_token\", claim = [\"https://api.openai.com/auth\", \"chatgpt_account_id\"] }",
        false,
    );
    let id = add_account(&bed, "alice");
    let account = paste_login(&bed, id, "alice").ok();
    assert_eq!(
        account["identity"],
        json!({"value": "acct-alice", "display": "alice@example.test"})
    );
    let refused = paste_login(&bed, id, "bob").expect_error(409, "conflict");
    assert!(
        str_of(&refused, "detail").starts_with(
            "logged in as bob@example.test (acct-bob), expected alice@example.test (acct-alice)"
        ),
        "{refused}"
    );
    assert_eq!(bed.account(id)["state"], "needs_human");
}

#[test]
fn the_identity_can_come_from_userinfo() {
    let emulator = QuirkProvider::start(Quirks::default());
    let block = format!(
        "identity = {{ from = \"userinfo\", url = {}, claim = [\"preferred_username\"] }}",
        toml_string(&emulator.userinfo_url())
    );
    let (bed, emulator) = bed_on(emulator, &block, false);
    let id = add_account(&bed, "alice");
    let account = paste_login(&bed, id, "alice").ok();
    assert_eq!(
        account["identity"],
        json!({"value": "alice", "display": "alice@example.test"})
    );
    let asked = emulator
        .seen()
        .into_iter()
        .filter(|s| s.path == "/userinfo")
        .count();
    assert_eq!(asked, 1);
    let refused = paste_login(&bed, id, "bob").expect_error(409, "conflict");
    assert!(
        str_of(&refused, "detail").starts_with(
            "logged in as bob@example.test (bob), expected alice@example.test (alice)"
        ),
        "{refused}"
    );
}

#[test]
fn a_browser_relogin_as_someone_else_needs_a_human_and_changes_nothing() {
    let (bed, emulator) = bed_with("", true);
    let id = add_account(&bed, "alice");
    set_secret(&bed, id, "username", "alice");
    set_secret(&bed, id, "password", "alice-password");
    bed.admin()
        .send(
            Method::PUT,
            &format!("/api/accounts/{id}/script"),
            Some(
                PASSWORD_SCRIPT
                    .replace("provider = \"demo\"", &format!("provider = \"{QUIRKY}\""))
                    .into_bytes(),
            ),
        )
        .ok();
    // A pending account with a script is logged in by the ladder.
    let account = bed.wait_state(id, "healthy", Duration::from_secs(60));
    assert_eq!(account["identity"]["value"], "sub-alice", "{account}");
    let token = lease_token(&bed);

    // The profile's secrets now sign bob in: the relogin is refused.
    set_secret(&bed, id, "username", "bob");
    set_secret(&bed, id, "password", "bob-password");
    let resp = bed
        .admin()
        .post(&format!("/api/accounts/{id}/relogin"), json!({}));
    assert!(resp.status >= 400, "{}", resp.text);
    refused_and_still_alices(&bed, &emulator, id, &account, &token);
    let kinds = event_kinds(&bed.events_since(0))
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert!(kinds.iter().any(|k| k == "relogin_failed"), "{kinds:?}");
}

#[test]
fn the_oidc_providers_id_token_and_userinfo_name_the_user() {
    // The default: the id_token's sub.
    let bed = Bed::start(Settings::default());
    let id = bed.add_account("alice", 0);
    let account = bed.login_by_paste(id, "alice");
    assert_eq!(account["state"], "healthy", "{account}");
    assert_eq!(account["identity"]["value"], "alice", "{account}");

    // Userinfo at the endpoint the discovery document names.
    let bed = Bed::start(Settings::default().with_toml("identity = { from = \"userinfo\" }"));
    let id = bed.add_account("alice", 0);
    let account = bed.login_by_paste(id, "alice");
    assert_eq!(account["identity"]["value"], "alice", "{account}");
    let redirect_url = crate::support::browser::sign_in(&bed.start_login(id), "bob");
    let refused = bed
        .admin()
        .post(
            &format!("/api/accounts/{id}/login/complete"),
            json!({"redirect_url": redirect_url}),
        )
        .expect_error(409, "conflict");
    assert!(
        str_of(&refused, "detail").contains("expected alice"),
        "{refused}"
    );
    assert_eq!(bed.account(id)["state"], "needs_human");
}

#[test]
fn a_refused_login_after_a_dead_refresh_token_serves_nothing() {
    let (bed, emulator) = bed_with("", false);
    let id = add_account(&bed, "alice");
    paste_login(&bed, id, "alice").ok();
    emulator.set(|q| q.dead = Some("refresh_token_reused".into()));
    bed.admin()
        .post(&format!("/api/accounts/{id}/refresh"), json!({}));
    bed.wait_state(id, "needs_relogin", Duration::from_secs(10));
    paste_login(&bed, id, "bob").expect_error(409, "conflict");
    assert_eq!(bed.account(id)["state"], "needs_human");
    // Alice's access token has not expired, but her grant is dead: not served.
    bed.client("identity-test")
        .next(QUIRKY, None)
        .expect_error(503, "no_account_available");
}
