//! Usage counters for the admin API (`/api/usage`, an account's
//! `leases_24h`), kept in memory as leases and reports are written.
//!
//! Counting them in SQL on each read means scanning a day of leases —
//! millions of rows on a busy farm, half a second for `/api/usage` — and the
//! admin page reads again after every event. Run on the account connection,
//! that scan held the store's lock (`save_tokens` waited) on an async worker
//! (the `/credential/next` requests queued on that worker waited too). A
//! separate read connection on a blocking thread would free both, but every
//! read would still burn half a second of a core the lease path needs, and
//! hold a WAL snapshot that the checkpoint cannot get past. So the totals
//! are kept here instead: a read copies them (per account and per client, no
//! I/O, nothing else waits), and the lease path pays one short lock per
//! committed batch and a few map increments per lease (`scripts/bench`
//! measures `/credential/next` with the admin page polling; README).
//!
//! The windows stay exact, as the SQL was: leases and reports are added as
//! they are written; every second the checkpoint thread reads, on its own
//! connection, what left the hour and the day since the second before
//! (lease ids between the old and new window edge, reports by time) and
//! subtracts it — one second's rows, never the whole day. Memory is one
//! entry per account and client seen in the last day, plus the recent leases.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Duration, Utc};
use rusqlite::{params, Connection};

use super::leases::{
    first_id_since, BodyEnd, Counts, LeaseKey, NewLease, Outcome, RecentLease, Report, Upstream,
    Usage, UsageRow,
};
use super::{from_ms, ms, Result};
use crate::domain::AccountId;

/// How many of the newest leases `/api/usage` lists.
const RECENT: usize = 100;

#[derive(Clone, Copy)]
enum Tick {
    Lease,
    Report(Outcome),
}

impl Counts {
    fn add(&mut self, tick: Tick, by: i64) {
        *match tick {
            Tick::Lease => &mut self.leases,
            Tick::Report(Outcome::Ok) => &mut self.ok,
            Tick::Report(Outcome::RateLimited) => &mut self.rate_limited,
            Tick::Report(Outcome::Unauthorized) => &mut self.unauthorized,
            Tick::Report(Outcome::Error) => &mut self.error,
        } += by;
    }

    fn is_zero(&self) -> bool {
        [
            self.leases,
            self.ok,
            self.rate_limited,
            self.unauthorized,
            self.error,
        ] == [0; 5]
    }
}

/// Counts per account and per client (`None`: the admin token).
#[derive(Default)]
struct Totals {
    accounts: HashMap<AccountId, Counts>,
    clients: HashMap<Option<i64>, Counts>,
}

fn bump<K: Hash + Eq + Copy>(map: &mut HashMap<K, Counts>, key: K, tick: Tick, by: i64) {
    let c = map.entry(key).or_default();
    c.add(tick, by);
    if c.is_zero() {
        map.remove(&key); // gone from the window: no row, as in SQL
    }
}

impl Totals {
    fn add(&mut self, account: AccountId, client: Option<i64>, tick: Tick, by: i64) {
        bump(&mut self.accounts, account, tick, by);
        bump(&mut self.clients, client, tick, by);
    }
}

/// A window's lower edge: leases from id `lease` on, reports from `at` (ms) on.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Edge {
    lease: i64,
    at: i64,
}

impl Edge {
    fn of(conn: &Connection, since: DateTime<Utc>) -> Result<Edge> {
        Ok(Edge {
            lease: first_id_since(conn, since)?,
            at: ms(since),
        })
    }
}

struct Window {
    length: Duration,
    edge: Edge,
    totals: Totals,
}

/// `n` leases or reports of one tick, by one account and client.
type Counted = (AccountId, Option<i64>, Tick, i64);

