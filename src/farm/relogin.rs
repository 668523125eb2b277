//! Browser relogin: the second rung of the recovery ladder.
//!
//! refresh_token grant (see `refresh.rs`) → when that is dead, a browser
//! authorize in the account's own persistent profile, replaying its login
//! script (a live session cookie usually goes straight to the redirect; a
//! device-flow provider's script types a new user code at its verification
//! page, and the farm's poll of that code ends the run) →
//! when the script cannot finish, `needs_human` with the failing step, the
//! page URL and a screenshot, retried only with capped exponential backoff.

use std::sync::Arc;

use chrono::Utc;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{chrono_dur, not_found_account, Farm, FarmError, Result};
use crate::browser::runner::{FailureKind, PoolError, RunEnd, RunProfile};
use crate::browser::script::DeviceCode;
use crate::browser::{LoginScript, RunFailure, Vars};
use crate::domain::provider::LoginKind;
use crate::domain::timing::{backoff, next_relogin_at};
use crate::domain::{Account, AccountId, AuthState, LastError};
use crate::events::EventKind;

/// Who asked for a relogin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloginCause {
    /// A person (the API or the admin page): always runs.
    Admin,
    /// The scheduler's recovery ladder: runs only while the account needs it.
    Recovery,
    /// A person proving the account's script (`POST …/script/prove`): runs
    /// on a throwaway profile, so no session cookie of the account's helps.
    Proof,
}

impl std::fmt::Display for ReloginCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReloginCause::Admin => "admin",
            ReloginCause::Recovery => "recovery",
            ReloginCause::Proof => "proof in a fresh browser profile",
        })
    }
}

/// What `POST /api/accounts/{id}/relogin` returns on success.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ReloginDone {
    pub account_id: AccountId,
    pub elapsed_ms: u128,
    /// How many script steps acted (0 or 1: a live session went straight through).
    pub steps_acted: usize,
    /// The script lines of the steps that acted, in order.
    pub lines_run: Vec<usize>,
    pub session_expires_at: Option<chrono::DateTime<Utc>>,
}

impl Farm {
    /// The account's login script: its own, else its provider's file.
    pub fn login_script_text(&self, id: AccountId) -> Result<Option<String>> {
        if let Some(text) = self.store.login_script(id)? {
            return Ok(Some(text));
        }
        let provider = self.with_account(id, |a| a.provider.clone())?;
        let Some(path) = self.provider(&provider)?.config().login_script.clone() else {
            return Ok(None);
        };
        std::fs::read_to_string(&path).map(Some).map_err(|e| {
            // Not the caller's fault: the configured file is missing or
            // unreadable. Named as `farm.toml` names it.
            let index = self
                .config
                .providers
                .iter()
                .position(|p| p.name == provider)
                .unwrap_or_default();
            FarmError::Config(format!(
                "provider[{index}].login_script: cannot read {}: {e}",
                path.display()
            ))
        })
    }

    /// Attaches a login script to an account (validated first: a bad script
    /// is refused with its line, and nothing is stored).
    pub fn set_login_script(&self, id: AccountId, text: &str) -> Result<LoginScript> {
        let provider = self.with_account(id, |a| a.provider.clone())?;
        let script =
            LoginScript::parse(text).map_err(|e| FarmError::InvalidScript(e.to_string()))?;
        if script.provider != provider {
            return Err(FarmError::InvalidScript(format!(
                "line 1: the script is for provider {:?}, the account belongs to {provider:?}",
                script.provider
            )));
        }
        let device = self.provider(&provider)?.config().login == LoginKind::Device;
        script
            .check_login_kind(device)
            .map_err(|e| FarmError::InvalidScript(e.to_string()))?;
        self.store.set_login_script(id, Some(text))?;
        self.with_account(id, |a| {
            a.has_login_script = true;
            a.relogin_retry_at = None;
        })?;
        self.emit(EventKind::AccountUpdated, Some(id), "login script attached");
        self.scheduler_wake.notify_one();
        Ok(script)
    }

