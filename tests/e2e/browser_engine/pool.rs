//! Pool behaviour: concurrency limit, shutdown, profile management.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relogin_farm::browser::runner::{
    doctor, BrowserConfig, BrowserPool, FailureKind, PoolError, ProfileUse,
};

use relogin_farm::config::BrowserSettings;

use super::support::{script, Provider, TestPool, PASSWORD_SCRIPT, RUN_TIMEOUT};

/// Logs in, then parks on the consent page (a screenshot marks the moment)
/// until the run is interrupted.
const PARK_ON_CONSENT: &str = r##"provider = "demo"
[[step]]
goto = "${authorize_url}"
[[step]]
fill = "#username"
value = "${secret:username}"
[[step]]
fill = "#password"
value = "${secret:password}"
[[step]]
click = "#submit"
[[step]]
wait_for = "#allow"
[[step]]
screenshot = true
name = "at-consent"
[[step]]
wait_for = "#never"
timeout_ms = 60000
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_one_serializes_two_accounts() {
    let provider = Provider::start();
    let t = Arc::new(TestPool::new(1));
    let script = script(PASSWORD_SCRIPT);
    let (vars_a, _) = provider.vars("frank", "frank-password").await;
    let (vars_b, _) = provider.vars("grace", "grace-password").await;

    // Watch the OS: how many profiles have a Chromium at the same time.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = std::thread::spawn({
        let (t, done, peak) = (t.clone(), done.clone(), peak.clone());
        move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(t.running_profiles(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let started = std::time::Instant::now();
    let (a, b) = tokio::join!(
        t.login(&provider, "frank", &script, &vars_a),
        t.login(&provider, "grace", &script, &vars_b),
    );
    let total = started.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        peak.load(Ordering::Relaxed),
        1,
        "never two browsers at once"
    );
    assert!(
        total >= a.elapsed + b.elapsed,
        "{total:?} < {:?} + {:?}: runs overlapped",
        a.elapsed,
        b.elapsed
    );
    t.assert_no_chromium_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_run_closes_cleanly_and_keeps_the_session() {
    let provider = Provider::start();
    let t = TestPool::new(2);
    let (vars, _) = provider.vars("heidi", "heidi-password").await;
    let run = tokio::spawn({
        let (pool, vars, redirect) = (t.pool.clone(), vars.clone(), provider.redirect_uri.clone());
        async move {
            pool.run_login(
                "heidi",
                &script(PARK_ON_CONSENT),
                &vars,
                &redirect,
                RUN_TIMEOUT,
            )
            .await
        }
    });
    wait_for_artifact(&t, "heidi", "at-consent").await;

    // While it runs: the profile is busy, and cannot be wiped.
    let info = t.pool.profile_info("heidi").await.unwrap();
    assert_eq!(info.in_use, Some(ProfileUse::Relogin));
    assert!(matches!(
        t.pool.reset("heidi").await,
        Err(PoolError::ProfileBusy { .. })
    ));
    assert_eq!(t.pool.open_browsers(), 1);
    assert!(
        !t.chromium_pids().is_empty(),
        "the process check sees the running browser"
    );
    assert_eq!(t.running_profiles(), 1);

    // SIGTERM: every browser closes cleanly; new runs are refused.
    tokio::time::timeout(Duration::from_secs(20), t.pool.shutdown())
        .await
        .expect("shutdown finishes");
    let failure = run.await.unwrap().unwrap_err();
    assert_eq!(failure.kind, FailureKind::Pool(PoolError::ShuttingDown));
    assert!(!failure.needs_human());
    t.assert_no_chromium_left();
    let refused = t
        .pool
        .run_login(
            "heidi",
            &script(PASSWORD_SCRIPT),
            &vars,
            &provider.redirect_uri,
            RUN_TIMEOUT,
        )
        .await;
    assert_eq!(
        refused.unwrap_err().kind,
        FailureKind::Pool(PoolError::ShuttingDown)
    );

    // The session cookie reached disk: a new pool on the same profiles goes
    // past the login form, straight to consent.
    let pool = BrowserPool::new(t.pool.config().clone());
    let (vars, auth) = provider.vars("heidi", "heidi-password").await;
    let outcome = pool
        .run_login(
            "heidi",
            &script(PASSWORD_SCRIPT),
            &vars,
            &provider.redirect_uri,
            RUN_TIMEOUT,
        )
        .await
        .unwrap();
    assert_eq!(
        outcome.steps_acted,
        [0, 4],
        "goto and allow only: no login form"
    );
    provider
        .redeem(outcome.redirect_url.as_ref().expect("a redirect"), &auth)
        .await;

    pool.reset("heidi").await.unwrap();
    let info = pool.profile_info("heidi").await.unwrap();
    assert!(!info.present && info.bytes == 0, "{info:?}");
    t.assert_no_chromium_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_is_captured_and_kept_from_a_listener_on_the_redirect_uri() {
    // A stand-in for the farm's own loopback callback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    tokio::spawn({
        let hits = hits.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut sock, _)) = listener.accept().await {
                hits.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            }
        }
    });
    let provider = Provider::start_with_redirect(port);
    let t = TestPool::new(2);
    let (vars, auth) = provider.vars("ivan", "ivan-password").await;
    let outcome = t
        .pool
        .run_login(
            "ivan",
            &script(PASSWORD_SCRIPT),
            &vars,
            &provider.redirect_uri,
            RUN_TIMEOUT,
        )
        .await
        .unwrap();
    provider
        .redeem(outcome.redirect_url.as_ref().expect("a redirect"), &auth)
        .await;
    // The browser's request is stopped before it reaches a listener on the
    // redirect URI: the code exists once, in the outcome (a second delivery
    // could be redeemed twice, and the provider would revoke the grant).
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the redirect reached the listener"
    );
    t.assert_no_chromium_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_caller_does_not_leave_a_browser_behind() {
    let provider = Provider::start();
    let t = TestPool::new(2);
    let (vars, _) = provider.vars("judy", "judy-password").await;
    let redirect = provider.redirect_uri.clone();
    let script = script(PARK_ON_CONSENT);
    let timeout = Duration::from_secs(8);
    let run = t.pool.run_login("judy", &script, &vars, &redirect, timeout);
    // The caller gives up while the browser is open...
    let _ = tokio::time::timeout(Duration::from_secs(3), run).await;
    // ...the run goes on in its own task until its timeout, then closes.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while t.pool.open_browsers() > 0 {
        assert!(std::time::Instant::now() < deadline, "browser never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.assert_no_chromium_left();
    let failure_shot = std::fs::read_dir(t.dir.path().join("artifacts/judy"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with("-failure.png"));
    assert!(failure_shot, "the timed-out run saved its screenshot");
}

/// Relogins share one Playwright driver (node), which stops once it has
/// been idle for `driver_linger`; no Chromium outlives its run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relogins_share_one_driver_that_stops_after_the_linger() {
    let provider = Provider::start();
    let TestPool { pool, dir } = TestPool::new(2);
    let linger = Duration::from_secs(1);
    let cfg = BrowserConfig {
        driver_linger: linger,
        ..pool.config().clone()
    };
    let t = TestPool {
        pool: BrowserPool::new(cfg),
        dir,
    };
    let script = script(PASSWORD_SCRIPT);
    assert_eq!(t.pool.driver_starts(), 0, "started lazily");
    assert_eq!(t.pool.driver_pid(), None);

    let mut pids = Vec::new();
    for _ in 0..2 {
        let (vars, auth) = provider.vars("kim", "kim-password").await;
        let outcome = t.login(&provider, "kim", &script, &vars).await.unwrap();
        provider
            .redeem(outcome.redirect_url.as_ref().expect("a redirect"), &auth)
            .await;
        // Between runs: the browser is closed, the driver lingers.
        t.assert_no_chromium_left();
        let pid = t
            .pool
            .driver_pid()
            .expect("the driver lingers between runs");
        assert!(process_alive(pid), "driver {pid} runs");
        pids.push(pid);
    }
    assert_eq!(
        t.pool.driver_starts(),
        1,
        "the second run reused the driver"
    );
    assert_eq!(pids[0], pids[1]);

    // Idle beyond the linger: no driver process is left.
    let deadline = std::time::Instant::now() + linger + Duration::from_secs(10);
    while t.pool.driver_pid().is_some() || process_alive(pids[0]) {
        assert!(
            std::time::Instant::now() < deadline,
            "driver {} still running {linger:?} after the last run",
            pids[0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.assert_no_chromium_left();

    // The next relogin starts a fresh driver; shutdown stops it at once.
    let (vars, _) = provider.vars("kim", "kim-password").await;
    t.login(&provider, "kim", &script, &vars).await.unwrap();
    assert_eq!(t.pool.driver_starts(), 2);

    // A driver that died while idle is replaced on the next launch.
    let dead = t.pool.driver_pid().expect("a fresh driver");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &dead.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (vars, _) = provider.vars("kim", "kim-password").await;
    t.login(&provider, "kim", &script, &vars)
        .await
        .expect("the run retries on a fresh driver");
    assert_eq!(t.pool.driver_starts(), 3);
    assert!(!process_alive(dead));

    let pid = t.pool.driver_pid().expect("the fresh driver lingers");
    tokio::time::timeout(Duration::from_secs(20), t.pool.shutdown())
        .await
        .expect("shutdown finishes");
    assert_eq!(t.pool.driver_pid(), None);
    assert!(!process_alive(pid), "shutdown stopped driver {pid}");
    t.assert_no_chromium_left();
}

/// A live (not zombie) process.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

#[tokio::test]
async fn doctor_finds_nothing_missing_here() {
    let problems =
        doctor(&BrowserSettings::defaults_under(crate::support::repo_root()).engine()).await;
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test]
async fn bad_profile_keys_are_refused() {
    let t = TestPool::new(1);
    for key in ["../escape", "a/b", ""] {
        assert!(
            matches!(t.pool.reset(key).await, Err(PoolError::BadProfileKey(_))),
            "{key}"
        );
    }
}

async fn wait_for_artifact(t: &TestPool, profile: &str, name: &str) {
    let dir = t.dir.path().join("artifacts").join(profile);
    let suffix = format!("-{name}.png");
    for _ in 0..300 {
        let found = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(&suffix))
            })
            .unwrap_or(false);
        if found {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {name} screenshot under {}", dir.display());
}