/// What the leases and reports in `[from, to)` add up to, by
/// `(account, client, tick)`.
fn count_between(conn: &Connection, from: Edge, to: Edge) -> Result<Vec<Counted>> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT account_id, client_id, COUNT(*) FROM leases WHERE id >= ?1 AND id < ?2
         GROUP BY account_id, client_id",
    )?;
    let rows = stmt.query_map(params![from.lease, to.lease], |r| {
        Ok((r.get(0)?, r.get(1)?, Tick::Lease, r.get(2)?))
    })?;
    for row in rows {
        out.push(row?);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT account_id, client_id, outcome, COUNT(*) FROM reports WHERE at >= ?1 AND at < ?2
         GROUP BY account_id, client_id, outcome",
    )?;
    let rows = stmt.query_map(params![from.at, to.at], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?, r.get(3)?))
    })?;
    for row in rows {
        let (account, client, outcome, n) = row?;
        if let Ok(outcome) = outcome.parse::<Outcome>() {
            out.push((account, client, Tick::Report(outcome), n));
        }
    }
    Ok(out)
}

/// One of the newest leases, as `/api/usage` lists it.
struct Recent {
    key: LeaseKey,
    account_id: AccountId,
    client_id: Option<i64>,
    session: Option<String>,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    released_at: Option<DateTime<Utc>>,
    outcome: Option<Outcome>,
    upstream: Option<Upstream>,
}

struct Inner {
    hour: Window,
    day: Window,
    /// The newest leases, oldest first.
    recent: VecDeque<Recent>,
}

impl Inner {
    fn windows(&mut self) -> [&mut Window; 2] {
        [&mut self.hour, &mut self.day]
    }
}

/// The usage counters (see the module doc).
pub struct Tally {
    inner: Mutex<Inner>,
}

