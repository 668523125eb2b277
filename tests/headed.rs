//! `open_headed` under Xvfb, in its own binary: it sets DISPLAY before any
//! thread exists (the e2e binary runs tests in parallel threads). Also the
//! real `relogin-farm browser open` CLI holding a profile against the farm.

#[path = "e2e/support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

#[path = "e2e/browser_engine/support.rs"]
#[allow(dead_code)]
mod engine;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine::{Provider, TestPool, RUN_TIMEOUT};
use relogin_farm::browser::runner::{PoolError, ProfileUse};
use relogin_farm::browser::script::LoginScript;

struct Xvfb(Child);

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Xvfb on a free display and exports DISPLAY. Fails loudly if Xvfb
/// is missing.
fn start_xvfb() -> Xvfb {
    let display = (100..200)
        .find(|n| !std::path::Path::new(&format!("/tmp/.X11-unix/X{n}")).exists())
        .expect("a free X display number");
    let child = Command::new("Xvfb")
        .arg(format!(":{display}"))
        .args(["-screen", "0", "1280x800x24", "-nolisten", "tcp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Xvfb is needed for the headed test: apt-get install -y xvfb");
    let socket = format!("/tmp/.X11-unix/X{display}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(&socket).exists() {
        assert!(Instant::now() < deadline, "Xvfb did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::env::set_var("DISPLAY", format!(":{display}"));
    Xvfb(child)
}

/// The browser's main process for `profile` (the one without `--type=`).
fn browser_main_pid(t: &TestPool, profile: &str) -> Option<(u32, String)> {
    let dir = t.dir.path().join("profiles").join(profile);
    engine::chromium_pids_under(&dir)
        .into_iter()
        .find_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (!cmd.contains("--type=")).then_some((pid, cmd))
        })
}

async fn wait_for_browser(t: &TestPool, profile: &str) -> (u32, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = browser_main_pid(t, profile) {
            return found;
        }
        assert!(Instant::now() < deadline, "headed browser never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A page that reports when the browser fetches it (the launch is over).
async fn start_page() -> (url::Url, tokio::sync::mpsc::Receiver<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = url::Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let _ = sock
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
                )
                .await;
            let _ = tx.try_send(());
        }
    });
    (url, rx)
}

/// Waits (30 s at most) until the browser asked for the start page.
async fn page_requested(requests: &mut tokio::sync::mpsc::Receiver<()>, what: &str) {
    match tokio::time::timeout(Duration::from_secs(30), requests.recv()).await {
        Ok(Some(())) => {}
        _ => panic!("{what} was not requested within 30 s"),
    }
}

#[test]
fn open_headed_holds_the_profile_until_the_window_closes() {
    let _xvfb = start_xvfb();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let provider = Provider::start();
            let t = TestPool::new(2);

            // A person opens the profile; the window closing (browser exits by
            // itself) ends `open_headed`.
            let (start_url, mut page_loaded) = start_page().await;
            let open = tokio::spawn({
                let pool = t.pool.clone();
                async move { pool.open_headed("lena", Some(&start_url)).await }
            });
            page_requested(&mut page_loaded, "the start page").await;
            let (pid, cmdline) = wait_for_browser(&t, "lena").await;
            assert!(
                !cmdline.contains("--headless"),
                "a visible window: {cmdline}"
            );
            let status = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            tokio::time::timeout(Duration::from_secs(20), open)
                .await
                .expect("returns when closed")
                .unwrap()
                .unwrap();

            // Open again: while the person has it, the farm does not launch it,
            // and it cannot be wiped; at shutdown the window is closed cleanly.
            let open = tokio::spawn({
                let pool = t.pool.clone();
                async move { pool.open_headed("lena", None).await }
            });
            wait_for_browser(&t, "lena").await;
            let (vars, _) = provider.vars("lena", "lena-password").await;
            let script =
                LoginScript::parse("provider = \"d\"\n[[step]]\ngoto = \"${authorize_url}\"\n")
                    .unwrap();
            let started = Instant::now();
            let refused = t
                .pool
                .run_login("lena", &script, &vars, &provider.redirect_uri, RUN_TIMEOUT)
                .await
                .unwrap_err();
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "refused at once, not queued"
            );
            assert!(!refused.needs_human());
            assert!(
                refused.to_string().contains("in use by a person"),
                "{refused}"
            );
            assert!(matches!(
                t.pool.reset("lena").await,
                Err(PoolError::ProfileBusy {
                    by: ProfileUse::Person,
                    ..
                })
            ));
            t.pool.shutdown().await;
            open.await.unwrap().unwrap();
            t.assert_no_chromium_left();

            // The same from another process: `relogin-farm browser open` (the
            // real CLI) holds the profile; the farm's pool, in this process,
            // neither launches nor wipes it, and names who has it.
            let farm = TestPool::new(1);
            let (start_url, mut page_loaded) = start_page().await;
            let cli = BrowserCli::open(&farm, "7", &start_url);
            page_requested(&mut page_loaded, "the CLI's --url page").await;
            let (pid, _) = wait_for_browser(&farm, "7").await;
            let refused = farm
                .pool
                .run_login("7", &script, &vars, &provider.redirect_uri, RUN_TIMEOUT)
                .await
                .unwrap_err();
            let holder = format!("in use by process {} (a person (browser open))", cli.0.id());
            assert!(!refused.needs_human());
            assert!(refused.to_string().contains(&holder), "{refused}");
            match farm.pool.reset("7").await {
                Err(e @ PoolError::ProfileHeldElsewhere { .. }) => {
                    assert!(e.to_string().contains(&holder), "{e}")
                }
                other => panic!("wiped under the person: {other:?}"),
            }
            let status = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            if let Err(e) = cli.wait_success(Duration::from_secs(20)) {
                panic!("the CLI did not exit cleanly once the window closed: {e}");
            }
            farm.pool
                .reset("7")
                .await
                .expect("free once the person is done");
            farm.pool.shutdown().await;
            farm.assert_no_chromium_left();
        });
}

/// `relogin-farm browser open ID` on a pool's profiles dir; killed if dropped
/// while running.
struct BrowserCli(Child);

impl BrowserCli {
    fn open(pool: &TestPool, account: &str, url: &url::Url) -> BrowserCli {
        let project = support::repo_root();
        let config = pool.dir.path().join("farm.toml");
        let q = |p: &std::path::Path| format!("{:?}", p.display().to_string());
        std::fs::write(
            &config,
            format!(
                "[browser]\nchromium = \"/usr/bin/chromium\"\ndriver = {}\nprofiles_dir = {}\nartifacts_dir = {}\n",
                q(&project.join("scripts/playwright/node_modules/playwright-core/cli.js")),
                q(&pool.dir.path().join("profiles")),
                q(&pool.dir.path().join("artifacts")),
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_relogin-farm"))
            .arg("--config")
            .arg(&config)
            .args(["browser", "open", account, "--url", url.as_str()])
            .env_remove("RELOGIN_FARM_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start relogin-farm browser open");
        BrowserCli(child)
    }

    /// Waits for the CLI to exit; `Err` with what it said unless it
    /// succeeded in time.
    fn wait_success(mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.0.kill();
                let _ = self.0.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut said = String::new();
        if let Some(mut err) = self.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut said);
        }
        match status {
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(format!("{status}: {said}")),
            None => Err(format!("still running after {timeout:?}; it said:\n{said}")),
        }
    }
}

impl Drop for BrowserCli {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
