//! Recovery at scale: when many accounts need the browser at once (a
//! provider that lost every session), which go first and how many start.
//!
//! The scheduler hands in every account due for a relogin; it gets back the
//! ones to start now, in order: the accounts whose tokens stop serving first
//! go first, no more than the browser has free slots for (so no login is
//! begun, and no pending login ages, while it only waits for a browser), and
//! no more per provider than its relogin rate allows.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};

use super::account::AccountId;

/// An account due for a browser relogin, as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueRelogin {
    pub id: AccountId,
    pub provider: String,
    /// When the access token it still serves expires; `None`: it has none.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Sorts `due` so the tokens that stop serving first come first. A token
/// already expired (or none) serves nothing from `now` on: those are equal,
/// and go before every token still serving. Ties go by account id, so the
/// order is the same at every scan.
pub fn order_by_expiry(due: &mut [DueRelogin], now: DateTime<Utc>) {
    due.sort_by_key(|d| (d.expires_at.map_or(now, |t| t.max(now)), d.id));
}

/// The relogins to start now, from `due` (in any order): in expiry order,
/// at most `free_slots` of them, and at one provider no more than
/// `per_minute`, evenly spaced (a start every `60 s / per_minute`, so no
/// minute ever has more, not even at the start of a recovery). `next_start`
/// holds each provider's earliest next start between calls. Also returns
/// when a provider next allows one, if a due relogin waits for it (the
/// scheduler wakes then).
pub fn pick_relogins(
    mut due: Vec<DueRelogin>,
    free_slots: usize,
    per_minute: u32,
    next_start: &mut HashMap<String, DateTime<Utc>>,
    now: DateTime<Utc>,
) -> (Vec<AccountId>, Option<DateTime<Utc>>) {
    order_by_expiry(&mut due, now);
    let gap = Duration::minutes(1) / i32::try_from(per_minute.max(1)).unwrap_or(i32::MAX);
    let mut start = Vec::new();
    let mut wake: Option<DateTime<Utc>> = None;
    for d in due {
        if start.len() >= free_slots {
            break;
        }
        let allowed = next_start.entry(d.provider).or_insert(now);
        if *allowed <= now {
            start.push(d.id);
            *allowed = now + gap;
        } else {
            wake = Some(wake.map_or(*allowed, |w| w.min(*allowed)));
        }
    }
    (start, wake)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(
        id: AccountId,
        provider: &str,
        expires_in_s: Option<i64>,
        now: DateTime<Utc>,
    ) -> DueRelogin {
        DueRelogin {
            id,
            provider: provider.into(),
            expires_at: expires_in_s.map(|s| now + Duration::seconds(s)),
        }
    }

    #[test]
    fn tokens_that_stop_serving_first_go_first() {
        let now = Utc::now();
        let mut list = vec![
            due(1, "p", Some(600), now),
            due(2, "p", Some(30), now),
            due(3, "p", None, now),
            due(4, "p", Some(-3600), now),
            due(5, "p", Some(-1), now),
            due(6, "p", Some(30), now),
        ];
        order_by_expiry(&mut list, now);
        let ids: Vec<_> = list.iter().map(|d| d.id).collect();
        // Expired an hour ago, a second ago, or no token: all dead from
        // `now`, by id; then the soonest to expire.
        assert_eq!(ids, [3, 4, 5, 2, 6, 1]);
        // Later, token 2 and 6 have expired too: they join the dead, by id.
        order_by_expiry(&mut list, now + Duration::seconds(60));
        let ids: Vec<_> = list.iter().map(|d| d.id).collect();
        assert_eq!(ids, [2, 3, 4, 5, 6, 1]);
    }

    #[test]
    fn no_more_start_than_the_browser_has_free_slots() {
        let now = Utc::now();
        // One provider each: their rates are not the limit here.
        let list: Vec<_> = (1..=100)
            .map(|id| due(id, &format!("p{id}"), Some(1000 - id), now))
            .collect();
        let mut next_start = HashMap::new();
        let (start, wake) = pick_relogins(list.clone(), 3, 60, &mut next_start, now);
        assert_eq!(start, [100, 99, 98], "the three expiring first");
        assert_eq!(
            wake, None,
            "slots are the limit: a finished relogin wakes the scheduler"
        );
        let (start, _) = pick_relogins(list, 0, 60, &mut next_start, now);
        assert!(start.is_empty(), "no free slot, nothing starts");
    }

    #[test]
    fn each_provider_gets_its_rate_and_the_scheduler_wakes_when_it_allows_more() {
        let now = Utc::now();
        let mut list: Vec<_> = (1..=10).map(|id| due(id, "a", None, now)).collect();
        list.extend((11..=12).map(|id| due(id, "b", None, now)));
        let mut next_start = HashMap::new();
        // 4 a minute: a start every 15 s at each provider, even with 16
        // free slots; b is not held up by a's limit.
        let (start, wake) = pick_relogins(list.clone(), 16, 4, &mut next_start, now);
        assert_eq!(start, [1, 11]);
        assert_eq!(wake, Some(now + Duration::seconds(15)));
        list.retain(|d| !start.contains(&d.id));
        let at = |s| now + Duration::seconds(s);
        let (start, wake) = pick_relogins(list.clone(), 16, 4, &mut next_start, at(14));
        assert!(start.is_empty(), "not before 15 s");
        assert_eq!(wake, Some(at(15)));
        let (start, wake) = pick_relogins(list, 16, 4, &mut next_start, at(15));
        assert_eq!(start, [2, 12]);
        assert_eq!(wake, Some(at(30)));
    }

    #[test]
    fn over_a_long_recovery_no_minute_has_more_than_the_rate() {
        // 100 accounts dead at once, 16 slots always free (the browser is
        // not the limit), 60 a minute: one start a second, the last one
        // 99 s in, and no minute with more than 60.
        let now = Utc::now();
        let mut left: Vec<_> = (1..=100).map(|id| due(id, "p", None, now)).collect();
        let mut next_start = HashMap::new();
        let mut started_at = Vec::new();
        let mut t = now;
        while !left.is_empty() {
            let (start, wake) = pick_relogins(left.clone(), 16, 60, &mut next_start, t);
            left.retain(|d| !start.contains(&d.id));
            started_at.extend(start.iter().map(|_| t));
            if left.is_empty() {
                break;
            }
            t = wake.expect("relogins wait for the rate only");
        }
        for (i, at) in started_at.iter().enumerate() {
            let within_a_minute = started_at[i..]
                .iter()
                .take_while(|s| **s < *at + Duration::minutes(1))
                .count();
            assert!(
                within_a_minute <= 60,
                "{within_a_minute} in the minute from {at}"
            );
        }
        assert_eq!(started_at.len(), 100);
        assert_eq!(*started_at.last().unwrap(), now + Duration::seconds(99));
    }
}
