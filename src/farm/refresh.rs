//! Refresh: single-flight and crash-safe.
//!
//! Providers such as oidc-provider revoke the *whole grant* when a used
//! refresh token is presented again, so two concurrent refreshes of one
//! account kill it. Every trigger (scheduler, a client's `unauthorized`
//! report, the admin's "refresh now", the catch-up at start) goes through
//! [`Farm::refresh`], which:
//!
//! 1. takes the account's refresh lock (one grant in flight per account);
//! 2. returns at once if the account's generation moved past the one the
//!    caller saw — somebody else refreshed while it waited;
//! 3. persists "refresh started" before sending the grant, so a crash in
//!    the middle is retried at the next start instead of forgotten;
//! 4. persists the new tokens (bumping the generation) in one transaction
//!    before anything can use them;
//! 5. on `invalid_grant`, re-reads the persisted generation before marking
//!    the account `needs_relogin` — and never deletes it.
//!
//! The grant goes to the provider's [`TokenEndpoint`](crate::oauth::TokenEndpoint)
//! and times come from the farm's clock: `refresh_tests.rs` checks each step
//! on paused time against a scripted endpoint.

use chrono::Utc;
use rand::Rng;

use super::{chrono_dur, not_found_account, Farm, FarmError, Result};
use crate::domain::provider::expires_at;
use crate::domain::timing::{backoff, retry_refresh_at};
use crate::domain::{AccountId, AuthState, LastError, Tokens};
use crate::events::EventKind;
use crate::oauth::{Grant, OAuthError};

/// What a refresh call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// This call obtained and stored new tokens.
    Refreshed,
    /// Another caller refreshed while this one waited: no grant was sent.
    AlreadyFresh,
}

impl Farm {
    /// Refreshes an account's tokens. `seen_generation` is the generation
    /// the caller based its decision on: if the account has moved past it,
    /// no grant is sent. `None` means "whatever the current generation is",
    /// which still coalesces with a refresh already in flight.
    pub async fn refresh(
        &self,
        id: AccountId,
        seen_generation: Option<i64>,
        cause: &str,
    ) -> Result<RefreshOutcome> {
        let seen = match seen_generation {
            Some(g) => g,
            None => self.with_account(id, |a| a.generation)?,
        };
        let lock = self.refresh_lock(id);
        let _one_in_flight = lock.lock().await;

        let (provider_name, refresh_token, generation) = {
            let mut st = self.state();
            let a = st
                .accounts
                .get_mut(&id)
                .ok_or_else(|| not_found_account(id))?;
            if a.generation > seen {
                return Ok(RefreshOutcome::AlreadyFresh);
            }
            if a.auth != AuthState::Active {
                return Err(FarmError::Conflict(format!(
                    "account {id} is {}: it needs a login, not a refresh",
                    a.display_state(self.clock.now()).as_str()
                )));
            }
            let Some(rt) = a.tokens.as_ref().and_then(|t| t.refresh_token.clone()) else {
                return Err(FarmError::Conflict(format!(
                    "account {id} has no refresh token; log it in again"
                )));
            };
            a.refreshing = true;
            (a.provider.clone(), rt, a.generation)
        };
        let _mark = RefreshingMark { farm: self, id };
        let provider = self.provider(&provider_name)?.clone();

        let _slot = self
            .refresh_slots
            .acquire()
            .await
            .expect("the refresh semaphore is never closed");
        let started = self.clock.now();
        self.store.set_refresh_started(id, Some(started))?;
        tracing::debug!(account = id, cause, "refresh grant sent");
        let result = provider.refresh(&refresh_token).await;
        self.metrics.record_refresh(result.is_ok());
        match result {
            Ok(grant) => self
                .store_refreshed(id, tokens_from(grant, started, provider.default_ttl()))
                .map(|()| {
                    tracing::info!(account = id, cause, "token refreshed");
                    self.emit(
                        EventKind::RefreshOk,
                        Some(id),
                        format!("token refreshed ({cause})"),
                    );
                    RefreshOutcome::Refreshed
                }),
            Err(OAuthError::Dead { code, description }) => {
                self.refresh_token_dead(id, generation, code, description)
            }
            Err(OAuthError::AnswerLost(reason))
                if self.with_account(id, |a| {
                    a.relogin_instead_of_replay(
                        provider.config().reuse_detection,
                        self.config.browser.enabled,
                    )
                })? =>
            {
                self.refresh_answer_lost(id, reason)
            }
            Err(other) => self.refresh_failed(id, other),
        }
    }

    /// Persists a successful grant, then (only then) lets it be used.
    fn store_refreshed(&self, id: AccountId, tokens: Tokens) -> Result<()> {
        let saved = self.store.save_tokens(id, &tokens, self.clock.now());
        let generation = match saved {
            Ok(Some(g)) => g,
            Ok(None) => return Err(not_found_account(id)), // removed meanwhile
            Err(e) => {
                // The provider has rotated the refresh token and the old one
                // is spent: keep the new one in memory so the account lives
                // on while the disk problem is fixed.
                tracing::error!(account = id, error = %e, "could not persist refreshed tokens");
                self.with_account(id, |a| {
                    let generation = a.generation;
                    a.install_tokens(tokens, generation, self.clock.now());
                    a.last_error = Some(LastError {
                        at: self.clock.now(),
                        message: format!("could not persist tokens: {e}"),
                    });
                })?;
                return Err(e.into());
            }
        };
        self.with_account(id, |a| {
            a.install_tokens(tokens, generation, self.clock.now())
        })?;
        self.scheduler_wake.notify_one();
        Ok(())
    }

