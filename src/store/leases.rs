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

use chrono::{DateTime, Duration, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use tokio::sync::Notify;

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
    writer: Mutex<(Connection, Vec<NewLease>)>,
    /// Set while a request is committing (it holds the writer only while
    /// it writes, but leads from before its pause to after its commit).
    leading: AtomicBool,
    last_id: AtomicI64,
    commits: AtomicU64,
}

/// The leases of the next commit ("batch") and where its outcome will be.
struct Queue {
    leases: Vec<NewLease>,
    batch: Arc<Batch>,
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
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                leases: Vec::new(),
                batch: Arc::default(),
            }),
            writer: Mutex::new((conn, Vec::new())),
            leading: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            last_id: AtomicI64::new(last_id),
        });
        let checkpointer = open_connection(path, false)?;
        // A TRUNCATE checkpoint that cannot get through at once is left for
        // the next idle second rather than holding up writers.
        checkpointer.busy_timeout(CHECKPOINT_BUSY)?;
        let alive = Arc::downgrade(&shared);
        thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, alive))
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
        let s = &*self.shared;
        let batch = {
            let mut q = lock(&s.queue);
            q.leases.push(lease);
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
        if !q.leases.is_empty() {
            q.batch.notify.notify_one();
        }
    }
}

impl Shared {
    /// Commits the open batch (the caller holds the writer) and wakes its requests.
    fn commit_queued(&self, conn: &mut Connection, spare: &mut Vec<NewLease>) {
        let batch = {
            let mut q = lock(&self.queue);
            std::mem::swap(&mut q.leases, spare);
            std::mem::take(&mut q.batch)
        };
        let outcome = if spare.is_empty() {
            Ok(())
        } else {
            self.commits.fetch_add(1, Ordering::Relaxed);
            write_batch(conn, spare).map_err(|e| {
                tracing::error!(error = %e, leases = spare.len(), "recording leases failed");
                e.to_string()
            })
        };
        spare.clear();
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
    }
}

/// How often the WAL is copied back into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a TRUNCATE checkpoint waits for readers and writers.
const CHECKPOINT_BUSY: std::time::Duration = std::time::Duration::from_millis(200);

