//! Provider presets (`preset = "…"`) through the real binary: each preset
//! against the provider emulator switched to behave as that provider does,
//! with the preset's endpoints (and loopback redirect) pointed at the
//! emulator and every other key the preset's; and `provider add`.

use std::time::Duration;

use crate::provider_quirks::pasted;
use crate::support::farm::toml_string;
use crate::support::quirk_provider::{QuirkProvider, Quirks, Seen};
use crate::support::{free_port, int_of, secs, str_of, Bed, Settings, Value};

/// A bed with one provider `name` using `preset`; `keys` are the block's
/// own keys (the emulator's URLs and whatever the preset needs).
fn preset_bed(name: &str, preset: &str, keys: &str) -> Bed {
    let block = format!("[[provider]]\nname = \"{name}\"\npreset = \"{preset}\"\n{keys}");
    Bed::start(Settings::default().with_toml(&block))
}

/// An emulator with `quirks` and a block's keys pointing an issuer preset
/// at it, with `client_id`.
fn issuer_emulator(quirks: Quirks, client_id: &str) -> (QuirkProvider, String) {
    let emulator = QuirkProvider::start(quirks);
    let keys = format!(
        "issuer = {}\nclient_id = \"{client_id}\"\n{}",
        toml_string(&emulator.url),
        redirect_uri()
    );
    (emulator, keys)
}

/// A loopback redirect URI on a free port (the presets' own ports may be
/// busy on a test machine).
fn redirect_uri() -> String {
    format!(
        "redirect_uri = \"http://127.0.0.1:{}/callback\"\n",
        free_port()
    )
}

/// Logs `user` in through the authorize URL and pastes the redirect URL;
/// returns the account id and the authorize URL's query.
fn code_login(bed: &Bed, provider: &str, user: &str) -> (i64, url::Url) {
    let (id, started) = bed.add_and_start_login(provider, user);
    let authorize = url::Url::parse(str_of(&started, "authorize_url")).unwrap();
    let (status, redirect_url) = QuirkProvider::sign_in(authorize.as_str(), user);
    assert_eq!(status, 302, "{redirect_url}");
    pasted(bed, id, &redirect_url);
    (id, authorize)
}

fn param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn token_requests(emulator: &QuirkProvider, grant: &str) -> Vec<Seen> {
    emulator
        .seen()
        .into_iter()
        .filter(|s| s.path == "/token" && s.grant_type() == Some(grant))
        .collect()
}

/// Waits for the account's first refresh and returns it.
fn refreshed(bed: &Bed, id: i64) -> Value {
    let generation = int_of(&bed.account(id), "generation");
    bed.wait_account("a refresh", id, secs(25), |a| {
        a["generation"].as_i64() > Some(generation)
    })
}

#[test]
fn google_preset_asks_for_offline_access_and_keeps_its_non_rotating_refresh_token() {
    // Google: OIDC discovery; refresh answers carry no refresh token.
    let (emulator, keys) = issuer_emulator(
        Quirks {
            omit_refresh_token: true,
            access_ttl: 4,
            ..Quirks::default()
        },
        "g-client",
    );
    let bed = preset_bed("google", "google", &keys);
    let (id, authorize) = code_login(&bed, "google", "alice");
    assert_eq!(param(&authorize, "access_type").as_deref(), Some("offline"));
    assert_eq!(param(&authorize, "prompt").as_deref(), Some("consent"));
    assert_eq!(
        param(&authorize, "scope").as_deref(),
        Some("openid email profile")
    );
    let account = bed.account(id);
    assert_eq!(account["identity"]["value"], "sub-alice", "{account}");
    let first = refreshed(&bed, id);
    assert_eq!(first["state"], "healthy", "{first}");
    let second = refreshed(&bed, id);
    assert_eq!(second["state"], "healthy", "{second}");
    // The one refresh token, presented each time.
    let refreshes = token_requests(&emulator, "refresh_token");
    assert!(refreshes.len() >= 2, "{refreshes:?}");
    assert!(refreshes.iter().all(|s| s.status == 200));
    let presented = refreshes[0].param("refresh_token");
    assert!(refreshes
        .iter()
        .all(|s| s.param("refresh_token") == presented));
}

