//! Browser relogin through the farm: login scripts and secrets attached over
//! the admin API, the farm's own headless Chromium (one profile per account)
//! logging accounts in, the recovery ladder run by the scheduler alone,
//! `needs_human` without a retry storm, SIGTERM mid-run, and the CLI.
//!
//! Every test gets its own provider and farm with a `[browser]` section
//! whose profiles and artifacts live in the test's temp dir, so "no
//! Chromium left" is a `pgrep` for that dir.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;

use crate::browser_engine::support::chromium_pids_under;
use crate::support::bed::BrowserSettings;
use crate::support::schema::validate_answer;
use crate::support::{
    int_of, json, poll, secs, str_of, wait_for, Bed, Resp, Settings, Value, PROVIDER,
};

/// How long one scripted login through the farm may take here.
const LOGIN: Duration = Duration::from_secs(30);

/// The README's login script for `user`, with the TOTP page's steps when
/// `totp`. Every step after the `goto` is optional, so a live session skips
/// them all.
pub(crate) fn login_script(user: &str, totp: bool) -> String {
    let mut text = format!(
        r##"provider = "{PROVIDER}"
timeout_ms = 10000
[[step]]
goto = "${{authorize_url}}"
[[step]]
fill = "#username"
value = "{user}"
optional = true
[[step]]
fill = "#password"
value = "${{secret:password}}"
optional = true
[[step]]
click = "#submit"
optional = true
"##
    );
    if totp {
        text.push_str("[[step]]\nfill = \"#code\"\nvalue = \"${totp}\"\noptional = true\n[[step]]\nclick = \"#submit\"\noptional = true\n");
    }
    text.push_str("[[step]]\nclick = \"#allow\"\noptional = true\n");
    text
}

/// A script that keeps the browser open for `ms` on a page without the
/// selector it waits for, then fails.
fn holding_script(ms: u64) -> String {
    format!("provider = \"{PROVIDER}\"\n[[step]]\nwait_for = \"#never\"\ntimeout_ms = {ms}\n")
}

/// The 1-based line of the `index`th (0-based) `[[step]]` of `script`.
fn line_of_step(script: &str, index: usize) -> usize {
    let mut headers = script
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == "[[step]]");
    headers
        .nth(index)
        .unwrap_or_else(|| panic!("no step {index} in:\n{script}"))
        .0
        + 1
}

