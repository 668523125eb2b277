//! Handing out credentials: `/credential/next`, reports and releases.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{chrono_dur, Farm, FarmError, Principal, Result};
use crate::domain::rate::retry_after_secs;
use crate::domain::timing::{cooldown_for, unauthorized_wants_refresh};
use crate::domain::{AccountId, Bucket, Choice};
use crate::events::EventKind;
use crate::secret::Secret;
use crate::store::leases::{LeaseKey, NewLease, Outcome, Report, Upstream};

/// The answer to `GET /credential/next`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct CredentialLease {
    pub account_id: AccountId,
    pub label: String,
    pub provider: String,
    /// Handed to the client on purpose: the point of a lease.
    #[serde(serialize_with = "Secret::serialize_exposed")]
    #[schemars(with = "String")]
    pub access_token: Secret,
    pub token_type: String,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub expires_at: DateTime<Utc>,
    pub lease_id: String,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub lease_expires_at: DateTime<Utc>,
}

/// A lease as the farm issued it: the client's answer, and what the farm
/// keeps to act on what becomes of it (the proxy's attempts).
#[derive(Debug)]
pub struct Issued {
    pub answer: CredentialLease,
    pub key: LeaseKey,
    /// The account's token generation the lease handed out.
    pub generation: i64,
}

/// `POST /credential/report`, as the farm takes it (the API's body is
/// `http::types::Report`).
#[derive(Debug)]
pub struct ReportRequest {
    pub lease_id: String,
    pub outcome: Outcome,
    pub retry_after_s: Option<u64>,
}

/// Longest accepted sticky session key.
const MAX_SESSION_LEN: usize = 200;

impl Farm {
    /// Chooses an account, records a lease (committed before returning),
    /// and returns the account's current token.
    pub async fn next_credential(
        &self,
        provider: &str,
        session: Option<&str>,
        who: Principal,
    ) -> Result<CredentialLease> {
        Ok(self
            .next_credential_except(provider, session, who, &[])
            .await?
            .answer)
    }

    /// [`Farm::next_credential`] among the accounts not in `tried`.
    pub async fn next_credential_except(
        &self,
        provider: &str,
        session: Option<&str>,
        who: Principal,
        tried: &[AccountId],
    ) -> Result<Issued> {
        let (issued, lease) = self.issue(provider, session, who, tried)?;
        self.lease_log.record(lease).await?;
        self.metrics.record_lease();
        Ok(issued)
    }

    /// A lease for one of the proxy's attempts, among the accounts not in
    /// `tried` (those this request already went to). Its token never
    /// leaves the farm, so nothing has to be on disk before the upstream is
    /// called: the lease is queued for the lease log's next group commit
    /// (`LeaseLog::queue_lease`), which batches the proxy's rows into a few
    /// commits instead of one or two per request.
    pub fn proxy_lease(
        &self,
        provider: &str,
        session: Option<&str>,
        who: Principal,
        tried: &[AccountId],
    ) -> Result<Issued> {
        let (issued, lease) = self.issue(provider, session, who, tried)?;
        self.lease_log.queue_lease(lease);
        self.metrics.record_lease();
        Ok(issued)
    }