impl Tally {
    /// Counts the last hour and day of the database, as of `now`.
    pub(super) fn load(conn: &Connection, now: DateTime<Utc>) -> Result<Tally> {
        let end = Edge {
            lease: i64::MAX,
            at: i64::MAX,
        };
        let window = |length: Duration| -> Result<Window> {
            let edge = Edge::of(conn, now - length)?;
            let mut totals = Totals::default();
            for (account, client, tick, n) in count_between(conn, edge, end)? {
                totals.add(account, client, tick, n);
            }
            Ok(Window {
                length,
                edge,
                totals,
            })
        };
        let (hour, day) = (window(Duration::hours(1))?, window(Duration::days(1))?);
        let mut stmt = conn.prepare(
            "SELECT l.id, l.tag, l.account_id, l.client_id, l.session, l.issued_at, l.expires_at, l.released_at,
                    r.outcome, r.status, r.bytes, r.latency_ms, r.body_end
             FROM (SELECT * FROM leases ORDER BY id DESC LIMIT ?1) l
             LEFT JOIN reports r ON r.id = (SELECT MAX(id) FROM reports WHERE lease = l.id)
             ORDER BY l.id DESC",
        )?;
        let rows = stmt.query_map([RECENT as i64], |r| {
            Ok(Recent {
                key: LeaseKey {
                    id: r.get(0)?,
                    tag: r.get(1)?,
                },
                account_id: r.get(2)?,
                client_id: r.get(3)?,
                session: r.get(4)?,
                issued_at: from_ms(r.get(5)?),
                expires_at: from_ms(r.get(6)?),
                released_at: r.get::<_, Option<i64>>(7)?.map(from_ms),
                outcome: r
                    .get::<_, Option<String>>(8)?
                    .as_deref()
                    .and_then(|o| o.parse::<Outcome>().ok()),
                upstream: match (r.get::<_, Option<u16>>(9)?, r.get::<_, Option<String>>(12)?) {
                    (Some(status), Some(end)) => Some(Upstream {
                        status,
                        bytes: r.get::<_, Option<i64>>(10)?.unwrap_or(0).max(0) as u64,
                        latency_ms: r.get::<_, Option<i64>>(11)?.unwrap_or(0).max(0) as u64,
                        body_end: end.parse::<BodyEnd>().unwrap_or(BodyEnd::NotRelayed),
                    }),
                    _ => None,
                },
            })
        })?;
        let mut recent = rows.collect::<rusqlite::Result<VecDeque<_>>>()?;
        recent.make_contiguous().reverse();
        Ok(Tally {
            inner: Mutex::new(Inner { hour, day, recent }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the counts consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leases just committed (in id order). Called on the lease path: one
    /// lock, a few increments per lease.
    pub(super) fn leases_committed(&self, leases: &mut Vec<NewLease>) {
        let mut g = self.lock();
        for w in g.windows() {
            for l in leases.iter().filter(|l| l.key.id >= w.edge.lease) {
                w.totals.add(l.account_id, l.client_id, Tick::Lease, 1);
            }
        }
        let keep = leases.len().saturating_sub(RECENT);
        for l in leases.drain(..).skip(keep) {
            if g.recent.len() == RECENT {
                g.recent.pop_front();
            }
            g.recent.push_back(Recent {
                key: l.key,
                account_id: l.account_id,
                client_id: l.client_id,
                session: l.session,
                issued_at: l.issued_at,
                expires_at: l.expires_at,
                released_at: None,
                outcome: None,
                upstream: None,
            });
        }
    }

    /// A report just stored.
    pub fn report_stored(&self, r: &Report) {
        let mut g = self.lock();
        for w in g.windows() {
            if ms(r.at) >= w.edge.at {
                w.totals
                    .add(r.account_id, r.client_id, Tick::Report(r.outcome), 1);
            }
        }
        if let Some(recent) = g.recent.iter_mut().find(|l| l.key == r.lease) {
            recent.outcome = Some(r.outcome);
            recent.upstream = r.upstream;
        }
    }

    /// A lease just released.
    pub fn released(&self, lease: LeaseKey, at: DateTime<Utc>) {
        if let Some(r) = self.lock().recent.iter_mut().find(|r| r.key == lease) {
            r.released_at = Some(at);
        }
    }

    /// Moves the windows' edges to `now`: reads (on the caller's
    /// connection, without holding the counters) what left each window and
    /// subtracts it.
    pub(super) fn advance(&self, conn: &Connection, now: DateTime<Utc>) -> Result<()> {
        for which in 0..2 {
            let (old, length) = {
                let mut g = self.lock();
                let w = &g.windows()[which];
                (w.edge, w.length)
            };
            let new = Edge::of(conn, now - length)?;
            let new = Edge {
                lease: new.lease.max(old.lease),
                at: new.at.max(old.at),
            };
            if new == old {
                continue;
            }
            let gone = count_between(conn, old, new)?;
            let mut g = self.lock();
            let w = &mut g.windows()[which];
            for (account, client, tick, n) in gone {
                w.totals.add(account, client, tick, -n);
            }
            w.edge = new;
        }
        Ok(())
    }

    /// An account's leases over the last day.
    pub fn leases_24h(&self, account: AccountId) -> i64 {
        self.lock()
            .day
            .totals
            .accounts
            .get(&account)
            .map_or(0, |c| c.leases)
    }

    /// Every account's leases over the last day (accounts without any are absent).
    pub fn all_leases_24h(&self) -> HashMap<AccountId, i64> {
        let g = self.lock();
        g.day
            .totals
            .accounts
            .iter()
            .map(|(id, c)| (*id, c.leases))
            .collect()
    }

    /// `/api/usage`.
    pub fn usage(&self, now: DateTime<Utc>) -> Usage {
        fn rows<K: Hash + Eq + Copy + Ord + Into<Option<i64>>>(
            hour: &HashMap<K, Counts>,
            day: &HashMap<K, Counts>,
        ) -> Vec<UsageRow> {
            let mut keys: Vec<K> = day.keys().chain(hour.keys()).copied().collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .map(|k| UsageRow {
                    id: k.into(),
                    last_hour: hour.get(&k).cloned().unwrap_or_default(),
                    last_day: day.get(&k).cloned().unwrap_or_default(),
                })
                .collect()
        }
        let g = self.lock();
        Usage {
            generated_at: now,
            per_account: rows(&g.hour.totals.accounts, &g.day.totals.accounts),
            per_client: rows(&g.hour.totals.clients, &g.day.totals.clients),
            recent: g
                .recent
                .iter()
                .rev()
                .map(|r| RecentLease {
                    lease_id: r.key.to_string(),
                    account_id: r.account_id,
                    client_id: r.client_id,
                    session: r.session.clone(),
                    issued_at: r.issued_at,
                    expires_at: r.expires_at,
                    released_at: r.released_at,
                    outcome: r.outcome.map(|o| o.as_str().to_string()),
                    upstream: r.upstream,
                })
                .collect(),
        }
    }
}