/// Checkpoints the WAL in the background until the lease log is closed:
/// PASSIVE (never blocks a writer) while leases are being written, and
/// once the log has been idle for a second with frames in the WAL, a
/// TRUNCATE one, which empties the file (a flood leaves it as large as the
/// most it ever held otherwise; `journal_size_limit` bounds it only when a
/// writer restarts it).
fn checkpoint_loop(conn: Connection, alive: Weak<Shared>) {
    let mut last_commits = None;
    let mut wal_frames = 0;
    loop {
        thread::sleep(CHECKPOINT_EVERY);
        let Some(commits) = alive.upgrade().map(|s| s.commits.load(Ordering::Relaxed)) else {
            return;
        };
        let idle = last_commits.replace(commits) == Some(commits);
        let mode = if idle && wal_frames > 0 {
            "TRUNCATE"
        } else {
            "PASSIVE"
        };
        match checkpoint(&conn, mode) {
            Ok(frames) => wal_frames = frames,
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
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

fn write_batch(conn: &mut Connection, batch: &[NewLease]) -> rusqlite::Result<()> {
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    RateLimited,
    Unauthorized,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::RateLimited => "rate_limited",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Error => "error",
        }
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
}

pub(super) fn insert_report(conn: &Connection, r: &Report) -> Result<()> {
    conn.execute(
        "INSERT INTO reports (lease, account_id, client_id, outcome, retry_after_s, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![r.lease.id, r.account_id, r.client_id, r.outcome.as_str(), r.retry_after_s, ms(r.at)],
    )?;
    Ok(())
}

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
        conn.query_row("SELECT MIN(id), MAX(id) FROM leases", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
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
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    pub leases: i64,
    pub ok: i64,
    pub rate_limited: i64,
    pub unauthorized: i64,
    pub error: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct UsageRow {
    /// `account_id` or `client_id`; `null` client = the admin token.
    pub id: Option<i64>,
    pub last_hour: Counts,
    pub last_day: Counts,
}

#[derive(Clone, Debug, Serialize)]
pub struct RecentLease {
    pub lease_id: String,
    pub account_id: AccountId,
    pub client_id: Option<i64>,
    pub session: Option<String>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Usage {
    pub generated_at: DateTime<Utc>,
    pub per_account: Vec<UsageRow>,
    pub per_client: Vec<UsageRow>,
    pub recent: Vec<RecentLease>,
}

pub(super) fn usage(conn: &Connection, now: DateTime<Utc>) -> Result<Usage> {
    let window = |since: DateTime<Utc>| -> Result<Window> {
        Ok(Window {
            at: ms(since),
            first_lease: first_id_since(conn, since)?,
        })
    };
    let hour = window(now - Duration::hours(1))?;
    let day = window(now - Duration::days(1))?;
    Ok(Usage {
        generated_at: now,
        per_account: usage_by(conn, "account_id", hour, day)?,
        per_client: usage_by(conn, "client_id", hour, day)?,
        recent: recent(conn, 100)?,
    })
}

/// A time window: since `at` (ms) for reports, since lease id
/// `first_lease` for leases.
#[derive(Clone, Copy)]
struct Window {
    at: i64,
    first_lease: i64,
}

/// `column` is one of two fixed column names, never user input.
fn usage_by(conn: &Connection, column: &str, hour: Window, day: Window) -> Result<Vec<UsageRow>> {
    let sql = format!(
        "SELECT k, SUM(h), SUM(d), SUM(h_ok), SUM(d_ok), SUM(h_rl), SUM(d_rl), SUM(h_un), SUM(d_un), SUM(h_er), SUM(d_er)
         FROM (
           SELECT {column} AS k, id >= ?3 AS h, 1 AS d, 0 AS h_ok, 0 AS d_ok, 0 AS h_rl, 0 AS d_rl,
                  0 AS h_un, 0 AS d_un, 0 AS h_er, 0 AS d_er
             FROM leases WHERE id >= ?4
           UNION ALL
           SELECT {column}, 0, 0,
                  outcome = 'ok' AND at >= ?1, outcome = 'ok',
                  outcome = 'rate_limited' AND at >= ?1, outcome = 'rate_limited',
                  outcome = 'unauthorized' AND at >= ?1, outcome = 'unauthorized',
                  outcome = 'error' AND at >= ?1, outcome = 'error'
             FROM reports WHERE at >= ?2
         ) GROUP BY k ORDER BY k"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(
        params![hour.at, day.at, hour.first_lease, day.first_lease],
        |r| {
            // Columns alternate hour, day: the day's count is one to the right.
            let counts = |day: usize| -> rusqlite::Result<Counts> {
                let c = |i: usize| r.get::<_, i64>(i + day);
                Ok(Counts {
                    leases: c(1)?,
                    ok: c(3)?,
                    rate_limited: c(5)?,
                    unauthorized: c(7)?,
                    error: c(9)?,
                })
            };
            Ok(UsageRow {
                id: r.get(0)?,
                last_hour: counts(0)?,
                last_day: counts(1)?,
            })
        },
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn recent(conn: &Connection, limit: i64) -> Result<Vec<RecentLease>> {
    let mut stmt = conn.prepare(
        "SELECT l.id, l.tag, l.account_id, l.client_id, l.session, l.issued_at, l.expires_at, l.released_at,
                (SELECT outcome FROM reports r WHERE r.lease = l.id ORDER BY r.id DESC LIMIT 1)
         FROM leases l ORDER BY l.id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit], |r| {
        Ok(RecentLease {
            lease_id: LeaseKey {
                id: r.get(0)?,
                tag: r.get(1)?,
            }
            .to_string(),
            account_id: r.get(2)?,
            client_id: r.get(3)?,
            session: r.get(4)?,
            issued_at: from_ms(r.get(5)?),
            expires_at: from_ms(r.get(6)?),
            released_at: r.get::<_, Option<i64>>(7)?.map(from_ms),
            outcome: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod wal_tests {
    use super::*;
    use crate::store::{Cipher, Store};

    fn wal_bytes(db: &Path) -> u64 {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
    }

    /// After a burst of leases the WAL is emptied once the log is idle, and
    /// at shutdown; `journal_size_limit` is set on every connection.
    #[tokio::test]
    async fn an_idle_log_empties_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::secret::Secret::new("11".repeat(32));
        let store = Store::open(
            &dir.path().join("data/farm.db"),
            Cipher::from_text(&key).unwrap(),
        )
        .unwrap();
        let now = chrono::Utc::now();
        let alice = store.insert_account("demo", "alice", 0, now).unwrap();
        let db = store.path().to_path_buf();
        let log = LeaseLog::start(&db).unwrap();
        for _ in 0..2000 {
            let key = log.allocate();
            log.record(NewLease {
                key,
                account_id: alice.id,
                client_id: None,
                session: None,
                generation: 1,
                issued_at: now,
                expires_at: now + chrono::Duration::minutes(1),
            })
            .await
            .unwrap();
        }
        assert!(wal_bytes(&db) > 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while wal_bytes(&db) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL still holds {} bytes after 10 idle seconds",
                wal_bytes(&db)
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        store.insert_account("demo", "bob", 0, now).unwrap();
        assert!(wal_bytes(&db) > 0);
        log.truncate_wal().unwrap();
        assert_eq!(wal_bytes(&db), 0);
        let limit: i64 = store
            .conn()
            .query_row("PRAGMA journal_size_limit", [], |r| r.get(0))
            .unwrap();
        assert_eq!(limit, crate::store::JOURNAL_SIZE_LIMIT);
    }
}
