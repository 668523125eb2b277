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

use tokio::task::{JoinError, JoinSet};

use crate::domain::{AccountId, Job};
use crate::farm::{chrono_dur, Farm};
use crate::shutdown::{wait_shutdown, Shutdown};

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

    /// The accounts whose relogin is in flight.
    fn relogins(&self) -> HashSet<AccountId> {
        self.in_flight
            .iter()
            .filter(|(job, _)| *job == Job::Relogin)
            .map(|(_, id)| *id)
            .collect()
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
    let margin = chrono_dur(farm.scheduler_settings().refresh_margin);
    let max_sleep = farm.scheduler_settings().max_sleep;
    let mut running = Running::default();
    loop {
        farm.record_scheduler_round();
        running.reap(&farm);
        let now = farm.clock().now();
        let next_cooldown_end = farm.end_cooldowns(now);
        let (due, next_due) = farm.due_refreshes(now, margin);
        let (relogins, next_relogin) = farm.due_relogins(now, &running.relogins());
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
            _ = farm.clock().sleep(sleep_for) => {}
            _ = farm.due_times_moved() => {}
            Some(done) = running.tasks.join_next_with_id(), if !running.tasks.is_empty() => {
                running.finished(&farm, done.map(|(task, ())| task));
            }
            _ = wait_shutdown(&mut shutdown) => break,
        }
    }
    running.tasks.shutdown().await;
}

/// Runs [`Farm::sweep`] on the configured cron schedule (disabled when empty).
pub async fn run_sweep(farm: Arc<Farm>, shutdown: Shutdown) {
    let schedule = farm.scheduler_settings().sweep.clone();
    on_schedule(schedule, &farm, shutdown, |farm| {
        farm.sweep();
        std::future::ready(())
    })
    .await;
}

/// Takes a backup on the `[backup]` schedule (disabled when empty). A
/// failure is logged and announced (`backup_failed`) by the farm; the next
/// run tries again.
pub async fn run_backups(farm: Arc<Farm>, shutdown: Shutdown) {
    let schedule = farm.backup_schedule();
    on_schedule(schedule, &farm, shutdown, |farm| async move {
        let _ = farm.backup_now().await;
    })
    .await;
}

/// Polls each proxied provider's `proxy.usage_url` on its
/// `proxy.usage_schedule` (`proxy::usage`); returns at once when none has one.
pub async fn run_usage_polls(farm: Arc<Farm>, shutdown: Shutdown) {
    let polls = farm.proxies().usage_polls();
    let farm = &farm;
    futures_util::future::join_all(polls.into_iter().map(|(provider, schedule)| {
        let shutdown = shutdown.clone();
        async move {
            let provider = provider.as_str();
            on_schedule(schedule, farm, shutdown, move |farm| {
                crate::proxy::usage::poll(farm, provider)
            })
            .await;
        }
    }))
    .await;
}

/// Logs every active account with a login script in with a throwaway
/// browser on the `[browser] canary` schedule (disabled when empty): one
/// at a time, their starts spread evenly over the time until the next
/// round (at most an hour), so a round never bunches at the provider.
pub async fn run_canaries(farm: Arc<Farm>, shutdown: Shutdown) {
    let schedule = farm.canary_schedule();
    let rounds = schedule.clone();
    on_schedule(schedule, &farm, shutdown, move |farm| {
        canary_round(farm, rounds.clone())
    })
    .await;
}

async fn canary_round(farm: &Farm, schedule: Option<cron::Schedule>) {
    let start = farm.clock().now();
    let max_sleep = farm.scheduler_settings().max_sleep;
    let ids = farm.canary_accounts();
    let window = schedule
        .and_then(|s| s.after(&start).next())
        .and_then(|next| (next - start).to_std().ok())
        .unwrap_or(crate::domain::timing::CANARY_WINDOW);
    tracing::info!(accounts = ids.len(), "canary round started");
    for (i, id) in ids.iter().enumerate() {
        let at = start + chrono_dur(crate::domain::timing::spread(window, ids.len(), i));
        // Capped sleeps, the clock read after each: a machine suspended
        // meanwhile starts the next canary soon after it wakes.
        while let Ok(wait) = (at - farm.clock().now()).to_std() {
            if wait.is_zero() {
                break;
            }
            farm.clock().sleep(wait.min(max_sleep)).await;
        }
        // The result is an event (or a log line) of the farm's.
        let _ = farm.canary(*id).await;
    }
}

/// Emits the `digest` event on the `[digest]` schedule (disabled when empty).
pub async fn run_digests(farm: Arc<Farm>, shutdown: Shutdown) {
    let schedule = farm.digest_schedule();
    on_schedule(schedule, &farm, shutdown, |farm| {
        farm.emit_digest();
        std::future::ready(())
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
    let max_sleep = farm.scheduler_settings().max_sleep;
    let mut next = schedule.after(&farm.clock().now()).next();
    while let Some(at) = next {
        let wait = (at - farm.clock().now())
            .to_std()
            .unwrap_or_default()
            .min(max_sleep);
        tokio::select! {
            _ = farm.clock().sleep(wait) => {}
            _ = wait_shutdown(&mut shutdown) => return,
        }
        if farm.clock().now() >= at {
            tokio::select! {
                _ = job(farm) => {}
                _ = wait_shutdown(&mut shutdown) => return,
            }
            next = schedule.after(&farm.clock().now()).next();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Account, AuthState, Tokens};
    use crate::secret::Secret;

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
        assert!(
            retry_at.is_some_and(|t| t > chrono::Utc::now()),
            "backed off"
        );
        assert!(farm
            .render_metrics()
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
        let now = chrono::Utc::now();
        {
            let mut accounts = Vec::new();
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
                accounts.push(a);
            }
            farm.put_accounts_for_test(accounts);
        }
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let scheduler = tokio::spawn(run_refresh_scheduler(farm.clone(), shutdown));
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let rounds = farm.scheduler_rounds();
        stop.send(true).unwrap();
        scheduler.await.unwrap();
        assert_eq!(rounds, 1, "rounds in 2 s with nothing due");
        assert!(farm
            .due_refreshes(
                chrono::Utc::now(),
                chrono_dur(farm.scheduler_settings().refresh_margin)
            )
            .0
            .is_empty());
    }
}
