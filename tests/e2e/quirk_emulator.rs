//! The provider emulator itself (`support::quirk_provider`), driven over
//! HTTP as a client would: its device flow, its switchable quirks and what
//! it records. The farm's own tests against it are in `provider_quirks.rs`;
//! these make sure the emulator behaves as the providers it stands for, and
//! that the farm's pure readers (`domain::provider`) understand it.

use std::time::Duration;

use base64::Engine;
use relogin_farm::domain::provider::{claim, jwt_claims, parse_pasted};
use relogin_farm::secret::Secret;
use reqwest::blocking::{Client, Response};
use sha2::{Digest, Sha256};

use crate::support::quirk_provider::{QuirkProvider, Quirks, ACCOUNT_CLAIM};
use crate::support::{json, Value};

const CLIENT: &str = "emu-client";
const REDIRECT: &str = "http://127.0.0.1:9/callback";
const VERIFIER: &str = "a-pkce-verifier-long-enough-for-the-emulator-0123456789";

fn http() -> Client {
    Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("quirk-test/1")
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn body(resp: Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

/// Signs `user` in through the login form after an authorize request
/// with `state`; see [`QuirkProvider::sign_in`].
fn sign_in(emu: &QuirkProvider, user: &str, state: &str) -> (u16, String) {
    let challenge =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER));
    let mut url = url::Url::parse(&emu.authorize_url()).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("state", state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let form = http().get(url.as_str()).send().unwrap().text().unwrap();
    assert!(form.contains("id=\"username\"") && form.contains("id=\"submit\""));
    QuirkProvider::sign_in(url.as_str(), user)
}

fn code_of(location: &str) -> String {
    let url = url::Url::parse(location).unwrap();
    let code = url.query_pairs().find(|(k, _)| k == "code").unwrap().1;
    code.into_owned()
}

fn exchange(emu: &QuirkProvider, code: &str) -> (u16, Value) {
    body(
        http()
            .post(emu.token_url())
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
                ("client_id", CLIENT),
            ])
            .send()
            .unwrap(),
    )
}

fn refresh(emu: &QuirkProvider, refresh_token: &str) -> (u16, Value) {
    body(
        http()
            .post(emu.token_url())
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", CLIENT),
            ])
            .send()
            .unwrap(),
    )
}

#[test]
fn code_flow_identity_claims_and_rotating_refresh_tokens_with_reuse_detection() {
    let emu = QuirkProvider::start(Quirks::default());
    let (status, location) = sign_in(&emu, "bob", "st-1");
    assert_eq!(status, 302);
    assert!(location.starts_with(REDIRECT) && location.contains("state=st-1"));
    let (status, tokens) = exchange(&emu, &code_of(&location));
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["expires_in"], 3600);
    let id_claims = jwt_claims(tokens["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(claim(&id_claims, &["sub"]).as_deref(), Some("sub-bob"));
    assert_eq!(
        claim(&id_claims, &["email"]).as_deref(),
        Some("bob@example.test")
    );
    let access = jwt_claims(tokens["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(
        claim(&access, &[ACCOUNT_CLAIM, "chatgpt_account_id"]).as_deref(),
        Some("acct-bob")
    );
    let at = tokens["access_token"].as_str().unwrap();
    assert_eq!(emu.introspect(at)["username"], "bob");

    // Rotation: a new refresh token each time; the spent one presented
    // again revokes the whole grant.
    let rt1 = tokens["refresh_token"].as_str().unwrap().to_string();
    let (_, second) = refresh(&emu, &rt1);
    let rt2 = second["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    let (status, reused) = refresh(&emu, &rt1);
    assert_eq!((status, &reused["error"]), (400, &json!("invalid_grant")));
    assert_eq!(emu.grants_revoked(), 1);
    assert_eq!(refresh(&emu, &rt2).0, 400, "the grant is gone");
    assert_eq!(
        emu.introspect(second["access_token"].as_str().unwrap())["active"],
        false
    );
    // A code works once; a wrong password shows the form again.
    assert_eq!(exchange(&emu, &code_of(&location)).0, 400);
    let (status, page) = sign_in(&emu, "mallory", "st-2");
    assert!(status == 200 && page.contains("id=\"error\""), "{page}");
}

#[test]
fn switchable_quirks_and_what_it_records() {
    let emu = QuirkProvider::start(Quirks {
        json_only: true,
        paste_page: true,
        omit_expires_in: true,
        static_refresh_tokens: true,
        ..Quirks::default()
    });
    // The paste page shows code#state, which the farm's parser reads.
    let (status, page) = sign_in(&emu, "alice", "st-9");
    assert_eq!(status, 200);
    let shown = page.split("<code id=\"code\">").nth(1).unwrap();
    let shown = shown.split("</code>").next().unwrap();
    let pasted = parse_pasted(shown, &Secret::new("st-9")).unwrap();
    let code = pasted.code.expose().to_string();
    // JSON bodies only.
    assert_eq!(exchange(&emu, &code).0, 400);
    let (status, tokens) = body(
        http()
            .post(emu.token_url())
            .json(&json!({"grant_type": "authorization_code", "code": code,
                "redirect_uri": REDIRECT, "code_verifier": VERIFIER, "client_id": CLIENT}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens.get("expires_in").is_none(), "{tokens}");
    let seen = emu.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].status, seen[0].content_type.as_deref()),
        (400, Some("application/x-www-form-urlencoded"))
    );
    assert_eq!(
        (seen[1].path.as_str(), seen[1].content_type.as_deref()),
        ("/token", Some("application/json"))
    );
    assert_eq!(seen[1].user_agent.as_deref(), Some("quirk-test/1"));
    assert!(seen[1].headers.iter().any(|(n, _)| n == "user-agent"));
    assert_eq!(seen[1].grant_type(), Some("authorization_code"));

    // Non-rotating refresh tokens come back unchanged.
    emu.set(|q| q.json_only = false);
    let rt = tokens["refresh_token"].as_str().unwrap();
    for _ in 0..2 {
        let (status, again) = refresh(&emu, rt);
        assert_eq!((status, again["refresh_token"].as_str()), (200, Some(rt)));
    }
    // Through the control endpoint: a 429 with both retry headers, then a
    // challenge page, then a dead answer.
    let control = |change: Value| {
        let resp = http()
            .post(format!("{}/control", emu.url))
            .json(&change)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    };
    control(json!({"rate_limit": 1, "retry_after": "3", "retry_after_ms": 2500}));
    let resp = http()
        .post(emu.token_url())
        .form(&[("grant_type", "refresh_token"), ("refresh_token", rt)])
        .send()
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "3");
    assert_eq!(resp.headers()["retry-after-ms"], "2500");
    control(json!({"challenge": 1}));
    let resp = http().post(emu.token_url()).send().unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().unwrap().contains("Just a moment"));
    control(json!({"dead": "refresh_token_expired"}));
    let (status, dead) = refresh(&emu, rt);
    assert_eq!(
        (status, &dead["error"]["code"]),
        (401, &json!("refresh_token_expired"))
    );
    assert_eq!(emu.quirks().dead.as_deref(), Some("refresh_token_expired"));
}