    pub fn remove_login_script(&self, id: AccountId) -> Result<()> {
        let provider = self.with_account(id, |a| a.provider.clone())?;
        // Whether the provider has one is configuration, as at start: its
        // file is not read here, so an unreadable one cannot fail the
        // removal after the store has already done it.
        let provider_has_one = self.provider(&provider)?.config().login_script.is_some();
        self.store.set_login_script(id, None)?;
        self.with_account(id, |a| a.has_login_script = provider_has_one)?;
        Ok(())
    }

    pub fn set_secret(
        &self,
        id: AccountId,
        name: &str,
        value: &crate::secret::Secret,
    ) -> Result<()> {
        if !crate::browser::script::is_valid_secret_name(name) {
            return Err(FarmError::Invalid(format!(
                "secret name {name:?}: use letters, digits and '_' (e.g. password, totp)"
            )));
        }
        if !self.store.put_secret(id, name, value, self.clock.now())? {
            return Err(not_found_account(id));
        }
        self.emit(
            EventKind::AccountUpdated,
            Some(id),
            format!("secret {name} set"),
        );
        self.with_account(id, |a| a.relogin_retry_at = None)?;
        self.scheduler_wake.notify_one();
        Ok(())
    }

    /// Logs the account in with the browser now. One relogin per account at
    /// a time: a second caller waits, then runs again only if still needed
    /// (the recovery ladder), or anyway (a person asked).
    pub async fn relogin(
        self: &Arc<Self>,
        id: AccountId,
        cause: ReloginCause,
    ) -> Result<ReloginDone> {
        let pool = self.browser.clone().ok_or_else(|| {
            FarmError::Conflict(
                "the browser is disabled ([browser] enabled = false); log in by hand".into(),
            )
        })?;
        let lock = self.relogin_lock(id);
        let _one_at_a_time = lock.lock().await;
        let (generation, still_due) = self.with_account(id, |a| {
            (
                a.generation,
                next_relogin_at(a).is_some_and(|t| t <= self.clock.now()),
            )
        })?;
        if cause == ReloginCause::Recovery && !still_due {
            return Err(FarmError::Conflict(format!(
                "account {id} no longer needs a relogin"
            )));
        }
        let missing = self.missing_secrets(id)?;
        if cause == ReloginCause::Recovery && !missing.is_empty() {
            // Normal during setup (script attached before its secrets):
            // wait for `set_secret`, which wakes the ladder, without
            // raising a needs_human alarm.
            self.with_account(id, |a| {
                a.relogin_retry_at =
                    Some(self.clock.now() + chrono_dur(self.config.browser.retry_max))
            })?;
            return Err(FarmError::Conflict(format!(
                "waiting for secret(s) {}",
                missing.join(", ")
            )));
        }
        if let Err(busy) = pool.refuse_if_person(&id.to_string()) {
            let reason = busy.to_string();
            let _ = self.relogin_failed(id, &reason, false);
            return Err(FarmError::Conflict(reason));
        }
        let (script, end, vars) = match self.prepare_relogin(id).await {
            Ok(prepared) => prepared,
            Err(e @ FarmError::NotFound { .. }) => return Err(e),
            // A missing script or secret needs a person just like a failing
            // step, and must be backed off just the same.
            Err(e) => return Err(self.relogin_failed(id, &e.to_string(), true)),
        };
        self.emit_with(
            EventKind::ReloginStarted,
            Some(id),
            format!("browser relogin started ({cause})"),
            serde_json::json!({ "cause": cause.to_string() }),
        );
        tracing::info!(account = id, %cause, "browser relogin started");
        let timeout = self.config.browser.relogin_timeout;
        // A proof runs on a throwaway profile: no cookie of the account's
        // helps, so reaching the end proves the script logs in alone (the
        // account's profile is still held meanwhile).
        let profile = match cause {
            ReloginCause::Proof => RunProfile::Proof,
            _ => RunProfile::Own,
        };
        let result = pool
            .run(&id.to_string(), &script, &vars, end, timeout, profile)
            .await;
        match result {
            Ok(outcome) => {
                let completed = match &outcome.redirect_url {
                    Some(url) => self.complete_login(url.as_str(), Some(id)).await,
                    // A device login's poll stored the tokens before it
                    // signalled the run's end.
                    None => Ok(id),
                };
                // The loopback listener may have finished this login first
                // (the browser followed the redirect to it): that is success too.
                let logged_in =
                    completed.is_ok() || self.with_account(id, |a| a.generation > generation)?;
                if !logged_in {
                    let e = completed.err();
                    let needs_human = e.as_ref().is_none_or(completion_needs_human);
                    let e = e.map(|e| e.to_string()).unwrap_or_default();
                    return Err(self.relogin_failed(
                        id,
                        &format!("the browser reached the redirect, but {e}"),
                        needs_human,
                    ));
                }
                // A proof's cookies went with its throwaway profile.
                let session_expires = match cause {
                    ReloginCause::Proof => None,
                    _ => outcome.session_cookie_expires,
                };
                self.browser_login_done(id, session_expires)?;
                let ms = outcome.elapsed.as_millis();
                self.emit(
                    EventKind::ReloginSucceeded,
                    Some(id),
                    format!("browser relogin succeeded in {ms} ms ({cause})"),
                );
                tracing::info!(
                    account = id,
                    elapsed_ms = ms as u64,
                    "browser relogin succeeded"
                );
                Ok(ReloginDone {
                    account_id: id,
                    elapsed_ms: ms,
                    steps_acted: outcome.steps_acted.len(),
                    lines_run: outcome.lines_acted,
                    session_expires_at: session_expires,
                })
            }
            Err(failure) => {
                self.logins.forget_account(id);
                let _ = self
                    .store
                    .record_browser_run(id, self.clock.now(), "failed", None);
                if let Some(shot) = &failure.screenshot {
                    self.with_account(id, |a| a.last_screenshot = Some(shot.clone()))?;
                }
                let step = failure.step.as_ref().map(|s| (s.index + 1, s.line));
                self.with_account(id, |a| a.last_failed_step = step)?;
                let failed = self.relogin_failed(id, &describe(&failure), failure.needs_human());
                // A person holds the profile (the admin page's browser, a
                // window): the caller is told who, as a conflict; the
                // ladder retries later.
                match &failure.kind {
                    FailureKind::Pool(
                        PoolError::ProfileBusy { .. } | PoolError::ProfileHeldElsewhere { .. },
                    ) => Err(FarmError::Conflict(describe(&failure))),
                    _ => Err(failed),
                }
            }
        }
    }

