//! A test bed: one provider, one farm on a data dir of its own, an admin
//! API client, and the steps most tests take (add an account, log it in,
//! create a client key).

use std::process::{ExitStatus, Output};
use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::{json, Value};
use tempfile::TempDir;

use super::api::{http_client, Api};
use super::browser;
use super::farm::{FarmProcess, Layout};
use super::process::{clean_command, run_with_deadline, StartFailure};
use super::provider::Provider;
use super::{int_of, prometheus_samples, random_hex, random_store_key, str_of, wait_for};

/// The provider's name in every test's `farm.toml`.
pub const PROVIDER: &str = "demo";

/// What a test can tune; durations in humantime syntax, as in `farm.toml`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The provider's access-token lifetime, in seconds.
    pub access_ttl: u32,
    pub strategy: &'static str,
    pub refresh_margin: &'static str,
    pub max_sleep: &'static str,
    pub retry_initial: &'static str,
    pub retry_max: &'static str,
    pub min_validity: &'static str,
    pub default_cooldown: &'static str,
    pub max_cooldown: &'static str,
    /// `rotation.client_rate`; `None`: the farm's default.
    pub client_rate: Option<&'static str>,
    /// `log.level` in the config file.
    pub log_level: &'static str,
    /// `RUST_LOG` for the farm process.
    pub rust_log: Option<&'static str>,
    /// Give the store key in `RELOGIN_FARM_KEY`; `false`: the farm creates
    /// and uses `data/farm.key`.
    pub key_in_env: bool,
    /// Appended to `farm.toml` as is: whole tables such as `[[webhook]]`
    /// blocks (see [`Settings::with_toml`]).
    pub extra_toml: String,
    /// The `[browser]` section (see [`Settings::with_browser`]); `None`:
    /// none is written (the farm's defaults, never launched by most tests).
    pub browser: Option<BrowserSettings>,
    /// Lines added to the `[server]` section (see [`Settings::with_server`]).
    pub server_toml: String,
    /// The farm process's open-file limit (soft and hard); `None`: inherited.
    pub nofile: Option<u64>,
}

/// The farm's own browser for a test: headless Debian Chromium and the
/// project's Playwright driver, with the profiles and artifacts dirs in the
/// test's temp dir (see [`Layout::profiles_dir`]); durations in humantime
/// syntax.
#[derive(Clone, Debug)]
pub struct BrowserSettings {
    pub max_concurrent: u32,
    /// Recovery relogins started at the provider in a minute.
    pub relogins_per_minute: u32,
    /// Backoff after a failed relogin.
    pub retry_initial: &'static str,
    pub retry_max: &'static str,
    /// An admin page remote browser session's idle limit.
    pub session_idle: &'static str,
    /// `browser.canary` (cron): off unless a test brings it forward.
    pub canary: &'static str,
}

impl Default for BrowserSettings {
    fn default() -> Self {
        BrowserSettings {
            max_concurrent: 2,
            relogins_per_minute: 600,
            retry_initial: "1s",
            retry_max: "5s",
            session_idle: "10m",
            canary: "",
        }
    }
}

impl Default for Settings {
    /// Long-lived tokens (no refresh unless a test asks for one), a
    /// scheduler that wakes at least every second.
    fn default() -> Self {
        Settings {
            access_ttl: 120,
            strategy: "round-robin",
            refresh_margin: "2s",
            max_sleep: "1s",
            retry_initial: "300ms",
            retry_max: "2s",
            min_validity: "1s",
            default_cooldown: "60s",
            max_cooldown: "1h",
            client_rate: None,
            log_level: "info",
            rust_log: None,
            key_in_env: true,
            extra_toml: String::new(),
            browser: None,
            server_toml: String::new(),
            nofile: None,
        }
    }
}

impl Settings {
    /// Short-lived tokens that the scheduler refreshes: 4 s access tokens,
    /// refreshed 2 s before expiry.
    pub fn short_tokens() -> Self {
        Settings {
            access_ttl: 4,
            ..Settings::default()
        }
    }

    /// These settings plus `toml` at the end of `farm.toml`.
    pub fn with_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push('\n');
        self.extra_toml.push_str(toml);
        self
    }

    /// These settings plus `lines` in the `[server]` section.
    pub fn with_server(mut self, lines: &str) -> Self {
        self.server_toml.push_str(lines);
        self.server_toml.push('\n');
        self
    }

    /// These settings with the farm's own browser enabled (`[browser]`).
    pub fn with_browser(self, browser: BrowserSettings) -> Self {
        Settings {
            browser: Some(browser),
            ..self
        }
    }
}