/// The 1-based line of `script` that contains `text`.
fn line_containing(script: &str, text: &str) -> usize {
    script
        .lines()
        .position(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no {text:?} in:\n{script}"))
        + 1
}

/// A farm with its own browser (`max_concurrent` 2, retries after 1 s).
fn browser_bed(settings: Settings) -> Bed {
    Bed::start(settings.with_browser(BrowserSettings::default()))
}

pub(crate) fn put_script(bed: &Bed, id: i64, text: &str) -> Resp {
    bed.admin().send(
        Method::PUT,
        &format!("/api/accounts/{id}/script"),
        Some(text.as_bytes().to_vec()),
    )
}

pub(crate) fn set_secret(bed: &Bed, id: i64, name: &str, value: &str) {
    let body = json!({"value": value}).to_string().into_bytes();
    bed.admin()
        .send(
            Method::PUT,
            &format!("/api/accounts/{id}/secrets/{name}"),
            Some(body),
        )
        .expect(204);
}

/// An account for `user` that the farm logs in by itself: its secrets
/// first, then its script (a pending account with a script is due for a
/// relogin at once). Returns the id once the account is healthy.
pub(crate) fn scripted_account(
    bed: &Bed,
    user: &str,
    secrets: &[(&str, &str)],
    script: &str,
) -> i64 {
    let id = bed.add_account(user, 0);
    for (name, value) in secrets {
        set_secret(bed, id, name, value);
    }
    put_script(bed, id, script).ok();
    bed.wait_state(id, "healthy", LOGIN);
    id
}

/// `POST /api/accounts/{id}/relogin`, which must succeed; the account, with
/// the run's outcome under `relogin`.
fn relogin(bed: &Bed, id: i64) -> Value {
    let resp = bed
        .admin()
        .post(&format!("/api/accounts/{id}/relogin"), json!({}));
    let doc = bed.api(None).get("/api/openapi.json").ok();
    let problems = validate_answer(&doc, "POST", "/api/accounts/{id}/relogin", &resp);
    assert!(problems.is_empty(), "{problems:?}");
    resp.ok()
}

fn steps_acted(relogin_answer: &Value) -> i64 {
    int_of(&relogin_answer["relogin"], "steps_acted")
}

/// `/credential/next` hands out a token of `user` that the provider says is live.
fn assert_serves_a_live_token(bed: &Bed, user: &str) {
    let lease = bed.admin().lease(PROVIDER, None);
    bed.provider
        .assert_active(str_of(&lease, "access_token"), user);
}

/// The id of the newest stored event (0: none): a cursor for [`kinds_since`].
fn last_event_id(bed: &Bed) -> i64 {
    bed.events_since(0).last().map_or(0, |e| int_of(e, "id"))
}

/// The kinds of the account's events after `after`, oldest first.
fn kinds_since(bed: &Bed, id: i64, after: i64) -> Vec<String> {
    let events = bed
        .events_since(after)
        .into_iter()
        .filter(|e| e["account_id"] == id);
    events.map(|e| str_of(&e, "kind").to_string()).collect()
}

/// Whether `wanted` occur in `kinds` in this order (others may come between).
fn in_order(kinds: &[String], wanted: &[&str]) -> bool {
    let mut rest = kinds.iter();
    wanted.iter().all(|want| rest.any(|k| k == want))
}

fn profile_dir(bed: &Bed, id: i64) -> PathBuf {
    bed.layout.profiles_dir().join(id.to_string())
}

/// Waits until a Chromium runs on the account's profile.
fn wait_for_browser(bed: &Bed, id: i64) {
    let profile = profile_dir(bed, id);
    wait_for("a Chromium on the account's profile", secs(15), || {
        let pids = chromium_pids_under(&profile);
        (!pids.is_empty())
            .then_some(())
            .ok_or("none yet".to_string())
    });
}

/// Waits until the scheduler, on its own, took the account through the
/// recovery ladder after event `cursor` and the account is healthy again.
/// The ladder's own events, in order: the account's first login may still
/// be announcing its `relogin_succeeded` when the cursor is taken (the
/// tokens are stored, and the account healthy, just before it).
fn wait_for_ladder(bed: &Bed, id: i64, cursor: i64) {
    wait_for("the ladder to log the account in again", LOGIN, || {
        let kinds = kinds_since(bed, id, cursor);
        in_order(
            &kinds,
            &["needs_relogin", "relogin_started", "relogin_succeeded"],
        )
        .then_some(())
        .ok_or(format!("{kinds:?}"))
    });
    bed.wait_state(id, "healthy", secs(5));
}

/// Waits (a few seconds at most) until no Chromium runs on any of the
/// farm's profiles: browsers are closed after every run.
fn assert_no_chromium_left(bed: &Bed) {
    let dir = bed.layout.profiles_dir();
    wait_for(
        "no Chromium left on the farm's profiles",
        secs(5),
        || match chromium_pids_under(&dir) {
            pids if pids.is_empty() => Ok(()),
            pids => Err(format!("pids {pids:?}")),
        },
    );
}

/// `relogin-farm --config farm.toml ARGS`, with `stdin` piped into it; it
/// must succeed.
fn cli(bed: &Bed, args: &[&str], stdin: &str) -> Output {
    let out = bed.run_cli(args, stdin);
    assert!(
        out.status.success(),
        "relogin-farm {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What `cli` printed on stdout.
fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn first_login_by_script_then_a_live_session_goes_straight_through() {
    let bed = browser_bed(Settings::default());
    let user = "erin";
    let password = "erin-password";
    let script = login_script(user, false);
    let id = bed.add_account(user, 0);
    let path = format!("/api/accounts/{id}");

    // The secret goes first: a pending account is logged in as soon as a
    // script is attached (the scheduler may well beat the POST below).
    set_secret(&bed, id, "password", password);
    let attached = put_script(&bed, id, &script).ok();
    assert_eq!(
        (&attached["required_secrets"], &attached["missing_secrets"]),
        (&json!(["password"]), &json!([]))
    );
    let first = relogin(&bed, id);
    assert_eq!(first["state"], "healthy", "{first}");
    assert!(
        first["has_refresh_token"] == true && first["has_login_script"] == true,
        "{first}"
    );

    // The token the farm hands out is live at the provider.
    assert_serves_a_live_token(&bed, user);

    // The script reads back as written; secrets only by name.
    let stored = bed.admin().get(&format!("{path}/script"));
    assert_eq!(
        (stored.status, stored.text.as_str()),
        (200, script.as_str())
    );
    let secrets = bed.admin().get(&format!("{path}/secrets")).ok();
    let names: Vec<&str> = secrets
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| str_of(s, "name"))
        .collect();
    assert_eq!(names, ["password"], "{secrets}");
    let info = bed.admin().get(&format!("{path}/browser")).ok();
    assert!(
        info["profile_present"] == true && info["profile_bytes"].as_u64() > Some(0),
        "{info}"
    );
    assert_eq!(info["last_outcome"], "ok", "{info}");
    assert!(
        info["session_expires_at"].is_string(),
        "the provider's session cookie expiry: {info}"
    );

    // The profile kept the provider's session: no login form this time.
    let second = relogin(&bed, id);
    assert!(
        steps_acted(&second) <= 1,
        "a live session should go straight to the redirect: {second}"
    );
    assert_eq!(second["state"], "healthy", "{second}");
    assert!(
        int_of(&second, "generation") > int_of(&first, "generation"),
        "new tokens: {first} → {second}"
    );

    let answers = [
        stored.text,
        secrets.to_string(),
        info.to_string(),
        first.to_string(),
        second.to_string(),
        bed.admin().get("/api/accounts").text,
        bed.admin().get("/api/events?since=0").text,
    ];
    for text in answers {
        assert!(!text.contains(password), "the password is readable: {text}");
    }
    let kinds = kinds_since(&bed, id, 0);
    assert!(
        !kinds
            .iter()
            .any(|k| k == "needs_human" || k == "relogin_failed"),
        "{kinds:?}"
    );
    // A successful relogin logs no warning: the redirect's blocked request
    // may be answered while the page closes (a race: a few more runs give
    // it more chances), which is no error.
    for _ in 0..4 {
        relogin(&bed, id);
    }
    assert_no_chromium_left(&bed);
    let log = bed.farm_log();
    assert!(
        !log.contains("CDPSession event handler error") && !log.contains("has been closed"),
        "{log}"
    );
    // The password manager is off in the profile, as Chromium saved it at
    // the clean close: no "Save password?" bubble, no password kept.
    let prefs = std::fs::read(profile_dir(&bed, id).join("Default/Preferences")).unwrap();
    let prefs: Value = serde_json::from_slice(&prefs).unwrap();
    assert_eq!(prefs["credentials_enable_service"], false, "{prefs}");
    assert_eq!(
        prefs["profile"]["password_manager_enabled"], false,
        "{prefs}"
    );
}

#[test]
fn revoked_grant_is_recovered_by_the_ladder_alone() {
    let bed = browser_bed(Settings::short_tokens());
    let user = "ivan";
    let id = bed.add_account(user, 0);
    let url = bed.url().to_string();

    // The CLI stores the password (read from stdin) in the running farm.
    let set = cli(
        &bed,
        &["secret", "set", &id.to_string(), "password", "--farm", &url],
        "ivan-password",
    );
    assert!(
        stdout_of(&set).contains("secret password of account"),
        "{}",
        stdout_of(&set)
    );
    put_script(&bed, id, &login_script(user, false)).ok();
    bed.wait_state(id, "healthy", LOGIN);
    let listed = stdout_of(&cli(&bed, &["browser", "list", "--farm", &url], ""));
    let row = listed
        .lines()
        .find(|l| l.contains(user))
        .unwrap_or_else(|| panic!("{user} not in:\n{listed}"));
    assert!(row.contains("present") && row.contains("(ok)"), "{row}");
    let doctor = stdout_of(&cli(&bed, &["doctor"], ""));
    assert!(
        doctor.contains("browser: node ") && doctor.contains("no problems found"),
        "{doctor}"
    );

    // The grant dies at the provider; nobody calls the farm's API but to look.
    let cursor = last_event_id(&bed);
    let code_grants = bed.provider.code_grants(user);
    assert!(bed.provider.revoke(user) >= 1, "a grant to revoke");
    wait_for_ladder(&bed, id, cursor);
    assert!(
        bed.provider.code_grants(user) > code_grants,
        "a new authorization code was redeemed"
    );
    assert_serves_a_live_token(&bed, user);
    assert_no_chromium_left(&bed);
}

#[test]
fn ended_sessions_and_revoked_grant_run_the_full_script_with_totp() {
    let bed = browser_bed(Settings::short_tokens());
    let user = "totp-trent";
    let seed = bed.provider.totp_seed(user);
    let secrets = [("password", "totp-trent-password"), ("totp", seed.as_str())];
    let id = scripted_account(&bed, user, &secrets, &login_script(user, true));

    // No session to ride on and no grant: only the whole script, TOTP
    // included, gets the account back.
    let cursor = last_event_id(&bed);
    bed.provider.end_sessions();
    assert!(bed.provider.revoke(user) >= 1, "a grant to revoke");
    wait_for_ladder(&bed, id, cursor);

    // Forced, after the sessions end again: goto, username, password,
    // submit, code, submit (consent is remembered). Without the TOTP page
    // at most five steps could act.
    bed.provider.end_sessions();
    let forced = relogin(&bed, id);
    assert!(steps_acted(&forced) >= 6, "the TOTP steps ran: {forced}");
    assert_serves_a_live_token(&bed, user);
    assert!(
        !bed.farm_log().contains(&seed),
        "the TOTP seed is in the farm's log"
    );
    assert_no_chromium_left(&bed);
}

#[test]
fn a_relogin_queued_behind_another_does_not_run_again_once_healthy() {
    let bed = browser_bed(Settings::default());
    let user = "peggy";
    let id = bed.add_account(user, 0);
    let path = format!("/api/accounts/{id}");
    // Disabled, the account is not the scheduler's to log in yet.
    bed.admin().patch(&path, json!({"enabled": false})).ok();
    set_secret(&bed, id, "password", "peggy-password");
    put_script(&bed, id, &login_script(user, false)).ok();

    // The admin's relogin holds the account's relogin lock through the
    // code exchange, which the provider now makes last 3 s ...
    bed.provider.token_delay(3000);
    let (admin, relogin_path) = (bed.admin(), format!("{path}/relogin"));
    let forced = std::thread::spawn(move || admin.post(&relogin_path, json!({})));
    wait_for_browser(&bed, id);
    // ... while the scheduler finds the account due and queues behind it.
    bed.admin().patch(&path, json!({"enabled": true})).ok();
    let done = forced.join().expect("the relogin request thread").ok();
    assert_eq!(done["state"], "healthy", "{done}");
    bed.provider.token_delay(0);

    // Healthy now: the queued relogin has nothing left to do.
    let second = poll(secs(3), || {
        let kinds = kinds_since(&bed, id, 0);
        let started = kinds.iter().filter(|k| *k == "relogin_started").count();
        if started > 1 {
            Ok(kinds)
        } else {
            Err(String::new())
        }
    });
    assert!(
        second.is_err(),
        "a second browser relogin ran on the account the first made healthy: {second:?}"
    );
    assert_no_chromium_left(&bed);
}

#[test]
fn wrong_password_needs_a_human_once_without_leaking_it() {
    let settings = Settings {
        log_level: "debug",
        rust_log: Some("debug"),
        ..Settings::default()
    };
    let browser = BrowserSettings {
        retry_initial: "1h",
        retry_max: "6h",
        ..BrowserSettings::default()
    };
    let bed = Bed::start(settings.with_browser(browser));
    let user = "judy";
    let password = "judy-Wr0ng-pw-5150";
    let script = login_script(user, false);
    let id = bed.add_account(user, 0);
    set_secret(&bed, id, "password", password);
    put_script(&bed, id, &script).ok();

    let account = bed.wait_state(id, "needs_human", LOGIN);
    let error = str_of(&account["last_error"], "message").to_string();
    // The re-rendered login form has no #allow: the last step that acted is
    // the password form's submit.
    let submit = format!("line {}, click #submit", line_of_step(&script, 3));
    assert!(
        error.contains(&submit),
        "last_error should name {submit:?}: {error}"
    );
    assert!(
        error.contains("Invalid username or password"),
        "what the page said: {error}"
    );
    let shot = error
        .rsplit_once("(screenshot: ")
        .map(|(_, rest)| rest.trim_end_matches(')'));
    let shot =
        Path::new(shot.unwrap_or_else(|| panic!("no screenshot path in last_error: {error}")));
    assert!(
        shot.starts_with(bed.layout.artifacts_dir()),
        "{} is not under artifacts_dir",
        shot.display()
    );
    assert!(
        std::fs::metadata(shot).is_ok_and(|m| m.len() > 1000),
        "no screenshot at {}",
        shot.display()
    );
    // The admin page shows it through the API (with the admin token).
    let shot_url = format!("/api/accounts/{id}/screenshot");
    assert_eq!(
        account["last_error"]["screenshot"],
        shot_url.as_str(),
        "{account}"
    );
    let png = bed.admin().get(&shot_url);
    assert_eq!(
        (png.status, png.headers["content-type"].to_str().unwrap()),
        (200, "image/png")
    );
    assert!(png.text.contains("PNG"), "not a PNG");

    // Announced once, retried only after browser.retry_initial (1 h).
    std::thread::sleep(secs(5));
    let kinds = kinds_since(&bed, id, 0);
    let count = |kind: &str| kinds.iter().filter(|k| *k == kind).count();
    assert_eq!(
        (count("relogin_started"), count("needs_human")),
        (1, 1),
        "{kinds:?}"
    );
    assert_eq!(bed.account(id)["state"], "needs_human");

    let path = format!("/api/accounts/{id}");
    let info = bed.admin().get(&format!("{path}/browser")).ok();
    assert_eq!(info["last_outcome"], "failed", "{info}");
    let answers = [
        bed.account(id).to_string(),
        bed.admin().get("/api/accounts").text,
        bed.admin().get(&format!("{path}/secrets")).text,
        info.to_string(),
        bed.admin().get(&format!("{path}/script")).text,
        bed.admin().get("/api/events?since=0").text,
        bed.farm_log(),
    ];
    for text in answers {
        assert!(!text.contains(password), "the password leaked: {text}");
    }
    assert_no_chromium_left(&bed);
}

#[test]
fn bad_scripts_are_refused_with_their_line_and_nothing_is_stored() {
    let bed = Bed::start(Settings::default());
    let id = bed.add_account("oscar", 0);
    let good = login_script("oscar", false);
    let cases = [
        // (the script, the text of the line its error must name)
        (good.replace("click = \"#submit\"", "click ="), "click ="),
        (
            good.replace("click = \"#allow\"", "tap = \"#allow\""),
            "tap =",
        ),
        (
            good.replace("${secret:password}", "${password}"),
            "${password}",
        ),
        (
            good.replace("${secret:password}", "${secret:password"),
            "${secret:password",
        ),
        (
            good.replace("provider = \"demo\"", "provider = \"github\""),
            "github",
        ),
        // Only web pages: not the host's files nor the browser's own.
        (
            good.replace("${authorize_url}", "file:///etc/passwd"),
            "file:///etc/passwd",
        ),
        (
            good.replace("${authorize_url}", "data:text/html,<h1>x</h1>"),
            "data:text/html",
        ),
        (
            good.replace("${authorize_url}", "chrome://version"),
            "chrome://version",
        ),
    ];
    for (script, wrong) in &cases {
        let refused = put_script(&bed, id, script).expect_error(400, "invalid_script");
        let detail = str_of(&refused, "detail");
        let line = format!("line {}", line_containing(script, wrong));
        assert!(
            detail.contains(&line),
            "the detail should name {line}: {detail}\n{script}"
        );
    }
    let unknown = put_script(&bed, id, &cases[2].0).json();
    assert!(
        str_of(&unknown, "detail").contains("${password}"),
        "names the unknown variable: {unknown}"
    );
    let local = put_script(&bed, id, &cases[5].0).json();
    assert!(
        str_of(&local, "detail").contains("may only go to an http:// or https:// URL"),
        "says why: {local}"
    );
    let other = put_script(&bed, id, &cases[4].0).json();
    assert!(
        str_of(&other, "detail").contains("github"),
        "names the other provider: {other}"
    );

    bed.admin()
        .get(&format!("/api/accounts/{id}/script"))
        .expect_error(404, "not_found");
    let account = bed.account(id);
    assert_eq!(
        (&account["has_login_script"], &account["state"]),
        (&json!(false), &json!("pending_login")),
        "{account}"
    );
    let kinds = kinds_since(&bed, id, 0);
    assert_eq!(kinds, ["account_added"], "nothing was attached");
}

#[test]
fn sigterm_during_a_relogin_closes_the_browser_and_keeps_the_session() {
    let mut bed = browser_bed(Settings::default());
    let user = "heidi";
    let script = login_script(user, false);
    let id = scripted_account(&bed, user, &[("password", "heidi-password")], &script);
    assert_no_chromium_left(&bed);

    put_script(&bed, id, &holding_script(20_000)).ok();
    let admin = bed.admin();
    let path = format!("/api/accounts/{id}/relogin");
    let pending =
        std::thread::spawn(move || admin.try_send(Method::POST, &path, Some(b"{}".to_vec())));
    wait_for_browser(&bed, id);

    let stopping = Instant::now();
    let status = bed.stop();
    let took = stopping.elapsed();
    assert!(
        status.success(),
        "the farm did not exit cleanly on SIGTERM: {status}"
    );
    assert!(
        took < secs(10),
        "SIGTERM took {took:?}: the open browser was waited out, not closed"
    );
    let answer = pending.join().expect("the relogin request thread");
    if let Ok(resp) = &answer {
        assert_ne!(
            resp.status, 200,
            "an interrupted relogin cannot succeed: {}",
            resp.text
        );
    }
    let left = chromium_pids_under(&bed.layout.profiles_dir());
    assert!(left.is_empty(), "Chromium outlived the farm: {left:?}");

    // The closed profile still holds the provider's session.
    bed.start_farm();
    put_script(&bed, id, &script).ok();
    let again = relogin(&bed, id);
    assert!(
        steps_acted(&again) <= 1,
        "the session cookie should have been kept: {again}"
    );
    assert_eq!(again["state"], "healthy", "{again}");
    assert_no_chromium_left(&bed);
}

#[test]
fn two_accounts_relog_one_at_a_time_and_removing_one_removes_its_profile() {
    let browser = BrowserSettings {
        max_concurrent: 1,
        retry_initial: "1h",
        retry_max: "6h",
        ..BrowserSettings::default()
    };
    let bed = Bed::start(Settings::default().with_browser(browser));
    let ids: Vec<i64> = ["frank", "grace"]
        .iter()
        .map(|u| bed.add_account(u, 0))
        .collect();
    let profiles: Vec<PathBuf> = ids.iter().map(|id| profile_dir(&bed, *id)).collect();

    // Count the accounts that have a Chromium at the same moment.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = std::thread::spawn({
        let (done, peak, profiles) = (done.clone(), peak.clone(), profiles.clone());
        move || {
            while !done.load(Ordering::Relaxed) {
                let running = profiles
                    .iter()
                    .filter(|p| !chromium_pids_under(p).is_empty())
                    .count();
                peak.fetch_max(running, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    // Both are due at once, and each run holds its browser for 3 s: run
    // side by side, they could not miss each other.
    for id in &ids {
        put_script(&bed, *id, &holding_script(3000)).ok();
    }
    for id in &ids {
        bed.wait_state(*id, "needs_human", LOGIN);
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("the sampler thread");
    assert_eq!(
        peak.load(Ordering::Relaxed),
        1,
        "browser.max_concurrent = 1: never two browsers at once"
    );
    assert_no_chromium_left(&bed);

    let (gone, kept) = (ids[0], ids[1]);
    assert!(
        profiles.iter().all(|p| p.is_dir()),
        "a profile per account: {profiles:?}"
    );
    let artifacts = |id: i64| bed.layout.artifacts_dir().join(id.to_string());
    let lock_file = |id: &str| bed.layout.profiles_dir().join(format!(".locks/{id}.lock"));
    for id in &ids {
        let shots: Vec<_> = std::fs::read_dir(artifacts(*id))
            .expect("the failure screenshots")
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!shots.is_empty());
        for shot in shots {
            let mode = std::fs::metadata(&shot).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", shot.display());
        }
    }
    bed.admin()
        .delete(&format!("/api/accounts/{gone}"))
        .expect(204);
    assert!(
        !profile_dir(&bed, gone).exists(),
        "the removed account's profile is still on disk"
    );
    assert!(!artifacts(gone).exists(), "its screenshots outlive it");
    assert!(
        !lock_file(&gone.to_string()).exists(),
        "its lock file outlives it"
    );
    assert!(artifacts(kept).is_dir() && lock_file(&kept.to_string()).is_file());
    // An account that does not exist leaves nothing behind.
    for missing in ["-5", "9999"] {
        bed.admin()
            .delete(&format!("/api/accounts/{missing}"))
            .expect(404);
        assert!(
            !lock_file(missing).exists(),
            "a lock file for account {missing}"
        );
    }
    let info = bed
        .admin()
        .get(&format!("/api/accounts/{kept}/browser"))
        .ok();
    assert_eq!(
        info["profile_present"], true,
        "the other account's profile went too: {info}"
    );
}

/// Every grant and session killed at once: the ladder logs the accounts
/// back in by itself, those whose tokens expire first first, starting at
/// most `browser.relogins_per_minute` at the provider (12: one every 5 s),
/// and leaves no browser behind.
#[test]
fn a_mass_logout_is_relogged_in_expiry_order_at_the_providers_rate() {
    let browser = BrowserSettings {
        relogins_per_minute: 12,
        retry_initial: "1h",
        retry_max: "6h",
        ..BrowserSettings::default()
    };
    let bed = Bed::start(Settings::default().with_browser(browser));
    let users = ["rita", "sam", "tom", "uma"];
    let ids: Vec<i64> = users
        .iter()
        .map(|u| {
            let secrets = [("password", format!("{u}-password"))];
            let secrets: Vec<_> = secrets.iter().map(|(n, v)| (*n, v.as_str())).collect();
            scripted_account(&bed, u, &secrets, &login_script(u, false))
        })
        .collect();
    // A person logs rita in again: her token now expires last. The
    // expiry order is sam, tom, uma, rita.
    relogin(&bed, ids[0]);
    let expires = |id: i64| {
        let account = bed.admin().get(&format!("/api/accounts/{id}")).ok();
        str_of(&account, "expires_at").to_string()
    };
    let mut by_expiry = ids.clone();
    by_expiry.sort_by_key(|id| expires(*id));
    assert_eq!(by_expiry, [ids[1], ids[2], ids[3], ids[0]]);

    // The provider forgets everyone: sessions ended, grants revoked.
    let cursor = last_event_id(&bed);
    bed.provider.end_sessions();
    for user in users {
        bed.provider.revoke(user);
    }
    // Rita's refresh fails first: her relogin starts at once, and the next
    // one may not start for 5 s; meanwhile the others fail, latest-expiring
    // first (the reverse of the order they must be logged in).
    let refresh = |id: i64| {
        bed.admin()
            .post(&format!("/api/accounts/{id}/refresh"), json!({}));
    };
    refresh(ids[0]);
    let started = |bed: &Bed| -> Vec<(i64, chrono::DateTime<chrono::FixedOffset>)> {
        bed.events_since(cursor)
            .into_iter()
            .filter(|e| e["kind"] == "relogin_started")
            .map(|e| {
                let at = chrono::DateTime::parse_from_rfc3339(str_of(&e, "at")).unwrap();
                (int_of(&e, "account_id"), at)
            })
            .collect()
    };
    wait_for("rita's relogin to start", LOGIN, || {
        (!started(&bed).is_empty())
            .then_some(())
            .ok_or("not yet".to_string())
    });
    for id in [ids[3], ids[2], ids[1]] {
        refresh(id);
    }
    for id in &ids {
        bed.wait_state(*id, "healthy", secs(60));
    }
    let starts = started(&bed);
    let order: Vec<i64> = starts.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        order,
        [ids[0], ids[1], ids[2], ids[3]],
        "one relogin each, the earliest expiry first: {starts:?}"
    );
    for pair in starts.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        // The rate spaces the starts 5 s apart; an event is stamped a
        // little after its start (the login is begun first, which a loaded
        // machine may delay). Without the rate two would start together.
        assert!(
            gap >= chrono::Duration::milliseconds(4000),
            "relogins started {gap} apart: {starts:?}"
        );
    }
    // Round-robin: four leases, one of each account, each live at the provider.
    let mut served: Vec<String> = (0..users.len())
        .map(|_| {
            let lease = bed.admin().lease(PROVIDER, None);
            let info = bed.provider.introspect(str_of(&lease, "access_token"));
            assert_eq!(info["active"], true, "{info}");
            str_of(&info, "sub").to_string()
        })
        .collect();
    served.sort();
    assert_eq!(served, users);
    assert_no_chromium_left(&bed);
}

/// A `kill -9` while a refresh grant is at the provider: the grant completes
/// there, its answer dies with the farm, and the stored refresh token is
/// spent. On a provider with `reuse_detection`, the restarted farm logs the
/// scripted account in with the browser instead of replaying that token
/// (which the test provider would answer by revoking the grant).
#[test]
fn kill_9_mid_refresh_on_a_reuse_detecting_provider_relogs_in_without_a_replay() {
    let mut bed = browser_bed(Settings::default().with_toml("reuse_detection = true"));
    let user = "judy";
    let id = scripted_account(
        &bed,
        user,
        &[("password", "judy-password")],
        &login_script(user, false),
    );
    let generation = int_of(&bed.account(id), "generation");

    bed.provider.token_delay(2000);
    let admin = bed.admin();
    let path = format!("/api/accounts/{id}/refresh");
    let in_flight =
        std::thread::spawn(move || admin.try_send(Method::POST, &path, Some(b"{}".to_vec())));
    bed.wait_state(id, "refreshing", secs(10));
    std::thread::sleep(Duration::from_millis(500)); // the grant reaches the provider
    bed.kill9();
    assert!(in_flight.join().expect("the refresh thread").is_err());
    let orphan = poll(secs(5), || match bed.provider.refresh_grants(user) {
        1 => Ok(()),
        n => Err(format!("{n} refresh grants")),
    });
    eprintln!("the orphaned grant: {orphan:?}");
    bed.provider.token_delay(0);
    let code_grants = bed.provider.code_grants(user);
    bed.start_farm();

    let account = bed.wait_account("the browser relogin after the restart", id, LOGIN, |a| {
        a["state"] == "healthy" && a["generation"].as_i64() > Some(generation)
    });
    assert!(account["last_error"].is_null(), "{account}");
    let stats = bed.provider.stats();
    assert_eq!(
        stats["refresh_failures"],
        json!({}),
        "a refresh token was replayed: {stats}"
    );
    assert_eq!(stats["grants_revoked"], 0, "{stats}");
    assert_eq!(bed.provider.refresh_grants(user), 1, "{stats}");
    assert!(bed.provider.code_grants(user) > code_grants, "{stats}");
    assert_serves_a_live_token(&bed, user);
}