#[test]
fn entra_preset_sends_the_scopes_again_on_refresh() {
    // The tenant's issuer is the person's to give: the emulator's here.
    let (emulator, keys) = issuer_emulator(
        Quirks {
            access_ttl: 4,
            ..Quirks::default()
        },
        "entra-app",
    );
    let bed = preset_bed("work", "entra", &keys);
    let (id, authorize) = code_login(&bed, "work", "bob");
    assert_eq!(
        param(&authorize, "scope").as_deref(),
        Some("openid profile email offline_access")
    );
    let account = refreshed(&bed, id);
    assert_eq!(account["state"], "healthy", "{account}");
    let refresh = &token_requests(&emulator, "refresh_token")[0];
    assert_eq!(
        refresh.param("scope"),
        Some("openid profile email offline_access"),
        "{refresh:?}"
    );
}

/// Keycloak and authentik: generic OIDC by the issuer the person gives,
/// with a rotating refresh token.
fn issuer_preset_logs_in_and_refreshes(preset: &str) {
    let (emulator, keys) = issuer_emulator(
        Quirks {
            access_ttl: 4,
            ..Quirks::default()
        },
        "farm",
    );
    let bed = preset_bed("sso", preset, &keys);
    let (id, authorize) = code_login(&bed, "sso", "alice");
    let scope = param(&authorize, "scope").unwrap_or_default();
    assert!(scope.split(' ').any(|s| s == "offline_access"), "{scope}");
    let account = refreshed(&bed, id);
    assert_eq!(account["state"], "healthy", "{account}");
    // Rotated: the second refresh presents the token the first one got.
    refreshed(&bed, id);
    let refreshes = token_requests(&emulator, "refresh_token");
    assert_ne!(
        refreshes[0].param("refresh_token"),
        refreshes[1].param("refresh_token")
    );
}

#[test]
fn keycloak_preset_logs_in_by_issuer_and_refreshes() {
    issuer_preset_logs_in_and_refreshes("keycloak");
}

#[test]
fn authentik_preset_logs_in_by_issuer_and_refreshes() {
    issuer_preset_logs_in_and_refreshes("authentik");
}

#[test]
fn github_preset_logs_in_by_device_flow_asking_for_json_answers() {
    // GitHub: device flow, form-encoded answers unless JSON is asked for,
    // errors with HTTP 200, opaque tokens without expiry, no id_token.
    let emulator = QuirkProvider::start(Quirks {
        github_answers: true,
        opaque_access_tokens: true,
        omit_expires_in: true,
        device_interval: 1,
        ..Quirks::default()
    });
    let keys = format!(
        "client_id = \"Iv1.gh-app\"\ndevice_authorization_url = {}\ntoken_url = {}\n\
         identity = {{ url = {} }}\n",
        toml_string(&emulator.device_authorization_url()),
        toml_string(&emulator.token_url()),
        toml_string(&emulator.userinfo_url()),
    );
    let bed = preset_bed("github", "github", &keys);
    let (id, started) = bed.add_and_start_login("github", "alice");
    let asked = &emulator.seen()[0];
    assert_eq!(asked.path, "/device/code");
    assert_eq!(asked.param("scope"), Some("read:user"));
    // Some polls are answered "authorization_pending" (with HTTP 200).
    std::thread::sleep(Duration::from_millis(2500));
    let page = reqwest::blocking::Client::new()
        .post(str_of(&started, "verification_uri"))
        .form(&[
            ("user_code", str_of(&started, "user_code")),
            ("username", "alice"),
            ("password", "alice-password"),
        ])
        .send()
        .and_then(|r| r.text())
        .unwrap();
    assert!(page.contains("Device connected"), "{page}");
    let account = bed.wait_state(id, "healthy", secs(20));
    // The identity is GitHub's numeric user id, from its profile endpoint.
    assert_eq!(account["identity"]["value"], "1000", "{account}");
    let polls = token_requests(&emulator, "urn:ietf:params:oauth:grant-type:device_code");
    assert!(polls.len() >= 2, "{polls:?}");
    for poll in &polls {
        let accept = poll.headers.iter().find(|(n, _)| n == "accept");
        assert_eq!(
            accept.map(|(_, v)| v.as_str()),
            Some("application/json"),
            "{poll:?}"
        );
    }
    // No expiry given: the preset's year, not the farm's default hour.
    let expires = chrono::DateTime::parse_from_rfc3339(str_of(&account, "expires_at")).unwrap();
    assert!(
        expires > chrono::Utc::now() + chrono::Duration::days(300),
        "{account}"
    );
    let lease = bed.admin().lease("github", None);
    assert!(str_of(&lease, "access_token").starts_with("at-"), "{lease}");
}

