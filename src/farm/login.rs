//! Logging an account in: authorization code + PKCE, finished either by
//! the loopback listener on the provider's `redirect_uri` or by pasting the
//! redirect URL into the API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use url::Url;

use super::refresh::tokens_from;
use super::{chrono_dur, Farm, FarmError, Result};
use crate::browser::runner::LoginProgress;
use crate::config::IdentityConfig;
use crate::domain::identity::{self, mismatch_message, Identity, Source};
use crate::domain::provider::{jwt_claims, parse_pasted, DevicePoll, LoginKind, PollStep};
use crate::domain::{AccountId, AuthState, LastError};
use crate::events::EventKind;
use crate::loopback::{self, Landing};
use crate::oauth::{parse_callback, CallbackError, Grant, TokenEndpoint};
use crate::secret::{ct_eq, Secret};
use crate::store::LoginSave;

/// A login waiting for its redirect. Held in memory only: after a restart
/// the person simply starts the login again.
struct Pending {
    account_id: AccountId,
    state: Secret,
    pkce_verifier: Secret,
    issuer: Option<String>,
    expires_at: DateTime<Utc>,
}

#[derive(Default)]
pub(crate) struct PendingLogins {
    /// By account: starting a new login replaces the previous one.
    by_account: Mutex<HashMap<AccountId, Pending>>,
    /// Loopback listeners by address, with the handle that stops them.
    listeners: Mutex<HashMap<SocketAddr, tokio::sync::oneshot::Sender<()>>>,
    /// Device logins being polled, by account: the serial of the latest
    /// one. A poll whose serial is no longer there stops (another login
    /// started, the account was removed, or it finished).
    devices: Mutex<HashMap<AccountId, u64>>,
    device_serial: std::sync::atomic::AtomicU64,
}

impl PendingLogins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, Pending>> {
        self.by_account.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn forget_account(&self, id: AccountId) {
        self.lock().remove(&id);
        self.stop_device(id);
    }

