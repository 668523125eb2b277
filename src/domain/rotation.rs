//! Which account serves the next `/credential/next`.
//!
//! The choice is made over the accounts of one provider that can be served
//! now (see [`Account::is_servable`]); when none can, the answer says how
//! long a client should wait before asking again.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};

use super::account::{Account, AccountId, AuthState};

crate::named_enum! {
    /// How a lease picks among a provider's usable accounts.
    #[derive(Default)]
    pub enum Strategy {
        /// Each request goes to the next usable account in id order.
        #[default]
        RoundRobin = "round-robin",
        /// The account that has served the fewest leases.
        LeastUsed = "least-used",
        /// Lowest `priority` first; the next one only when it cannot serve.
        FillFirst = "fill-first",
        /// The same `session` key keeps its account while that account can
        /// serve; otherwise (or without a session key) round-robin.
        Sticky = "sticky",
    }
}

/// The outcome of a rotation decision.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice {
    Account(AccountId),
    /// Nothing can serve now; ask again after this long (at least 1 s).
    NoneAvailable {
        retry_after: Duration,
    },
}

/// How long to tell clients to wait when no account of a provider exists
/// that could ever become usable without a person (all dead or disabled).
pub const RETRY_WHEN_NOTHING_PENDING: Duration = Duration::seconds(60);

/// Rotation memory: the round-robin cursor per provider and the sticky
/// session map. Pure data; the caller keeps it next to the accounts.
#[derive(Debug, Default)]
pub struct Rotation {
    last_served: HashMap<String, AccountId>,
    sessions: HashMap<(String, String), AccountId>,
}

impl Rotation {
    /// Chooses among `accounts` (any order, any provider: those of other
    /// providers are ignored) and remembers the choice.
    pub fn choose<'a>(
        &mut self,
        strategy: Strategy,
        provider: &str,
        session: Option<&str>,
        accounts: impl IntoIterator<Item = &'a Account> + Clone,
        now: DateTime<Utc>,
        min_validity: Duration,
    ) -> Choice {
        let mut usable: Vec<&Account> = accounts
            .clone()
            .into_iter()
            .filter(|a| a.provider == provider && a.is_servable(now, min_validity))
            .collect();
        if usable.is_empty() {
            let retry_after = retry_after(provider, accounts, now, min_validity);
            return Choice::NoneAvailable { retry_after };
        }
        usable.sort_by_key(|a| a.id);
        let chosen = match (strategy, session) {
            (Strategy::LeastUsed, _) => usable.iter().min_by_key(|a| (a.uses, a.id)).map(|a| a.id),
            (Strategy::FillFirst, _) => usable
                .iter()
                .min_by_key(|a| (a.priority, a.id))
                .map(|a| a.id),
            (Strategy::Sticky, Some(key)) => {
                let sticky = self
                    .sessions
                    .get(&(provider.to_string(), key.to_string()))
                    .copied();
                sticky.filter(|id| usable.iter().any(|a| a.id == *id))
            }
            _ => None,
        };
        let id = chosen.unwrap_or_else(|| self.next_round_robin(provider, &usable));
        match self.last_served.get_mut(provider) {
            Some(last) => *last = id,
            None => {
                self.last_served.insert(provider.to_string(), id);
            }
        }
        if let (Strategy::Sticky, Some(key)) = (strategy, session) {
            self.sessions
                .insert((provider.to_string(), key.to_string()), id);
        }
        Choice::Account(id)
    }

    /// `usable` is sorted by id and not empty.
    fn next_round_robin(&self, provider: &str, usable: &[&Account]) -> AccountId {
        let after = self.last_served.get(provider).copied();
        after
            .and_then(|last| usable.iter().find(|a| a.id > last))
            .unwrap_or(&usable[0])
            .id
    }

    /// Forgets an account (removed): sticky sessions on it move on.
    pub fn forget(&mut self, id: AccountId) {
        self.sessions.retain(|_, v| *v != id);
    }

    /// Drops all sticky sessions (bounded memory: called by the sweep when
    /// the map grows past a limit).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn clear_sessions(&mut self) {
        self.sessions.clear();
    }
}

