//! `[browser]` configuration and the process environment the Playwright
//! driver is found through.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The driver version playwright-rs 0.20 speaks to; the lockfile pins it.
pub const DRIVER_VERSION: &str = "1.64.0";

/// Chromium flags for a headless server on a closed network: without the
/// networking ones Chromium floods the network with refused connections
/// (component updates, sync, QUIC probes). `--no-sandbox` is not among
/// them: see [`Sandbox`]. `--test-type` keeps Chromium from showing its
/// "unsupported command-line flag: --no-sandbox" bar over the page a
/// person records or fixes a login on (ChromeDriver and Playwright's own
/// app windows pass it for the same reason). The password manager is off
/// through the profile's preferences
/// ([`disable_password_manager`](super::profile::disable_password_manager)).
pub const CHROMIUM_FLAGS: [&str; 7] = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--test-type",
];

/// `browser.sandbox`: whether Chromium runs its renderers in its sandbox.
/// The sandbox is what keeps a page that exploits a renderer bug from
/// the farm's files; Chromium refuses to start it as root (it needs user
/// namespaces an unprivileged user gets), so `Auto` turns it off only
/// there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sandbox {
    /// On, unless the farm runs as root.
    #[default]
    Auto,
    /// Always on (a root farm's browsers then fail to start).
    On,
    /// Always off (`--no-sandbox`), e.g. in a container without user
    /// namespaces.
    Off,
}

impl Sandbox {
    /// Whether the sandbox is used, for a farm running as root or not.
    pub fn applies(self, running_as_root: bool) -> bool {
        match self {
            Sandbox::Auto => !running_as_root,
            Sandbox::On => true,
            Sandbox::Off => false,
        }
    }

    /// The setting as written in `farm.toml`.
    pub fn as_config(self) -> &'static str {
        match self {
            Sandbox::Auto => "\"auto\"",
            Sandbox::On => "true",
            Sandbox::Off => "false",
        }
    }
}

/// Whether this process runs as root (effective uid 0): the owner of
/// `/proc/self` is the effective uid.
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// What the runner needs from the `[browser]` section of the farm config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserConfig {
    /// Chromium binary (Debian: `apt-get install chromium`).
    pub chromium: PathBuf,
    /// Node.js that runs the Playwright driver.
    pub node: PathBuf,
    /// The driver's `cli.js` (`playwright-core`, pinned in scripts/playwright).
    pub driver_cli_js: PathBuf,
    /// Headless for scripted relogins; `open_headed` ignores it.
    pub headless: bool,
    /// Appended to [`CHROMIUM_FLAGS`].
    pub extra_args: Vec<String>,
    /// Whether Chromium runs with its sandbox (decided from
    /// `browser.sandbox` by [`Sandbox::applies`]).
    pub sandbox: bool,
    /// Hosts relogin pages may be on besides the run's authorize and
    /// redirect hosts (`*.example.com` for subdomains); empty: any.
    pub allowed_hosts: Vec<String>,
    /// Browsers (each ~300 MB; their driver ~120 MB) running at once for
    /// scripted relogins; the rest queue.
    pub max_concurrent: usize,
    /// One persistent profile per account: `<profiles_dir>/<profile_key>/`.
    pub profiles_dir: PathBuf,
    /// Failure screenshots and `screenshot` steps: `<artifacts_dir>/<profile_key>/`.
    pub artifacts_dir: PathBuf,
    /// How long the Playwright driver relogins share stays up once no
    /// relogin runs (a node process, ~120 MB): a burst of relogins then
    /// starts it once. Zero stops it with the last session. No Chromium
    /// outlives its session either way.
    pub driver_linger: Duration,
}

impl BrowserConfig {
    /// The Chromium command-line flags for a launch. Playwright adds
    /// `--no-sandbox` itself unless told the sandbox is wanted
    /// (`chromiumSandbox`, set from [`sandbox`](Self::sandbox) at launch);
    /// it is named here too so the decision is in one place and visible.
    pub fn chromium_args(&self) -> Vec<String> {
        let no_sandbox = (!self.sandbox).then_some("--no-sandbox");
        no_sandbox
            .into_iter()
            .chain(CHROMIUM_FLAGS)
            .map(str::to_string)
            .chain(self.extra_args.iter().cloned())
            .collect()
    }

