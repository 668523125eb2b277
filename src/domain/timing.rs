//! When to refresh, and how long to wait after a failure.

use chrono::{DateTime, Duration, Utc};

use super::account::{Account, AuthState};

/// When an account's token should be refreshed: `refresh_margin` before it
/// expires — but never earlier than half-way through the token's life, so a
/// provider that issues tokens shorter than the margin is not hammered with
/// back-to-back refreshes.
pub fn refresh_due_at(
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    margin: Duration,
) -> DateTime<Utc> {
    let lifetime = (expires_at - issued_at).max(Duration::zero());
    expires_at - margin.min(lifetime / 2)
}

/// When the scheduler should refresh this account, or `None` if it has
/// nothing to refresh (no refresh token, dead, disabled, or already in flight).
/// A refresh interrupted by a crash, or asked for by a client's
/// `unauthorized` report, is due at once; a failed one waits for `retry_at`.
pub fn next_refresh_at(account: &Account, margin: Duration) -> Option<DateTime<Utc>> {
    if !account.enabled || account.auth != AuthState::Active || account.refreshing {
        return None;
    }
    let tokens = account.tokens.as_ref()?;
    tokens.refresh_token.as_ref()?;
    let due = if account.suspect {
        DateTime::<Utc>::MIN_UTC
    } else {
        refresh_due_at(tokens.issued_at, tokens.expires_at, margin)
    };
    Some(match account.retry_at {
        Some(retry) => due.max(retry),
        None => due,
    })
}

/// How long after its token was issued an account ignores `unauthorized`
/// reports (they are recorded, no grant is sent). A token the provider has
/// just issued is almost never dead: a client that gets it rejected is
/// sending it where it does not work, and another refresh cannot fix that.
/// Without this, one client looping `next` → `report unauthorized` drives a
/// refresh grant per loop; with it, at most one per this many seconds.
pub const FRESH_TOKEN_GRACE_SECS: i64 = 5;

/// Whether a client's `unauthorized` report on a lease of `lease_generation`
/// should refresh the account. Not when the token was replaced since the
/// lease (that refresh already happened), nor when the current token is
/// fresh (see [`FRESH_TOKEN_GRACE_SECS`]): such reports coalesce.
pub fn unauthorized_wants_refresh(
    account: &Account,
    lease_generation: i64,
    now: DateTime<Utc>,
) -> bool {
    account.generation == lease_generation
        && account
            .tokens
            .as_ref()
            .is_none_or(|t| now - t.issued_at >= Duration::seconds(FRESH_TOKEN_GRACE_SECS))
}

/// When the recovery ladder should log this account in with the browser,
/// or `None` if it needs no relogin or cannot have one (no script,
/// disabled). Dead accounts go at once; a failed relogin waits for its
/// backoff; never-logged-in accounts go only once a script is attached.
pub fn next_relogin_at(account: &Account) -> Option<DateTime<Utc>> {
    let wants = matches!(
        account.auth,
        AuthState::NeedsRelogin | AuthState::NeedsHuman | AuthState::PendingLogin
    );
    if !account.enabled || !account.has_login_script || !wants || account.refreshing {
        return None;
    }
    Some(account.relogin_retry_at.unwrap_or(DateTime::<Utc>::MIN_UTC))
}

/// Exponential backoff after `failures` consecutive transient failures
/// (1 = first failure), capped at `max`, with jitter: `jitter` is a number
/// in [0, 1) chosen by the caller; the result lies in [half, full] of the
/// un-jittered delay so that many accounts failing together spread out.
pub fn backoff(failures: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let full_ms = initial
        .num_milliseconds()
        .saturating_mul(1i64 << exp)
        .min(max.num_milliseconds());
    let jitter = jitter.clamp(0.0, 1.0);
    Duration::milliseconds(full_ms / 2 + ((full_ms / 2) as f64 * jitter) as i64)
}

/// When to retry a refresh that failed transiently: when the provider said
/// (`told`, already capped), if that is still ahead, else after `backoff`.
pub fn retry_refresh_at(
    now: DateTime<Utc>,
    backoff: Duration,
    told: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    told.filter(|t| *t > now).unwrap_or(now + backoff)
}

/// The cooldown a rate-limit report earns: the client's `retry_after`
/// (or the default), capped.
pub fn cooldown_for(retry_after: Option<Duration>, default: Duration, max: Duration) -> Duration {
    retry_after.unwrap_or(default).clamp(Duration::zero(), max)
}

/// The longest a canary round is spread over, however far its next round.
pub const CANARY_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