    fn devices(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, u64>> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new device login of the account (stopping any earlier
    /// one); returns its serial.
    fn start_device(&self, id: AccountId) -> u64 {
        let serial = self
            .device_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.devices().insert(id, serial);
        serial
    }

    fn device_current(&self, id: AccountId, serial: u64) -> bool {
        self.devices().get(&id) == Some(&serial)
    }

    fn stop_device(&self, id: AccountId) {
        self.devices().remove(&id);
    }

    /// Drops logins whose time is up; returns how many.
    pub fn expire(&self, now: DateTime<Utc>) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, p| p.expires_at > now);
        before - map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Takes the pending login whose state matches (compared in constant
    /// time), optionally only for one account.
    fn take(
        &self,
        state: &Secret,
        account: Option<AccountId>,
        now: DateTime<Utc>,
    ) -> Option<Pending> {
        let mut map = self.lock();
        let id = map
            .iter()
            .find(|(id, p)| {
                account.is_none_or(|a| a == **id)
                    && ct_eq(p.state.expose().as_bytes(), state.expose().as_bytes())
            })
            .map(|(id, _)| *id)?;
        map.remove(&id).filter(|p| p.expires_at > now)
    }

    /// Puts back a login taken for a code that did not work, unless the
    /// account started another meanwhile.
    fn restore(&self, pending: Pending) {
        self.lock().entry(pending.account_id).or_insert(pending);
    }

    /// Takes the account's pending login if `check` accepts its state;
    /// otherwise it stays pending.
    fn take_checked<T>(
        &self,
        id: AccountId,
        now: DateTime<Utc>,
        check: impl FnOnce(&Secret) -> std::result::Result<T, CallbackError>,
    ) -> Result<(Pending, T)> {
        let mut map = self.lock();
        let Some(pending) = map.get(&id).filter(|p| p.expires_at > now) else {
            return Err(FarmError::Conflict(format!(
                "no login is pending for account {id} (expired or already used); start the login again"
            )));
        };
        let checked = check(&pending.state).map_err(|e| match e {
            CallbackError::StateMismatch => FarmError::Conflict(format!(
                "{e} (a code from another login?); paste the code of the login started last"
            )),
            CallbackError::Refused(_) => FarmError::Login(e.to_string()),
            _ => FarmError::Invalid(e.to_string()),
        })?;
        let pending = map.remove(&id).expect("found above, under the same lock");
        Ok((pending, checked))
    }
}

pub(crate) struct BegunLogin {
    pub authorize_url: Url,
    pub redirect_uri: Url,
    pub expires_at: DateTime<Utc>,
}

/// A device login begun: what a person (or a script) needs, and the
/// poll's progress.
pub(crate) struct BegunDevice {
    pub user_code: String,
    pub verification_uri: Url,
    pub verification_uri_complete: Option<Url>,
    /// Seconds between polls.
    pub interval: u64,
    pub expires_at: DateTime<Utc>,
    pub progress: watch::Receiver<LoginProgress>,
}

/// The answer to `POST /api/accounts/{id}/login`: an authorize URL to
/// open (`login = "code"`), or a user code to enter at the verification
/// URI while the farm polls (`login = "device"`).
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LoginStarted {
    pub account_id: AccountId,
    /// A code login's authorize URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize_url: Option<String>,
    /// A device login's page, where the person enters `user_code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_code: Option<String>,
    /// A device login's polling interval, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    pub expires_at: DateTime<Utc>,
    /// Whether the farm is listening on the redirect URI for this login.
    pub listening: bool,
}

impl Farm {
    /// Starts a login: returns the authorize URL for a person (or a browser)
    /// to open, and listens on the redirect URI when it is a loopback one.
    pub async fn start_login(self: &Arc<Self>, id: AccountId) -> Result<LoginStarted> {
        let provider_name = self.with_account(id, |a| a.provider.clone())?;
        if self.provider(&provider_name)?.config().login == LoginKind::Device {
            return self.start_device_login(id).await;
        }
        let begun = self.begin_login(id).await?;
        let listening = self.ensure_loopback_listener(&begun.redirect_uri).await;
        tracing::info!(account = id, listening, "login started");
        self.emit(EventKind::LoginStarted, Some(id), "login started");
        Ok(LoginStarted {
            account_id: id,
            authorize_url: Some(begun.authorize_url.to_string()),
            verification_uri: None,
            user_code: None,
            interval: None,
            expires_at: begun.expires_at,
            listening,
        })
    }

    /// Starts a device login (RFC 8628): asks the provider for a user
    /// code, then polls its token endpoint in the background until the
    /// person entered it, refused, or the code expired.
    async fn start_device_login(self: &Arc<Self>, id: AccountId) -> Result<LoginStarted> {
        let begun = self.begin_device_login(id).await?;
        tracing::info!(account = id, "device login started");
        self.emit(EventKind::LoginStarted, Some(id), "device login started");
        Ok(LoginStarted {
            account_id: id,
            authorize_url: None,
            verification_uri: Some(begun.verification_uri.into()),
            user_code: Some(begun.user_code),
            interval: Some(begun.interval),
            expires_at: begun.expires_at,
            listening: false,
        })
    }

    /// Asks the provider for a user code and starts polling for it
    /// (replacing any earlier login of the account); the poll's progress
    /// is the returned receiver's (the farm's browser waits on it).
    pub(crate) async fn begin_device_login(self: &Arc<Self>, id: AccountId) -> Result<BegunDevice> {
        let provider_name = self.with_account(id, |a| a.provider.clone())?;
        let provider = self.provider(&provider_name)?.clone();
        let start = provider
            .device_authorize()
            .await
            .map_err(|e| FarmError::Login(e.to_string()))?;
        // Checked before any poll starts: a browser (the farm's or a
        // person's) is sent there.
        let (verification_uri, verification_uri_complete) =
            verification_pages(&start).map_err(FarmError::Login)?;
        self.logins.lock().remove(&id);
        let serial = self.logins.start_device(id);
        let poll = DevicePoll::start(self.clock.now(), start.expires_in, start.interval);
        let (progress, watching) = watch::channel(LoginProgress::default());
        let begun = BegunDevice {
            user_code: start.user_code,
            verification_uri,
            verification_uri_complete,
            interval: poll.interval.num_seconds().max(0) as u64,
            expires_at: poll.expires_at,
            progress: watching,
        };
        let device_code = start.device_code;
        tokio::spawn(poll_device_login(
            Arc::downgrade(self),
            id,
            serial,
            provider,
            device_code,
            poll,
            progress,
        ));
        Ok(begun)
    }

    /// Starts a login for the farm's own browser: no loopback listener (the
    /// browser's redirect is captured in the browser itself).
    pub(crate) async fn start_browser_login(&self, id: AccountId) -> Result<BegunLogin> {
        self.begin_login(id).await
    }

    /// Registers a pending login (replacing any earlier one of the account)
    /// and builds its authorize URL.
    async fn begin_login(&self, id: AccountId) -> Result<BegunLogin> {
        let provider_name = self.with_account(id, |a| a.provider.clone())?;
        let provider = self.provider(&provider_name)?.clone();
        let req = provider
            .authorize()
            .await
            .map_err(|e| FarmError::Login(e.to_string()))?;
        let expires_at = self.clock.now() + chrono_dur(provider.config().login_timeout);
        self.logins.lock().insert(
            id,
            Pending {
                account_id: id,
                state: req.state,
                pkce_verifier: req.pkce_verifier,
                issuer: req.issuer,
                expires_at,
            },
        );
        Ok(BegunLogin {
            authorize_url: req.url,
            redirect_uri: provider.config().redirect_uri.clone(),
            expires_at,
        })
    }

    /// Finishes a login from the URL the browser was redirected to. With
    /// `account`, the login must be that account's (the paste endpoint).
    pub async fn complete_login(
        &self,
        redirect_url: &str,
        account: Option<AccountId>,
    ) -> Result<AccountId> {
        let url = Url::parse(redirect_url.trim())
            .map_err(|e| FarmError::Invalid(CallbackError::NotAUrl(e.to_string()).to_string()))?;
        let callback = parse_callback(&url).map_err(|e| match e {
            CallbackError::Refused(_) => FarmError::Login(e.to_string()),
            _ => FarmError::Invalid(e.to_string()),
        })?;
        let pending = self.logins.take(&callback.state, account, self.clock.now()).ok_or_else(|| {
            FarmError::Conflict("no login is pending with this state (expired, already used, or for another account); start the login again".into())
        })?;
        // RFC 9207: when the provider names itself, it must be the one we asked.
        if let (Some(iss), Some(expected)) = (&callback.iss, &pending.issuer) {
            if iss.trim_end_matches('/') != expected.trim_end_matches('/') {
                return Err(FarmError::Login(format!(
                    "the redirect came from issuer {iss:?}, expected {expected:?}"
                )));
            }
        }
        self.exchange_and_install(&pending, &callback.code).await
    }

    /// Finishes the account's pending login from what a person pasted: the
    /// redirect URL, `code#state` (as some providers' redirect pages show
    /// it) or a bare code (bound to the login by PKCE). A state, when there
    /// is one, must be the pending login's; a mismatch leaves the login
    /// pending.
    pub async fn complete_login_with_code(&self, pasted: &str, id: AccountId) -> Result<AccountId> {
        if pasted.contains("://") {
            return self.complete_login(pasted, Some(id)).await;
        }
        let (pending, pasted) = self
            .logins
            .take_checked(id, self.clock.now(), |state| parse_pasted(pasted, state))?;
        let result = self.exchange_and_install(&pending, &pasted.code).await;
        if result.is_err() {
            // A mistyped code: the login's verifier is still good for the
            // right one, so the person may paste again.
            self.logins.restore(pending);
        }
        result
    }

    /// Exchanges a pending login's code and stores the tokens.
    async fn exchange_and_install(&self, pending: &Pending, code: &Secret) -> Result<AccountId> {
        let id = pending.account_id;
        let provider_name = self.with_account(id, |a| a.provider.clone())?;
        let provider = self.provider(&provider_name)?.clone();
        let issued_at = self.clock.now();
        let grant = match provider
            .exchange_code(code, &pending.state, &pending.pkce_verifier)
            .await
        {
            Ok(g) => g,
            Err(e) => {
                self.emit(
                    EventKind::LoginFailed,
                    Some(id),
                    format!("code exchange failed: {e}"),
                );
                return Err(FarmError::CodeExchange(e));
            }
        };
        let identity = match login_identity(provider.as_ref(), &grant).await {
            Ok(identity) => identity,
            Err(e) => {
                let detail = format!("cannot tell whose tokens the login got: {e}");
                self.emit(EventKind::LoginFailed, Some(id), detail.clone());
                return Err(FarmError::Login(detail));
            }
        };
        let identity = self
            .install_login_tokens(
                id,
                tokens_from(grant, issued_at, provider.default_ttl()),
                identity,
            )
            .await?;
        let detail = match &identity {
            Some(identity) => format!("login completed as {identity}"),
            None => "login completed".to_owned(),
        };
        tracing::info!(account = id, "login completed");
        self.emit(EventKind::LoginCompleted, Some(id), detail);
        Ok(id)
    }

    /// Stores a fresh login's tokens if its identity is the account's
    /// (`Store::save_login_tokens` checks and writes in one transaction:
    /// disk before memory, so the wrong user's tokens are never served).
    /// Returns the pinned identity. Holds the refresh lock so that a
    /// refresh of the old tokens cannot land on top of the new ones.
    async fn install_login_tokens(
        &self,
        id: AccountId,
        tokens: crate::domain::Tokens,
        identity: Option<Identity>,
    ) -> Result<Option<Identity>> {
        let written = self.write_login(id, tokens, identity).await?;
        let now = written.now;
        match written.save {
            LoginSave::Saved { identity, .. } => Ok(identity),
            LoginSave::Refused { got, expected } => {
                Err(self.identity_refused(id, got.as_ref(), &expected, now))
            }
            LoginSave::Taken {
                identity,
                account,
                label,
            } => {
                let detail = format!(
                    "{identity} is already account {account} ({label:?}) of this provider; \
                     this login was not stored"
                );
                self.emit(EventKind::LoginFailed, Some(id), detail.clone());
                Err(FarmError::Conflict(detail))
            }
            LoginSave::Gone => Err(super::not_found_account(id)),
        }
    }

    /// Writes a login's tokens if its identity is the account's, under the
    /// refresh lock (held by the answer until the caller has acted on it):
    /// on `Saved` memory follows the disk. Also the refresh token the login
    /// replaced, read under the lock.
    pub(super) async fn write_login(
        &self,
        id: AccountId,
        tokens: crate::domain::Tokens,
        identity: Option<Identity>,
    ) -> Result<WrittenLogin> {
        let one_writer = self.refresh_lock(id).lock_owned().await;
        let now = self.clock.now();
        let replaced = self.with_account(id, |a| {
            a.tokens.as_ref().and_then(|t| t.refresh_token.clone())
        })?;
        let save = self.store.save_login_tokens(id, &tokens, identity, now)?;
        if let LoginSave::Saved {
            generation,
            identity,
        } = &save
        {
            // The state (`active`, errors cleared) was persisted with
            // the tokens: memory follows the disk.
            self.with_account(id, |a| {
                a.install_tokens(tokens, *generation, now);
                a.identity = identity.clone();
            })?;
            self.scheduler_wake.notify_one();
        }
        Ok(WrittenLogin {
            save,
            replaced,
            now,
            _one_writer: one_writer,
        })
    }

    /// A login as someone else: its tokens were not stored; the account
    /// needs a person and keeps serving the tokens it holds.
    fn identity_refused(
        &self,
        id: AccountId,
        got: Option<&Identity>,
        expected: &Identity,
        now: DateTime<Utc>,
    ) -> FarmError {
        let message = mismatch_message(got, expected);
        let was = self.update_account(id, |a| {
            let was = a.auth;
            // Its tokens stay servable only if they were: not after a
            // dead refresh token (`needs_relogin`) or a login never made.
            a.identity_refused = match was {
                AuthState::Active => true,
                AuthState::NeedsHuman => a.identity_refused,
                AuthState::NeedsRelogin | AuthState::PendingLogin => false,
            };
            a.auth = AuthState::NeedsHuman;
            a.last_error = Some(LastError {
                at: now,
                message: message.clone(),
            });
            was
        });
        tracing::warn!(account = id, %message, "login refused: another identity");
        self.emit(EventKind::LoginFailed, Some(id), message.clone());
        match was {
            Ok(was) if was != AuthState::NeedsHuman => {
                self.emit(EventKind::NeedsHuman, Some(id), message.clone())
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(account = id, error = %e, "could not persist a refused login")
            }
        }
        FarmError::Conflict(format!(
            "{message}: the login's tokens were not stored; log in as {expected}"
        ))
    }

    /// Starts a listener on the redirect URI's address when it is a
    /// loopback one and none runs yet. Returns whether one is listening.
    async fn ensure_loopback_listener(self: &Arc<Self>, redirect_uri: &Url) -> bool {
        let Some(addr) = loopback_addr(redirect_uri) else {
            return false;
        };
        if self
            .logins
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&addr)
        {
            return true;
        }
        match loopback::spawn(
            addr,
            redirect_uri.path().to_string(),
            self.finish_redirect(),
        )
        .await
        {
            Ok(stop) => {
                self.logins
                    .listeners
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(addr, stop);
                true
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot listen on the redirect URI; paste the redirect URL instead");
                false
            }
        }
    }

    /// The loopback listener's callback: finishes the login its redirect
    /// carries, then stops the listeners if no login is left pending. It
    /// holds the farm weakly: a listener never keeps a stopped farm alive.
    fn finish_redirect(self: &Arc<Self>) -> loopback::Finish {
        let farm = Arc::downgrade(self);
        Arc::new(move |url: String| {
            let farm = farm.clone();
            Box::pin(async move {
                let Some(farm) = farm.upgrade() else {
                    return Landing::Stopping;
                };
                let result = farm.complete_login(&url, None).await;
                farm.stop_idle_listeners();
                match result {
                    Ok(id) => Landing::LoggedIn(id),
                    Err(e) => Landing::Failed(e.to_string()),
                }
            })
        })
    }

    /// Stops every loopback listener (shutdown).
    pub(crate) fn stop_listeners(&self) {
        let mut l = self
            .logins
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (_, stop) in l.drain() {
            let _ = stop.send(());
        }
    }

    /// Stops loopback listeners once no login is pending (called by the sweep
    /// and after each completed login).
    pub(crate) fn stop_idle_listeners(&self) {
        if self.logins.is_empty() {
            self.stop_listeners();
        }
    }
}

/// A device login's verification page, and the one with the code in it if
/// the provider gave one: URLs, or why not.
pub(super) fn verification_pages(
    start: &crate::oauth::DeviceStart,
) -> std::result::Result<(Url, Option<Url>), String> {
    let page = |text: &str| {
        Url::parse(text)
            .map_err(|e| format!("the provider's verification URI {text:?} is not a URL: {e}"))
    };
    let uri = page(&start.verification_uri)?;
    let complete = start
        .verification_uri_complete
        .as_deref()
        .map(page)
        .transpose()?;
    Ok((uri, complete))
}

/// Polls a device login until it ends, telling `progress` of each answer
/// and of the end. Holds the farm weakly: a poll never keeps a stopped farm
/// alive, and stops when its login is no longer the account's latest.
async fn poll_device_login(
    farm: std::sync::Weak<Farm>,
    id: AccountId,
    serial: u64,
    provider: Arc<dyn TokenEndpoint>,
    device_code: Secret,
    poll: DevicePoll,
    progress: watch::Sender<LoginProgress>,
) {
    let Some(clock) = farm.upgrade().map(|f| f.clock.clone()) else {
        return;
    };
    let current = || {
        farm.upgrade()
            .is_some_and(|f| f.logins.device_current(id, serial))
    };
    let got = poll_device_grant(
        clock.as_ref(),
        provider.as_ref(),
        &device_code,
        poll,
        &progress,
        current,
    )
    .await;
    let Some(got) = got else { return };
    let Some(farm) = farm.upgrade() else { return };
    let end = match got {
        Ok((grant, issued_at)) => {
            if !farm.logins.device_current(id, serial) {
                return;
            }
            farm.logins.stop_device(id);
            install_device_grant(&farm, id, provider.as_ref(), grant, issued_at).await
        }
        Err(detail) => Err(detail),
    };
    if let Err(detail) = &end {
        farm.logins.stop_device(id);
        tracing::warn!(account = id, detail, "device login failed");
        farm.emit(EventKind::LoginFailed, Some(id), detail.clone());
    }
    progress.send_modify(|p| p.end = Some(end));
}

/// Asks the provider, at the pace `poll` sets, whether the device login was
/// finished, counting each answer that says "not yet" in `progress`, until
/// it answers with the grant (and when it was asked for: the tokens' issue
/// time) or ends it: refused, or the code expired. `None` once `wanted`
/// says no more (asked before each poll). The final answer is counted too;
/// the end itself is the caller's to announce.
pub(super) async fn poll_device_grant(
    clock: &dyn crate::clock::Clock,
    provider: &dyn TokenEndpoint,
    device_code: &Secret,
    mut poll: DevicePoll,
    progress: &watch::Sender<LoginProgress>,
    wanted: impl Fn() -> bool,
) -> Option<std::result::Result<(Grant, DateTime<Utc>), String>> {
    loop {
        let wait = (poll.next_poll_at - clock.now())
            .to_std()
            .unwrap_or_default();
        clock.sleep(wait).await;
        if !wanted() {
            return None;
        }
        let issued_at = clock.now();
        let (answer, grant) = provider.poll_device(device_code).await;
        let step = poll.on_answer(&answer, clock.now());
        progress.send_modify(|p| p.checks += 1);
        return Some(match (step, grant) {
            (PollStep::WaitUntil(_), _) => continue,
            (PollStep::Done, Some(grant)) => Ok((grant, issued_at)),
            (PollStep::Done, None) => Err("device login: no tokens".into()),
            (PollStep::Expired, _) => {
                Err("device login: the user code expired before it was entered".into())
            }
            (PollStep::Denied(code), _) => {
                Err(format!("device login refused by the provider ({code})"))
            }
        });
    }
}

/// Stores a device login's tokens (identity-checked, as every login's).
async fn install_device_grant(
    farm: &Farm,
    id: AccountId,
    provider: &dyn TokenEndpoint,
    grant: Grant,
    issued_at: DateTime<Utc>,
) -> std::result::Result<(), String> {
    let identity = login_identity(provider, &grant)
        .await
        .map_err(|e| format!("cannot tell whose tokens the login got: {e}"))?;
    let tokens = tokens_from(grant, issued_at, provider.default_ttl());
    let identity = farm
        .install_login_tokens(id, tokens, identity)
        .await
        .map_err(|e| format!("device login: {e}"))?;
    let detail = match &identity {
        Some(identity) => format!("login completed as {identity}"),
        None => "login completed".to_owned(),
    };
    tracing::info!(account = id, "device login completed");
    farm.emit(EventKind::LoginCompleted, Some(id), detail);
    Ok(())
}

/// The identity a login's grant yields, read as the provider's
/// `identity` says (`domain::identity::read`); `userinfo` asks the
/// provider with the new access token.
pub(super) async fn login_identity(
    provider: &dyn TokenEndpoint,
    grant: &Grant,
) -> std::result::Result<Option<Identity>, String> {
    let rule = IdentityConfig::rule(provider.config().identity.as_ref());
    let claims = match rule.from {
        Source::IdToken => grant.id_token.as_ref().and_then(|t| jwt_claims(t.expose())),
        Source::AccessToken => jwt_claims(grant.access_token.expose()),
        Source::Userinfo => Some(
            provider
                .userinfo(&grant.access_token)
                .await
                .map_err(|e| format!("userinfo: {e}"))?,
        ),
    };
    identity::read(&rule, claims.as_ref())
}

/// What [`Farm::write_login`] did.
pub(super) struct WrittenLogin {
    pub(super) save: LoginSave,
    /// The refresh token the account held before.
    pub(super) replaced: Option<Secret>,
    pub(super) now: DateTime<Utc>,
    _one_writer: tokio::sync::OwnedMutexGuard<()>,
}

/// The socket address of a loopback redirect URI (`http://127.0.0.1:PORT/…`
/// or `http://localhost:PORT/…`), or `None` for anything else.
pub fn loopback_addr(uri: &Url) -> Option<SocketAddr> {
    if uri.scheme() != "http" {
        return None;
    }
    let ip = match uri.host()? {
        url::Host::Ipv4(ip) if ip.is_loopback() => std::net::IpAddr::V4(ip),
        url::Host::Ipv6(ip) if ip.is_loopback() => std::net::IpAddr::V6(ip),
        url::Host::Domain("localhost") => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        _ => return None,
    };
    Some(SocketAddr::new(ip, uri.port_or_known_default()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        let a = |s: &str| loopback_addr(&Url::parse(s).unwrap());
        assert_eq!(
            a("http://127.0.0.1:18765/callback"),
            Some("127.0.0.1:18765".parse().unwrap())
        );
        assert_eq!(
            a("http://localhost:9/cb"),
            Some("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(a("http://[::1]:9/cb"), Some("[::1]:9".parse().unwrap()));
        assert_eq!(a("https://127.0.0.1:9/cb"), None);
        assert_eq!(a("http://example.com/cb"), None);
    }
}
