//! Counters for `GET /metrics` (Prometheus text format). Plain atomics:
//! the hot path pays one relaxed increment.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use chrono::{DateTime, Utc};

use crate::domain::Job;
use crate::store::leases::Outcome;

#[derive(Default)]
pub struct Metrics {
    leases: AtomicU64,
    unavailable: AtomicU64,
    refresh_ok: AtomicU64,
    refresh_failed: AtomicU64,
    reports: [AtomicU64; Outcome::ALL.len()],
    scheduler_rounds: AtomicU64,
    /// When the last round began, in ms since [`Metrics::started`].
    last_round_ms: AtomicU64,
    /// When the farm started (monotonic: a wall-clock jump is no stall).
    started: std::sync::OnceLock<std::time::Instant>,
    backups_ok: AtomicU64,
    backups_failed: AtomicU64,
    /// Unix seconds of the newest backup (0: none yet).
    last_backup_at: AtomicI64,
    /// Scheduled tasks that panicked, by [`Job`] (a bug, caught).
    task_panics: [AtomicU64; Job::ALL.len()],
    /// Client connections open now.
    connections_open: AtomicI64,
    /// Client connections the listener closed, by [`ConnectionClosed`].
    connections_closed: [AtomicU64; ConnectionClosed::ALL.len()],
}

crate::named_enum! {
    /// Why the listener closed a client connection itself.
    pub enum ConnectionClosed {
        /// Its request head (or TLS handshake) did not arrive in time.
        HeaderTimeout = "header_timeout",
        /// Nothing moved on it for `server.idle_timeout`.
        IdleTimeout = "idle_timeout",
        /// Its IP address had `server.max_connections_per_ip` open already.
        PerIpLimit = "per_ip_limit",
    }
}

impl Metrics {
    pub fn record_lease(&self) {
        self.leases.fetch_add(1, Relaxed);
    }
    pub fn record_unavailable(&self) {
        self.unavailable.fetch_add(1, Relaxed);
    }
    pub fn record_refresh(&self, ok: bool) {
        if ok {
            &self.refresh_ok
        } else {
            &self.refresh_failed
        }
        .fetch_add(1, Relaxed);
    }
    pub fn record_report(&self, outcome: Outcome) {
        self.reports[outcome as usize].fetch_add(1, Relaxed);
    }
    pub fn record_task_panic(&self, job: Job) {
        self.task_panics[job as usize].fetch_add(1, Relaxed);
    }
    pub fn record_scheduler_round(&self) {
        self.scheduler_rounds.fetch_add(1, Relaxed);
        let since_start = self.started().elapsed().as_millis() as u64;
        self.last_round_ms.store(since_start, Relaxed);
    }
    /// When these metrics (the farm) started.
    pub fn started(&self) -> std::time::Instant {
        *self.started.get_or_init(std::time::Instant::now)
    }
    /// When the refresh scheduler last began a round (`None`: never).
    pub fn last_scheduler_round(&self) -> Option<std::time::Instant> {
        (self.scheduler_rounds() > 0).then(|| {
            self.started() + std::time::Duration::from_millis(self.last_round_ms.load(Relaxed))
        })
    }
    pub fn scheduler_rounds(&self) -> u64 {
        self.scheduler_rounds.load(Relaxed)
    }
    /// A backup attempt; `Some(when)` for one that was written.
    pub fn record_backup(&self, created_at: Option<DateTime<Utc>>) {
        match created_at {
            Some(at) => {
                self.backups_ok.fetch_add(1, Relaxed);
                self.set_last_backup(at);
            }
            None => {
                self.backups_failed.fetch_add(1, Relaxed);
            }
        }
    }
    /// The newest backup on disk (also those of earlier runs).
    pub fn set_last_backup(&self, at: DateTime<Utc>) {
        self.last_backup_at.fetch_max(at.timestamp(), Relaxed);
    }

    /// A client connection opened (`+1`) or ended (`-1`).
    pub fn record_connection(&self, delta: i64) {
        self.connections_open.fetch_add(delta, Relaxed);
    }
    pub fn record_connection_closed(&self, why: ConnectionClosed) {
        self.connections_closed[why as usize].fetch_add(1, Relaxed);
    }

