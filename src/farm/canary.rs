//! Canary logins (`[browser] canary`): each active account's full login
//! script, run in a fresh throwaway browser profile (no cookies, so a live
//! session cannot hide a broken password or TOTP step), on a schedule, so
//! a login page that changed is found in the afternoon rather than at a
//! 3 a.m. relogin.
//!
//! A canary never changes an account's state: a failure is a
//! `canary_failed` event (step, line, screenshot) while the account keeps
//! serving the tokens it has. A login that worked replaces the account's
//! tokens only if its identity is the account's (`Store::save_login_tokens`,
//! under the refresh lock, as every login); the replaced refresh token is
//! revoked where the provider says each login is a grant of its own
//! (`provider.revoke_replaced`).

use serde_json::json;

use super::login::login_identity;
use super::refresh::tokens_from;
use super::{Farm, Result};
use crate::browser::runner::{FailureKind, LoginOutcome, RunEnd, RunFailure, RunProfile};
use crate::browser::{LoginScript, Vars};
use crate::domain::identity::mismatch_message;
use crate::domain::provider::{parse_callback, LoginKind};
use crate::domain::{AccountId, AuthState};
use crate::events::EventKind;
use crate::oauth::{AuthorizeRequest, TokenEndpoint};
use crate::secret::ct_eq;
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
    /// script, of a provider that logs in by code. Sorted by id.
    pub fn canary_accounts(&self) -> Vec<AccountId> {
        if self.browser.is_none() {
            return Vec::new();
        }
        let by_code = |provider: &str| {
            self.providers
                .get(provider)
                .is_some_and(|p| p.config().login == LoginKind::Code)
        };
        let mut ids: Vec<AccountId> = self
            .state()
            .accounts
            .values()
            .filter(|a| a.enabled && a.auth == AuthState::Active && a.has_login_script)
            .filter(|a| by_code(&a.provider))
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
        let login = match provider.authorize().await {
            Ok(login) => login,
            Err(e) => {
                let reason = format!("no authorize URL: {e}");
                return Ok(self.canary_failed(id, &reason, None));
            }
        };
        let mut vars = Vars::new().with_authorize_url(login.url.clone());
        for (name, value) in self.store.secrets(id)? {
            vars = vars.with_secret(name, value);
        }
        tracing::info!(account = id, "canary login started");
        let run = pool
            .run(
                &id.to_string(),
                &script,
                &vars,
                RunEnd::Redirect(provider.config().redirect_uri.clone()),
                self.config.browser.relogin_timeout,
                RunProfile::Throwaway,
            )
            .await;
        match run {
            Ok(outcome) => {
                self.canary_finish(id, provider.as_ref(), &login, &outcome)
                    .await
            }
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

    /// Trades the canary's code and stores its tokens if the identity is
    /// the account's.
    async fn canary_finish(
        &self,
        id: AccountId,
        provider: &dyn TokenEndpoint,
        login: &AuthorizeRequest,
        outcome: &LoginOutcome,
    ) -> Result<CanaryResult> {
        let Some(redirect_url) = &outcome.redirect_url else {
            // A run to a redirect ends at one.
            return Ok(self.canary_failed(id, "the run ended without a redirect", None));
        };
        let callback = match parse_callback(redirect_url) {
            Ok(callback) => callback,
            Err(e) => {
                let reason = format!("the redirect: {e}");
                return Ok(self.canary_failed(id, &reason, None));
            }
        };
        let ours = ct_eq(
            callback.state.expose().as_bytes(),
            login.state.expose().as_bytes(),
        );
        let issuer_ok = match (&callback.iss, &login.issuer) {
            (Some(iss), Some(expected)) => {
                iss.trim_end_matches('/') == expected.trim_end_matches('/')
            }
            _ => true,
        };
        if !ours || !issuer_ok {
            let reason = "the redirect is not this login's (state or issuer)";
            return Ok(self.canary_failed(id, reason, None));
        }
        let issued_at = self.clock.now();
        let grant = match provider
            .exchange_code(&callback.code, &login.state, &login.pkce_verifier)
            .await
        {
            Ok(grant) => grant,
            Err(e) => return Ok(self.canary_failed(id, &format!("the code exchange: {e}"), None)),
        };
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
        let ms = outcome.elapsed.as_millis();
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
