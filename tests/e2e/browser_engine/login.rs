//! Scripted logins against the real provider.

use relogin_farm::browser::runner::FailureKind;
use relogin_farm::browser::script::LoginScript;

use super::support::{demo_script, script, Provider, TestPool, PASSWORD_SCRIPT, RUN_TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_login_then_live_session_then_full_script_after_sessions_end() {
    let provider = Provider::start();
    let t = TestPool::new(2);
    let script = script(PASSWORD_SCRIPT);

    // 1. Fresh profile: the whole script runs (login form, then consent).
    let (vars, auth) = provider.vars("alice", "alice-password").await;
    let first = t.login(&provider, "alice", &script, &vars).await.unwrap();
    assert_eq!(
        first.steps_acted,
        [0, 1, 2, 3, 4],
        "goto, username, password, submit, allow"
    );
    let tokens = provider
        .redeem(first.redirect_url.as_ref().expect("a redirect"), &auth)
        .await;
    assert!(tokens["refresh_token"].is_string(), "{tokens}");
    let expires = first
        .session_cookie_expires
        .expect("the provider's session cookie has an expiry");
    assert!(expires > chrono::Utc::now());

    // 2. Same profile: the session cookie survived the clean close, so the
    //    authorize request goes straight to the redirect; no form.
    let (vars, auth) = provider.vars("alice", "alice-password").await;
    let second = t.login(&provider, "alice", &script, &vars).await.unwrap();
    assert_eq!(second.steps_acted, [0], "only the goto ran");
    provider
        .redeem(second.redirect_url.as_ref().expect("a redirect"), &auth)
        .await;
    eprintln!(
        "live-profile relogin: {:?}, full scripted login: {:?}",
        second.elapsed, first.elapsed
    );

    // 3. Sessions ended at the provider: the full login runs again (consent
    //    is remembered per account, so no consent page this time).
    provider.end_sessions().await;
    let (vars, auth) = provider.vars("alice", "alice-password").await;
    let third = t.login(&provider, "alice", &script, &vars).await.unwrap();
    assert_eq!(third.steps_acted, [0, 1, 2, 3]);
    provider
        .redeem(third.redirect_url.as_ref().expect("a redirect"), &auth)
        .await;

    let info = t.pool.profile_info("alice").await.unwrap();
    assert!(
        info.present && info.bytes > 0 && info.in_use.is_none(),
        "{info:?}"
    );
    t.assert_no_chromium_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_user_passes_the_totp_page() {
    let provider = Provider::start();
    let t = TestPool::new(2);
    let (vars, auth) = provider.vars("totp-carol", "totp-carol-password").await;
    let script = LoginScript::parse(&demo_script()).unwrap();
    let outcome = t.login(&provider, "carol", &script, &vars).await.unwrap();
    assert_eq!(
        outcome.steps_acted,
        [0, 1, 2, 3, 4, 5, 6],
        "every step, TOTP included"
    );
    provider
        .redeem(outcome.redirect_url.as_ref().expect("a redirect"), &auth)
        .await;
    t.assert_no_chromium_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_fails_with_line_screenshot_and_no_secret() {
    let provider = Provider::start();
    let t = TestPool::new(2);
    let password = "not-Alice-pw-7731";
    let (vars, _) = provider.vars("dave", password).await;
    let failure = t
        .pool
        .run_login(
            "dave",
            &script(PASSWORD_SCRIPT),
            &vars,
            &provider.redirect_uri,
            RUN_TIMEOUT,
        )
        .await
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::NoRedirect);
    assert!(failure.needs_human());
    let step = failure.step.clone().expect("names the last step that ran");
    // The re-rendered login form has #submit but no #allow: the last step
    // that ran is `click #submit` (index 3, line 12 of PASSWORD_SCRIPT).
    assert_eq!(
        (step.index, step.line, step.action.as_str()),
        (3, 12, "click #submit")
    );
    assert!(
        failure.reason.contains("Invalid username or password"),
        "{failure}"
    );
    assert!(
        failure
            .page_url
            .as_deref()
            .unwrap()
            .contains("/interaction/"),
        "{failure}"
    );
    let shot = failure.screenshot.clone().expect("screenshot saved");
    assert!(
        shot.starts_with(t.dir.path().join("artifacts/dave")),
        "{}",
        shot.display()
    );
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000, "a real PNG");
    let text = format!("{failure} {failure:?}");
    assert!(!text.contains(password), "secret leaked: {text}");
    eprintln!("wrong password → {failure}");
    if let Ok(keep) = std::env::var("KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
    t.assert_no_chromium_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_step_names_its_index_line_and_url() {
    let provider = Provider::start();
    let t = TestPool::new(2);
    let text = r##"provider = "demo"
[[step]]
goto = "${authorize_url}"
[[step]]
fill = "#username"
value = "${secret:username}"

[[step]]
click = "#no-such-button"
timeout_ms = 800
"##;
    let (vars, _) = provider.vars("erin", "erin-password").await;
    let started = std::time::Instant::now();
    let failure = t
        .pool
        .run_login(
            "erin",
            &script(text),
            &vars,
            &provider.redirect_uri,
            RUN_TIMEOUT,
        )
        .await
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::Step);
    let step = failure.step.clone().unwrap();
    assert_eq!((step.index, step.line), (2, 8));
    assert_eq!(
        failure.reason,
        "timed out after 800 ms waiting for #no-such-button"
    );
    assert!(failure.screenshot.as_ref().is_some_and(|p| p.is_file()));
    eprintln!("failing step → {failure}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the step timeout applies, not 15 s"
    );
    t.assert_no_chromium_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_totp_seed_fails_on_the_totp_page_without_leaking_codes() {
    let provider = Provider::start();
    let t = TestPool::new(2);
    let (vars, _) = provider.vars("totp-mallory", "totp-mallory-password").await;
    // A valid seed, but not this account's.
    let wrong_seed = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
    let vars = vars.with_secret("totp", relogin_farm::secret::Secret::new(wrong_seed));
    let script = LoginScript::parse(&demo_script()).unwrap();
    let failure = t
        .login(&provider, "mallory", &script, &vars)
        .await
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::NoRedirect);
    assert!(failure.reason.contains("Invalid code"), "{failure}");
    let text = format!("{failure} {failure:?}");
    let totp = totp_rs::TOTP::new_unchecked(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        totp_rs::Secret::Encoded(wrong_seed.into())
            .to_bytes()
            .unwrap(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for t in [now - 60, now - 30, now] {
        assert!(
            !text.contains(&totp.generate(t)),
            "a typed code leaked: {text}"
        );
    }
    assert!(!text.contains(wrong_seed) && !text.contains("totp-mallory-password"));
    t.assert_no_chromium_left();
}