    /// Chooses an account and makes its lease (not yet recorded).
    fn issue(
        &self,
        provider: &str,
        session: Option<&str>,
        who: Principal,
        tried: &[AccountId],
    ) -> Result<(Issued, NewLease)> {
        self.check_client_rate(who, self.clock.now())?;
        self.provider(provider)?;
        if session.is_some_and(|s| s.is_empty() || s.len() > MAX_SESSION_LEN) {
            return Err(FarmError::Invalid(format!(
                "session must be 1 to {MAX_SESSION_LEN} characters"
            )));
        }
        let rot = &self.config.rotation;
        let (lease, answer) = {
            let mut st = self.state();
            let st = &mut *st;
            // Stamped under the lock the lease id is allocated under: lease
            // ids and issue times increase together (`store::leases::first_id_since`).
            let now = self.clock.now();
            let choice = st.rotation.choose(
                rot.strategy,
                provider,
                session,
                st.accounts.values().filter(|a| !tried.contains(&a.id)),
                now,
                chrono_dur(rot.min_validity),
            );
            let id = match choice {
                Choice::Account(id) => id,
                Choice::NoneAvailable { mut retry_after } => {
                    if !tried.is_empty() {
                        // When any account, tried ones included, serves again.
                        retry_after = crate::domain::rotation::retry_after(
                            provider,
                            st.accounts.values(),
                            now,
                            chrono_dur(rot.min_validity),
                        );
                    }
                    self.metrics.record_unavailable();
                    return Err(FarmError::NoAccountAvailable {
                        provider: provider.to_string(),
                        retry_after_s: retry_after.num_seconds(),
                    });
                }
            };
            let a = st
                .accounts
                .get_mut(&id)
                .expect("rotation chose an account it was given");
            let tokens = a.tokens.as_ref().expect("a servable account has tokens");
            a.uses += 1;
            a.last_used_at = Some(now);
            let lease_expires_at =
                (now + chrono_dur(self.config.server.lease_ttl)).min(tokens.expires_at);
            let lease = NewLease {
                key: self.lease_log.allocate(),
                account_id: id,
                client_id: who.client_id(),
                session: session.map(str::to_string),
                generation: a.generation,
                issued_at: now,
                expires_at: lease_expires_at,
            };
            let answer = CredentialLease {
                account_id: id,
                label: a.label.clone(),
                provider: a.provider.clone(),
                access_token: tokens.access_token.clone(),
                token_type: tokens.token_type.clone(),
                expires_at: tokens.expires_at,
                lease_id: lease.key.to_string(),
                lease_expires_at,
            };
            (lease, answer)
        };
        let issued = Issued {
            answer,
            key: lease.key,
            generation: lease.generation,
        };
        Ok((issued, lease))
    }

    /// Records a client's report on a lease and acts on it.
    pub async fn report(&self, req: ReportRequest, who: Principal) -> Result<()> {
        self.check_client_rate(who, self.clock.now())?;
        let lease = self.lease_for(&req.lease_id, who).await?;
        let now = self.clock.now();
        let report = Report {
            lease: lease.key,
            account_id: lease.account_id,
            client_id: who.client_id(),
            outcome: req.outcome,
            retry_after_s: req.retry_after_s.map(|s| s.min(i64::MAX as u64) as i64),
            at: now,
            upstream: None,
        };
        // A closed lease (released, expired, account removed) says nothing
        // about the account now: nothing is stored, counted or acted on.
        if !self.store.record_report(&report)? {
            return Err(FarmError::LeaseClosed(req.lease_id));
        }
        self.lease_log.tally().report_stored(&report);
        self.act_on_report(&report, lease.generation)
    }

    /// Records one attempt of the proxy on a lease it was issued
    /// ([`Farm::next_credential_except`]), with what the upstream did, and
    /// acts on it as on a client's report. The report joins the lease log's
    /// group commits (no write of its own; the lease is the farm's own and
    /// open, so it is not looked up) and is not counted against the
    /// client's rate: the request that made it was.
    pub async fn record_attempt(
        &self,
        lease: &Issued,
        who: Principal,
        outcome: Outcome,
        retry_after_s: Option<u64>,
        upstream: Upstream,
    ) -> Result<()> {
        let report = self.attempt_report(lease, who, outcome, retry_after_s, upstream);
        // Acted on first: the next attempt's choice must see a cooldown.
        self.act_on_report(&report, lease.generation)?;
        self.lease_log.record_report(report).await?;
        Ok(())
    }

    /// [`Farm::record_attempt`] for an answer relayed to the client, as its
    /// body ends: nothing waits for it, so the report only queues for the
    /// lease log's next commit (`LeaseLog::queue_report`).
    pub fn note_attempt(
        &self,
        lease: &Issued,
        who: Principal,
        outcome: Outcome,
        upstream: Upstream,
    ) {
        let report = self.attempt_report(lease, who, outcome, None, upstream);
        if let Err(e) = self.act_on_report(&report, lease.generation) {
            tracing::warn!(error = %e, "proxy: could not act on the attempt's outcome");
        }
        self.lease_log.queue_report(report);
    }

    fn attempt_report(
        &self,
        lease: &Issued,
        who: Principal,
        outcome: Outcome,
        retry_after_s: Option<u64>,
        upstream: Upstream,
    ) -> Report {
        Report {
            lease: lease.key,
            account_id: lease.answer.account_id,
            client_id: who.client_id(),
            outcome,
            retry_after_s: retry_after_s.map(|s| s.min(i64::MAX as u64) as i64),
            at: self.clock.now(),
            upstream: Some(upstream),
        }
    }

