//! Leases and reports: the group-commit lease log and the usage queries.
//!
//! `/credential/next` records every lease *before* answering. One INSERT
//! and commit per request behind a mutex caps the endpoint at a fraction of
//! what warp serves, so leases are group-committed ([`LeaseLog::record`]):
//! while one batch commits, the next one queues, and the first of its
//! requests to wake commits it — many requests, one commit. The batch size
//! follows the load by itself (one lease per commit when idle, dozens under
//! load); no request waits for a timer or for another thread to be woken.
//!
//! The lease table has no secondary index (each would be one more b-tree
//! written per lease). Lease ids increase with time, so "since T" is "from
//! the first id issued at or after T", found by `first_id_since`.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, Weak};
use std::thread;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::Notify;

use super::usage::Tally;
use super::{from_ms, ms, open_connection, Result, StoreError};
use crate::domain::AccountId;

/// A lease's identity: an increasing row id (cheap to insert) and a random
/// tag, so a lease id cannot be guessed from another. Public form:
/// `lease_<id>_<tag as 8 hex digits>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseKey {
    pub id: i64,
    pub tag: u32,
}

impl fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lease_{}_{:08x}", self.id, self.tag)
    }
}

impl FromStr for LeaseKey {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (id, tag) = s
            .strip_prefix("lease_")
            .and_then(|r| r.split_once('_'))
            .ok_or(())?;
        if tag.len() != 8 {
            return Err(());
        }
        Ok(LeaseKey {
            id: id.parse().map_err(|_| ())?,
            tag: u32::from_str_radix(tag, 16).map_err(|_| ())?,
        })
    }
}

#[derive(Clone, Debug)]
pub struct NewLease {
    pub key: LeaseKey,
    pub account_id: AccountId,
    pub client_id: Option<i64>,
    pub session: Option<String>,
    pub generation: i64,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The lease log: leases wait in a queue; whichever request finds nobody
/// committing takes the whole queue and commits it (group commit without a
/// writer thread: no cross-thread hand-off, no wake-up per lease).
/// Cloning shares the log.
#[derive(Clone)]
pub struct LeaseLog {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// The writer's connection, and the spare buffer its batches swap with
    /// the queue. Whoever holds it commits; it is never held across an await.
    writer: Mutex<(Connection, Pending)>,
    /// Set while a request is committing (it holds the writer only while
    /// it writes, but leads from before its pause to after its commit).
    leading: AtomicBool,
    /// Set while a flush of queued rows is timed (`LeaseLog::arm_flush`).
    flush_due: AtomicBool,
    last_id: AtomicI64,
    commits: AtomicU64,
    /// Usage counts, kept as leases are committed (`store::usage`).
    tally: Tally,
}

/// The leases (and the farm's own reports) of the next commit ("batch")
/// and where its outcome will be.
struct Queue {
    pending: Pending,
    batch: Arc<Batch>,
}

/// Rows waiting for a commit: leases, then reports of leases committed before.
#[derive(Default)]
struct Pending {
    leases: Vec<NewLease>,
    reports: Vec<Report>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.leases.is_empty() && self.reports.is_empty()
    }
}

