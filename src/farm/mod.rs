//! The farm service: the one API that the HTTP handlers, the CLI and the
//! scheduler call. It owns the in-memory view of every account (so
//! `/credential/next` never waits on disk for a read), writes every change
//! through to the [`Store`], and enforces the invariants:
//!
//! - one refresh grant in flight per account, whoever asks (`refresh.rs`);
//! - tokens are persisted before anything uses them;
//! - a failed refresh marks an account, it never deletes it.

mod backup;
mod clients;
mod credentials;
mod login;
mod refresh;
mod relogin;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore};

use crate::config::Config;
use crate::domain::{Account, AccountId, Rotation};
use crate::events::{EventBus, EventKind};
use crate::oauth::{OAuthError, Provider};
use crate::store::leases::LeaseLog;
use crate::store::{Store, StoreError};

pub use clients::{NewClient, Principal};
pub use credentials::{CredentialLease, ReportRequest};
pub use login::LoginStarted;
pub use relogin::{ReloginCause, ReloginDone};
pub use view::{AccountPatch, AccountView, Health};

/// Everything that can go wrong in a farm operation. The HTTP layer turns
/// each variant into a status code in one place (`http::error`).
#[derive(Debug, thiserror::Error)]
pub enum FarmError {
    #[error("no {what} with id {id}")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("no account of provider {provider:?} can serve now; retry in {retry_after_s} s")]
    NoAccountAvailable {
        provider: String,
        retry_after_s: i64,
    },
    #[error("the lease {0} has expired")]
    LeaseExpired(String),
    #[error("login failed: {0}")]
    Login(String),
    #[error("invalid login script: {0}")]
    InvalidScript(String),
    #[error("browser relogin failed: {0}")]
    Relogin(String),
    #[error("refresh failed: {0}")]
    Refresh(#[source] OAuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("backup failed: {0}")]
    Backup(#[source] StoreError),
}

pub type Result<T, E = FarmError> = std::result::Result<T, E>;

/// The mutable in-memory state, behind one short-held lock.
#[derive(Default)]
pub(crate) struct State {
    pub accounts: BTreeMap<AccountId, Account>,
    pub rotation: Rotation,
}

pub struct Farm {
    pub(crate) config: Config,
    pub(crate) store: Arc<Store>,
    pub(crate) lease_log: LeaseLog,
    pub(crate) providers: BTreeMap<String, Arc<Provider>>,
    state: Mutex<State>,
    /// One async lock per account: holding it is the right to send a
    /// refresh grant for that account.
    refresh_locks: Mutex<HashMap<AccountId, Arc<tokio::sync::Mutex<()>>>>,
    /// Bounds refresh grants in flight across all accounts.
    pub(crate) refresh_slots: Semaphore,
    pub(crate) logins: login::PendingLogins,
    pub(crate) clients: clients::ClientKeys,
    /// Wakes the scheduler when an account's due time may have moved.
    pub(crate) scheduler_wake: Notify,
    pub(crate) metrics: crate::metrics::Metrics,
    pub events: EventBus,
    pub(crate) webhooks: Vec<Arc<crate::webhooks::Webhook>>,
    /// The browser pool (`None` when `[browser] enabled = false`).
    pub browser: Option<crate::browser::BrowserPool>,
    /// One browser relogin per account at a time.
    relogin_locks: Mutex<HashMap<AccountId, Arc<tokio::sync::Mutex<()>>>>,
    /// Held while a backup is being taken: one at a time.
    backup_running: tokio::sync::Mutex<()>,
    /// The rotating proxy's upstreams, quotas and metrics.
    pub(crate) proxy: crate::proxy::Proxies,
}

impl Farm {
    /// Opens the farm over an opened store: loads accounts and client keys.
    pub fn new(config: Config, store: Arc<Store>) -> Result<Arc<Farm>> {
        let now = Utc::now();
        let accounts = store.load_accounts(now - chrono::Duration::days(1))?;
        let lease_log = LeaseLog::start(store.path())?;
        let providers = config
            .providers
            .iter()
            .map(|p| (p.name.clone(), Arc::new(Provider::new(p.clone()))))
            .collect();
        let clients = clients::ClientKeys::load(&store, config.server.admin_token.clone())?;
        let interrupted = accounts.iter().filter(|a| a.suspect).count();
        if interrupted > 0 {
            tracing::warn!(
                accounts = interrupted,
                "refreshes were interrupted by the last shutdown; retrying them now"
            );
        }
        let mut accounts = accounts;
        for a in &mut accounts {
            a.has_login_script |= config
                .providers
                .iter()
                .any(|p| p.name == a.provider && p.login_script.is_some());
        }
        let browser = config
            .browser
            .enabled
            .then(|| crate::browser::BrowserPool::new(browser_config(&config.browser)));
        let state = State {
            accounts: accounts.into_iter().map(|a| (a.id, a)).collect(),
            rotation: Rotation::default(),
        };
        let events = EventBus::new(store.clone(), config.events.buffer);
        let webhooks = config
            .webhooks
            .iter()
            .enumerate()
            .map(|(i, w)| Arc::new(crate::webhooks::Webhook::new(i, w.clone())))
            .collect();
        let proxy = crate::proxy::Proxies::new(&config).map_err(FarmError::Invalid)?;
        let metrics = crate::metrics::Metrics::default();
        metrics.started(); // /healthz measures the scheduler's silence from here
        if let Some(newest) = crate::store::backup::list(&config.backup.dir)
            .ok()
            .and_then(|found| found.last().cloned())
        {
            metrics.set_last_backup(newest.created_at);
        }
        Ok(Arc::new(Farm {
            events,
            webhooks,
            browser,
            relogin_locks: Mutex::default(),
            refresh_slots: Semaphore::new(config.scheduler.max_concurrent_refreshes.max(1)),
            config,
            store,
            lease_log,
            providers,
            state: Mutex::new(state),
            refresh_locks: Mutex::default(),
            logins: login::PendingLogins::default(),
            clients,
            scheduler_wake: Notify::new(),
            metrics,
            backup_running: tokio::sync::Mutex::new(()),
            proxy,
        }))
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves `State` consistent before any call
        // that could panic, so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn provider(&self, name: &str) -> Result<&Arc<Provider>> {
        self.providers.get(name).ok_or_else(|| FarmError::NotFound {
            what: "provider",
            id: name.to_string(),
        })
    }

    /// Runs `f` on the account, or fails with 404.
    pub(crate) fn with_account<T>(
        &self,
        id: AccountId,
        f: impl FnOnce(&mut Account) -> T,
    ) -> Result<T> {
        let mut st = self.state();
        let a = st
            .accounts
            .get_mut(&id)
            .ok_or_else(|| not_found_account(id))?;
        Ok(f(a))
    }

    /// Applies `f` to the account in memory, then writes it through.
    pub(crate) fn update_account<T>(
        &self,
        id: AccountId,
        f: impl FnOnce(&mut Account) -> T,
    ) -> Result<T> {
        let (out, snapshot) = self.with_account(id, |a| {
            let out = f(a);
            (out, a.clone())
        })?;
        self.store.update_account(&snapshot)?;
        self.scheduler_wake.notify_one();
        Ok(out)
    }

    pub(crate) fn refresh_lock(&self, id: AccountId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.refresh_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(id).or_default().clone()
    }

    pub fn now() -> DateTime<Utc> {
        Utc::now()
    }

    pub(crate) fn emit(
        &self,
        kind: EventKind,
        account: Option<AccountId>,
        detail: impl Into<String>,
    ) {
        self.events.emit(kind, account, detail);
    }

    pub fn webhook_status(&self) -> Vec<crate::webhooks::WebhookStatus> {
        self.webhooks.iter().map(|w| w.status()).collect()
    }

    pub fn provider_names(&self) -> impl Iterator<Item = &str> {
        self.providers.keys().map(String::as_str)
    }
}

/// The browser runner's settings from the `[browser]` config section, with
/// relative paths made absolute against the current directory (Chromium
/// refuses a relative profile directory).
pub fn browser_config(b: &crate::config::BrowserSettings) -> crate::browser::BrowserConfig {
    let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    crate::browser::BrowserConfig {
        chromium: b.chromium.clone(),
        node: b.node.clone(),
        driver_cli_js: abs(&b.driver),
        headless: b.headless,
        extra_args: b.extra_args.clone(),
        max_concurrent: b.max_concurrent,
        profiles_dir: abs(&b.profiles_dir),
        artifacts_dir: abs(&b.artifacts_dir),
        driver_linger: b.driver_linger,
    }
}

pub(crate) fn not_found_account(id: AccountId) -> FarmError {
    FarmError::NotFound {
        what: "account",
        id: id.to_string(),
    }
}

/// chrono from std, saturating (config durations are bounded anyway).
pub(crate) fn chrono_dur(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// A farm for unit tests: its store in `dir`, the browser off, any extra
/// config appended (sections after the defaults).
#[cfg(test)]
pub(crate) fn test_farm(dir: &std::path::Path, extra_toml: &str) -> Arc<Farm> {
    let toml = format!(
        "[store]\npath = {:?}\n[browser]\nenabled = false\n{extra_toml}",
        dir.join("farm.db").display().to_string()
    );
    let env = [("RELOGIN_FARM_ADMIN_TOKEN".to_owned(), "a".repeat(40))];
    let config =
        Config::from_toml_str(&toml, env, &Default::default()).expect("a valid test config");
    crate::server::open_farm(config).expect("the test farm opens")
}

#[cfg(test)]
mod tests {
    #[test]
    fn browser_paths_become_absolute() {
        // Chromium refuses a relative user-data dir; the config's defaults are relative.
        let b = crate::config::Config::default().browser;
        let c = super::browser_config(&b);
        assert!(
            c.profiles_dir.is_absolute()
                && c.artifacts_dir.is_absolute()
                && c.driver_cli_js.is_absolute()
        );
        assert!(c.profiles_dir.ends_with("profiles"));
    }
}