    /// After a login in the farm's browser (scripted or by a person on the
    /// admin page): the run is recorded, the relogin backoff cleared.
    pub(crate) fn browser_login_done(
        &self,
        id: AccountId,
        session_cookie_expires: Option<chrono::DateTime<Utc>>,
    ) -> Result<()> {
        self.store
            .record_browser_run(id, self.clock.now(), "ok", session_cookie_expires)?;
        self.with_account(id, |a| {
            a.relogin_failures = 0;
            a.relogin_retry_at = None;
        })
    }

    /// Secrets the account's script uses that are not set.
    fn missing_secrets(&self, id: AccountId) -> Result<Vec<String>> {
        let Some(text) = self.login_script_text(id)? else {
            return Ok(Vec::new());
        };
        let Ok(script) = LoginScript::parse(&text) else {
            return Ok(Vec::new());
        };
        let have = self.store.secret_names(id)?;
        Ok(script
            .required_secrets()
            .into_iter()
            .filter(|n| !have.iter().any(|(h, _)| h == n))
            .collect())
    }

    /// The script, how its run ends and its variables: a code login's
    /// authorize URL (the run ends at the redirect), or a device login's
    /// user code and page (the run ends when the farm's poll gets tokens).
    async fn prepare_relogin(
        self: &Arc<Self>,
        id: AccountId,
    ) -> Result<(LoginScript, RunEnd, Vars)> {
        let text = self.login_script_text(id)?.ok_or_else(|| {
            FarmError::Conflict(format!(
                "account {id} has no login script: attach one (PUT /api/accounts/{id}/script) or record one"
            ))
        })?;
        let script =
            LoginScript::parse(&text).map_err(|e| FarmError::InvalidScript(e.to_string()))?;
        let provider = self.with_account(id, |a| a.provider.clone())?;
        let (end, vars) = match self.provider(&provider)?.config().login {
            LoginKind::Device => {
                let begun = self.begin_device_login(id).await?;
                let code = DeviceCode {
                    verification_uri: begun.verification_uri,
                    verification_uri_complete: begun.verification_uri_complete,
                    user_code: begun.user_code,
                };
                let vars = Vars::new().with_device_code(code);
                (RunEnd::Signal(begun.progress), vars)
            }
            LoginKind::Code => {
                let started = self.start_browser_login(id).await?;
                let vars = Vars::new().with_authorize_url(started.authorize_url);
                (RunEnd::Redirect(started.redirect_uri), vars)
            }
        };
        Ok((script, end, vars.with_secrets(self.store.secrets(id)?)))
    }