#[derive(Default)]
struct Batch {
    /// Set once, when the batch is committed (or failed).
    outcome: OnceLock<Result<(), String>>,
    /// Wakes the batch's requests: all of them once it is committed; one of
    /// them (to commit it) when the writer becomes free while it waits.
    notify: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, even if it panics.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LeaseLog {
    /// Opens the log on its own connection to the database at `path` (which
    /// [`super::Store::open`] has already created and migrated), and starts
    /// the WAL checkpoint thread.
    pub fn start(path: &Path) -> Result<LeaseLog> {
        let conn = open_connection(path, false)?;
        let last_id: i64 =
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM leases", [], |r| r.get(0))?;
        let tally = Tally::load(&conn, Utc::now())?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                pending: Pending::default(),
                batch: Arc::default(),
            }),
            writer: Mutex::new((conn, Pending::default())),
            leading: AtomicBool::new(false),
            flush_due: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            last_id: AtomicI64::new(last_id),
            tally,
        });
        let checkpointer = open_connection(path, false)?;
        // Never waits: a checkpoint that would have to wait (for a backup's
        // long read, say) is tried again a second later, and a TRUNCATE
        // waiting would hold up the writers behind it.
        checkpointer.busy_timeout(std::time::Duration::ZERO)?;
        let wal = wal_path(path);
        let alive = Arc::downgrade(&shared);
        thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, &wal, alive))
            .map_err(|source| StoreError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(LeaseLog { shared })
    }

    /// A fresh lease key (ids increase; the tag is random).
    pub fn allocate(&self) -> LeaseKey {
        LeaseKey {
            id: self.shared.last_id.fetch_add(1, Ordering::Relaxed) + 1,
            tag: rand::random(),
        }
    }

    /// How many commits wrote leases so far (for metrics: leases ÷ commits
    /// is the average group size).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// The usage counts (admin reads: no I/O, no lock of the store).
    pub fn tally(&self) -> &Tally {
        &self.shared.tally
    }

    /// Records a lease; returns once it is committed.
    ///
    /// The lease joins the open batch. If nobody is committing, this
    /// request leads: it lets the other runnable requests queue theirs,
    /// then commits everything queued right here, synchronously (a commit
    /// is a few WAL page writes, no fsync; a separate writer thread costs
    /// more in wake-ups than it saves). Otherwise it waits: the leases
    /// queued during a commit make the next batch, which one of their
    /// requests commits when the writer is free.
    ///
    /// The commit occupies its worker thread; should an account write (with
    /// its fsync) hold SQLite's write lock at that moment, the worker waits
    /// for it too — account writes are rare (a refresh per token lifetime).
    pub async fn record(&self, lease: NewLease) -> Result<()> {
        self.commit_with(|p| p.leases.push(lease)).await
    }

    /// Records a report the farm made itself about a lease it committed
    /// (a proxied attempt), in the same group commits as the leases;
    /// returns once it is committed. Its lease is the farm's own and open,
    /// so nothing is checked (unlike a client's report, `Store::record_report`).
    pub async fn record_report(&self, report: Report) -> Result<()> {
        self.commit_with(|p| p.reports.push(report)).await
    }

    /// Queues a lease without waiting for its commit, for a lease whose
    /// token never leaves the farm (a proxied attempt): it goes with the
    /// next commit — the next recorded lease's, or the log's own flush
    /// [`QUEUED_FLUSH_AFTER`] after the first row queued this way (so a
    /// `kill -9` loses at most that much of the proxy's usage, never an
    /// account). Under load that makes one commit of many of the proxy's
    /// rows instead of one per request or two.
    pub fn queue_lease(&self, lease: NewLease) {
        lock(&self.shared.queue).pending.leases.push(lease);
        self.shared.arm_flush();
    }

    /// Queues a report like [`LeaseLog::record_report`] without waiting for
    /// it, as [`LeaseLog::queue_lease`] queues a lease. For the proxy's
    /// answers as their bodies end (nothing waits on them).
    pub fn queue_report(&self, report: Report) {
        lock(&self.shared.queue).pending.reports.push(report);
        self.shared.arm_flush();
    }

    /// Returns once every row queued before the call is committed: for a
    /// lookup of a lease that may still be queued (a client reporting on
    /// the lease of a proxied answer it has just read).
    pub async fn flush(&self) -> Result<()> {
        self.commit_with(|_| {}).await
    }

    /// Whether `key` was allocated by this log (it may still be queued;
    /// an id above that was never issued).
    pub fn allocated(&self, key: LeaseKey) -> bool {
        key.id > 0 && key.id <= self.shared.last_id.load(Ordering::Relaxed)
    }

    /// Adds rows to the open batch and returns once that batch is committed
    /// (see [`LeaseLog::record`]).
    async fn commit_with(&self, add: impl FnOnce(&mut Pending)) -> Result<()> {
        let s = &*self.shared;
        let batch = {
            let mut q = lock(&s.queue);
            add(&mut q.pending);
            q.batch.clone()
        };
        loop {
            // Registered before looking, so a wake-up in between is not missed.
            let woken = batch.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Some(outcome) = batch.outcome.get() {
                return outcome.clone().map_err(StoreError::LeaseLog);
            }
            match Leader::try_become(s) {
                Some(leader) => {
                    // One pass of the scheduler before committing: the
                    // requests already runnable queue their leases into this
                    // batch. Under load that makes one commit of dozens of
                    // leases instead of a few; when idle it costs nothing
                    // (nobody else is runnable), unlike a timed gathering window.
                    tokio::task::yield_now().await;
                    leader.commit();
                }
                None => woken.await,
            }
        }
    }
}

