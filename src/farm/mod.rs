//! The farm service: the one API that the HTTP handlers, the CLI and the
//! scheduler call. It owns the in-memory view of every account (so
//! `/credential/next` never waits on disk for a read), writes every change
//! through to the [`Store`], and enforces the invariants:
//!
//! - one refresh grant in flight per account, whoever asks (`refresh.rs`);
//! - tokens are persisted before anything uses them;
//! - a failed refresh marks an account, it never deletes it.
//!
//! Its two edges to the outside, the wall clock ([`Clock`]) and each
//! provider's token endpoint ([`TokenEndpoint`]), are handed in
//! ([`Farm::new_with`]), so the refresh protocol and the scheduler are
//! unit-tested on a paused tokio clock against a scripted provider
//! (`refresh_tests.rs`, `scripted.rs`).

mod backup;
mod canary;
mod clients;
mod credentials;
mod digest;
mod lifecycle;
mod login;
mod observe;
mod refresh;
#[cfg(test)]
mod refresh_tests;
mod relogin;
mod remote;
mod schedule;
#[cfg(test)]
pub(crate) mod scripted;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, Semaphore};

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ProviderConfig};
use crate::domain::{Account, AccountId, Rotation};
use crate::events::{EventBus, EventKind};
use crate::oauth::{OAuthError, Provider, TokenEndpoint};
use crate::store::leases::LeaseLog;
use crate::store::{Store, StoreError};

pub use clients::{NewClient, Principal};
pub use credentials::{CredentialLease, Issued, ReportRequest};
pub use login::{loopback_addr, LoginStarted};
pub use refresh::RefreshOutcome;
pub use relogin::{BrowserInfo, ReloginCause, ReloginDone, SecretName};
pub use remote::{Attached, Outgoing, RemoteMode, RemoteRequest, RemoteStarted};
pub use view::{AccountPatch, AccountView, ErrorView, Health, ProviderView};

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
    #[error(
        "the lease {0} is closed (released, expired, or its account was removed); take a new one"
    )]
    LeaseClosed(String),
    #[error("this client key is over its rate of {rate} on /credential/* (rotation.client_rate); retry in {retry_after_s} s")]
    RateLimited { rate: String, retry_after_s: i64 },
    #[error("login failed: {0}")]
    Login(String),
    /// The redirect came back but trading its code for tokens failed.
    #[error("login failed: code exchange failed: {0}")]
    CodeExchange(#[source] OAuthError),
    #[error("invalid login script: {0}")]
    InvalidScript(String),
    #[error("browser relogin failed: {0}")]
    Relogin(String),
    /// The farm's configuration names something it cannot use (say, an
    /// unreadable file); the message names the key and the path.
    #[error("configuration error: {0}")]
    Config(String),
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
    config: Config,
    store: Arc<Store>,
    lease_log: LeaseLog,
    providers: BTreeMap<String, Arc<dyn TokenEndpoint>>,
    /// Where the farm reads "now" (and sleeps): the system clock, or a
    /// paused tokio clock in unit tests.
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Held by [`Farm::update_account`] from its store write to its memory
    /// change: durable account changes reach disk and memory in one order.
    account_writes: Mutex<()>,
    /// One async lock per account: holding it is the right to send a
    /// refresh grant for that account.
    refresh_locks: Mutex<HashMap<AccountId, Arc<tokio::sync::Mutex<()>>>>,
    /// Bounds refresh grants in flight across all accounts.
    refresh_slots: Semaphore,
    logins: login::PendingLogins,
    clients: clients::ClientKeys,
    /// Each client key's request bucket on `/credential/*`.
    client_buckets: Mutex<HashMap<i64, crate::domain::Bucket>>,
    /// Wakes the scheduler when an account's due time may have moved.
    scheduler_wake: Notify,
    metrics: crate::metrics::Metrics,
    events: EventBus,
    webhooks: Vec<Arc<crate::webhooks::Webhook>>,
    /// The browser pool (`None` when `[browser] enabled = false`).
    browser: Option<crate::browser::BrowserPool>,
    /// One browser relogin per account at a time.
    relogin_locks: Mutex<HashMap<AccountId, Arc<tokio::sync::Mutex<()>>>>,
    /// Each provider's earliest next recovery relogin (`browser.relogins_per_minute`).
    relogin_next_start: Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>,
    /// The admin page's remote browser sessions.
    remote: remote::RemoteSessions,
    /// Held while a backup is being taken: one at a time.
    backup_running: tokio::sync::Mutex<()>,
    /// The rotating proxy's upstreams, quotas and metrics.
    proxy: crate::proxy::state::Proxies,
}

