//! Canary logins (`[browser] canary`): each active account's full login
//! script, run in a fresh throwaway browser profile (no cookies, so a live
//! session cannot hide a broken password or TOTP step), on a schedule, so
//! a login page that changed is found in the afternoon rather than at a
//! 3 a.m. relogin. A code login's canary has its own authorize request; a
//! device login's (RFC 8628) its own user code, which the script types
//! while the canary polls for the grant. Neither is a pending login of the
//! account, so one a person has under way is not replaced.
//!
//! A canary never changes an account's state: a failure is a
//! `canary_failed` event (step, line, screenshot) while the account keeps
//! serving the tokens it has. A login that worked replaces the account's
//! tokens only if its identity is the account's (`Store::save_login_tokens`,
//! under the refresh lock, as every login); the replaced refresh token is
//! revoked where the provider says each login is a grant of its own
//! (`provider.revoke_replaced`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::watch;

use super::login::{login_identity, poll_device_grant, verification_pages};
use super::refresh::tokens_from;
use super::{Farm, Result};
use crate::browser::runner::{
    FailureKind, LoginOutcome, LoginProgress, RunEnd, RunFailure, RunProfile,
};
use crate::browser::script::DeviceCode;
use crate::browser::{BrowserPool, LoginScript, Vars};
use crate::clock::Clock;
use crate::domain::identity::mismatch_message;
use crate::domain::provider::{parse_callback, DevicePoll, LoginKind};
use crate::domain::{AccountId, AuthState};
use crate::events::EventKind;
use crate::oauth::{AuthorizeRequest, Grant, TokenEndpoint};
use crate::secret::{ct_eq, Secret};
use crate::store::LoginSave;

/// What one canary found.
#[derive(Debug, PartialEq, Eq)]
pub enum CanaryResult {
    /// Logged in; the tokens were stored.
    Passed,
    /// A `canary_failed` event says why.
    Failed,
    /// Not run (browser off, shutting down, no script): nothing to say.
    Skipped,
}

