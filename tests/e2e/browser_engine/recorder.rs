//! The recorder, with Playwright playing the person.

use std::time::Duration;

use relogin_farm::browser::recorder::{RecordOptions, Recorder, Recording};
use relogin_farm::browser::runner::{RunEnd, RunProfile};
use relogin_farm::browser::script::{Action, LoginScript, Vars};
use relogin_farm::browser::{BrowserPool, LoginOutcome};
use url::Url;

use super::support::{serve_html, Provider, TestPool, RUN_TIMEOUT};

fn options(provider: &Provider, authorize_url: Url) -> RecordOptions {
    RecordOptions {
        provider: "demo".into(),
        authorize_url,
        redirect_uri: provider.redirect_uri.clone(),
        headless: true,
        timeout: Duration::from_secs(60),
    }
}

/// The person pastes `password` and presses Enter.
async fn sign_in_with(page: &playwright_rs::Page, password: &str) {
    let field = page.locator("#password");
    field.fill(password, None).await.unwrap();
    field.press("Enter", None).await.unwrap();
}

/// The script's actions, as text.
fn actions(recording: &Recording) -> Vec<String> {
    let steps = &recording.script.steps;
    steps.iter().map(|s| s.action.to_string()).collect()
}

/// Logs `profile_key` in with `script` and the recording's secrets, on the
/// account's own profile or (`RunProfile::Proof`) a throwaway one, and
/// redeems the code.
async fn log_in(
    pool: &BrowserPool,
    profile: RunProfile,
    provider: &Provider,
    profile_key: &str,
    script: &LoginScript,
    recording: &Recording,
) -> LoginOutcome {
    let auth = provider.authorize();
    let vars = recording.secrets.iter().fold(
        Vars::new().with_authorize_url(auth.url.clone()),
        |v, (k, s)| v.with_secret(k, s.clone()),
    );
    let end = RunEnd::Redirect(provider.redirect_uri.clone());
    let outcome = pool
        .run(profile_key, script, &vars, end, RUN_TIMEOUT, profile)
        .await
        .unwrap();
    provider
        .redeem(outcome.redirect_url.as_ref().expect("a redirect"), &auth)
        .await;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_then_replay_in_a_fresh_profile_and_the_recorded_one() {
    let provider = Provider::start();
    let t = TestPool::new(2);
    let auth = provider.authorize();
    let recorder = Recorder::start(&t.pool, "kim", options(&provider, auth.url.clone()))
        .await
        .unwrap();

    // While recording, the farm does not launch this profile.
    let (vars, _) = provider.vars("kim", "kim-password").await;
    let script_text = "provider = \"demo\"\n[[step]]\ngoto = \"${authorize_url}\"\n";
    let busy = t
        .pool
        .run_login(
            "kim",
            &LoginScript::parse(script_text).unwrap(),
            &vars,
            &provider.redirect_uri,
            RUN_TIMEOUT,
        )
        .await;
    assert!(
        !busy.unwrap_err().needs_human(),
        "a busy profile is not the account's fault"
    );

    // The person: types their name key by key, pastes the password, presses
    // Enter, then allows on the consent page.
    let page = recorder.page();
    page.locator("#username")
        .press_sequentially("kim", None)
        .await
        .unwrap();
    sign_in_with(page, "kim-password").await;
    page.locator("#allow").click(None).await.unwrap();
    let recording = recorder.finish().await.unwrap();

    provider.redeem(&recording.redirect_url, &auth).await;
    assert!(!recording.needs_totp_seed);
    assert_eq!(recording.secrets.keys().collect::<Vec<_>>(), ["password"]);
    assert_eq!(recording.secrets["password"].expose(), "kim-password");
    let text = recording.script.to_toml();
    assert!(!text.contains("kim-password"), "{text}");
    assert_eq!(
        actions(&recording),
        [
            "goto ${authorize_url}",
            "fill #username",
            "fill #password",
            "press Enter in #password",
            "click #allow"
        ],
        "{text}"
    );
    let Action::Fill { value, .. } = &recording.script.steps[1].action else {
        panic!()
    };
    assert_eq!(
        value.to_source(),
        "kim",
        "keystrokes coalesced into one fill"
    );

    // Replay from the file: a fresh profile runs every step...
    let script = LoginScript::parse(&text).unwrap();
    let fresh = log_in(
        &t.pool,
        RunProfile::Own,
        &provider,
        "kim-replay",
        &script,
        &recording,
    )
    .await;
    assert_eq!(
        fresh.steps_acted,
        [0, 1, 2, 3],
        "consent is remembered for kim, so no #allow"
    );

    // The recording left the profile alone (it ran in a throwaway one): a
    // relogin on it runs every step, and leaves it logged in.
    let first = log_in(
        &t.pool,
        RunProfile::Own,
        &provider,
        "kim",
        &script,
        &recording,
    )
    .await;
    assert_eq!(first.steps_acted, [0, 1, 2, 3]);

    // Recording again over that live session still meets the login form
    // (a recording starts without the profile's session); a mistyped
    // password and its retry become one step with the last value; and
    // the consent page the provider remembers for kim is shown all the
    // same, so the script keeps its (optional) step.
    let auth = provider.authorize();
    let again = Recorder::start(&t.pool, "kim", options(&provider, auth.url.clone()))
        .await
        .unwrap();
    let page = again.page();
    page.locator("#username").fill("kim", None).await.unwrap();
    sign_in_with(page, "kim-typo").await;
    page.locator("text=Invalid username or password")
        .wait_for(None)
        .await
        .unwrap();
    sign_in_with(page, "kim-password").await;
    page.locator("#allow").click(None).await.unwrap();
    let again = again.finish().await.unwrap();
    provider.redeem(&again.redirect_url, &auth).await;
    assert!(again.acts_on_page());
    assert_eq!(again.secrets.keys().collect::<Vec<_>>(), ["password"]);
    assert_eq!(again.secrets["password"].expose(), "kim-password");
    assert_eq!(
        actions(&again),
        [
            "goto ${authorize_url}",
            "fill #username",
            "fill #password",
            "press Enter in #password",
            "click #allow",
        ],
        "{}",
        again.script.to_toml()
    );
    assert!(again.script.steps[4].optional);

    // An abandoned recording still closes its browser.
    let abandoned = Recorder::start(
        &t.pool,
        "kim-abandoned",
        options(&provider, provider.authorize().url),
    )
    .await
    .unwrap();
    drop(abandoned);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while t.pool.open_browsers() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "abandoned recorder kept its browser"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A proof runs in a throwaway profile: every step, although "kim" is
    // logged in...
    let proof = log_in(
        &t.pool,
        RunProfile::Proof,
        &provider,
        "kim",
        &script,
        &recording,
    )
    .await;
    assert_eq!(proof.steps_acted, [0, 1, 2, 3]);
    assert_eq!(proof.lines_acted.len(), 4);

    // ...where a relogin on the profile goes straight to the redirect.
    let live = log_in(
        &t.pool,
        RunProfile::Own,
        &provider,
        "kim",
        &script,
        &recording,
    )
    .await;
    assert_eq!(live.steps_acted, [0]);
    // No throwaway profile is left behind.
    let left: Vec<_> = std::fs::read_dir(&t.pool.config().profiles_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".throwaway-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    t.assert_no_chromium_left();
}

/// A page whose elements have no ids: each selector strategy in turn.
const PLAIN_PAGE: &str = r#"<!doctype html><html><body>
<form onsubmit="return false">
  <input name="login">
  <label for="pw-4821">Secret word</label><input id="pw-4821" type="password">
  <label>Remember<input type="checkbox"></label>
  <button type="button" data-testid="ignored-because-role-wins">Continue</button>
  <div data-testid="cookie-ok" onclick="this.textContent='ok'">OK</div>
  <div><span>first</span><span onclick="location.href=window.NEXT">go on</span></div>
</form></body></html>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_prefer_id_name_label_role_testid_over_nth_child() {
    let redirect = format!("http://127.0.0.1:{}/callback", super::support::free_port());
    let page_html = PLAIN_PAGE.replace("window.NEXT", &format!("'{redirect}?code=c1&state=s1'"));
    let base = serve_html(page_html).await;
    let t = TestPool::new(2);
    let options = RecordOptions {
        provider: "plain".into(),
        authorize_url: base.clone(),
        redirect_uri: Url::parse(&redirect).unwrap(),
        headless: true,
        timeout: Duration::from_secs(60),
    };
    let recorder = Recorder::start(&t.pool, "plain", options).await.unwrap();
    let page = recorder.page();
    page.locator("input[name=login]")
        .fill("someone", None)
        .await
        .unwrap();
    page.get_by_label("Secret word", true)
        .fill("pw-123", None)
        .await
        .unwrap();
    page.locator("input[type=checkbox]")
        .click(None)
        .await
        .unwrap();
    page.locator("button").click(None).await.unwrap();
    page.locator("[data-testid=cookie-ok]")
        .click(None)
        .await
        .unwrap();
    page.locator("text=go on").click(None).await.unwrap();
    let recording = recorder.finish().await.unwrap();
    let selectors: Vec<&str> = recording
        .script
        .steps
        .iter()
        .filter_map(|s| s.action.selector())
        .collect();
    assert_eq!(
        selectors,
        [
            "input[name=\"login\"]",
            // generated-looking id skipped
            "internal:label=\"Secret word\"s",
            "internal:label=\"Remember\"s",
            // role+text before data-testid
            "role=button[name=\"Continue\"s]",
            "[data-testid=\"cookie-ok\"]",
            "body > form:nth-child(1) > div:nth-child(7) > span:nth-child(2)",
        ],
        "{}",
        recording.script.to_toml()
    );
    assert_eq!(recording.redirect_url.query(), Some("code=c1&state=s1"));

    // Every recorded selector works when replayed.
    let script = LoginScript::parse(&recording.script.to_toml()).unwrap();
    let vars = recording
        .secrets
        .iter()
        .fold(Vars::new().with_authorize_url(base), |v, (k, s)| {
            v.with_secret(k, s.clone())
        });
    let mut strict = script.clone();
    strict.steps.iter_mut().for_each(|s| s.optional = false);
    let outcome = t
        .pool
        .run_login(
            "plain-replay",
            &strict,
            &vars,
            &Url::parse(&redirect).unwrap(),
            RUN_TIMEOUT,
        )
        .await
        .unwrap();
    assert_eq!(outcome.steps_acted, [0, 1, 2, 3, 4, 5, 6]);
    t.assert_no_chromium_left();
}