impl Farm {
    /// Opens the farm over an opened store: loads accounts and client keys.
    pub fn new(config: Config, store: Arc<Store>) -> Result<Arc<Farm>> {
        Farm::new_with(config, store, Arc::new(SystemClock), |p| {
            Arc::new(Provider::new(p.clone()))
        })
    }

    /// [`Farm::new`] with its clock and its providers' token endpoints
    /// given (`endpoint` is called once per configured provider).
    pub fn new_with(
        config: Config,
        store: Arc<Store>,
        clock: Arc<dyn Clock>,
        endpoint: impl Fn(&ProviderConfig) -> Arc<dyn TokenEndpoint>,
    ) -> Result<Arc<Farm>> {
        let now = clock.now();
        let accounts = store.load_accounts(now - chrono::Duration::days(1))?;
        let lease_log = LeaseLog::start(store.path())?;
        let providers = config
            .providers
            .iter()
            .map(|p| (p.name.clone(), endpoint(p)))
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
        let reuse_detection = |provider: &str| {
            config
                .providers
                .iter()
                .any(|p| p.name == provider && p.reuse_detection)
        };
        for a in &mut accounts {
            if a.relogin_after_interrupted_refresh(
                reuse_detection(&a.provider),
                config.browser.enabled,
            ) {
                to_browser_after_crash(&store, a, now)?;
            }
        }
        let browser = config
            .browser
            .enabled
            .then(|| crate::browser::BrowserPool::new(config.browser.engine()));
        let state = State {
            accounts: accounts.into_iter().map(|a| (a.id, a)).collect(),
            rotation: Rotation::default(),
        };
        let events = EventBus::new(store.clone(), config.events.buffer, clock.clone());
        let webhooks = config
            .webhooks
            .iter()
            .enumerate()
            .map(|(i, w)| Arc::new(crate::webhooks::Webhook::new(i, w.clone())))
            .collect();
        let proxy = crate::proxy::state::Proxies::new(&config).map_err(FarmError::Invalid)?;
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
            relogin_next_start: Mutex::default(),
            remote: Default::default(),
            refresh_slots: Semaphore::new(config.scheduler.max_concurrent_refreshes.max(1)),
            config,
            store,
            lease_log,
            providers,
            clock,
            state: Mutex::new(state),
            account_writes: Mutex::default(),
            refresh_locks: Mutex::default(),
            logins: login::PendingLogins::default(),
            clients,
            client_buckets: Mutex::default(),
            scheduler_wake: Notify::new(),
            metrics,
            backup_running: tokio::sync::Mutex::new(()),
            proxy,
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves `State` consistent before any call
        // that could panic, so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn provider(&self, name: &str) -> Result<&Arc<dyn TokenEndpoint>> {
        self.providers.get(name).ok_or_else(|| FarmError::NotFound {
            what: "provider",
            id: name.to_string(),
        })
    }