/// The request committing the open batch. Dropping it (committed, or the
/// request cancelled during its pause) hands the lead on.
struct Leader<'a>(&'a Shared);

impl<'a> Leader<'a> {
    fn try_become(s: &'a Shared) -> Option<Leader<'a>> {
        s.leading
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Leader(s))
    }

    fn commit(self) {
        let (conn, spare) = &mut *lock(&self.0.writer);
        self.0.commit_queued(conn, spare);
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.0.leading.store(false, Ordering::Release);
        // Leases queued during the commit: wake one of their requests to
        // commit them (the others wait for that commit).
        let q = lock(&self.0.queue);
        if !q.pending.is_empty() {
            q.batch.notify.notify_one();
        }
    }
}

impl Shared {
    /// Commits the queue [`QUEUED_FLUSH_AFTER`] from now, unless a flush is
    /// already due. Outside a runtime (nothing to time it) the checkpoint
    /// thread commits it within a second.
    fn arm_flush(self: &Arc<Self>) {
        if self.flush_due.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.flush_due.store(false, Ordering::Release);
            return;
        };
        let log = Arc::downgrade(self);
        runtime.spawn(async move {
            tokio::time::sleep(QUEUED_FLUSH_AFTER).await;
            let Some(s) = log.upgrade() else {
                return;
            };
            // Cleared first: a row queued from here on arms the next flush.
            s.flush_due.store(false, Ordering::Release);
            let leader = Leader::try_become(&s);
            match leader {
                Some(leader) => leader.commit(),
                // A commit is under way, and may have taken its rows before
                // some of ours were queued: look again later.
                None => s.arm_flush(),
            }
        });
    }

    /// Commits the open batch (the caller holds the writer) and wakes its requests.
    fn commit_queued(&self, conn: &mut Connection, spare: &mut Pending) {
        let batch = {
            let mut q = lock(&self.queue);
            std::mem::swap(&mut q.pending, spare);
            std::mem::take(&mut q.batch)
        };
        let outcome = if spare.is_empty() {
            Ok(())
        } else {
            self.commits.fetch_add(1, Ordering::Relaxed);
            let written = write_batch(conn, spare).map_err(|e| {
                tracing::error!(
                    error = %e,
                    leases = spare.leases.len(),
                    reports = spare.reports.len(),
                    "recording leases failed"
                );
                e.to_string()
            });
            if written.is_ok() {
                self.tally.leases_committed(&mut spare.leases);
                for report in &spare.reports {
                    self.tally.report_stored(report);
                }
            }
            written
        };
        spare.leases.clear();
        spare.reports.clear();
        let _ = batch.outcome.set(outcome);
        batch.notify.notify_waiters();
    }
}

impl Drop for Shared {
    /// Leases whose requests went away before their commit are written
    /// when the log closes.
    fn drop(&mut self) {
        let (conn, spare) = &mut *lock(&self.writer);
        self.commit_queued(conn, spare);
        // The log closes with the store: leave no WAL behind.
        if let Err(e) = truncate_wal(conn) {
            tracing::warn!(error = %e, "truncating the WAL at close failed");
        }
    }
}

/// How long a row queued without a waiter (`LeaseLog::queue_lease`,
/// `LeaseLog::queue_report`) waits at most for a commit that another lease
/// brings; then the log commits it by itself. Long enough to gather many of
/// the proxy's rows under load, short enough that little is lost to a crash.
pub const QUEUED_FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(10);

/// How often the WAL is copied back into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// `<db>-wal`.
pub(super) fn wal_path(db: &Path) -> std::path::PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    p.into()
}

/// Copies the whole WAL back and empties the file (when nobody reads or
/// writes; `Ok(false)` when someone did and nothing was truncated).
pub(super) fn truncate_wal(conn: &Connection) -> rusqlite::Result<bool> {
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    Ok(busy == 0)
}