    /// `invalid_grant` (or a provider's own code for a dead refresh token):
    /// the refresh token is dead — unless the generation
    /// moved on disk, which means the tokens we used were already replaced.
    fn refresh_token_dead(
        &self,
        id: AccountId,
        used_generation: i64,
        code: String,
        description: Option<String>,
    ) -> Result<RefreshOutcome> {
        let persisted = self.store.generation(id)?;
        self.store.set_refresh_started(id, None)?;
        if persisted.is_some_and(|g| g > used_generation) {
            tracing::warn!(
                account = id,
                "refresh token was already replaced; reloading instead of failing"
            );
            self.with_account(id, |a| a.refreshing = false)?;
            return Ok(RefreshOutcome::AlreadyFresh);
        }
        let message = match &description {
            Some(d) => {
                format!("refresh token rejected by the provider ({code}: {d}); log in again")
            }
            None => format!("refresh token rejected by the provider ({code}); log in again"),
        };
        tracing::warn!(
            account = id,
            "refresh token is dead; account needs a new login"
        );
        self.to_needs_relogin(id, message)?;
        Err(FarmError::Refresh(OAuthError::Dead { code, description }))
    }

    /// The account's refresh token is not to be used again: `needs_relogin`
    /// (on disk, crash marker cleared), announced with `message`.
    fn to_needs_relogin(&self, id: AccountId, message: String) -> Result<()> {
        let now = self.clock.now();
        self.update_account(id, |a| {
            a.refreshing = false;
            a.suspect = false;
            a.auth = AuthState::NeedsRelogin;
            a.last_error = Some(LastError {
                at: now,
                message: message.clone(),
            });
        })?;
        self.emit(EventKind::NeedsRelogin, Some(id), message);
        Ok(())
    }

    /// The grant went out, its answer never came back, and replaying the
    /// refresh token would revoke the grant (`relogin_instead_of_replay`):
    /// the browser logs the account in instead, as after a crash mid-refresh.
    fn refresh_answer_lost(&self, id: AccountId, reason: String) -> Result<RefreshOutcome> {
        self.store.set_refresh_started(id, None)?;
        let message = format!(
            "the answer to a refresh was lost ({reason}) and the provider detects refresh \
             token reuse: logging in with the browser instead of replaying it"
        );
        tracing::warn!(
            account = id,
            "refresh answer lost; relogging in with the browser"
        );
        self.to_needs_relogin(id, message)?;
        Err(FarmError::Refresh(OAuthError::AnswerLost(reason)))
    }

    /// Any other failure: keep the refresh token, back off (until when the
    /// provider said, if it did), try again later. Never `needs_relogin`.
    fn refresh_failed(&self, id: AccountId, error: OAuthError) -> Result<RefreshOutcome> {
        self.store.set_refresh_started(id, None)?;
        let cfg = &self.config.scheduler;
        let jitter: f64 = rand::thread_rng().gen();
        let now = self.clock.now();
        let failures = self.update_account(id, |a| {
            a.refreshing = false;
            a.refresh_failures = a.refresh_failures.saturating_add(1);
            let wait = backoff(
                a.refresh_failures,
                chrono_dur(cfg.retry_initial),
                chrono_dur(cfg.retry_max),
                jitter,
            );
            a.retry_at = Some(retry_refresh_at(now, wait, error.retry_at()));
            a.last_error = Some(LastError {
                at: now,
                message: format!("refresh failed, will retry: {error}"),
            });
            a.refresh_failures
        })?;
        tracing::warn!(account = id, failures, error = %error, "refresh failed; backing off");
        self.emit(
            EventKind::RefreshFailed,
            Some(id),
            format!("refresh failed ({failures} in a row), will retry: {error}"),
        );
        Err(FarmError::Refresh(error))
    }
}

/// Clears the account's `refreshing` mark however the refresh ends: an
/// error, a panic, or the caller dropping the future (a client that hung
/// up). Made after the refresh lock is taken, so dropped before it is given
/// up: the mark never clears a later refresh's.
struct RefreshingMark<'a> {
    farm: &'a Farm,
    id: AccountId,
}

impl Drop for RefreshingMark<'_> {
    fn drop(&mut self) {
        let _ = self.farm.with_account(self.id, |a| a.refreshing = false);
    }
}

/// The tokens to store from a grant sent at `issued_at`: its lifetime from
/// `expires_in`, else the access token's JWT `exp`, else the default. (A
/// grant without a refresh token keeps the old one when installed:
/// `Account::install_tokens`, `Store::save_tokens`.)
pub(crate) fn tokens_from(
    grant: Grant,
    issued_at: chrono::DateTime<Utc>,
    default_ttl: chrono::Duration,
) -> Tokens {
    Tokens {
        expires_at: expires_at(
            grant.expires_in,
            grant.access_token.expose(),
            issued_at,
            default_ttl,
        ),
        access_token: grant.access_token,
        token_type: grant.token_type,
        issued_at,
        refresh_token: grant.refresh_token,
    }
}
