//! The token-endpoint quirk keys of a `[[provider]]` (`token_request`,
//! `refresh_request`, `token_params`, `token_headers`, `refresh_scope`,
//! `default_token_ttl`, `[[provider.token_errors]]`, `egress_proxy`),
//! through the real binary against the provider emulator: what the farm
//! sends is read back from the emulator's record of every request.

use chrono::Utc;

use crate::provider_quirks::{
    logged_in, never_needed_a_relogin, pasted, quirky_bed_with, refreshed_past, refreshes,
    signed_in, QUIRKY,
};
use crate::support::farm::toml_string;
use crate::support::quirk_provider::{QuirkProvider, Quirks, Seen};
use crate::support::{int_of, json, secs, str_of, time_of};

fn is_json(seen: &Seen) -> bool {
    seen.content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/json"))
}

fn exchanges(emulator: &QuirkProvider) -> Vec<Seen> {
    emulator
        .seen()
        .into_iter()
        .filter(|s| s.grant_type() == Some("authorization_code"))
        .collect()
}

#[test]
fn token_request_json_reaches_a_json_only_token_endpoint() {
    let (bed, emulator) = quirky_bed_with(
        Quirks {
            json_only: true,
            access_ttl: 3,
            ..Quirks::default()
        },
        |_| "token_request = \"json\"\n".into(),
    );
    let (id, status, redirect_url) = signed_in(&bed, "alice");
    assert_eq!(status, 302, "{redirect_url}");
    let sent_state = {
        let url = url::Url::parse(&redirect_url).unwrap();
        let (_, s) = url.query_pairs().find(|(k, _)| k == "state").unwrap();
        s.into_owned()
    };
    let account = pasted(&bed, id, &redirect_url);
    let generation = int_of(&account, "generation");
    refreshed_past(&bed, id, generation, secs(15));

    let exchange = &exchanges(&emulator)[0];
    assert!(is_json(exchange), "{exchange:?}");
    assert_eq!(exchange.status, 200);
    // A JSON exchange carries the login's state.
    assert_eq!(exchange.param("state"), Some(sent_state.as_str()));
    let refresh = &refreshes(&emulator)[0];
    assert!(is_json(refresh) && refresh.status == 200, "{refresh:?}");
    assert_eq!(refresh.param("state"), None);
    never_needed_a_relogin(&bed);
}

#[test]
fn refresh_request_params_headers_and_refresh_scope_are_sent() {
    let (bed, emulator) = quirky_bed_with(
        Quirks {
            access_ttl: 3,
            ..Quirks::default()
        },
        |_| {
            "refresh_request = \"json\"\nrefresh_scope = true\n\
             token_params = { audience = \"https://api.example.test\" }\n\
             token_headers = { \"User-Agent\" = \"codex_cli_rs/0.1\", \"x-originator\" = \"farm\" }\n"
                .into()
        },
    );
    let id = logged_in(&bed, "alice");
    // From now on only JSON is taken: the refreshes still go through, the
    // code exchange of a new login (form, by default) does not.
    emulator.set(|q| q.json_only = true);
    let generation = int_of(&bed.account(id), "generation");
    refreshed_past(&bed, id, generation, secs(15));

    let exchange = &exchanges(&emulator)[0];
    assert!(!is_json(exchange), "{exchange:?}");
    assert_eq!(exchange.param("scope"), None, "{exchange:?}");
    let refresh = &refreshes(&emulator)[0];
    assert!(is_json(refresh) && refresh.status == 200, "{refresh:?}");
    assert_eq!(refresh.param("scope"), Some("openid offline_access"));
    for seen in [exchange, refresh] {
        assert_eq!(seen.user_agent.as_deref(), Some("codex_cli_rs/0.1"));
        assert_eq!(seen.param("audience"), Some("https://api.example.test"));
        assert!(
            seen.headers
                .iter()
                .any(|(n, v)| n == "x-originator" && v == "farm"),
            "{seen:?}"
        );
    }

    let (bob, status, redirect_url) = signed_in(&bed, "bob");
    assert_eq!(status, 302);
    let refused = bed.admin().post(
        &format!("/api/accounts/{bob}/login/complete"),
        json!({"redirect_url": redirect_url}),
    );
    refused.expect_error(502, "login_failed");
    assert!(
        refused.text.contains("the body must be JSON"),
        "{}",
        refused.text
    );
    never_needed_a_relogin(&bed);
}

#[test]
fn default_token_ttl_dates_a_token_nothing_else_dates() {
    let (bed, _emulator) = quirky_bed_with(
        Quirks {
            opaque_access_tokens: true,
            omit_expires_in: true,
            ..Quirks::default()
        },
        |_| "default_token_ttl = \"7m\"\n".into(),
    );
    let before = Utc::now();
    let id = logged_in(&bed, "alice");
    let expires_at = time_of(&bed.account(id), "expires_at");
    let after = Utc::now();
    let ttl = chrono::Duration::minutes(7);
    assert!(
        expires_at >= before + ttl - chrono::Duration::seconds(1) && expires_at <= after + ttl,
        "{expires_at}"
    );
}

#[test]
fn a_providers_own_token_errors_rule_goes_first() {
    // Without the rule, a 401 with an unknown code is transient.
    let (bed, emulator) = quirky_bed_with(
        Quirks {
            access_ttl: 3,
            ..Quirks::default()
        },
        |_| {
            "[[provider.token_errors]]\nstatus = 401\nerror = \"session_gone\"\nclass = \"dead\"\n"
                .into()
        },
    );
    let id = logged_in(&bed, "alice");
    emulator.set(|q| q.dead = Some("session_gone".into()));
    let account = bed.wait_state(id, "needs_relogin", secs(15));
    let message = str_of(&account["last_error"], "message");
    assert!(message.contains("session_gone"), "{message}");
    let statuses: Vec<u16> = refreshes(&emulator).iter().map(|s| s.status).collect();
    assert_eq!(statuses, [401], "one answer is enough, no retries");
}

#[test]
fn egress_proxy_carries_the_token_requests() {
    // The token endpoint's host does not resolve: only the proxy (the
    // emulator itself, which answers a proxied request like any other) can
    // reach it.
    let (bed, emulator) = quirky_bed_with(
        Quirks {
            access_ttl: 3,
            ..Quirks::default()
        },
        |emulator| {
            let base = emulator.token_url().replace("/token", "");
            format!(
                "token_url = \"http://token.provider.invalid/token\"\negress_proxy = {}\n",
                toml_string(&base)
            )
        },
    );
    let id = logged_in(&bed, "alice");
    let generation = int_of(&bed.account(id), "generation");
    refreshed_past(&bed, id, generation, secs(15));
    let seen = emulator.seen();
    assert!(seen.len() >= 2, "{seen:?}");
    for s in &seen {
        let host = s.headers.iter().find(|(n, _)| n == "host").map(|(_, v)| v);
        assert_eq!(
            host.map(String::as_str),
            Some("token.provider.invalid"),
            "{s:?}"
        );
    }
    let lease = bed.admin().lease(QUIRKY, None);
    assert_eq!(
        emulator.introspect(str_of(&lease, "access_token"))["username"],
        "alice"
    );
}