#[test]
fn openai_codex_preset_sends_the_cli_s_client_and_parameters_and_pins_the_account_id() {
    let emulator = QuirkProvider::start(Quirks {
        access_ttl: 4,
        ..Quirks::default()
    });
    let keys = format!(
        "authorize_url = {}\ntoken_url = {}\n{}",
        toml_string(&emulator.authorize_url()),
        toml_string(&emulator.token_url()),
        redirect_uri()
    );
    let bed = preset_bed("codex", "openai-codex", &keys);
    let (id, authorize) = code_login(&bed, "codex", "alice");
    assert_eq!(
        param(&authorize, "client_id").as_deref(),
        Some("app_EMoamEEZ73f0CkXaXp7hrann")
    );
    for (name, value) in [
        ("id_token_add_organizations", "true"),
        ("codex_cli_simplified_flow", "true"),
        ("originator", "codex_cli_rs"),
    ] {
        assert_eq!(param(&authorize, name).as_deref(), Some(value), "{name}");
    }
    let account = bed.account(id);
    assert_eq!(account["identity"]["value"], "acct-alice", "{account}");
    // The code exchange is a form; the refresh JSON, as the CLI sends them.
    let exchange = &token_requests(&emulator, "authorization_code")[0];
    assert_eq!(
        exchange.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    let account = refreshed(&bed, id);
    assert_eq!(account["state"], "healthy", "{account}");
    let refresh = &token_requests(&emulator, "refresh_token")[0];
    assert!(
        refresh
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json")),
        "{refresh:?}"
    );
    assert_eq!(
        refresh.param("client_id"),
        Some("app_EMoamEEZ73f0CkXaXp7hrann")
    );
}

#[test]
fn provider_add_appends_a_preset_block_and_refuses_a_name_in_use() {
    let bed = Bed::start(Settings::default());
    let config = std::fs::read_to_string(bed.layout.config()).unwrap();
    let added = bed.run_cli(&["provider", "add", "github", "--name", "gh"], "");
    let out = String::from_utf8_lossy(&added.stdout);
    assert!(
        added.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&added.stderr)
    );
    assert!(out.contains("preset = \"github\""), "{out}");
    assert!(out.contains("still to fill in:\n    client_id:"), "{out}");
    let after = std::fs::read_to_string(bed.layout.config()).unwrap();
    assert!(after.starts_with(&config), "the file's own text is kept");
    assert!(after.contains("[[provider]]\nname = \"gh\"\npreset = \"github\"\n"));

    // The block is not complete yet: the configuration says which key.
    let check = bed.run_cli(&["check-config"], "");
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success());
    assert!(
        err.contains("].client_id: missing: preset \"github\" needs"),
        "{err}"
    );
    let doctor = bed.run_cli(&["doctor"], "");
    let said = String::from_utf8_lossy(&doctor.stderr);
    assert!(!doctor.status.success());
    assert!(
        said.contains("].client_id: missing: preset \"github\" needs the client id"),
        "{said}"
    );

    let again = bed.run_cli(&["provider", "add", "google", "--name", "gh"], "");
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already has a provider named \"gh\""), "{err}");
    assert_eq!(std::fs::read_to_string(bed.layout.config()).unwrap(), after);

    let unknown = bed.run_cli(&["provider", "add", "anthropic"], "");
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(err.contains("invalid value 'anthropic'"), "{err}");
    assert!(
        err.contains("openai-codex"),
        "the presets are listed: {err}"
    );
}
