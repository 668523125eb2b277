//! Background jobs: the refresh scheduler and the cron sweep. One function
//! per job; both stop when `shutdown` fires.
//!
//! The scheduler does not keep a timer per account: each round it scans
//! the accounts once (cheap, in memory), starts the due refreshes, and
//! sleeps until the earliest next due time — capped at `max_sleep`, because
//! a home server that was suspended wakes up with a monotonic clock that
//! did not advance, and must notice the wall clock did. 10,000 idle
//! accounts cost one scan per wake, not a wake per account.
//!
//! "Now" is the farm's [`Clock`](crate::clock::Clock) and sleeps are on
//! tokio's timer, so the scheduler runs on paused time in unit tests
//! (`farm/refresh_tests.rs`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};

use crate::domain::timing::{backoff, next_refresh_at, next_relogin_at};
use crate::domain::{Account, AccountId, LastError};
use crate::farm::{chrono_dur, Farm};

/// A shutdown signal that every job can wait on.
pub type Shutdown = watch::Receiver<bool>;

pub async fn wait_shutdown(shutdown: &mut Shutdown) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// What the scheduler runs for an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Job {
    Refresh = 0,
    /// The recovery ladder's browser rung.
    Relogin = 1,
}

impl Job {
    pub const ALL: [Job; 2] = [Job::Refresh, Job::Relogin];

    pub fn as_str(self) -> &'static str {
        match self {
            Job::Refresh => "refresh",
            Job::Relogin => "relogin",
        }
    }
}

/// The scheduler's jobs in flight. A job leaves `in_flight` when its task
/// ends, however it ends: a panicking task's `JoinError` carries only the
/// task id, so each task's job is kept by id. Otherwise a panic would leave
/// the account in `in_flight`, never scheduled again, while `/healthz`
/// still says ok.
#[derive(Default)]
struct Running {
    tasks: JoinSet<()>,
    jobs: HashMap<tokio::task::Id, (Job, AccountId)>,
    in_flight: HashSet<(Job, AccountId)>,
}

impl Running {
    /// Starts `task` for the job unless the same job is still running.
    fn start(
        &mut self,
        job: Job,
        id: AccountId,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> bool {
        if !self.in_flight.insert((job, id)) {
            return false;
        }
        let handle = self.tasks.spawn(task);
        self.jobs.insert(handle.id(), (job, id));
        true
    }

    /// Forgets a finished task's job; a panic is recorded on the account.
    fn finished(&mut self, farm: &Farm, done: Result<tokio::task::Id, JoinError>) {
        let task = match &done {
            Ok(task) => *task,
            Err(e) => e.id(),
        };
        let Some((job, id)) = self.jobs.remove(&task) else {
            return;
        };
        self.in_flight.remove(&(job, id));
        if let Err(e) = done {
            if e.is_panic() {
                farm.job_panicked(job, id, &panic_text(e.into_panic()));
            }
        }
    }

    /// Forgets every task that has finished by now.
    fn reap(&mut self, farm: &Farm) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            self.finished(farm, done.map(|(task, ())| task));
        }
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "a non-string panic".to_owned(), |s| (*s).to_owned()),
    }
}

/// Refreshes every account before its token expires, and logs dead ones
/// back in with the browser (the recovery ladder).
pub async fn run_refresh_scheduler(farm: Arc<Farm>, mut shutdown: Shutdown) {
    let margin = chrono_dur(farm.config.scheduler.refresh_margin);
    let max_sleep = farm.config.scheduler.max_sleep;
    let mut running = Running::default();
    loop {
        farm.metrics.record_scheduler_round();
        running.reap(&farm);
        let now = farm.clock.now();
        let next_cooldown_end = farm.end_cooldowns(now);
        let (due, next_due) = farm.due_refreshes(now, margin);
        let (relogins, next_relogin) = farm.due_relogins(now);
        let next = [next_due, next_cooldown_end, next_relogin]
            .into_iter()
            .flatten()
            .min();
        for (id, generation) in due {
            let task = farm.clone();
            running.start(Job::Refresh, id, async move {
                // Errors are recorded on the account by `refresh` itself.
                let _ = task.refresh(id, Some(generation), "scheduled").await;
            });
        }
        for id in relogins {
            let task = farm.clone();
            running.start(Job::Relogin, id, async move {
                // Failures are recorded on the account (and backed off) by `relogin`.
                let _ = task.relogin(id, crate::farm::ReloginCause::Recovery).await;
            });
        }
        let sleep_for = next
            .map(|t| (t - now).to_std().unwrap_or_default())
            .unwrap_or(max_sleep)
            .min(max_sleep)
            .max(std::time::Duration::from_millis(50));
        tokio::select! {
            _ = farm.clock.sleep(sleep_for) => {}
            _ = farm.scheduler_wake.notified() => {}
            Some(done) = running.tasks.join_next_with_id(), if !running.tasks.is_empty() => {
                running.finished(&farm, done.map(|(task, ())| task));
            }
            _ = wait_shutdown(&mut shutdown) => break,
        }
    }
    running.tasks.shutdown().await;
}