    /// Renders the counters plus the per-state account gauge the caller
    /// computed (`(provider, state, count)`), the lease log's commit count
    /// and the store's size (`(database file, WAL)` in bytes).
    pub fn render(
        &self,
        accounts: &[(String, &'static str, usize)],
        lease_commits: u64,
        (db_bytes, wal_bytes): (u64, u64),
    ) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        counter(
            "relogin_farm_leases_total",
            "Leases handed out.",
            &[("", self.leases.load(Relaxed))],
        );
        counter(
            "relogin_farm_lease_commits_total",
            "Commits of the lease log (leases are committed in groups: leases / commits is the group size).",
            &[("", lease_commits)],
        );
        counter(
            "relogin_farm_no_account_available_total",
            "Requests answered 503 because no account could serve.",
            &[("", self.unavailable.load(Relaxed))],
        );
        counter(
            "relogin_farm_refreshes_total",
            "Refresh grants sent, by result.",
            &[
                ("{result=\"ok\"}", self.refresh_ok.load(Relaxed)),
                ("{result=\"failed\"}", self.refresh_failed.load(Relaxed)),
            ],
        );
        let reports = by_label("outcome", Outcome::ALL, Outcome::as_str, |o| {
            self.reports[o as usize].load(Relaxed)
        });
        counter(
            "relogin_farm_reports_total",
            "Client reports, by outcome.",
            &samples(&reports),
        );
        counter(
            "relogin_farm_scheduler_rounds_total",
            "Passes of the refresh scheduler over the accounts (one per due time, at least one per scheduler.max_sleep): a liveness signal.",
            &[("", self.scheduler_rounds())],
        );
        let panics = by_label("job", &Job::ALL, Job::as_str, |j| {
            self.task_panics[j as usize].load(Relaxed)
        });
        counter(
            "relogin_farm_task_panics_total",
            "Scheduled refresh and relogin tasks that panicked (a bug; the account is retried with backoff).",
            &samples(&panics),
        );
        counter(
            "relogin_farm_backups_total",
            "Database backups attempted, by result.",
            &[
                ("{result=\"ok\"}", self.backups_ok.load(Relaxed)),
                ("{result=\"failed\"}", self.backups_failed.load(Relaxed)),
            ],
        );
        let closed = by_label(
            "reason",
            ConnectionClosed::ALL,
            ConnectionClosed::as_str,
            |r| self.connections_closed[r as usize].load(Relaxed),
        );
        counter(
            "relogin_farm_connections_closed_total",
            "Client connections the farm closed itself, by reason (server.header_read_timeout, server.idle_timeout, server.max_connections_per_ip).",
            &samples(&closed),
        );
        let _ = writeln!(
            out,
            "# HELP relogin_farm_connections_open Client connections open now.\n\
             # TYPE relogin_farm_connections_open gauge\n\
             relogin_farm_connections_open {}",
            self.connections_open.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP relogin_farm_last_backup_timestamp_seconds When the newest backup was taken (0: none).\n\
             # TYPE relogin_farm_last_backup_timestamp_seconds gauge\n\
             relogin_farm_last_backup_timestamp_seconds {}",
            self.last_backup_at.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP relogin_farm_store_bytes Size of the store on disk: the database file and its WAL.\n\
             # TYPE relogin_farm_store_bytes gauge\n\
             relogin_farm_store_bytes{{file=\"db\"}} {db_bytes}\n\
             relogin_farm_store_bytes{{file=\"wal\"}} {wal_bytes}"
        );
        let _ = writeln!(out, "# HELP relogin_farm_accounts Accounts by provider and state.\n# TYPE relogin_farm_accounts gauge");
        for (provider, state, n) in accounts {
            let _ = writeln!(
                out,
                "relogin_farm_accounts{{provider=\"{provider}\",state=\"{state}\"}} {n}"
            );
        }
        out
    }
}

/// One sample per variant: its `{key="name"}` label and its count.
fn by_label<T: Copy>(
    key: &str,
    variants: &[T],
    name: fn(T) -> &'static str,
    count: impl Fn(T) -> u64,
) -> Vec<(String, u64)> {
    variants
        .iter()
        .map(|&v| (format!("{{{key}=\"{}\"}}", name(v)), count(v)))
        .collect()
}

fn samples(labelled: &[(String, u64)]) -> Vec<(&str, u64)> {
    labelled.iter().map(|(l, n)| (l.as_str(), *n)).collect()
}