/// Every second, until the lease log is closed: moves the usage windows
/// on, and checkpoints the WAL — PASSIVE (never blocks a writer) while the
/// database is being written, TRUNCATE once it has been quiet for a second
/// (so a flood leaves no big WAL behind; `journal_size_limit` caps what a
/// busy WAL keeps between checkpoints).
fn checkpoint_loop(conn: Connection, wal: &Path, alive: Weak<Shared>) {
    let version = |c: &Connection| c.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0));
    let mut last_version = None;
    loop {
        thread::sleep(CHECKPOINT_EVERY);
        let Some(shared) = alive.upgrade() else {
            break;
        };
        if let Err(e) = shared.tally.advance(&conn, Utc::now()) {
            tracing::warn!(error = %e, "moving the usage windows failed");
        }
        // Reports queued while no lease came to commit them.
        if let Some(leader) = Leader::try_become(&shared) {
            leader.commit();
        }
        drop(shared);
        let now = version(&conn).ok();
        let quiet = now.is_some() && now == last_version;
        last_version = now;
        let wal_left = std::fs::metadata(wal).is_ok_and(|m| m.len() > 0);
        let done = if quiet && wal_left {
            truncate_wal(&conn).map(drop)
        } else {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

/// Runs a checkpoint (`PASSIVE`, `TRUNCATE`); returns the frames left in
/// the WAL (all of them when it could not finish).
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<i64> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        r.get::<_, i64>(1)
    })
}

impl LeaseLog {
    /// Copies the WAL into the database and empties it (at shutdown: a
    /// stopped farm leaves no large WAL behind). Waits for readers.
    pub fn truncate_wal(&self) -> Result<()> {
        checkpoint(&lock(&self.shared.writer).0, "TRUNCATE")?;
        Ok(())
    }
}

/// Rows per INSERT statement when a batch is large: one statement run per
/// this many leases instead of per lease.
const ROWS_PER_INSERT: usize = 16;

/// `INSERT INTO leases … VALUES (…), (…)` with `rows` rows of parameters.
fn insert_sql(rows: usize) -> String {
    let row = "(?, ?, ?, ?, ?, ?, ?, ?)";
    format!(
        "INSERT INTO leases (id, tag, account_id, client_id, session, generation, issued_at, expires_at) VALUES {}",
        vec![row; rows].join(", ")
    )
}

fn write_batch(conn: &mut Connection, pending: &Pending) -> rusqlite::Result<()> {
    let batch = &pending.leases;
    static INSERT_MANY: LazyLock<String> = LazyLock::new(|| insert_sql(ROWS_PER_INSERT));
    static INSERT_ONE: LazyLock<String> = LazyLock::new(|| insert_sql(1));
    let tx = conn.transaction()?;
    {
        let mut chunks = batch.chunks_exact(ROWS_PER_INSERT);
        let mut stmt = tx.prepare_cached(&INSERT_MANY)?;
        for chunk in &mut chunks {
            bind_leases(&mut stmt, chunk)?;
            stmt.raw_execute()?;
        }
        let mut stmt = tx.prepare_cached(&INSERT_ONE)?;
        for lease in chunks.remainder() {
            bind_leases(&mut stmt, std::slice::from_ref(lease))?;
            stmt.raw_execute()?;
        }
    }
    insert_own_reports(&tx, &pending.reports)?;
    tx.commit()
}