impl Farm {
    /// A scheduled job panicked (a bug): the account gets a `last_error`
    /// and the job's backoff, so it is retried, but not in a tight loop if
    /// it panics every time; `/metrics` counts it. The panic's text goes to
    /// the log only.
    fn job_panicked(&self, job: Job, id: AccountId, panic: &str) {
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
}

impl Farm {
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
    /// time one will be due. Empty when the browser is disabled.
    pub fn due_relogins(&self, now: DateTime<Utc>) -> (Vec<AccountId>, Option<DateTime<Utc>>) {
        if self.browser.is_none() {
            return (Vec::new(), None);
        }
        let st = self.state();
        let mut due = Vec::new();
        let mut next: Option<DateTime<Utc>> = None;
        for a in st.accounts.values() {
            match next_relogin_at(a) {
                Some(t) if t <= now => due.push(a.id),
                Some(t) => next = Some(next.map_or(t, |n| n.min(t))),
                None => {}
            }
        }
        (due, next)
    }
}

impl Farm {
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
}

/// Runs [`sweep`] on the configured cron schedule (disabled when empty).
pub async fn run_sweep(farm: Arc<Farm>, shutdown: Shutdown) {
    let schedule = farm.config.scheduler.sweep.clone();
    on_schedule(schedule, &farm, shutdown, |farm| {
        sweep(farm);
        std::future::ready(())
    })
    .await;
}

/// Takes a backup on the `[backup]` schedule (disabled when empty). A
/// failure is logged and announced (`backup_failed`) by the farm; the next
/// run tries again.
pub async fn run_backups(farm: Arc<Farm>, shutdown: Shutdown) {
    let schedule = farm.config.backup.schedule.clone();
    on_schedule(schedule, &farm, shutdown, |farm| async move {
        let _ = farm.backup_now().await;
    })
    .await;
}

/// Runs `job` at every time of `schedule` until shutdown. Sleeps are capped
/// at `scheduler.max_sleep` and the clock is read again after each, so a
/// suspended machine runs a missed job once, soon after it wakes.
async fn on_schedule<'f, F, Fut>(
    schedule: Option<cron::Schedule>,
    farm: &'f Farm,
    mut shutdown: Shutdown,
    mut job: F,
) where
    F: FnMut(&'f Farm) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(schedule) = schedule else {
        return;
    };
    let max_sleep = farm.config.scheduler.max_sleep;
    let mut next = schedule.after(&farm.clock.now()).next();
    while let Some(at) = next {
        let wait = (at - farm.clock.now())
            .to_std()
            .unwrap_or_default()
            .min(max_sleep);
        tokio::select! {
            _ = farm.clock.sleep(wait) => {}
            _ = wait_shutdown(&mut shutdown) => return,
        }
        if farm.clock.now() >= at {
            tokio::select! {
                _ = job(farm) => {}
                _ = wait_shutdown(&mut shutdown) => return,
            }
            next = schedule.after(&farm.clock.now()).next();
        }
    }
}

