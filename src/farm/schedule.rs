//! What the scheduler asks of the farm: which accounts are due for a
//! refresh or a browser relogin, the cooldowns that ended, the backoff of a
//! job that panicked, and the health sweep. `scheduler.rs` only decides
//! when to ask.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use rand::Rng;

use super::{chrono_dur, Farm};
use crate::domain::recovery::{pick_relogins, DueRelogin};
use crate::domain::timing::{backoff, next_refresh_at, next_relogin_at};
use crate::domain::{Account, AccountId, Job, LastError};

impl Farm {
    /// A scheduled job panicked (a bug): the account gets a `last_error`
    /// and the job's backoff, so it is retried, but not in a tight loop if
    /// it panics every time; `/metrics` counts it. The panic's text goes to
    /// the log only.
    pub(crate) fn job_panicked(&self, job: Job, id: AccountId, panic: &str) {
        self.metrics.record_task_panic(job);
        tracing::error!(
            account = id,
            job = job.as_str(),
            panic,
            "a scheduled task panicked"
        );
        let jitter: f64 = rand::thread_rng().gen();
        let now = self.clock.now();
        let back_off = |a: &mut Account| {
            a.refreshing = false;
            let (failures, retry_at, cfg) = match job {
                Job::Refresh => (
                    &mut a.refresh_failures,
                    &mut a.retry_at,
                    (
                        self.config.scheduler.retry_initial,
                        self.config.scheduler.retry_max,
                    ),
                ),
                Job::Relogin => (
                    &mut a.relogin_failures,
                    &mut a.relogin_retry_at,
                    (
                        self.config.browser.retry_initial,
                        self.config.browser.retry_max,
                    ),
                ),
            };
            *failures = failures.saturating_add(1);
            let wait = backoff(*failures, chrono_dur(cfg.0), chrono_dur(cfg.1), jitter);
            *retry_at = Some(now + wait);
        };
        let recorded = self.update_account(id, |a| {
            back_off(a);
            a.last_error = Some(LastError {
                at: now,
                message: format!(
                    "internal error: the scheduled {} panicked (see the farm's log); retrying with backoff",
                    job.as_str()
                ),
            });
        });
        if let Err(e) = recorded {
            tracing::error!(account = id, error = %e, "could not record the panic on the account");
            let _ = self.with_account(id, back_off);
        }
    }

    /// The accounts due for a refresh now (with the generation seen), and
    /// the earliest future due time among the others.
    pub fn due_refreshes(
        &self,
        now: DateTime<Utc>,
        margin: chrono::Duration,
    ) -> (Vec<(AccountId, i64)>, Option<DateTime<Utc>>) {
        let st = self.state();
        let mut due = Vec::new();
        let mut next: Option<DateTime<Utc>> = None;
        for a in st.accounts.values() {
            match next_refresh_at(a, margin) {
                Some(t) if t <= now => due.push((a.id, a.generation)),
                Some(t) => next = Some(next.map_or(t, |n| n.min(t))),
                None => {}
            }
        }
        (due, next)
    }

    /// The accounts the browser should log in now, and the earliest later
    /// time one will be due (or its provider's relogin rate allows it).
    /// `running`: the accounts whose relogin the scheduler has in flight;
    /// they count against `browser.max_concurrent`, so a recovery of many
    /// accounts begins each login only when a browser is about to be free,
    /// those whose tokens expire first first (`domain::recovery`). Empty
    /// when the browser is disabled.
    pub fn due_relogins(
        &self,
        now: DateTime<Utc>,
        running: &HashSet<AccountId>,
    ) -> (Vec<AccountId>, Option<DateTime<Utc>>) {
        if self.browser.is_none() {
            return (Vec::new(), None);
        }
        let mut due = Vec::new();
        let mut next: Option<DateTime<Utc>> = None;
        for a in self.state().accounts.values() {
            match next_relogin_at(a) {
                Some(_) if running.contains(&a.id) => {}
                Some(t) if t <= now => due.push(DueRelogin {
                    id: a.id,
                    provider: a.provider.clone(),
                    expires_at: a.tokens.as_ref().map(|t| t.expires_at),
                }),
                Some(t) => next = Some(next.map_or(t, |n| n.min(t))),
                None => {}
            }
        }
        let cfg = &self.config.browser;
        let free = cfg.max_concurrent.saturating_sub(running.len());
        let mut next_start = self
            .relogin_next_start
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (start, rate_allows) =
            pick_relogins(due, free, cfg.relogins_per_minute, &mut next_start, now);
        (start, [next, rate_allows].into_iter().flatten().min())
    }