fn bind_leases(stmt: &mut rusqlite::Statement<'_>, leases: &[NewLease]) -> rusqlite::Result<()> {
    for (i, l) in leases.iter().enumerate() {
        let at = i * 8;
        stmt.raw_bind_parameter(at + 1, l.key.id)?;
        stmt.raw_bind_parameter(at + 2, l.key.tag)?;
        stmt.raw_bind_parameter(at + 3, l.account_id)?;
        stmt.raw_bind_parameter(at + 4, l.client_id)?;
        stmt.raw_bind_parameter(at + 5, &l.session)?;
        stmt.raw_bind_parameter(at + 6, l.generation)?;
        stmt.raw_bind_parameter(at + 7, ms(l.issued_at))?;
        stmt.raw_bind_parameter(at + 8, ms(l.expires_at))?;
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct StoredLease {
    pub key: LeaseKey,
    pub account_id: AccountId,
    pub client_id: Option<i64>,
    pub generation: i64,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
}

/// The lease with this key; a wrong tag is the same as no lease.
pub(super) fn find(conn: &Connection, key: LeaseKey) -> Result<Option<StoredLease>> {
    Ok(conn
        .query_row(
            "SELECT id, tag, account_id, client_id, generation, issued_at, expires_at, released_at
             FROM leases WHERE id = ?1 AND tag = ?2",
            params![key.id, key.tag],
            |r| {
                Ok(StoredLease {
                    key: LeaseKey {
                        id: r.get(0)?,
                        tag: r.get(1)?,
                    },
                    account_id: r.get(2)?,
                    client_id: r.get(3)?,
                    generation: r.get(4)?,
                    issued_at: from_ms(r.get(5)?),
                    expires_at: from_ms(r.get(6)?),
                    released_at: r.get::<_, Option<i64>>(7)?.map(from_ms),
                })
            },
        )
        .optional()?)
}

pub(super) fn release(conn: &Connection, key: LeaseKey, now: DateTime<Utc>) -> Result<bool> {
    let n = conn.execute(
        "UPDATE leases SET released_at = ?3 WHERE id = ?1 AND tag = ?2 AND released_at IS NULL",
        params![key.id, key.tag, ms(now)],
    )?;
    Ok(n > 0)
}

crate::named_enum! {
    /// What a client reports about a lease. The discriminant indexes the
    /// report counters of `metrics`.
    pub enum Outcome {
        Ok = "ok",
        RateLimited = "rate_limited",
        Unauthorized = "unauthorized",
        Error = "error",
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub lease: LeaseKey,
    pub account_id: AccountId,
    pub client_id: Option<i64>,
    pub outcome: Outcome,
    pub retry_after_s: Option<i64>,
    pub at: DateTime<Utc>,
    /// What the upstream did, for an attempt of the proxy.
    pub upstream: Option<Upstream>,
}

/// A proxied attempt as the upstream answered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// The upstream's status (0: no answer — a connection error or timeout).
    pub status: u16,
    /// Bytes of the answer's body relayed to the client.
    pub bytes: u64,
    /// From sending the request to the upstream's status line.
    pub latency_ms: u64,
    pub body_end: BodyEnd,
}

crate::named_enum! {
    /// How a proxied answer's body ended.
    pub enum BodyEnd {
        /// Relayed in full.
        Complete = "complete",
        /// The client went away before the end (the upstream request was
        /// cancelled with it).
        ClientGone = "client_gone",
        /// The upstream broke off, or sent nothing for `proxy.idle_timeout`.
        UpstreamBroke = "upstream_broke",
        /// No body was relayed: the attempt failed over, or never got an answer.
        NotRelayed = "not_relayed",
    }
}

/// Stores a report if its lease is still open at `r.at`: not released, not
/// expired, and its account still the one it was issued for (present, and
/// created before the lease — ids are not reused since schema 6, but older
/// databases may hold leases of a removed account under a reused id).
/// Returns false, having stored nothing, when the lease is closed. One
/// statement: a release or removal in between cannot slip past the check.
pub(super) fn insert_report(conn: &Connection, r: &Report) -> Result<bool> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO reports (lease, account_id, client_id, outcome, retry_after_s, at, status, bytes, latency_ms, body_end)
         SELECT l.id, l.account_id, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 FROM leases l JOIN accounts a ON a.id = l.account_id
         WHERE l.id = ?1 AND l.tag = ?2 AND l.released_at IS NULL AND l.expires_at > ?6
           AND a.created_at <= l.issued_at",
    )?;
    bind_report(&mut stmt, r, i64::from(r.lease.tag))?;
    Ok(stmt.raw_execute()? > 0)
}

/// Writes reports the farm itself made for leases it just committed (the
/// proxy's attempts): no check that the lease is open — it is the farm's
/// own, issued moments ago.
fn insert_own_reports(tx: &rusqlite::Transaction<'_>, reports: &[Report]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO reports (lease, account_id, client_id, outcome, retry_after_s, at, status, bytes, latency_ms, body_end)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for r in reports {
        bind_report(&mut stmt, r, r.account_id)?;
        stmt.raw_execute()?;
    }
    Ok(())
}