impl Farm {
    /// The accounts a canary round logs in: enabled, active, with a login
    /// script. Sorted by id.
    pub fn canary_accounts(&self) -> Vec<AccountId> {
        if self.browser.is_none() {
            return Vec::new();
        }
        let mut ids: Vec<AccountId> = self
            .state()
            .accounts
            .values()
            .filter(|a| a.enabled && a.auth == AuthState::Active && a.has_login_script)
            .map(|a| a.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// When the canary rounds run (`None`: never).
    pub fn canary_schedule(&self) -> Option<cron::Schedule> {
        self.config.browser.canary.clone()
    }

    /// Runs the account's login script in a throwaway profile and reports
    /// the result as an event; never changes the account's state.
    pub async fn canary(&self, id: AccountId) -> Result<CanaryResult> {
        let Some(pool) = self.browser.clone() else {
            return Ok(CanaryResult::Skipped);
        };
        // A round is spread over up to an hour: an account disabled, or
        // in the recovery ladder's hands, since it began is left alone.
        if !self.with_account(id, |a| a.enabled && a.auth == AuthState::Active)? {
            return Ok(CanaryResult::Skipped);
        }
        let Some(text) = self.login_script_text(id)? else {
            return Ok(CanaryResult::Skipped);
        };
        let script = match LoginScript::parse(&text) {
            Ok(script) => script,
            Err(e) => return Ok(self.canary_failed(id, &format!("the script: {e}"), None)),
        };
        let provider = self
            .provider(&self.with_account(id, |a| a.provider.clone())?)?
            .clone();
        let run = Run {
            id,
            pool: &pool,
            script: &script,
            provider: provider.as_ref(),
            secrets: self.store.secrets(id)?,
            timeout: self.config.browser.relogin_timeout,
            clock: self.clock.as_ref(),
        };
        tracing::info!(account = id, "canary login started");
        let ran = match provider.config().login {
            LoginKind::Code => run.by_code().await,
            LoginKind::Device => run.by_device().await,
        };
        match ran {
            Ok(Ran::Grant {
                grant,
                issued_at,
                elapsed,
            }) => {
                self.canary_store(id, provider.as_ref(), grant, issued_at, elapsed)
                    .await
            }
            Ok(Ran::Failed(reason)) => Ok(self.canary_failed(id, &reason, None)),
            // Refused (shutting down, no slot): not the script's fault.
            Err(RunFailure {
                kind: FailureKind::Pool(e),
                ..
            }) => {
                tracing::info!(account = id, error = %e, "canary not run");
                Ok(CanaryResult::Skipped)
            }
            Err(failure) => Ok(self.canary_failed(id, &failure.to_string(), Some(&failure))),
        }
    }

    /// Stores the canary's tokens if the login's identity is the account's.
    async fn canary_store(
        &self,
        id: AccountId,
        provider: &dyn TokenEndpoint,
        grant: Grant,
        issued_at: DateTime<Utc>,
        elapsed: Duration,
    ) -> Result<CanaryResult> {
        let identity = match login_identity(provider, &grant).await {
            Ok(identity) => identity,
            Err(e) => {
                let reason = format!("cannot tell whose tokens the login got: {e}");
                return Ok(self.canary_failed(id, &reason, None));
            }
        };
        let tokens = tokens_from(grant, issued_at, provider.default_ttl());
        let written = self.write_login(id, tokens, identity).await?;
        let replaced = written.replaced;
        let saved = match written.save {
            LoginSave::Saved { identity, .. } => identity,
            LoginSave::Refused { got, expected } => {
                let reason = format!(
                    "{}; nothing was stored",
                    mismatch_message(got.as_ref(), &expected)
                );
                return Ok(self.canary_failed(id, &reason, None));
            }
            LoginSave::Taken {
                identity,
                account,
                label,
            } => {
                let reason = format!(
                    "the login was {identity}, which is account {account} ({label:?}); nothing was stored"
                );
                return Ok(self.canary_failed(id, &reason, None));
            }
            LoginSave::Gone => return Err(super::not_found_account(id)),
        };
        let revoked = match (replaced, provider.config().revoke_replaced) {
            (Some(old), true) => match provider.revoke(&old).await {
                Ok(true) => "; the replaced refresh token was revoked",
                Ok(false) => "; the provider has no revocation endpoint",
                Err(e) => {
                    tracing::warn!(account = id, error = %e, "revoking the replaced refresh token failed");
                    "; revoking the replaced refresh token failed (see the log)"
                }
            },
            _ => "",
        };
        let ms = elapsed.as_millis();
        let who = saved.map(|i| format!(" as {i}")).unwrap_or_default();
        let detail = format!(
            "canary login passed in {ms} ms{who}; its tokens replaced the account's{revoked}"
        );
        tracing::info!(account = id, elapsed_ms = ms as u64, "canary login passed");
        self.emit(EventKind::CanaryPassed, Some(id), detail);
        Ok(CanaryResult::Passed)
    }

    /// Announces a failed canary; the account is left as it is.
    fn canary_failed(&self, id: AccountId, reason: &str, run: Option<&RunFailure>) -> CanaryResult {
        let step = run.and_then(|f| f.step.as_ref());
        let data = json!({
            "step": step.map(|s| s.index + 1),
            "line": step.map(|s| s.line),
            "action": step.map(|s| s.action.clone()),
            "page_url": run.and_then(|f| f.page_url.clone()),
            "reason": run.map_or(reason, |f| f.reason.as_str()),
            "screenshot": run.and_then(|f| f.screenshot.as_ref()).map(|p| p.display().to_string()),
        });
        tracing::warn!(account = id, %reason, "canary login failed; the account keeps its tokens");
        self.emit_with(
            EventKind::CanaryFailed,
            Some(id),
            format!("canary login failed: {reason}"),
            data,
        );
        CanaryResult::Failed
    }
}

/// How a canary's run ended, short of a browser failure.
enum Ran {
    /// The login got tokens.
    Grant {
        grant: Grant,
        /// When the tokens were asked for.
        issued_at: DateTime<Utc>,
        elapsed: Duration,
    },
    /// It did not: why.
    Failed(String),
}

/// One canary login: the account's script, run in a throwaway profile.
struct Run<'a> {
    id: AccountId,
    pool: &'a BrowserPool,
    script: &'a LoginScript,
    provider: &'a dyn TokenEndpoint,
    secrets: BTreeMap<String, Secret>,
    timeout: Duration,
    clock: &'a dyn Clock,
}

impl Run<'_> {
    /// A code login: the script from the canary's own authorize URL to the
    /// redirect, whose code is traded for the grant.
    async fn by_code(self) -> std::result::Result<Ran, RunFailure> {
        let login = match self.provider.authorize().await {
            Ok(login) => login,
            Err(e) => return Ok(Ran::Failed(format!("no authorize URL: {e}"))),
        };
        let vars = Vars::new().with_authorize_url(login.url.clone());
        let end = RunEnd::Redirect(self.provider.config().redirect_uri.clone());
        let outcome = self.run(vars, end).await?;
        Ok(code_grant(self.provider, &login, &outcome, self.clock.now()).await)
    }

