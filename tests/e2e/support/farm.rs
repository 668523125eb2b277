//! The farm under test: its `farm.toml` and its process
//! (`relogin-farm serve --config farm.toml --listen 127.0.0.1:0`).

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use super::bed::{BrowserSettings, Settings, PROVIDER};
use super::process::{clean_command, Daemon, StartFailure};
use super::provider::{Provider, CLIENT_ID};
use super::{playwright_dir, CHROMIUM};

/// Where a test's farm keeps its files, inside the test's temp dir.
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn config(&self) -> PathBuf {
        self.root.join("farm.toml")
    }
    /// The data directory; the farm creates it.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }
    pub fn db(&self) -> PathBuf {
        self.data_dir().join("farm.db")
    }
    pub fn admin_token_file(&self) -> PathBuf {
        self.root.join("admin.token")
    }
    /// The farm's browser profiles, one dir per account (`[browser]`).
    pub fn profiles_dir(&self) -> PathBuf {
        self.root.join("profiles")
    }
    /// Screenshots of failed relogins (`[browser]`).
    pub fn artifacts_dir(&self) -> PathBuf {
        self.data_dir().join("artifacts")
    }
    /// What the OIDC provider wrote to stderr.
    pub fn provider_log(&self) -> PathBuf {
        self.root.join("provider.log")
    }
    /// Everything every farm process of the test wrote to stderr.
    pub fn farm_log(&self) -> PathBuf {
        self.root.join("farm.log")
    }

    /// Writes `farm.toml` for `settings` against `provider`, and the admin
    /// token file (0600) it points at.
    pub fn write_config(&self, settings: &Settings, provider: &Provider, admin_token: &str) {
        use std::os::unix::fs::OpenOptionsExt;
        let mut token = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.admin_token_file())
            .expect("write the admin token file");
        std::io::Write::write_all(&mut token, format!("{admin_token}\n").as_bytes())
            .expect("write the admin token");

        let s = settings;
        let mut toml = String::new();
        let q = |p: &Path| toml_string(&p.display().to_string());
        let _ = writeln!(
            toml,
            "[server]\nadmin_token_file = {}\nlease_ttl = \"10m\"\n{}",
            q(&self.admin_token_file()),
            s.server_toml
        );
        let _ = writeln!(toml, "[store]\npath = {}\n", q(&self.db()));
        let _ = writeln!(
            toml,
            "[scheduler]\nrefresh_margin = \"{}\"\nmax_sleep = \"{}\"\nretry_initial = \"{}\"\nretry_max = \"{}\"\n\
             sweep = \"*/2 * * * * *\"\nmax_concurrent_refreshes = 8\n",
            s.refresh_margin, s.max_sleep, s.retry_initial, s.retry_max
        );
        let _ = writeln!(
            toml,
            "[rotation]\nstrategy = \"{}\"\nmin_validity = \"{}\"\ndefault_cooldown = \"{}\"\nmax_cooldown = \"{}\"\n{}",
            s.strategy,
            s.min_validity,
            s.default_cooldown,
            s.max_cooldown,
            s.client_rate
                .map(|r| format!("client_rate = \"{r}\"\n"))
                .unwrap_or_default()
        );
        let _ = writeln!(toml, "[log]\nlevel = \"{}\"\n", s.log_level);
        if let Some(browser) = &s.browser {
            toml.push_str(&self.browser_toml(browser));
        }
        let _ = writeln!(
            toml,
            "[[provider]]\nname = \"{PROVIDER}\"\nissuer = {}\nclient_id = \"{CLIENT_ID}\"\n\
             scopes = [\"openid\", \"offline_access\"]\nredirect_uri = {}\nlogin_timeout = \"2m\"",
            toml_string(&provider.issuer),
            toml_string(&provider.redirect_uri)
        );
        toml.push_str(&s.extra_toml);
        std::fs::write(self.config(), toml).expect("write farm.toml");
    }

    /// The `[browser]` section: absolute paths, so the farm and the CLI find
    /// everything wherever they run.
    fn browser_toml(&self, b: &BrowserSettings) -> String {
        let q = |p: &Path| toml_string(&p.display().to_string());
        let driver = playwright_dir().join("node_modules/playwright-core/cli.js");
        format!(
            "[browser]\nchromium = {}\ndriver = {}\nheadless = true\nmax_concurrent = {}\nrelogins_per_minute = {}\n\
             profiles_dir = {}\nartifacts_dir = {}\nretry_initial = \"{}\"\nretry_max = \"{}\"\nsession_idle = \"{}\"\ncanary = {}\n\n",
            q(Path::new(CHROMIUM)),
            q(&driver),
            b.max_concurrent,
            b.relogins_per_minute,
            q(&self.profiles_dir()),
            q(&self.artifacts_dir()),
            b.retry_initial,
            b.retry_max,
            b.session_idle,
            toml_string(b.canary)
        )
    }
}

pub fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A running farm.
pub struct FarmProcess {
    daemon: Daemon,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl FarmProcess {
    /// Starts the farm of `layout`; `store_key` goes to `RELOGIN_FARM_KEY`
    /// (`None`: the farm uses, or creates, `data/farm.key`).
    pub fn start(
        layout: &Layout,
        store_key: Option<&str>,
        settings: &Settings,
    ) -> Result<FarmProcess, StartFailure> {
        let mut cmd = clean_command(env!("CARGO_BIN_EXE_relogin-farm"));
        cmd.arg("serve")
            .arg("--config")
            .arg(layout.config())
            .args(["--listen", "127.0.0.1:0"])
            .current_dir(&layout.root);
        if let Some(key) = store_key {
            cmd.env("RELOGIN_FARM_KEY", key);
        }
        if let Some(filter) = settings.rust_log {
            cmd.env("RUST_LOG", filter);
        }
        if let Some(nofile) = settings.nofile {
            limit_open_files(&mut cmd, nofile);
        }
        let (daemon, url) = Daemon::spawn("relogin-farm", cmd, &layout.farm_log(), "LISTENING ")?;
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "unexpected LISTENING line: {url}"
        );
        Ok(FarmProcess { daemon, url })
    }

    /// Graceful stop: SIGTERM, and the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.daemon.terminate(Duration::from_secs(30))
    }

    /// `kill -9`.
    pub fn kill9(mut self) {
        self.daemon.kill();
    }
}

/// Runs `cmd` with at most `nofile` open files (soft and hard limit).
pub fn limit_open_files(cmd: &mut std::process::Command, nofile: u64) {
    use std::os::unix::process::CommandExt;
    let limit = libc::rlimit {
        rlim_cur: nofile,
        rlim_max: nofile,
    };
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}