/// Seconds until the earliest account of `provider` could serve again: the
/// end of its cooldown, or shortly after its expected refresh. Accounts that
/// need a person (or are disabled) do not count.
pub fn retry_after<'a>(
    provider: &str,
    accounts: impl IntoIterator<Item = &'a Account>,
    now: DateTime<Utc>,
    min_validity: Duration,
) -> Duration {
    let one_second = Duration::seconds(1);
    accounts
        .into_iter()
        .filter(|a| a.provider == provider && a.enabled && a.auth == AuthState::Active)
        .map(|a| {
            let cooldown_end = a.cooldown_until.filter(|u| *u > now).unwrap_or(now);
            let token_ok_then = a
                .tokens
                .as_ref()
                .is_some_and(|t| t.expires_at - cooldown_end >= min_validity);
            let ready = if token_ok_then && !a.suspect && !a.refreshing {
                cooldown_end
            } else {
                // A refresh is due or running; it normally completes within a second or two.
                cooldown_end.max(a.retry_at.unwrap_or(now)) + one_second
            };
            ready - now
        })
        .min()
        .map(|d| ceil_seconds(d).max(one_second))
        .unwrap_or(RETRY_WHEN_NOTHING_PENDING)
}

/// Rounds up to whole seconds so `Retry-After` never undershoots.
fn ceil_seconds(d: Duration) -> Duration {
    let ms = d.num_milliseconds();
    Duration::seconds((ms + 999).div_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::account::Tokens;
    use crate::secret::Secret;

    fn account(id: AccountId, provider: &str, now: DateTime<Utc>) -> Account {
        let mut a = Account::new(id, provider.into(), format!("a{id}"), 0, now);
        a.auth = AuthState::Active;
        a.tokens = Some(Tokens {
            access_token: Secret::new(format!("token-{id}")),
            token_type: "Bearer".into(),
            expires_at: now + Duration::minutes(10),
            issued_at: now,
            refresh_token: Some(Secret::new("rt")),
        });
        a
    }

    fn pick(
        r: &mut Rotation,
        s: Strategy,
        session: Option<&str>,
        accts: &[Account],
        now: DateTime<Utc>,
    ) -> Choice {
        r.choose(s, "p", session, accts.iter(), now, Duration::seconds(30))
    }

    fn ids(
        r: &mut Rotation,
        s: Strategy,
        accts: &[Account],
        n: usize,
        now: DateTime<Utc>,
    ) -> Vec<AccountId> {
        (0..n)
            .map(|_| match pick(r, s, None, accts, now) {
                Choice::Account(id) => id,
                other => panic!("expected an account, got {other:?}"),
            })
            .collect()
    }

    #[test]
    fn round_robin_cycles_in_id_order_and_skips_unusable() {
        let now = Utc::now();
        let mut accts = vec![
            account(3, "p", now),
            account(1, "p", now),
            account(2, "p", now),
            account(9, "other", now),
        ];
        let mut r = Rotation::default();
        assert_eq!(
            ids(&mut r, Strategy::RoundRobin, &accts, 4, now),
            vec![1, 2, 3, 1]
        );
        accts[2].cooldown_until = Some(now + Duration::seconds(10)); // id 2
        assert_eq!(
            ids(&mut r, Strategy::RoundRobin, &accts, 3, now),
            vec![3, 1, 3]
        );
    }

    #[test]
    fn least_used_prefers_fewest_uses() {
        let now = Utc::now();
        let mut accts = vec![
            account(1, "p", now),
            account(2, "p", now),
            account(3, "p", now),
        ];
        accts[0].uses = 5;
        accts[1].uses = 2;
        accts[2].uses = 2;
        let mut r = Rotation::default();
        assert_eq!(
            pick(&mut r, Strategy::LeastUsed, None, &accts, now),
            Choice::Account(2)
        );
    }

    #[test]
    fn fill_first_uses_lowest_priority_until_it_cannot_serve() {
        let now = Utc::now();
        let mut accts = vec![
            account(1, "p", now),
            account(2, "p", now),
            account(3, "p", now),
        ];
        accts[0].priority = 5;
        accts[1].priority = 1;
        accts[2].priority = 3;
        let mut r = Rotation::default();
        assert_eq!(
            ids(&mut r, Strategy::FillFirst, &accts, 3, now),
            vec![2, 2, 2]
        );
        accts[1].cooldown_until = Some(now + Duration::seconds(60));
        assert_eq!(ids(&mut r, Strategy::FillFirst, &accts, 2, now), vec![3, 3]);
    }

    #[test]
    fn sticky_keeps_a_session_on_its_account_while_usable() {
        let now = Utc::now();
        let mut accts = vec![account(1, "p", now), account(2, "p", now)];
        let mut r = Rotation::default();
        let a = pick(&mut r, Strategy::Sticky, Some("s-a"), &accts, now);
        let b = pick(&mut r, Strategy::Sticky, Some("s-b"), &accts, now);
        assert_ne!(a, b, "new sessions spread round-robin");
        for _ in 0..3 {
            assert_eq!(pick(&mut r, Strategy::Sticky, Some("s-a"), &accts, now), a);
        }
        let Choice::Account(a_id) = a else {
            unreachable!()
        };
        accts
            .iter_mut()
            .find(|x| x.id == a_id)
            .unwrap()
            .cooldown_until = Some(now + Duration::seconds(9));
        let moved = pick(&mut r, Strategy::Sticky, Some("s-a"), &accts, now);
        assert_ne!(moved, a, "moves when its account cools down");
        assert_eq!(
            pick(&mut r, Strategy::Sticky, Some("s-a"), &accts, now),
            moved,
            "and stays on the new one"
        );
    }

    #[test]
    fn none_available_reports_earliest_cooldown_end() {
        let now = Utc::now();
        let mut accts = vec![account(1, "p", now), account(2, "p", now)];
        accts[0].cooldown_until = Some(now + Duration::milliseconds(42_300));
        accts[1].cooldown_until = Some(now + Duration::seconds(90));
        let mut r = Rotation::default();
        assert_eq!(
            pick(&mut r, Strategy::RoundRobin, None, &accts, now),
            Choice::NoneAvailable {
                retry_after: Duration::seconds(43)
            }
        );
    }

    #[test]
    fn none_available_with_only_dead_accounts_uses_the_default_wait() {
        let now = Utc::now();
        let mut accts = vec![account(1, "p", now)];
        accts[0].auth = AuthState::NeedsRelogin;
        let mut r = Rotation::default();
        assert_eq!(
            pick(&mut r, Strategy::RoundRobin, None, &accts, now),
            Choice::NoneAvailable {
                retry_after: RETRY_WHEN_NOTHING_PENDING
            }
        );
        assert_eq!(
            pick(&mut r, Strategy::RoundRobin, None, &[], now),
            Choice::NoneAvailable {
                retry_after: RETRY_WHEN_NOTHING_PENDING
            }
        );
    }

    #[test]
    fn nearly_expired_token_waits_for_refresh() {
        let now = Utc::now();
        let mut accts = vec![account(1, "p", now)];
        accts[0].tokens.as_mut().unwrap().expires_at = now + Duration::seconds(10);
        let mut r = Rotation::default();
        assert_eq!(
            pick(&mut r, Strategy::RoundRobin, None, &accts, now),
            Choice::NoneAvailable {
                retry_after: Duration::seconds(1)
            }
        );
    }

    #[test]
    fn strategy_names_round_trip() {
        for s in [
            Strategy::RoundRobin,
            Strategy::LeastUsed,
            Strategy::FillFirst,
            Strategy::Sticky,
        ] {
            assert_eq!(s.as_str().parse::<Strategy>(), Ok(s));
        }
        assert!("random"
            .parse::<Strategy>()
            .unwrap_err()
            .to_string()
            .contains("round-robin"));
    }
}