    /// What a stored report makes the farm do: a cooldown for
    /// `rate_limited`, a refresh for `unauthorized` (unless it coalesces).
    fn act_on_report(&self, report: &Report, generation: i64) -> Result<()> {
        let lease = report;
        let now = report.at;
        self.metrics.record_report(report.outcome);
        match report.outcome {
            Outcome::RateLimited => {
                let rot = &self.config.rotation;
                let asked = report
                    .retry_after_s
                    .map(|s| chrono::Duration::seconds(s.clamp(0, 10 * 365 * 86400)));
                let wait = cooldown_for(
                    asked,
                    chrono_dur(rot.default_cooldown),
                    chrono_dur(rot.max_cooldown),
                );
                let until = now + wait;
                self.update_account(lease.account_id, |a| {
                    // A later report never shortens a longer cooldown.
                    a.cooldown_until = Some(a.cooldown_until.map_or(until, |u| u.max(until)));
                })?;
                tracing::info!(
                    account = lease.account_id,
                    seconds = wait.num_seconds(),
                    "rate limited; cooling down"
                );
                self.emit(
                    EventKind::CooldownStarted,
                    Some(lease.account_id),
                    format!(
                        "rate limited; cooling down until {}",
                        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                );
            }
            Outcome::Unauthorized => {
                // Skip the account at once and refresh it, unless the token
                // the client saw was already replaced or is too fresh to be
                // dead: those reports coalesce (recorded, no grant).
                let refresh = self.with_account(lease.account_id, |a| {
                    let refresh = unauthorized_wants_refresh(a, generation, now);
                    a.suspect |= refresh;
                    refresh
                })?;
                if refresh {
                    tracing::info!(
                        account = lease.account_id,
                        "client reported the token as rejected; refreshing"
                    );
                    self.scheduler_wake.notify_one();
                } else {
                    tracing::debug!(
                        account = lease.account_id,
                        "unauthorized report coalesced: the token was replaced since the lease, or is fresh"
                    );
                }
            }
            Outcome::Ok | Outcome::Error => {}
        }
        Ok(())
    }

    pub async fn release(&self, lease_id: &str, who: Principal) -> Result<()> {
        self.check_client_rate(who, self.clock.now())?;
        let lease = self.lease_for(lease_id, who).await?;
        let now = self.clock.now();
        if self.store.release_lease(lease.key, now)? {
            self.lease_log.tally().released(lease.key, now);
        }
        Ok(())
    }

    /// Takes one request from the client key's bucket
    /// (`rotation.client_rate`); the admin token is not limited.
    pub(crate) fn check_client_rate(&self, who: Principal, now: DateTime<Utc>) -> Result<()> {
        let Some(client) = who.client_id() else {
            return Ok(());
        };
        let rate = self.config.rotation.client_rate;
        let mut buckets = self
            .client_buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry(client)
            .or_insert_with(|| Bucket::full(rate, now));
        bucket
            .take(rate, now)
            .map_err(|wait| FarmError::RateLimited {
                rate: rate.to_string(),
                retry_after_s: retry_after_secs(wait),
            })
    }

    /// The lease, if it exists and belongs to the caller (the admin may act
    /// on any lease). Another client's lease is reported as not found.
    /// A proxied attempt's lease is queued, not yet committed, for up to
    /// `leases::QUEUED_FLUSH_AFTER` after its answer's headers went out: one
    /// issued but not found yet is looked up again once the queue is committed.
    async fn lease_for(
        &self,
        lease_id: &str,
        who: Principal,
    ) -> Result<crate::store::leases::StoredLease> {
        let not_found = || FarmError::NotFound {
            what: "lease",
            id: lease_id.to_string(),
        };
        let key: LeaseKey = lease_id.parse().map_err(|()| not_found())?;
        let mut found = self.store.find_lease(key)?;
        if found.is_none() && self.lease_log.allocated(key) {
            self.lease_log.flush().await?;
            found = self.store.find_lease(key)?;
        }
        let lease = found.ok_or_else(not_found)?;
        if who != Principal::Admin && lease.client_id != who.client_id() {
            return Err(not_found());
        }
        Ok(lease)
    }
}