    /// Records a failed relogin: `needs_human` (announced once, on the
    /// transition) when the script or account is wrong, a plain retry
    /// later when the browser was only busy; capped backoff either way.
    fn relogin_failed(&self, id: AccountId, reason: &str, needs_human: bool) -> FarmError {
        let cfg = &self.config.browser;
        let jitter: f64 = rand::thread_rng().gen();
        let now = self.clock.now();
        let back_off = |a: &mut Account| {
            a.relogin_failures = a.relogin_failures.saturating_add(1);
            let wait = backoff(
                a.relogin_failures,
                chrono_dur(cfg.retry_initial),
                chrono_dur(cfg.retry_max),
                jitter,
            );
            a.relogin_retry_at = Some(now + wait);
        };
        let was = self.update_account(id, |a| {
            let was = a.auth;
            back_off(a);
            if needs_human {
                a.auth = AuthState::NeedsHuman;
                a.last_error = Some(LastError {
                    at: now,
                    message: format!("browser relogin failed: {reason}"),
                });
            }
            was
        });
        if let Err(e) = &was {
            tracing::error!(account = id, error = %e, "could not persist a relogin failure");
            // The state stays as the disk has it, but the ladder still
            // backs off (in memory only) instead of relaunching at once.
            let _ = self.with_account(id, back_off);
        }
        self.emit(
            EventKind::ReloginFailed,
            Some(id),
            format!("browser relogin failed: {reason}"),
        );
        if needs_human && was.is_ok_and(|w| w != AuthState::NeedsHuman) {
            tracing::warn!(account = id, %reason, "browser relogin failed; the account needs a person");
            self.emit(EventKind::NeedsHuman, Some(id), reason.to_string());
        }
        FarmError::Relogin(reason.to_string())
    }

    pub fn secret_names(&self, id: AccountId) -> Result<Vec<SecretName>> {
        self.with_account(id, |_| ())?;
        Ok(self
            .store
            .secret_names(id)?
            .into_iter()
            .map(|(name, updated_at)| SecretName { name, updated_at })
            .collect())
    }

    pub fn delete_secret(&self, id: AccountId, name: &str) -> Result<()> {
        self.with_account(id, |_| ())?;
        if !self.store.delete_secret(id, name)? {
            return Err(FarmError::NotFound {
                what: "secret",
                id: name.to_string(),
            });
        }
        self.emit(
            EventKind::AccountUpdated,
            Some(id),
            format!("secret {name} deleted"),
        );
        Ok(())
    }

    /// `GET /api/accounts/{id}/browser`.
    pub async fn browser_info(&self, id: AccountId) -> Result<BrowserInfo> {
        let has_login_script = self.with_account(id, |a| a.has_login_script)?;
        let (last_run_at, last_outcome, session_expires_at) =
            self.store.browser_run(id)?.unwrap_or_default();
        let profile = match &self.browser {
            Some(pool) => pool.profile_info(&id.to_string()).await.ok(),
            None => None,
        };
        Ok(BrowserInfo {
            account_id: id,
            browser_enabled: self.browser.is_some(),
            has_login_script,
            profile_present: profile.as_ref().is_some_and(|p| p.present),
            profile_bytes: profile.as_ref().map_or(0, |p| p.bytes),
            in_use_by: profile.and_then(|p| p.in_use).map(|u| u.to_string()),
            last_run_at,
            last_outcome,
            session_expires_at,
        })
    }