    /// The rotating proxy's upstreams, quotas and counters.
    pub fn proxies(&self) -> &crate::proxy::state::Proxies {
        &self.proxy
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

    /// Changes an account durably: disk first, then memory. `f` is applied
    /// to a copy, the copy is written to the store, and only then is `f`
    /// applied to the account in memory, so a failed write leaves memory
    /// as it was (the API never answers 500 while serving the change).
    /// `f` runs twice: it must only set fields, with any clock reading or
    /// randomness taken outside it. Writers take `account_writes`, so disk
    /// and memory see them in the same order.
    fn update_account<T>(&self, id: AccountId, f: impl Fn(&mut Account) -> T) -> Result<T> {
        let _in_order = self
            .account_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut copy = self.with_account(id, |a| a.clone())?;
        f(&mut copy);
        self.store.update_account(&copy)?;
        let out = self.with_account(id, f)?;
        self.scheduler_wake.notify_one();
        Ok(out)
    }

    fn refresh_lock(&self, id: AccountId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.refresh_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(id).or_default().clone()
    }

    pub(crate) fn emit(
        &self,
        kind: EventKind,
        account: Option<AccountId>,
        detail: impl Into<String>,
    ) {
        self.events.emit(kind, account, detail);
    }

    /// [`emit`](Self::emit) with the event's `data` (for programs).
    pub(crate) fn emit_with(
        &self,
        kind: EventKind,
        account: Option<AccountId>,
        detail: impl Into<String>,
        data: serde_json::Value,
    ) {
        self.events.emit_with(kind, account, detail, Some(data));
    }
}

/// An account whose refresh a crash interrupted, on a provider that revokes
/// a grant when a spent refresh token comes back: marked `needs_relogin`
/// (disk first) so the recovery ladder's browser logs it in, instead of the
/// start-up catch-up replaying the refresh token that may be spent.
fn to_browser_after_crash(
    store: &Store,
    a: &mut Account,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<()> {
    let mut marked = a.clone();
    marked.auth = crate::domain::AuthState::NeedsRelogin;
    marked.suspect = false;
    marked.last_error = Some(crate::domain::LastError {
        at: now,
        message: "a refresh was interrupted by the last shutdown and the provider detects \
                  refresh token reuse: logging in with the browser instead of replaying it"
            .into(),
    });
    store.update_account(&marked)?;
    tracing::warn!(
        account = a.id,
        "interrupted refresh on a provider with reuse detection; relogging in with the browser"
    );
    *a = marked;
    Ok(())
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
    crate::server::open_farm(test_config(dir, false, extra_toml)).expect("the test farm opens")
}

#[cfg(test)]
impl Farm {
    /// Puts accounts into memory only, as a test's fixture.
    pub(crate) fn put_accounts_for_test(&self, accounts: impl IntoIterator<Item = Account>) {
        self.state()
            .accounts
            .extend(accounts.into_iter().map(|a| (a.id, a)));
    }

    /// The farm's event bus, for a test of the bus itself.
    pub(crate) fn event_bus_for_test(&self) -> &EventBus {
        &self.events
    }
}

/// A [`test_farm`] with the given clock and every provider's token
/// endpoint from `endpoint`.
#[cfg(test)]
pub(crate) fn test_farm_with(
    dir: &std::path::Path,
    browser: bool,
    extra_toml: &str,
    clock: Arc<dyn Clock>,
    endpoint: impl Fn(&ProviderConfig) -> Arc<dyn TokenEndpoint>,
) -> Arc<Farm> {
    crate::server::open_farm_with(test_config(dir, browser, extra_toml), clock, endpoint)
        .expect("the test farm opens")
}

/// The config of [`test_farm`], the browser on or off (it launches
/// nothing until a relogin runs).
#[cfg(test)]
pub(crate) fn test_config(dir: &std::path::Path, browser: bool, extra_toml: &str) -> Config {
    let toml = format!(
        "[store]\npath = {:?}\n[browser]\nenabled = {browser}\n{extra_toml}",
        dir.join("farm.db").display().to_string()
    );
    let env = [("RELOGIN_FARM_ADMIN_TOKEN".to_owned(), "a".repeat(40))];
    Config::from_toml_str(&toml, env, &Default::default()).expect("a valid test config")
}

#[cfg(test)]
mod tests {
    /// A store that refuses every account update: a trigger in the real
    /// database, added through a second SQLite connection.
    fn refuse_account_updates(farm: &super::Farm) {
        let conn = rusqlite::Connection::open(farm.store.path()).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER refuse BEFORE UPDATE ON accounts \
             BEGIN SELECT RAISE(ABORT, 'the disk refuses'); END;",
        )
        .unwrap();
    }

    #[test]
    fn an_interrupted_refresh_with_reuse_detection_goes_to_the_browser_at_start() {
        use crate::domain::{AuthState, Tokens};
        let dir = tempfile::tempdir().unwrap();
        let provider = |reuse: bool| {
            format!(
                "[[provider]]\nname = \"demo\"\nissuer = \"http://127.0.0.1:19000\"\n\
                 client_id = \"c\"\nredirect_uri = \"http://127.0.0.1:18765/callback\"\n\
                 login_script = \"demo.toml\"\nreuse_detection = {reuse}\n"
            )
        };
        let now = chrono::Utc::now();
        let (id, generation) = {
            let farm =
                crate::server::open_farm(super::test_config(dir.path(), true, &provider(false)))
                    .unwrap();
            let id = farm.add_account("demo", "alice", 0).unwrap().id;
            let tokens = Tokens {
                access_token: crate::secret::Secret::new("at"),
                token_type: "Bearer".into(),
                expires_at: now + chrono::Duration::hours(1),
                issued_at: now,
                refresh_token: Some(crate::secret::Secret::new("rt")),
            };
            let generation = farm.store.save_tokens(id, &tokens, now).unwrap().unwrap();
            // The grant was sent; the process died before its answer.
            farm.store.set_refresh_started(id, Some(now)).unwrap();
            (id, generation)
        };
        let reopen = |browser: bool, reuse: bool| {
            let config = super::test_config(dir.path(), browser, &provider(reuse));
            crate::server::open_farm(config).unwrap()
        };
        let state = |farm: &super::Farm| farm.with_account(id, |a| (a.auth, a.suspect)).unwrap();
        // Without reuse detection, or without a browser, the refresh is retried at once.
        assert_eq!(state(&reopen(true, false)), (AuthState::Active, true));
        assert_eq!(state(&reopen(false, true)), (AuthState::Active, true));
        let farm = reopen(true, true);
        assert_eq!(state(&farm), (AuthState::NeedsRelogin, false));
        assert!(
            farm.due_refreshes(now, chrono::Duration::minutes(1))
                .0
                .is_empty(),
            "no replay of the refresh token"
        );
        assert_eq!(
            farm.due_relogins(now, &Default::default()).0,
            vec![id],
            "the browser logs it in"
        );
        let view = farm.account(id).unwrap();
        assert_eq!(view.state, crate::domain::DisplayState::NeedsRelogin);
        assert!(view.last_error.unwrap().message.contains("reuse"));
        assert_eq!(view.generation, generation, "the tokens are kept");
        drop(farm);
        // The decision was stored, not just made in memory.
        assert_eq!(state(&reopen(true, false)).0, AuthState::NeedsRelogin);
    }

    #[test]
    fn a_failed_store_write_leaves_memory_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let farm = super::test_farm(
            dir.path(),
            "[[provider]]\nname = \"demo\"\nissuer = \"http://127.0.0.1:19000\"\n\
             client_id = \"c\"\nredirect_uri = \"http://127.0.0.1:18765/callback\"\n",
        );
        let id = farm.add_account("demo", "alice", 3).unwrap().id;
        refuse_account_updates(&farm);
        let patch = super::AccountPatch {
            label: Some("bob".into()),
            priority: Some(9),
            enabled: Some(false),
        };
        let err = farm.patch_account(id, patch).unwrap_err();
        assert!(matches!(err, super::FarmError::Store(_)), "{err:?}");
        let view = farm.account(id).unwrap();
        assert_eq!(
            (view.label.as_str(), view.priority, view.enabled),
            ("alice", 3, true),
            "memory kept a change the disk refused"
        );
        // The scheduler's end of a cooldown goes the same way.
        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        farm.with_account(id, |a| a.cooldown_until = Some(past))
            .unwrap();
        farm.end_cooldowns(chrono::Utc::now());
        assert_eq!(
            farm.with_account(id, |a| a.cooldown_until).unwrap(),
            Some(past)
        );
    }
}