/// The health sweep: expires abandoned logins, prunes old history, stores
/// the accounts' last use, bounds in-memory maps, and wakes the scheduler to
/// re-check every account.
pub fn sweep(farm: &Farm) {
    let now = farm.clock.now();
    let expired = farm.logins.expire(now);
    farm.stop_idle_listeners();
    let history_cutoff = now - chrono_dur(farm.config.store.lease_retention);
    let events_cutoff = now - chrono_dur(farm.config.events.retention);
    let pruned = farm
        .store
        .prune_leases(history_cutoff)
        .and_then(|n| Ok(n + farm.store.prune_events(events_cutoff)?))
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "pruning history failed");
            0
        });
    if let Err(e) = farm.store_last_used() {
        tracing::error!(error = %e, "storing accounts' last use failed");
    }
    let attention = farm.trim_and_count_attention();
    farm.scheduler_wake.notify_one();
    tracing::info!(
        expired_logins = expired,
        pruned_rows = pruned,
        needing_attention = attention,
        "sweep done"
    );
}

impl Farm {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Account, AuthState, Tokens};
    use crate::secret::Secret;

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

    #[tokio::test]
    async fn a_panicking_job_leaves_in_flight_and_is_recorded_on_the_account() {
        let dir = tempfile::tempdir().unwrap();
        let farm = crate::farm::test_farm(
            dir.path(),
            "[[provider]]\nname = \"demo\"\nissuer = \"http://127.0.0.1:19000\"\n\
             client_id = \"c\"\nredirect_uri = \"http://127.0.0.1:18765/callback\"\n",
        );
        let id = farm.add_account("demo", "alice", 0).unwrap().id;
        farm.with_account(id, |a| a.refreshing = true).unwrap();
        let mut running = Running::default();
        assert!(running.start(Job::Refresh, id, async { panic!("a bug") }));
        assert!(
            !running.start(Job::Refresh, id, async {}),
            "one job per account while it runs"
        );
        let done = running.tasks.join_next_with_id().await.unwrap();
        assert!(done.as_ref().is_err_and(JoinError::is_panic));
        running.finished(&farm, done.map(|(task, ())| task));

        assert!(running.in_flight.is_empty() && running.jobs.is_empty());
        let (refreshing, error, retry_at) = farm
            .with_account(id, |a| (a.refreshing, a.last_error.clone(), a.retry_at))
            .unwrap();
        assert!(!refreshing);
        let error = error.expect("the panic is recorded on the account");
        assert!(error.message.contains("panicked"), "{}", error.message);
        assert!(
            !error.message.contains("a bug"),
            "the panic text stays in the log"
        );
        assert!(retry_at.is_some_and(|t| t > Utc::now()), "backed off");
        assert!(farm
            .metrics_text()
            .contains("relogin_farm_task_panics_total{job=\"refresh\"} 1\n"));
        // The account can be scheduled again.
        assert!(running.start(Job::Refresh, id, async {}));
        let done = running.tasks.join_next_with_id().await.unwrap();
        running.finished(&farm, done.map(|(task, ())| task));
        assert!(running.in_flight.is_empty());
    }

    /// The issue's bound: idle accounts cost memory, not wake-ups. 10,000
    /// healthy accounts whose tokens expire over the next hours: the
    /// scheduler scans them once and sleeps (`max_sleep` is 30 s), instead of
    /// waking per account. On paused time: the 2 s pass in no time.
    #[tokio::test(start_paused = true)]
    async fn ten_thousand_idle_accounts_do_not_wake_the_scheduler() {
        let dir = tempfile::tempdir().unwrap();
        let farm = crate::farm::test_farm(dir.path(), "");
        let now = Utc::now();
        {
            let mut st = farm.state();
            for id in 1..=10_000 {
                let mut a = Account::new(id, "demo".into(), format!("a{id}"), 0, now);
                a.auth = AuthState::Active;
                a.tokens = Some(Tokens {
                    access_token: Secret::new("t"),
                    token_type: "Bearer".into(),
                    expires_at: now + chrono::Duration::minutes(30 + id % 600),
                    issued_at: now,
                    refresh_token: Some(Secret::new("r")),
                });
                st.accounts.insert(id, a);
            }
        }
        let (stop, shutdown) = watch::channel(false);
        let scheduler = tokio::spawn(run_refresh_scheduler(farm.clone(), shutdown));
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let rounds = farm.metrics.scheduler_rounds();
        stop.send(true).unwrap();
        scheduler.await.unwrap();
        assert_eq!(rounds, 1, "rounds in 2 s with nothing due");
        assert!(farm
            .due_refreshes(Utc::now(), chrono_dur(farm.config.scheduler.refresh_margin))
            .0
            .is_empty());
    }
}