    /// A device login (RFC 8628): the script types a user code of the
    /// canary's own at the provider's page while the canary polls for its
    /// grant. A device login of the account that is pending is not touched.
    async fn by_device(self) -> std::result::Result<Ran, RunFailure> {
        let start = match self.provider.device_authorize().await {
            Ok(start) => start,
            Err(e) => return Ok(Ran::Failed(format!("no user code: {e}"))),
        };
        let (verification_uri, verification_uri_complete) = match verification_pages(&start) {
            Ok(pages) => pages,
            Err(e) => return Ok(Ran::Failed(e)),
        };
        let vars = Vars::new().with_device_code(DeviceCode {
            user_code: start.user_code.clone(),
            verification_uri,
            verification_uri_complete,
        });
        let poll = DevicePoll::start(self.clock.now(), start.expires_in, start.interval);
        let (progress, watching) = watch::channel(LoginProgress::default());
        // The run ends when the poll does; a run that fails first (a step
        // not found) ends the canary, and the poll with it.
        let polling = async {
            let got = poll_device_grant(
                self.clock,
                self.provider,
                &start.device_code,
                poll,
                &progress,
                || true,
            )
            .await
            .unwrap_or_else(|| Err("the poll stopped".into()));
            progress.send_modify(|p| p.end = Some(got.as_ref().map(|_| ()).map_err(Clone::clone)));
            got
        };
        let run = self.run(vars, RunEnd::Signal(watching));
        tokio::pin!(polling, run);
        let (outcome, got) = tokio::select! {
            outcome = &mut run => (outcome, None),
            got = &mut polling => (run.await, Some(got)),
        };
        let outcome = outcome?;
        Ok(match got {
            Some(Ok((grant, issued_at))) => Ran::Grant {
                grant,
                issued_at,
                elapsed: outcome.elapsed,
            },
            Some(Err(reason)) => Ran::Failed(reason),
            None => Ran::Failed("the run ended before the device login did".into()),
        })
    }

    async fn run(&self, vars: Vars, end: RunEnd) -> std::result::Result<LoginOutcome, RunFailure> {
        let vars = vars.with_secrets(self.secrets.clone());
        self.pool
            .run(
                &self.id.to_string(),
                self.script,
                &vars,
                end,
                self.timeout,
                RunProfile::Throwaway,
            )
            .await
    }
}

/// Trades the code of a canary's redirect, once it is shown to be this
/// login's (state, and issuer where the provider names itself).
async fn code_grant(
    provider: &dyn TokenEndpoint,
    login: &AuthorizeRequest,
    outcome: &LoginOutcome,
    now: DateTime<Utc>,
) -> Ran {
    let Some(redirect_url) = &outcome.redirect_url else {
        // A run to a redirect ends at one.
        return Ran::Failed("the run ended without a redirect".into());
    };
    let callback = match parse_callback(redirect_url) {
        Ok(callback) => callback,
        Err(e) => return Ran::Failed(format!("the redirect: {e}")),
    };
    let ours = ct_eq(
        callback.state.expose().as_bytes(),
        login.state.expose().as_bytes(),
    );
    let issuer_ok = match (&callback.iss, &login.issuer) {
        (Some(iss), Some(expected)) => iss.trim_end_matches('/') == expected.trim_end_matches('/'),
        _ => true,
    };
    if !ours || !issuer_ok {
        return Ran::Failed("the redirect is not this login's (state or issuer)".into());
    }
    match provider
        .exchange_code(&callback.code, &login.state, &login.pkce_verifier)
        .await
    {
        Ok(grant) => Ran::Grant {
            grant,
            issued_at: now,
            elapsed: outcome.elapsed,
        },
        Err(e) => Ran::Failed(format!("the code exchange: {e}")),
    }
}