pub struct Bed {
    pub settings: Settings,
    pub provider: Provider,
    pub layout: Layout,
    pub admin_token: String,
    /// The store key (base64 of 32 bytes), whether given in the environment
    /// or not.
    pub store_key: String,
    farm: Option<FarmProcess>,
    http: Client,
    _dir: TempDir,
}

impl Bed {
    pub fn start(settings: Settings) -> Bed {
        let dir = tempfile::Builder::new()
            .prefix("relogin-farm-e2e-")
            .tempdir()
            .expect("create a temp dir");
        let layout = Layout {
            root: dir.path().to_path_buf(),
        };
        let provider = Provider::start(&layout.provider_log(), settings.access_ttl);
        let admin_token = format!("adm-{}", random_hex(24));
        layout.write_config(&settings, &provider, &admin_token);
        let store_key = random_store_key();
        let mut bed = Bed {
            settings,
            provider,
            layout,
            admin_token,
            store_key,
            farm: None,
            http: http_client(),
            _dir: dir,
        };
        bed.start_farm();
        bed
    }

    /// Starts the farm (again) on the same data dir; panics if it does not
    /// come up.
    pub fn start_farm(&mut self) {
        let key = self.settings.key_in_env.then(|| self.store_key.clone());
        if let Err(f) = self.try_start_farm(key.as_deref()) {
            panic!("the farm did not start ({:?}):\n{}", f.status, f.log);
        }
    }

    /// Starts the farm with `store_key` in `RELOGIN_FARM_KEY` (or none).
    pub fn try_start_farm(&mut self, store_key: Option<&str>) -> Result<(), StartFailure> {
        assert!(self.farm.is_none(), "the farm is already running");
        let farm = FarmProcess::start(&self.layout, store_key, &self.settings)?;
        self.farm = Some(farm);
        Ok(())
    }

    fn running(&self) -> &FarmProcess {
        self.farm.as_ref().expect("the farm is not running")
    }

