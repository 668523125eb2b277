//! Timings (run on purpose: `cargo test --test e2e bench -- --ignored --nocapture`).

use std::time::{Duration, Instant};

use super::support::{script, Provider, TestPool, PASSWORD_SCRIPT, RUN_TIMEOUT};

fn summary(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "{name:<44} n={} min {:>6.0} ms  median {:>6.0} ms  max {:>6.0} ms",
        samples.len(),
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn relogin_timings() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let provider = Provider::start();
    let t = TestPool::new(1);
    let script = script(PASSWORD_SCRIPT);
    let (mut live, mut live_wall, mut full, mut full_wall) = (vec![], vec![], vec![], vec![]);
    // Warm-up: creates the profile and the consent.
    let (vars, _) = provider.vars("bench", "bench-password").await;
    t.pool
        .run_login("bench", &script, &vars, &provider.redirect_uri, RUN_TIMEOUT)
        .await
        .unwrap();
    for _ in 0..runs {
        let (vars, _) = provider.vars("bench", "bench-password").await;
        let started = Instant::now();
        let o = t
            .pool
            .run_login("bench", &script, &vars, &provider.redirect_uri, RUN_TIMEOUT)
            .await
            .unwrap();
        live_wall.push(started.elapsed());
        assert_eq!(o.steps_acted, [0]);
        live.push(o.elapsed);

        provider.end_sessions().await;
        let (vars, _) = provider.vars("bench", "bench-password").await;
        let started = Instant::now();
        let o = t
            .pool
            .run_login("bench", &script, &vars, &provider.redirect_uri, RUN_TIMEOUT)
            .await
            .unwrap();
        full_wall.push(started.elapsed());
        assert_eq!(o.steps_acted, [0, 1, 2, 3]);
        full.push(o.elapsed);
    }
    summary("live profile: launch -> redirect captured", &mut live);
    summary(
        "live profile: whole run_login (incl. close)",
        &mut live_wall,
    );
    summary("full script: launch -> redirect captured", &mut full);
    summary("full script: whole run_login (incl. close)", &mut full_wall);
    t.assert_no_chromium_left();
}

/// Where the launch time goes: the driver (node) alone, then driver plus
/// Chromium on a profile, closed at once. The floor under any relogin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn launch_breakdown() {
    use playwright_rs::{BrowserContextOptions, Playwright};
    use relogin_farm::browser::runner::{export_driver_env, BrowserConfig};

    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let t = TestPool::new(1);
    let cfg: BrowserConfig = t.pool.config().clone();
    export_driver_env(&cfg);
    let profile = t.dir.path().join("profiles/breakdown");
    std::fs::create_dir_all(&profile).unwrap();
    let (mut driver, mut chromium, mut close) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        let started = Instant::now();
        let pw = Playwright::launch().await.unwrap();
        driver.push(started.elapsed());
        let started = Instant::now();
        let args = relogin_farm::browser::runner::CHROMIUM_FLAGS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let options = BrowserContextOptions::builder()
            .executable_path(cfg.chromium.display().to_string())
            .headless(true)
            .args(args)
            .build();
        let context = pw
            .chromium()
            .launch_persistent_context_with_options(profile.display().to_string(), options)
            .await
            .unwrap();
        chromium.push(started.elapsed());
        let started = Instant::now();
        context.close().await.unwrap();
        pw.shutdown().await.unwrap();
        close.push(started.elapsed());
    }
    summary("driver (node playwright-core) start", &mut driver);
    summary("chromium persistent context launch", &mut chromium);
    summary("context close + driver shutdown", &mut close);
    t.assert_no_chromium_left();
}