/// When the `i`th of `n` runs starts after a round begins: evenly over
/// `window` (capped at [`CANARY_WINDOW`]), the first at once.
pub fn spread(window: std::time::Duration, n: usize, i: usize) -> std::time::Duration {
    let window = window.min(CANARY_WINDOW);
    match n {
        0 => std::time::Duration::ZERO,
        n => window.mul_f64(i as f64 / n as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::account::Tokens;
    use crate::secret::Secret;

    #[test]
    fn a_refresh_retries_when_the_provider_said_else_after_the_backoff() {
        let t0 = Utc::now();
        let backoff = Duration::seconds(10);
        let told = t0 + Duration::seconds(3);
        assert_eq!(retry_refresh_at(t0, backoff, Some(told)), told);
        assert_eq!(retry_refresh_at(t0, backoff, None), t0 + backoff);
        // A time already past is no instruction.
        assert_eq!(retry_refresh_at(t0, backoff, Some(t0)), t0 + backoff);
    }

    #[test]
    fn due_at_margin_before_expiry() {
        let t0 = Utc::now();
        let due = refresh_due_at(t0, t0 + Duration::hours(1), Duration::minutes(5));
        assert_eq!(due, t0 + Duration::minutes(55));
    }

    #[test]
    fn short_lived_tokens_refresh_half_way() {
        let t0 = Utc::now();
        let due = refresh_due_at(t0, t0 + Duration::seconds(10), Duration::minutes(5));
        assert_eq!(due, t0 + Duration::seconds(5));
    }

    fn account_with_tokens(now: DateTime<Utc>) -> Account {
        let mut a = Account::new(1, "p".into(), "a".into(), 0, now);
        a.auth = AuthState::Active;
        a.tokens = Some(Tokens {
            access_token: Secret::new("at"),
            token_type: "Bearer".into(),
            expires_at: now + Duration::hours(1),
            issued_at: now,
            refresh_token: Some(Secret::new("rt")),
        });
        a
    }

    #[test]
    fn next_refresh_respects_state_and_retry() {
        let now = Utc::now();
        let margin = Duration::minutes(5);
        let mut a = account_with_tokens(now);
        assert_eq!(
            next_refresh_at(&a, margin),
            Some(now + Duration::minutes(55))
        );
        a.cooldown_until = Some(now + Duration::hours(3));
        assert_eq!(
            next_refresh_at(&a, margin),
            Some(now + Duration::minutes(55)),
            "cooling down still refreshes"
        );
        a.suspect = true;
        assert_eq!(
            next_refresh_at(&a, margin),
            Some(DateTime::<Utc>::MIN_UTC),
            "unauthorized report: at once"
        );
        a.retry_at = Some(now + Duration::seconds(20));
        assert_eq!(
            next_refresh_at(&a, margin),
            Some(now + Duration::seconds(20)),
            "but not before the backoff"
        );
        a.refreshing = true;
        assert_eq!(next_refresh_at(&a, margin), None, "already in flight");
        a.refreshing = false;
        a.auth = AuthState::NeedsRelogin;
        assert_eq!(next_refresh_at(&a, margin), None);
        a.auth = AuthState::Active;
        a.tokens.as_mut().unwrap().refresh_token = None;
        assert_eq!(next_refresh_at(&a, margin), None, "nothing to refresh with");
    }

    #[test]
    fn unauthorized_reports_coalesce_on_replaced_and_fresh_tokens() {
        let issued = Utc::now();
        let a = account_with_tokens(issued);
        let grace = Duration::seconds(FRESH_TOKEN_GRACE_SECS);
        let after = issued + grace;
        assert!(unauthorized_wants_refresh(&a, a.generation, after));
        assert!(
            !unauthorized_wants_refresh(&a, a.generation, after - Duration::milliseconds(1)),
            "a token issued moments ago"
        );
        assert!(
            !unauthorized_wants_refresh(&a, a.generation - 1, after + Duration::hours(1)),
            "refreshed since the lease"
        );
    }

    #[test]
    fn relogin_ladder_needs_a_script_and_respects_backoff() {
        let now = Utc::now();
        let mut a = account_with_tokens(now);
        assert_eq!(
            next_relogin_at(&a),
            None,
            "healthy accounts need no relogin"
        );
        a.auth = AuthState::NeedsRelogin;
        assert_eq!(
            next_relogin_at(&a),
            None,
            "no script, nothing the farm can do"
        );
        a.has_login_script = true;
        assert_eq!(
            next_relogin_at(&a),
            Some(DateTime::<Utc>::MIN_UTC),
            "dead with a script: at once"
        );
        a.auth = AuthState::NeedsHuman;
        a.relogin_retry_at = Some(now + Duration::minutes(10));
        assert_eq!(
            next_relogin_at(&a),
            Some(now + Duration::minutes(10)),
            "after a failure: backoff, no storm"
        );
        a.enabled = false;
        assert_eq!(next_relogin_at(&a), None);
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let i = Duration::seconds(5);
        let m = Duration::minutes(5);
        assert_eq!(backoff(1, i, m, 1.0), Duration::seconds(5));
        assert_eq!(backoff(1, i, m, 0.0), Duration::milliseconds(2500));
        assert_eq!(backoff(3, i, m, 1.0), Duration::seconds(20));
        assert_eq!(backoff(30, i, m, 1.0), Duration::minutes(5));
        assert_eq!(backoff(u32::MAX, i, m, 0.0), Duration::seconds(150));
    }

    #[test]
    fn cooldown_is_capped() {
        let d = Duration::seconds(60);
        let max = Duration::hours(6);
        assert_eq!(cooldown_for(None, d, max), d);
        assert_eq!(
            cooldown_for(Some(Duration::seconds(7)), d, max),
            Duration::seconds(7)
        );
        assert_eq!(cooldown_for(Some(Duration::days(3)), d, max), max);
    }

    #[test]
    fn canary_runs_are_spread_over_the_window_at_most_an_hour() {
        let secs = std::time::Duration::from_secs;
        assert_eq!(spread(secs(20), 2, 0), secs(0));
        assert_eq!(spread(secs(20), 2, 1), secs(10));
        assert_eq!(
            spread(secs(86_400), 4, 3),
            secs(2700),
            "a day away: over an hour"
        );
        assert_eq!(spread(secs(60), 0, 0), secs(0));
    }
}