    /// Ends the cooldowns that are over (one `cooldown_ended` event each)
    /// and returns when the next one ends.
    pub fn end_cooldowns(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut ended = Vec::new();
        let mut next: Option<DateTime<Utc>> = None;
        for a in self.state().accounts.values() {
            match a.cooldown_until {
                Some(u) if u <= now => ended.push(a.id),
                Some(u) => next = Some(next.map_or(u, |n| n.min(u))),
                None => {}
            }
        }
        for id in ended {
            // Disk first; a failed write leaves the (already harmless)
            // past cooldown in memory, and the next round tries again.
            let cleared = self.update_account(id, |a| {
                if a.cooldown_until.is_some_and(|u| u <= now) {
                    a.cooldown_until = None;
                }
            });
            if let Err(e) = cleared {
                tracing::error!(account = id, error = %e, "could not persist the end of a cooldown");
                continue;
            }
            self.emit(
                crate::events::EventKind::CooldownEnded,
                Some(id),
                "cooldown over",
            );
        }
        next
    }

    /// The health sweep: expires abandoned logins, prunes old history, stores
    /// the accounts' last use, bounds in-memory maps, and wakes the scheduler to
    /// re-check every account.
    pub fn sweep(&self) {
        let now = self.clock.now();
        let expired = self.logins.expire(now);
        self.stop_idle_listeners();
        let history_cutoff = now - chrono_dur(self.config.store.lease_retention);
        let events_cutoff = now - chrono_dur(self.config.events.retention);
        let pruned = self
            .store
            .prune_leases(history_cutoff)
            .and_then(|n| Ok(n + self.store.prune_events(events_cutoff)?))
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "pruning history failed");
                0
            });
        if let Err(e) = self.save_last_used() {
            tracing::error!(error = %e, "storing accounts' last use failed");
        }
        let attention = self.trim_and_count_attention();
        self.scheduler_wake.notify_one();
        tracing::info!(
            expired_logins = expired,
            pruned_rows = pruned,
            needing_attention = attention,
            "sweep done"
        );
    }

    /// Bounds the sticky-session map and counts
    /// the accounts a person must look at.
    fn trim_and_count_attention(&self) -> usize {
        const MAX_STICKY_SESSIONS: usize = 100_000;
        let mut st = self.state();
        if st.rotation.session_count() > MAX_STICKY_SESSIONS {
            st.rotation.clear_sessions();
        }
        st.accounts
            .values()
            .filter(|a| a.enabled && a.auth != crate::domain::AuthState::Active)
            .count()
    }

    /// The `[scheduler]` section: the refresh margin, the longest sleep,
    /// the sweep's schedule.
    pub fn scheduler_settings(&self) -> &crate::config::SchedulerConfig {
        &self.config.scheduler
    }

    /// The farm's clock: the scheduler reads "now" and sleeps through it.
    pub fn clock(&self) -> &std::sync::Arc<dyn crate::clock::Clock> {
        &self.clock
    }

    /// The enabled accounts of `provider` that have an access token, with
    /// it: whom the usage poll asks about (`proxy::usage`). Reads only.
    pub fn usage_tokens(&self, provider: &str) -> Vec<(AccountId, crate::secret::Secret)> {
        self.state()
            .accounts
            .values()
            .filter(|a| a.provider == provider && a.enabled)
            .filter_map(|a| Some((a.id, a.tokens.as_ref()?.access_token.clone())))
            .collect()
    }

    /// When the `[backup]` job runs (`None`: never).
    pub fn backup_schedule(&self) -> Option<cron::Schedule> {
        self.config.backup.schedule.clone()
    }

    /// Counts a scheduler round (`/healthz` measures its silence).
    pub fn record_scheduler_round(&self) {
        self.metrics.record_scheduler_round();
    }

    /// Resolves when an account's due time may have moved: the scheduler
    /// then scans again instead of finishing its sleep.
    pub async fn due_times_moved(&self) {
        self.scheduler_wake.notified().await;
    }

    /// How many rounds the scheduler began.
    #[cfg(test)]
    pub(crate) fn scheduler_rounds(&self) -> u64 {
        self.metrics.scheduler_rounds()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn health_is_degraded_once_the_scheduler_missed_three_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let farm = crate::farm::test_farm(dir.path(), "[scheduler]\nmax_sleep = \"2s\"\n");
        let start = farm.metrics.started();
        let at = |s: u64| start + std::time::Duration::from_secs(s);
        // Never ran, but just started: 3 × 2 s + 10 s of grace.
        assert_eq!(farm.health_at(at(15)).status, "ok");
        let stalled = farm.health_at(at(17));
        assert_eq!(stalled.status, "degraded");
        assert_eq!(
            stalled.detail.as_deref(),
            Some("the refresh scheduler has not run for 17 s (it runs at least every 2 s)")
        );
        farm.metrics.record_scheduler_round();
        let round = farm.metrics.last_scheduler_round().unwrap();
        assert!(round >= start);
        assert_eq!(
            farm.health_at(round + std::time::Duration::from_secs(16)),
            crate::farm::Health {
                status: "ok",
                accounts: 0,
                detail: None
            }
        );
        assert_eq!(
            farm.health_at(round + std::time::Duration::from_secs(17))
                .status,
            "degraded"
        );
    }
}
