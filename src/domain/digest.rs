//! The morning digest: what happened per provider since the previous one,
//! built from the stored events and the accounts as they are now. Pure:
//! the farm hands in the events, the accounts and `now`
//! (`farm/digest.rs`); the same input gives the same digest.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::AccountId;
use crate::events::{Event, EventKind};

/// One account as the digest sees it.
#[derive(Clone, Debug)]
pub struct AccountSnapshot {
    pub id: AccountId,
    pub provider: String,
    pub label: String,
    /// The account can hand out a token now.
    pub usable: bool,
    /// Why a person is needed and since when (`needs_human`), if so.
    pub needs_person: Option<(String, DateTime<Utc>)>,
    /// When the account's upstream quota resets, as its last rate-limit
    /// headers announced (the proxy's), if they did.
    pub quota_resets_at: Option<DateTime<Utc>>,
}

/// The digest (the `data` of a `digest` event; its text is [`Digest::text`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Digest {
    /// The previous digest's time (`None`: the first digest, covering the
    /// events still kept).
    pub since: Option<DateTime<Utc>>,
    pub until: DateTime<Utc>,
    pub providers: Vec<ProviderDigest>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProviderDigest {
    pub provider: String,
    pub accounts: usize,
    pub refreshes_ok: u64,
    pub refreshes_failed: u64,
    /// Browser relogins started, by cause (`recovery`, `admin`).
    pub relogins: BTreeMap<String, u64>,
    pub relogins_failed: u64,
    pub canary_failures: Vec<CanaryFailure>,
    pub needs_person: Vec<NeedsPerson>,
    /// Quota resets still to come, soonest first.
    pub quota_resets: Vec<QuotaReset>,
    /// The longest stretch in the period during which none of the
    /// provider's accounts could hand out a token (seconds).
    pub longest_unusable_s: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CanaryFailure {
    pub account_id: AccountId,
    pub label: String,
    pub at: DateTime<Utc>,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QuotaReset {
    pub account_id: AccountId,
    pub label: String,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NeedsPerson {
    pub account_id: AccountId,
    pub label: String,
    pub reason: String,
    pub since: DateTime<Utc>,
    /// Where a person takes the account over (path on the farm's address).
    pub takeover: String,
}

/// What an event says about an account being able to serve: `Some(false)`
/// it stopped, `Some(true)` it serves again, `None` nothing.
fn usable_after(kind: EventKind) -> Option<bool> {
    use EventKind::*;
    match kind {
        NeedsRelogin | NeedsHuman | CooldownStarted => Some(false),
        RefreshOk | LoginCompleted | ReloginSucceeded | HumanTakeoverCompleted | CooldownEnded => {
            Some(true)
        }
        _ => None,
    }
}

/// Builds the digest of `events` (oldest first, all after `since`) for
/// the `accounts` as they are at `now`. Events of removed accounts are
/// left out (their provider is no longer known).
pub fn build(
    since: Option<DateTime<Utc>>,
    events: &[Event],
    accounts: &[AccountSnapshot],
    now: DateTime<Utc>,
) -> Digest {
    let by_id: BTreeMap<AccountId, &AccountSnapshot> = accounts.iter().map(|a| (a.id, a)).collect();
    let mut providers: BTreeMap<&str, ProviderDigest> = BTreeMap::new();
    for a in accounts {
        let p = providers
            .entry(&a.provider)
            .or_insert_with(|| ProviderDigest {
                provider: a.provider.clone(),
                ..Default::default()
            });
        p.accounts += 1;
        if let Some(at) = a.quota_resets_at.filter(|at| *at > now) {
            p.quota_resets.push(QuotaReset {
                account_id: a.id,
                label: a.label.clone(),
                at,
            });
        }
        if let Some((reason, at)) = &a.needs_person {
            p.needs_person.push(NeedsPerson {
                account_id: a.id,
                label: a.label.clone(),
                reason: reason.clone(),
                since: *at,
                takeover: format!("/admin#account-{}", a.id),
            });
        }
    }
    for ev in events {
        let Some(a) = ev.account_id.and_then(|id| by_id.get(&id)) else {
            continue;
        };
        let Some(p) = providers.get_mut(a.provider.as_str()) else {
            continue;
        };
        match ev.kind {
            EventKind::RefreshOk => p.refreshes_ok += 1,
            EventKind::RefreshFailed => p.refreshes_failed += 1,
            EventKind::ReloginStarted => {
                let cause = ev
                    .data
                    .as_ref()
                    .and_then(|d| d["cause"].as_str())
                    .unwrap_or("unknown");
                *p.relogins.entry(cause.to_owned()).or_default() += 1;
            }
            EventKind::ReloginFailed => p.relogins_failed += 1,
            EventKind::CanaryFailed => p.canary_failures.push(CanaryFailure {
                account_id: a.id,
                label: a.label.clone(),
                at: ev.at,
                detail: ev.detail.clone(),
            }),
            _ => {}
        }
    }
    let start = since
        .or_else(|| events.first().map(|e| e.at))
        .unwrap_or(now);
    for p in providers.values_mut() {
        p.longest_unusable_s = longest_unusable(&p.provider, start, events, accounts, now);
        p.quota_resets.sort_by_key(|q| (q.at, q.account_id));
    }
    Digest {
        since,
        until: now,
        providers: providers.into_values().collect(),
    }
}

/// The longest time from `start` to `now` during which every account of
/// `provider` was unusable, replaying the events that change that. An
/// account with no such event in the period was as it is now throughout.
fn longest_unusable(
    provider: &str,
    start: DateTime<Utc>,
    events: &[Event],
    accounts: &[AccountSnapshot],
    now: DateTime<Utc>,
) -> u64 {
    let mine: BTreeMap<AccountId, &AccountSnapshot> = accounts
        .iter()
        .filter(|a| a.provider == provider)
        .map(|a| (a.id, a))
        .collect();
    if mine.is_empty() {
        return 0;
    }
    let changes: Vec<(DateTime<Utc>, AccountId, bool)> = events
        .iter()
        .filter_map(|e| {
            let id = e.account_id.filter(|id| mine.contains_key(id))?;
            Some((e.at, id, usable_after(e.kind)?))
        })
        .collect();
    // Before its first change an account was the opposite of what that
    // change made it; without one, as it is now.
    let mut unusable: BTreeSet<AccountId> = mine
        .values()
        .filter(|a| match changes.iter().find(|(_, id, _)| *id == a.id) {
            Some((_, _, usable)) => *usable,
            None => !a.usable,
        })
        .map(|a| a.id)
        .collect();
    let mut down_since = (unusable.len() == mine.len()).then_some(start);
    let mut longest = chrono::Duration::zero();
    for (at, id, usable) in changes {
        if usable {
            unusable.remove(&id);
        } else {
            unusable.insert(id);
        }
        match (down_since, unusable.len() == mine.len()) {
            (None, true) => down_since = Some(at),
            (Some(from), false) => {
                longest = longest.max(at - from);
                down_since = None;
            }
            _ => {}
        }
    }
    if let Some(from) = down_since {
        longest = longest.max(now - from);
    }
    longest.num_seconds().max(0) as u64
}

impl Digest {
    /// The digest as lines for a person (the event's `detail`, a text
    /// webhook's body).
    pub fn text(&self) -> String {
        let mut out = match self.since {
            Some(since) => format!(
                "relogin-farm digest, {} to {}\n",
                since.format("%Y-%m-%d %H:%M UTC"),
                self.until.format("%Y-%m-%d %H:%M UTC")
            ),
            None => format!(
                "relogin-farm digest, until {}\n",
                self.until.format("%Y-%m-%d %H:%M UTC")
            ),
        };
        if self.providers.is_empty() {
            out.push_str("no accounts\n");
        }
        for p in &self.providers {
            let relogins = match p.relogins.values().sum::<u64>() {
                0 => "0".to_owned(),
                n => format!(
                    "{n} ({})",
                    p.relogins
                        .iter()
                        .map(|(cause, n)| format!("{cause} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            out.push_str(&format!(
                "{}: {} accounts; refreshes {} ok, {} failed; relogins {relogins}, {} failed; \
                 canary failures {}; longest with no usable account {}\n",
                p.provider,
                p.accounts,
                p.refreshes_ok,
                p.refreshes_failed,
                p.relogins_failed,
                p.canary_failures.len(),
                human_duration(p.longest_unusable_s),
            ));
            for n in &p.needs_person {
                out.push_str(&format!(
                    "  needs a person: account {} ({}) since {}: {} — take over at {}\n",
                    n.account_id,
                    n.label,
                    n.since.format("%Y-%m-%d %H:%M UTC"),
                    n.reason,
                    n.takeover
                ));
            }
            for c in &p.canary_failures {
                out.push_str(&format!(
                    "  canary failed: account {} ({}) at {}: {}\n",
                    c.account_id,
                    c.label,
                    c.at.format("%H:%M UTC"),
                    c.detail
                ));
            }
            for q in &p.quota_resets {
                out.push_str(&format!(
                    "  quota resets: account {} ({}) at {}\n",
                    q.account_id,
                    q.label,
                    q.at.format("%Y-%m-%d %H:%M UTC")
                ));
            }
        }
        out
    }
}

fn human_duration(s: u64) -> String {
    match s {
        0 => "none".to_owned(),
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(min: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap() + chrono::Duration::minutes(min)
    }

    fn ev(min: i64, kind: EventKind, account: AccountId) -> Event {
        Event {
            id: min,
            at: t(min),
            kind,
            account_id: Some(account),
            detail: format!("{kind}"),
            data: None,
        }
    }

    fn account(id: AccountId, provider: &str, usable: bool) -> AccountSnapshot {
        AccountSnapshot {
            id,
            provider: provider.into(),
            label: format!("a{id}"),
            usable,
            needs_person: None,
            quota_resets_at: None,
        }
    }

    #[test]
    fn counts_per_provider_and_relogins_by_cause() {
        let mut started = ev(3, EventKind::ReloginStarted, 2);
        started.data = Some(serde_json::json!({"cause": "recovery"}));
        let mut canary = ev(4, EventKind::CanaryFailed, 1);
        canary.detail = "step 3 (line 9, fill #password) failed".into();
        let events = vec![
            ev(1, EventKind::RefreshOk, 1),
            ev(2, EventKind::RefreshOk, 2),
            ev(2, EventKind::RefreshFailed, 3),
            started,
            ev(5, EventKind::ReloginFailed, 2),
            canary,
            // A removed account's events are left out.
            ev(6, EventKind::RefreshOk, 99),
        ];
        let mut stuck = account(2, "demo", false);
        stuck.needs_person = Some(("step 2 failed".into(), t(5)));
        let accounts = vec![account(1, "demo", true), stuck, account(3, "other", true)];
        let d = build(Some(t(0)), &events, &accounts, t(60));
        assert_eq!(d.providers.len(), 2);
        let demo = &d.providers[0];
        assert_eq!(
            (
                demo.provider.as_str(),
                demo.accounts,
                demo.refreshes_ok,
                demo.refreshes_failed
            ),
            ("demo", 2, 2, 0)
        );
        assert_eq!(demo.relogins, BTreeMap::from([("recovery".to_owned(), 1)]));
        assert_eq!(demo.relogins_failed, 1);
        assert_eq!(demo.canary_failures.len(), 1);
        assert_eq!(demo.canary_failures[0].account_id, 1);
        assert_eq!(
            demo.needs_person,
            vec![NeedsPerson {
                account_id: 2,
                label: "a2".into(),
                reason: "step 2 failed".into(),
                since: t(5),
                takeover: "/admin#account-2".into(),
            }]
        );
        assert_eq!(d.providers[1].refreshes_failed, 1);
        let text = d.text();
        assert!(text.contains("demo: 2 accounts; refreshes 2 ok, 0 failed; relogins 1 (recovery 1), 1 failed; canary failures 1"), "{text}");
        assert!(
            text.contains("needs a person: account 2 (a2) since"),
            "{text}"
        );
        assert!(text.contains("take over at /admin#account-2"), "{text}");
        assert!(text.contains("canary failed: account 1 (a1)"), "{text}");
    }

    #[test]
    fn longest_time_without_a_usable_account() {
        // Two accounts: both down from 10 to 25 (15 min), one down alone
        // from 30 to 40, both down again from 52 until now (60): 15 min.
        let events = vec![
            ev(5, EventKind::NeedsRelogin, 1),
            ev(10, EventKind::CooldownStarted, 2),
            ev(25, EventKind::CooldownEnded, 2),
            ev(28, EventKind::ReloginSucceeded, 1),
            ev(30, EventKind::NeedsRelogin, 1),
            ev(40, EventKind::RefreshOk, 1),
            ev(50, EventKind::NeedsHuman, 1),
            ev(52, EventKind::CooldownStarted, 2),
        ];
        let accounts = vec![account(1, "demo", false), account(2, "demo", false)];
        let d = build(Some(t(0)), &events, &accounts, t(60));
        assert_eq!(d.providers[0].longest_unusable_s, 15 * 60);
        let d = build(Some(t(0)), &events, &accounts, t(80));
        assert_eq!(
            d.providers[0].longest_unusable_s,
            28 * 60,
            "still down at now"
        );
        // Down all along with no event: the whole period.
        let d = build(Some(t(0)), &[], &[account(3, "x", false)], t(90));
        assert_eq!(d.providers[0].longest_unusable_s, 90 * 60);
        assert!(d.text().contains("longest with no usable account 90 min"));
        // Usable all along: none.
        let d = build(Some(t(0)), &[], &[account(3, "x", true)], t(90));
        assert_eq!(d.providers[0].longest_unusable_s, 0);
    }

    #[test]
    fn quota_resets_to_come_are_listed_soonest_first() {
        let mut soon = account(1, "p", true);
        soon.quota_resets_at = Some(t(90));
        let mut past = account(2, "p", true);
        past.quota_resets_at = Some(t(-5));
        let mut sooner = account(3, "p", true);
        sooner.quota_resets_at = Some(t(30));
        let d = build(
            None,
            &[],
            &[soon, past, sooner, account(4, "p", true)],
            t(0),
        );
        let resets: Vec<(AccountId, DateTime<Utc>)> = d.providers[0]
            .quota_resets
            .iter()
            .map(|q| (q.account_id, q.at))
            .collect();
        assert_eq!(resets, vec![(3, t(30)), (1, t(90))]);
        assert!(
            d.text().contains("  quota resets: account 3 (a3) at "),
            "{}",
            d.text()
        );
    }

    #[test]
    fn an_empty_farm_says_so() {
        let d = build(None, &[], &[], t(0));
        assert!(d.providers.is_empty());
        assert!(d.text().ends_with("no accounts\n"), "{}", d.text());
    }
}