/// Binds a report as `?1`..`?10`: its lease id, `second` (what the
/// statement needs next: the lease's tag to check, or the account), then
/// the report's own columns from `client_id` to `body_end`.
fn bind_report(
    stmt: &mut rusqlite::Statement<'_>,
    r: &Report,
    second: i64,
) -> rusqlite::Result<()> {
    let up = r.upstream;
    stmt.raw_bind_parameter(1, r.lease.id)?;
    stmt.raw_bind_parameter(2, second)?;
    stmt.raw_bind_parameter(3, r.client_id)?;
    stmt.raw_bind_parameter(4, r.outcome.as_str())?;
    stmt.raw_bind_parameter(5, r.retry_after_s)?;
    stmt.raw_bind_parameter(6, ms(r.at))?;
    stmt.raw_bind_parameter(7, up.map(|u| u.status))?;
    stmt.raw_bind_parameter(8, up.map(|u| u.bytes.min(i64::MAX as u64) as i64))?;
    stmt.raw_bind_parameter(9, up.map(|u| u.latency_ms.min(i64::MAX as u64) as i64))?;
    stmt.raw_bind_parameter(10, up.map(|u| u.body_end.as_str()))?;
    Ok(())
}

/// The oldest and newest lease ids. Two subqueries: `SELECT MIN(id),
/// MAX(id)` as one would scan the whole table (every second, for the usage
/// windows); each alone is one seek at an end of the primary key.
pub(super) const LEASE_ID_ENDS: &str =
    "SELECT (SELECT MIN(id) FROM leases), (SELECT MAX(id) FROM leases)";

/// The smallest lease id issued at or after `since`: every lease from it on
/// is that recent (one past the newest id when none is; 0 when there are no
/// leases).
///
/// Lease ids are allocated in order with the time stamped under the same
/// lock (`Farm::next_credential`), so `issued_at` never decreases with the
/// id while the clock does not step back; a binary search over the primary
/// key finds the boundary in ~log2(n) seeks. Should the clock step back,
/// the boundary is still a valid id, only off by the leases of the step.
pub(super) fn first_id_since(conn: &Connection, since: DateTime<Utc>) -> Result<i64> {
    let since = ms(since);
    let (min, max): (Option<i64>, Option<i64>) =
        conn.query_row(LEASE_ID_ENDS, [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (Some(mut lo), Some(max)) = (min, max) else {
        return Ok(0);
    };
    let mut first_at_or_after =
        conn.prepare_cached("SELECT issued_at FROM leases WHERE id >= ?1 ORDER BY id LIMIT 1")?;
    // Invariant: the answer is in lo..=hi; hi (past the newest) always qualifies.
    let mut hi = max + 1;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let issued: Option<i64> = first_at_or_after
            .query_row([mid], |r| r.get(0))
            .optional()?;
        if issued.is_none_or(|at| at >= since) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

pub(super) fn prune(conn: &Connection, before: DateTime<Utc>) -> Result<usize> {
    let n = conn.execute(
        "DELETE FROM leases WHERE id < ?1",
        [first_id_since(conn, before)?],
    )?;
    let m = conn.execute("DELETE FROM reports WHERE at < ?1", [ms(before)])?;
    Ok(n + m)
}

/// An account's leases over a window: how many, and when the last one was issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseUse {
    pub leases: i64,
    pub last_at: DateTime<Utc>,
}

/// Lease and report counts for one account or client over a window.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub leases: i64,
    pub ok: i64,
    pub rate_limited: i64,
    pub unauthorized: i64,
    pub error: i64,
}

#[derive(Clone, Debug)]
pub struct UsageRow {
    /// `account_id` or `client_id`; `null` client = the admin token.
    pub id: Option<i64>,
    pub last_hour: Counts,
    pub last_day: Counts,
}

#[derive(Clone, Debug)]
pub struct RecentLease {
    pub lease_id: String,
    pub account_id: AccountId,
    pub client_id: Option<i64>,
    pub session: Option<String>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    /// What the upstream did, when the lease was a proxied attempt.
    pub upstream: Option<Upstream>,
}

#[derive(Clone, Debug)]
pub struct Usage {
    pub generated_at: DateTime<Utc>,
    pub per_account: Vec<UsageRow>,
    pub per_client: Vec<UsageRow>,
    pub recent: Vec<RecentLease>,
}
