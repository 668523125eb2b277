//! The e2e harness: the real `relogin-farm` binary against the real OIDC
//! provider in `tests/oidc`, each test with its own provider, farm, ports
//! and temporary directory.
//!
//! - [`process`]: a child daemon that announces itself on stdout; killed on drop.
//! - [`provider`]: `tests/oidc/provider.mjs` and its test-control API.
//! - [`browser`]: `tests/oidc/browse.mjs`, the user's browser.
//! - [`farm`]: the farm's config file and process.
//! - [`api`]: a blocking HTTP client for the farm's API.
//! - [`bed`]: one provider + one farm + the usual steps (add, log in, lease).
//! - [`netns`]: an agent CLI in a loopback-only network namespace, the farm reachable.
//! - [`sse`]: an event stream read frame by frame, with deadlines.
//! - [`receiver`]: an HTTP server in the test that records what it is sent.
//! - [`upstream`]: a fake LLM upstream for the proxy, scripted per token.
//! - [`quirk_provider`]: an OAuth provider emulator with real providers' quirks.

pub mod api;
pub mod bed;
pub mod browser;
pub mod farm;
pub mod netns;
pub mod process;
pub mod provider;
pub mod quirk_provider;
pub mod receiver;
pub mod schema;
pub mod sse;
pub mod upstream;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use api::{Api, Resp};
pub use bed::{Bed, Settings, PROVIDER};
pub use serde_json::{json, Value};

/// The repository root (where `Cargo.toml` is).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/oidc`, after checking that node and the provider's packages are
/// installed. A missing tool fails the test: these tests never skip.
pub fn oidc_dir() -> PathBuf {
    node_package_dir(
        "tests/oidc",
        "oidc-provider",
        "the test OIDC provider",
        "npm ci --prefix tests/oidc",
    )
}

/// `tests/clients`, the official SDKs pinned from npm, after checking that
/// they are installed.
pub fn clients_dir() -> PathBuf {
    node_package_dir(
        "tests/clients",
        "openai",
        "the official SDKs",
        "npm ci --prefix tests/clients",
    )
}

/// `scripts/playwright`, the project's pinned Playwright driver, after
/// checking that node, `playwright-core` and Debian's Chromium are installed.
pub fn playwright_dir() -> PathBuf {
    let dir = node_package_dir(
        "scripts/playwright",
        "playwright-core",
        "Playwright",
        "npm ci --prefix scripts/playwright",
    );
    assert!(
        Path::new(CHROMIUM).is_file(),
        "the admin page tests need {CHROMIUM}: run `scripts/setup` (it runs `apt-get install chromium`)"
    );
    dir
}

/// The browser the page tests drive (Debian's package, as the farm uses).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// `dir` (relative to the repository root) once node runs and
/// `dir/node_modules/<package>` is installed; panics with how to install
/// them otherwise (`npm_ci`: the command `scripts/setup` runs for `dir`).
fn node_package_dir(dir: &str, package: &str, what: &str, npm_ci: &str) -> PathBuf {
    static NODE: OnceLock<Result<(), String>> = OnceLock::new();
    let fix = format!("run `scripts/setup` (it installs node and runs `{npm_ci}`)");
    let node =
        NODE.get_or_init(
            || match std::process::Command::new("node").arg("--version").output() {
                Ok(out) if out.status.success() => Ok(()),
                Ok(out) => Err(format!("`node --version` failed ({})", out.status)),
                Err(e) => Err(format!("node is not installed ({e})")),
            },
        );
    if let Err(reason) = node {
        panic!("the e2e tests need {what}: {reason}; {fix}");
    }
    let dir = repo_root().join(dir);
    let installed = dir.join("node_modules").join(package).join("package.json");
    assert!(
        installed.is_file(),
        "the e2e tests need {what}: {} is missing; {fix}",
        installed.display()
    );
    dir
}

/// `target/test-artifacts/<name>`, created empty: files a test leaves for a
/// person to look at (git ignores `target/`).
pub fn artifacts_dir(name: &str) -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target dir")
        .join("test-artifacts")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// A fresh store key: base64 of 32 random bytes.
pub fn random_store_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

/// A file's permission bits (`0o600`…); panics naming the file if it is missing.
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The `kind` of each event, in order.
pub fn event_kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("?"))
        .collect()
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Polls `probe` every 50 ms until it returns `Ok`, or panics after
/// `timeout` with `what` and the last `Err` (what was seen instead).
pub fn wait_for<T>(what: &str, timeout: Duration, probe: impl FnMut() -> Result<T, String>) -> T {
    poll(timeout, probe).unwrap_or_else(|seen| {
        panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen}")
    })
}

/// Polls `probe` every 50 ms until it returns `Ok`; after `timeout`, the
/// last `Err`.
pub fn poll<T>(
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(v) => return Ok(v),
            Err(seen) if Instant::now() >= deadline => return Err(seen),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// `value[key]` as a string (panics with the value when it is not one).
pub fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {value}"))
}

/// `value[key]` as an integer (panics with the value when it is not one).
pub fn int_of(value: &Value, key: &str) -> i64 {
    value[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} is not an integer in {value}"))
}

/// Parses an RFC 3339 field of `value`.
pub fn time_of(value: &Value, key: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(str_of(value, key))
        .unwrap_or_else(|e| panic!("{key} is not RFC 3339 in {value}: {e}"))
        .with_timezone(&chrono::Utc)
}

/// Parses the Prometheus text format: `# HELP` / `# TYPE` lines and samples
/// `name{labels} value`. Panics on any other line.
pub fn prometheus_samples(text: &str) -> Vec<(String, f64)> {
    let is_name = |n: &str| {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.split(' ');
            let (kind, name) = (words.next(), words.next());
            assert!(
                matches!(kind, Some("HELP" | "TYPE")) && name.is_some_and(is_name),
                "bad comment line: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line: {line}"));
        let name = series.split_once('{').map_or(series, |(name, labels)| {
            assert!(
                labels.ends_with('}') && labels.contains("=\""),
                "bad labels in: {line}"
            );
            name
        });
        assert!(is_name(name), "bad metric name in: {line}");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad sample value in: {line}"));
        samples.push((series.to_string(), value));
    }
    samples
}