    /// Absolute paths, so a later `chdir` (or a relative config file) does
    /// not break the driver lookup.
    pub(crate) fn absolute(path: &Path) -> PathBuf {
        std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Serializes "point playwright-rs at our driver, then start it".
///
/// playwright-rs reads `PLAYWRIGHT_NODE_EXE` / `PLAYWRIGHT_CLI_JS` from the
/// process environment when a driver starts, and offers no other way to
/// pass them. Setting them under this lock, right before each start, keeps
/// two pools with different configs (tests) from racing each other. The
/// values are the same for every start in a daemon, so the set is a no-op
/// after the first.
static DRIVER_ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) async fn start_driver(
    cfg: &BrowserConfig,
) -> playwright_rs::Result<playwright_rs::Playwright> {
    let _guard = DRIVER_ENV.lock().await;
    export_driver_env(cfg);
    playwright_rs::Playwright::launch().await
}

/// As [`start_driver`], also returning the driver's process id (the child
/// of ours running `run-driver` that was not there before; drivers only
/// start under `DRIVER_ENV`, so no other one appears meanwhile). `None` if
/// it cannot be told (no /proc).
pub(crate) async fn start_driver_with_pid(
    cfg: &BrowserConfig,
) -> playwright_rs::Result<(playwright_rs::Playwright, Option<u32>)> {
    let _guard = DRIVER_ENV.lock().await;
    export_driver_env(cfg);
    let before = driver_children();
    let playwright = playwright_rs::Playwright::launch().await?;
    let pid = driver_children()
        .into_iter()
        .find(|pid| !before.contains(pid));
    Ok((playwright, pid))
}

/// Our child processes running a Playwright driver (`cli.js run-driver`).
fn driver_children() -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // `pid (comm) state ppid …`; comm may hold spaces and parens.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(me)
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.split(|b| *b == 0).any(|arg| arg == b"run-driver"))
        })
        .collect()
}

fn set_env_if_changed(name: &str, value: &Path) {
    if std::env::var_os(name).as_deref() != Some(value.as_os_str()) {
        // Edition 2021: `set_var` is safe to call; it is only unsound if C
        // code reads the environment concurrently, which nothing in the farm
        // does (Rust's own env access is locked). The daemon may also call
        // `export_driver_env` before starting its runtime to avoid it.
        std::env::set_var(name, value);
    }
}

/// Sets the driver environment variables for `cfg` once, up front. Optional:
/// call from `main` before the tokio runtime starts its threads, so later
/// launches never write the environment.
///
/// Also sets `PLAYWRIGHT_NO_SIGNAL_HANDLER`: otherwise playwright-rs's first
/// launch installs a Ctrl-C handler that calls `process::exit(130)`, which
/// would kill the daemon on SIGINT without closing its browsers (and lose
/// the cookies of a relogin in progress).
pub fn export_driver_env(cfg: &BrowserConfig) {
    set_env_if_changed("PLAYWRIGHT_NODE_EXE", &BrowserConfig::absolute(&cfg.node));
    set_env_if_changed(
        "PLAYWRIGHT_CLI_JS",
        &BrowserConfig::absolute(&cfg.driver_cli_js),
    );
    if let Some(dir) = driver_dir(cfg) {
        set_env_if_changed("PLAYWRIGHT_DRIVER_PATH", &dir);
    }
    set_env_if_changed("PLAYWRIGHT_NO_SIGNAL_HANDLER", Path::new("1"));
}

/// A driver directory in playwright-rs's layout (`node`, `package/cli.js`),
/// made of two symlinks under the profiles directory. Without it
/// playwright-rs runs `npm root -g` and `npm root` (0.2–0.5 s) on every
/// launch before it reads the variables above. `None` if it cannot be
/// made; the variables above still work, only slower.
fn driver_dir(cfg: &BrowserConfig) -> Option<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = BrowserConfig::absolute(&cfg.profiles_dir).join(".driver");
    let package = BrowserConfig::absolute(&cfg.driver_cli_js)
        .parent()?
        .to_path_buf();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .ok()?;
    for (name, target) in [
        ("node", BrowserConfig::absolute(&cfg.node)),
        ("package", package),
    ] {
        let link = dir.join(name);
        if std::fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link).ok()?;
        }
    }
    Some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_is_off_only_for_root_or_when_asked() {
        for (setting, root, applies) in [
            (Sandbox::Auto, false, true),
            (Sandbox::Auto, true, false),
            (Sandbox::On, true, true),
            (Sandbox::On, false, true),
            (Sandbox::Off, false, false),
            (Sandbox::Off, true, false),
        ] {
            assert_eq!(
                setting.applies(root),
                applies,
                "{setting:?} as root: {root}"
            );
        }
    }

    #[test]
    fn no_sandbox_flag_only_without_the_sandbox() {
        let cfg = |sandbox| BrowserConfig {
            sandbox,
            extra_args: vec!["--lang=de".into()],
            ..crate::config::BrowserSettings::default().engine()
        };
        let with = cfg(true).chromium_args();
        assert!(!with.iter().any(|a| a == "--no-sandbox"), "{with:?}");
        assert_eq!(with.last().map(String::as_str), Some("--lang=de"));
        let without = cfg(false).chromium_args();
        assert_eq!(without[0], "--no-sandbox");
        assert_eq!(without.len(), with.len() + 1);
        // No "unsupported flag: --no-sandbox" bar over a person's page.
        assert!(without.iter().any(|a| a == "--test-type"), "{without:?}");
    }
}