fn device_poll(emu: &QuirkProvider, device_code: &str) -> (u16, Value) {
    body(
        http()
            .post(emu.token_url())
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", device_code),
                ("client_id", CLIENT),
            ])
            .send()
            .unwrap(),
    )
}

fn device_start(emu: &QuirkProvider) -> Value {
    let (status, started) = body(
        http()
            .post(emu.device_authorization_url())
            .form(&[("client_id", CLIENT), ("scope", "openid")])
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200, "{started}");
    started
}

#[test]
fn device_flow_pending_slow_down_approval_denial_and_expiry() {
    let emu = QuirkProvider::start(Quirks {
        device_interval: 1,
        ..Quirks::default()
    });
    let started = device_start(&emu);
    let device_code = started["device_code"].as_str().unwrap();
    let user_code = started["user_code"].as_str().unwrap();
    assert_eq!(started["interval"], 1);
    assert!(started["verification_uri"]
        .as_str()
        .unwrap()
        .ends_with("/device"));
    let error = |(_, v): (u16, Value)| v["error"].as_str().unwrap_or("").to_string();
    assert_eq!(
        error(device_poll(&emu, device_code)),
        "authorization_pending"
    );
    assert_eq!(error(device_poll(&emu, device_code)), "slow_down");
    // The person enters the code and signs in.
    let page = http()
        .get(started["verification_uri_complete"].as_str().unwrap())
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("id=\"user_code\"") && page.contains(user_code));
    let done = http()
        .post(format!("{}/device", emu.url))
        .form(&[
            ("user_code", user_code),
            ("username", "alice"),
            ("password", "alice-password"),
            ("action", "allow"),
        ])
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(done.contains("id=\"done\""), "{done}");
    std::thread::sleep(Duration::from_millis(6100)); // the interval grew to 6 s
    let (status, tokens) = device_poll(&emu, device_code);
    assert_eq!(status, 200, "{tokens}");
    let claims = jwt_claims(tokens["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(claim(&claims, &["sub"]).as_deref(), Some("sub-alice"));

    // Denied.
    let denied = device_start(&emu);
    http()
        .post(format!("{}/device", emu.url))
        .form(&[
            ("user_code", denied["user_code"].as_str().unwrap()),
            ("action", "deny"),
        ])
        .send()
        .unwrap();
    assert_eq!(
        error(device_poll(&emu, denied["device_code"].as_str().unwrap())),
        "access_denied"
    );
    // Expired.
    emu.set(|q| q.device_expires_in = 1);
    let expiring = device_start(&emu);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        error(device_poll(&emu, expiring["device_code"].as_str().unwrap())),
        "expired_token"
    );
}