    /// Graceful stop (SIGTERM); returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.farm.take().expect("the farm is not running").stop()
    }

    /// `kill -9` the farm.
    pub fn kill9(&mut self) {
        self.farm.take().expect("the farm is not running").kill9();
    }

    /// SIGTERM, then start again on the same data dir; the stop must be clean.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(
            status.success(),
            "the farm did not exit cleanly on SIGTERM: {status}"
        );
        self.start_farm();
    }

    /// Runs `relogin-farm --config farm.toml ARGS` to its end (30 s at most)
    /// with `stdin` piped into it, and the store key in its environment when
    /// the farm gets it there too.
    pub fn run_cli(&self, args: &[&str], stdin: &str) -> Output {
        let mut cmd = clean_command("sh");
        cmd.arg("-c")
            .arg(r#"printf '%s\n' "$CLI_STDIN" | "$0" --config "$CLI_CONFIG" "$@""#)
            .arg(env!("CARGO_BIN_EXE_relogin-farm"))
            .args(args)
            .env("CLI_STDIN", stdin)
            .env("CLI_CONFIG", self.layout.config())
            .current_dir(&self.layout.root);
        if self.settings.key_in_env {
            cmd.env("RELOGIN_FARM_KEY", &self.store_key);
        }
        run_with_deadline("relogin-farm", cmd, Duration::from_secs(30))
    }

    /// The stored events after id `after` (`GET /api/events?since=…`), oldest first.
    pub fn events_since(&self, after: i64) -> Vec<Value> {
        let list = self.admin().get(&format!("/api/events?since={after}")).ok();
        list.as_array()
            .unwrap_or_else(|| panic!("?since={after} is not a JSON array: {list}"))
            .clone()
    }

    /// Everything the farm processes of this test wrote to stderr.
    pub fn farm_log(&self) -> String {
        std::fs::read_to_string(self.layout.farm_log()).unwrap_or_default()
    }

    /// The farm's base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.running().url
    }

    /// The farm's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        let url = self.url();
        url.rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in the farm's URL {url}"))
    }

    /// The farm's API with `token` as the bearer token (`None`: no header).
    pub fn api(&self, token: Option<&str>) -> Api {
        Api::new(self.http.clone(), &self.running().url, token)
    }

    pub fn admin(&self) -> Api {
        self.api(Some(&self.admin_token))
    }

    /// Creates a client key; returns its id and the key.
    pub fn new_client(&self, name: &str) -> (i64, String) {
        let created = self
            .admin()
            .post("/api/clients", json!({"name": name}))
            .expect(201);
        assert_eq!(created["name"], name, "{created}");
        (int_of(&created, "id"), str_of(&created, "key").to_string())
    }

    /// Adds an account of [`PROVIDER`] labelled `user` (the provider's user
    /// name), pending its login; returns its id.
    /// The API as a new client key's holder.
    pub fn client(&self, name: &str) -> Api {
        self.api(Some(&self.new_client(name).1))
    }

    pub fn add_account(&self, user: &str, priority: i64) -> i64 {
        let body = json!({"provider": PROVIDER, "label": user, "priority": priority});
        let account = self.admin().post("/api/accounts", body).expect(201);
        assert_eq!(account["state"], "pending_login", "{account}");
        int_of(&account, "id")
    }

    /// Adds an account of `provider` labelled `label` and starts its login
    /// (`POST /api/accounts/{id}/login`); returns its id and that answer.
    pub fn add_and_start_login(&self, provider: &str, label: &str) -> (i64, Value) {
        let admin = self.admin();
        let body = json!({"provider": provider, "label": label, "priority": 0});
        let id = int_of(&admin.post("/api/accounts", body).expect(201), "id");
        let started = admin
            .post(&format!("/api/accounts/{id}/login"), json!({}))
            .ok();
        (id, started)
    }

    pub fn account(&self, id: i64) -> Value {
        self.admin().get(&format!("/api/accounts/{id}")).ok()
    }

    /// `POST /api/accounts/{id}/login`: the authorize URL.
    pub fn start_login(&self, id: i64) -> String {
        let started = self
            .admin()
            .post(&format!("/api/accounts/{id}/login"), json!({}))
            .ok();
        assert!(started["expires_at"].is_string(), "{started}");
        str_of(&started, "authorize_url").to_string()
    }

    /// Logs `user` in by pasting the redirect URL; returns the account.
    pub fn login_by_paste(&self, id: i64, user: &str) -> Value {
        let redirect_url = browser::sign_in(&self.start_login(id), user);
        self.admin()
            .post(
                &format!("/api/accounts/{id}/login/complete"),
                json!({"redirect_url": redirect_url}),
            )
            .ok()
    }

    /// Logs `user` in through the farm's loopback listener; returns the
    /// account once it is healthy.
    pub fn login_by_loopback(&self, id: i64, user: &str) -> Value {
        let status = browser::sign_in_and_follow(&self.start_login(id), user);
        assert_eq!(status, 200, "the farm's loopback page answered {status}");
        self.wait_state(id, "healthy", Duration::from_secs(10))
    }

    /// Adds one healthy account per user (priority 0, by paste); returns
    /// their ids in the same order.
    pub fn logged_in(&self, users: &[&str]) -> Vec<i64> {
        users
            .iter()
            .map(|u| self.logged_in_with_priority(u, 0))
            .collect()
    }

    pub fn logged_in_with_priority(&self, user: &str, priority: i64) -> i64 {
        let id = self.add_account(user, priority);
        let account = self.login_by_paste(id, user);
        assert_eq!(
            account["state"], "healthy",
            "after the login of {user}: {account}"
        );
        id
    }

    /// The value of one series (`name{labels}`) of `GET /metrics`.
    pub fn metric(&self, series: &str) -> f64 {
        let resp = self.admin().get("/metrics");
        assert_eq!(resp.status, 200, "/metrics: {}", resp.text);
        let samples = prometheus_samples(&resp.text);
        let found = samples.iter().find(|(s, _)| s == series);
        found
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{}", resp.text))
            .1
    }

    /// Waits until the account's state is `state`; returns the account.
    pub fn wait_state(&self, id: i64, state: &str, timeout: Duration) -> Value {
        self.wait_account(&format!("account {id} to be {state}"), id, timeout, |a| {
            a["state"] == state
        })
    }

    /// Waits until `accept` holds for the account; returns the account.
    pub fn wait_account(
        &self,
        what: &str,
        id: i64,
        timeout: Duration,
        accept: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_for(what, timeout, || {
            let account = self.account(id);
            if accept(&account) {
                Ok(account)
            } else {
                Err(account.to_string())
            }
        })
    }
}

impl Drop for Bed {
    /// When a test fails, the end of both logs goes with its output (the
    /// temp dir they are in is removed).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (name, path) in [
            ("farm", self.layout.farm_log()),
            ("provider", self.layout.provider_log()),
        ] {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("---- last lines of the {name} log ----\n{tail}");
        }
    }
}