    /// Wipes the account's profile (refused while a browser has it open).
    pub async fn reset_browser_profile(&self, id: AccountId) -> Result<()> {
        self.with_account(id, |_| ())?;
        let pool = self
            .browser
            .as_ref()
            .ok_or_else(|| FarmError::Conflict("the browser is disabled".into()))?;
        pool.reset(&id.to_string())
            .await
            .map_err(|e| FarmError::Conflict(e.to_string()))?;
        // `browser list` no longer shows the wiped session's expiry.
        self.store.forget_browser_session(id)?;
        self.emit(EventKind::AccountUpdated, Some(id), "browser profile wiped");
        Ok(())
    }

    /// The PNG of the last failed relogin, if any.
    pub fn last_screenshot(&self, id: AccountId) -> Result<Vec<u8>> {
        let path = self
            .with_account(id, |a| a.last_screenshot.clone())?
            .ok_or_else(|| FarmError::NotFound {
                what: "screenshot for account",
                id: id.to_string(),
            })?;
        std::fs::read(&path).map_err(|_| FarmError::NotFound {
            what: "screenshot for account",
            id: id.to_string(),
        })
    }

    pub(crate) fn relogin_lock(&self, id: AccountId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.relogin_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(id).or_default().clone()
    }
}

/// A secret's name; its value is write-only.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SecretName {
    pub name: String,
    pub updated_at: chrono::DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BrowserInfo {
    pub account_id: AccountId,
    pub browser_enabled: bool,
    pub has_login_script: bool,
    pub profile_present: bool,
    pub profile_bytes: u64,
    pub in_use_by: Option<String>,
    pub last_run_at: Option<chrono::DateTime<Utc>>,
    pub last_outcome: Option<String>,
    /// The provider's session cookie expiry seen after the last run: when a
    /// full scripted login (not just a consent click-through) is next needed.
    pub session_expires_at: Option<chrono::DateTime<Utc>>,
}

/// The failure as a person reads it: step and line, page, reason,
/// screenshot path (all secret-free: the runner redacts).
fn describe(f: &RunFailure) -> String {
    f.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_provider_script_is_a_configuration_error_naming_key_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("scripts/demo.toml");
        let farm = crate::farm::test_farm(
            dir.path(),
            &format!(
                "[[provider]]\nname = \"demo\"\nissuer = \"http://127.0.0.1:19000\"\n\
                 client_id = \"c\"\nredirect_uri = \"http://127.0.0.1:18765/callback\"\n\
                 login_script = {:?}\n",
                missing.display().to_string()
            ),
        );
        let id = farm.add_account("demo", "alice", 0).unwrap().id;
        let err = farm.login_script_text(id).unwrap_err();
        assert!(matches!(err, FarmError::Config(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("configuration error: provider[0].login_script: cannot read ")
                && text.contains(&missing.display().to_string()),
            "{text}"
        );
        let api = crate::http::error::ApiError::from(err);
        assert_eq!((api.status.as_u16(), api.code), (500, "config_error"));
        // Removing the account's own script does not read the provider's file.
        farm.remove_login_script(id).unwrap();
        assert!(farm.with_account(id, |a| a.has_login_script).unwrap());
    }
}

/// Whether a login the browser finished, but whose completion failed, needs
/// a person. The provider out of reach (or busy) while the code was traded
/// does not: the ladder tries again later with a fresh login.
fn completion_needs_human(e: &FarmError) -> bool {
    !matches!(e, FarmError::CodeExchange(err) if err.is_transient())
}

#[cfg(test)]
mod completion_tests {
    use super::*;
    use crate::oauth::OAuthError;

    #[test]
    fn an_unreachable_token_endpoint_needs_no_person_a_refused_code_does() {
        let exchange = |e| completion_needs_human(&FarmError::CodeExchange(e));
        assert!(!exchange(OAuthError::Transport(
            "connection refused".into()
        )));
        assert!(!exchange(OAuthError::AnswerLost("connection reset".into())));
        assert!(!exchange(OAuthError::Unavailable {
            reason: "HTTP 503".into(),
            retry_at: None
        }));
        assert!(exchange(OAuthError::Dead {
            code: "invalid_grant".into(),
            description: None
        }));
        assert!(completion_needs_human(&FarmError::Login(
            "the state does not match".into()
        )));
    }
}
