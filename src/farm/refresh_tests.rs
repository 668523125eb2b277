//! The refresh protocol and the scheduler, on a paused tokio clock against
//! a scripted provider (`scripted.rs`): hours of farm time in milliseconds,
//! every grant counted. The same paths run against the real OIDC provider
//! in `tests/e2e`.

use std::time::Duration;

use chrono::DateTime;
use tokio::sync::watch;

use super::scripted::{
    logged_in, scratch_dir, scripted_farm, scripted_farm_with, Answer, TOKEN_LIFE,
};
use super::{FarmError, RefreshOutcome};
use crate::clock::Clock;
use crate::domain::AuthState;
use crate::oauth::OAuthError;
use crate::scheduler::run_refresh_scheduler;

const MINUTE: Duration = Duration::from_secs(60);

/// Lets every runnable task run, and paused time move by `d`.
async fn pass(d: Duration) {
    tokio::time::sleep(d).await;
}

fn refresh_token(farm: &super::Farm, id: i64) -> String {
    farm.with_account(id, |a| {
        a.tokens
            .as_ref()
            .and_then(|t| t.refresh_token.as_ref())
            .map(|r| r.expose().to_owned())
            .unwrap_or_default()
    })
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn concurrent_refreshes_of_one_account_send_one_grant() {
    let dir = scratch_dir();
    let (farm, _clock, provider) = scripted_farm(dir.path(), "");
    let (id, generation) = logged_in(&farm, "alice", TOKEN_LIFE);
    // The grant takes a while: every other trigger arrives while it is in flight.
    provider.delay(Duration::from_secs(2));
    let triggers = (0..10).map(|i| {
        let farm = farm.clone();
        // Callers that saw the generation, and callers that did not say.
        let seen = (i % 2 == 0).then_some(generation);
        tokio::spawn(async move { farm.refresh(id, seen, "test").await })
    });
    let outcomes: Vec<RefreshOutcome> = futures_util::future::join_all(triggers)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(provider.grants(), 1, "one grant for ten triggers");
    assert_eq!(provider.presented(), ["rt-0"]);
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == RefreshOutcome::Refreshed)
            .count(),
        1
    );
    assert_eq!(
        farm.with_account(id, |a| a.generation).unwrap(),
        generation + 1
    );
    assert_eq!(refresh_token(&farm, id), "rt-1");
}

#[tokio::test(start_paused = true)]
async fn a_refresh_whose_generation_moved_sends_no_grant() {
    let dir = scratch_dir();
    let (farm, _clock, provider) = scripted_farm(dir.path(), "");
    let (id, generation) = logged_in(&farm, "alice", TOKEN_LIFE);
    assert_eq!(
        farm.refresh(id, Some(generation), "first").await.unwrap(),
        RefreshOutcome::Refreshed
    );
    // A caller that decided on the old tokens (a stale lease's report, a
    // scheduler round from before) comes late.
    assert_eq!(
        farm.refresh(id, Some(generation), "late").await.unwrap(),
        RefreshOutcome::AlreadyFresh
    );
    assert_eq!(provider.grants(), 1);
    assert_eq!(provider.presented(), ["rt-0"], "rt-1 was never sent");
}

#[tokio::test(start_paused = true)]
async fn invalid_grant_marks_needs_relogin_keeps_the_refresh_token_and_deletes_nothing() {
    let dir = scratch_dir();
    let (farm, clock, provider) = scripted_farm(dir.path(), "");
    let (id, generation) = logged_in(&farm, "alice", TOKEN_LIFE);
    let mut events = farm.events.subscribe();
    provider.script([Answer::InvalidGrant]);
    let err = farm
        .refresh(id, Some(generation), "test")
        .await
        .unwrap_err();
    assert!(
        matches!(err, FarmError::Refresh(OAuthError::Dead { .. })),
        "{err:?}"
    );
    let (auth, refreshing, kept_generation) = farm
        .with_account(id, |a| (a.auth, a.refreshing, a.generation))
        .unwrap();
    assert_eq!(
        (auth, refreshing, kept_generation),
        (AuthState::NeedsRelogin, false, generation)
    );
    assert_eq!(
        refresh_token(&farm, id),
        "rt-0",
        "the refresh token is kept"
    );
    assert_eq!(
        events.recv().await.unwrap().kind,
        crate::events::EventKind::NeedsRelogin
    );
    // No retry of a dead token: the scheduler leaves it to a login.
    let margin = chrono::Duration::minutes(5);
    let later = clock.now() + chrono::Duration::hours(2);
    assert!(farm.due_refreshes(later, margin).0.is_empty());
    assert_eq!(provider.grants(), 1);
    // On disk: the account, its state and its tokens, no crash marker.
    let stored = farm
        .store
        .load_accounts(clock.now())
        .unwrap()
        .into_iter()
        .find(|a| a.id == id)
        .expect("the account is not deleted");
    assert_eq!(stored.auth, AuthState::NeedsRelogin);
    assert!(!stored.suspect);
    let tokens = stored.tokens.expect("the tokens are kept");
    assert_eq!(tokens.refresh_token.unwrap().expose(), "rt-0");
}

/// A refresh whose answer was cut off, on a provider that detects reuse:
/// replaying its refresh token would revoke the grant (and the access token
/// clients are using), so the account goes to the browser instead; without
/// reuse detection (or without a login script) it is retried like any
/// network failure.
#[tokio::test(start_paused = true)]
async fn a_lost_refresh_answer_with_reuse_detection_goes_to_the_browser_not_a_replay() {
    let margin = chrono::Duration::minutes(5);
    for (reuse, script, relogin) in [
        (true, true, true),
        (false, true, false),
        (true, false, false),
    ] {
        let dir = scratch_dir();
        let mut provider_keys = format!("reuse_detection = {reuse}\n");
        if script {
            provider_keys.push_str("login_script = \"demo.toml\"\n");
        }
        let (farm, clock, provider) = scripted_farm_with(dir.path(), true, &provider_keys);
        let (id, _) = logged_in(&farm, "alice", TOKEN_LIFE);
        provider.script([Answer::Cut]);
        let err = farm.refresh(id, None, "test").await.unwrap_err();
        assert!(
            matches!(err, FarmError::Refresh(OAuthError::AnswerLost(_))),
            "{err:?}"
        );
        let auth = farm.with_account(id, |a| a.auth).unwrap();
        let later = clock.now() + chrono::Duration::hours(2);
        let due = farm.due_refreshes(later, margin).0.len();
        let case = format!("reuse_detection {reuse}, login script {script}");
        if relogin {
            assert_eq!(auth, AuthState::NeedsRelogin, "{case}");
            assert_eq!(due, 0, "{case}: the spent refresh token is never replayed");
        } else {
            assert_eq!(auth, AuthState::Active, "{case}");
            assert_eq!(due, 1, "{case}: retried later");
        }
        assert_eq!(provider.presented(), ["rt-0"], "{case}");
    }
}

#[tokio::test(start_paused = true)]
async fn transient_errors_back_off_doubling_up_to_retry_max_and_keep_the_token() {
    let dir = scratch_dir();
    let (farm, clock, provider) = scripted_farm(
        dir.path(),
        "[scheduler]\nretry_initial = \"10s\"\nretry_max = \"60s\"\n",
    );
    let (id, _) = logged_in(&farm, "alice", TOKEN_LIFE);
    // An interrupted refresh: due at once, unless backing off.
    farm.with_account(id, |a| a.suspect = true).unwrap();
    provider.otherwise(Answer::Transient);
    let margin = chrono::Duration::minutes(5);
    for (failures, full_secs) in [(1u32, 10i64), (2, 20), (3, 40), (4, 60), (5, 60), (6, 60)] {
        let err = farm.refresh(id, None, "test").await.unwrap_err();
        assert!(matches!(err, FarmError::Refresh(OAuthError::Transport(_))));
        let (auth, count, retry_at) = farm
            .with_account(id, |a| (a.auth, a.refresh_failures, a.retry_at))
            .unwrap();
        assert_eq!((auth, count), (AuthState::Active, failures));
        let wait = (retry_at.unwrap() - clock.now()).num_milliseconds();
        // Jittered into [half, full] of the un-jittered delay.
        assert!(
            (full_secs * 500..=full_secs * 1000).contains(&wait),
            "failure {failures}: waits {wait} ms, expected within [{}, {}] s",
            full_secs / 2,
            full_secs
        );
        assert_eq!(refresh_token(&farm, id), "rt-0");
        // Due at once otherwise, yet not before the backoff ends.
        let retry_at = retry_at.unwrap();
        let just_before = retry_at - chrono::Duration::milliseconds(1);
        assert!(farm.due_refreshes(just_before, margin).0.is_empty());
        assert_eq!(farm.due_refreshes(retry_at, margin).0.len(), 1);
    }
    assert_eq!(
        provider.presented(),
        vec!["rt-0"; 6],
        "the same token each time"
    );
    // The provider is back: the backoff is forgotten.
    provider.otherwise(Answer::Tokens(TOKEN_LIFE));
    farm.refresh(id, None, "test").await.unwrap();
    let (count, retry_at) = farm
        .with_account(id, |a| (a.refresh_failures, a.retry_at))
        .unwrap();
    assert_eq!((count, retry_at), (0, None));
}

#[tokio::test(start_paused = true)]
async fn a_crash_marker_at_start_is_refreshed_at_once() {
    let dir = scratch_dir();
    let id = {
        let (farm, clock, _) = scripted_farm(dir.path(), "");
        let (id, _) = logged_in(&farm, "alice", TOKEN_LIFE);
        logged_in(&farm, "bob", TOKEN_LIFE); // a healthy neighbour
                                             // The grant was sent; the process died before its answer.
        farm.store
            .set_refresh_started(id, Some(clock.now()))
            .unwrap();
        id
    };
    let (farm, _clock, provider) = scripted_farm(dir.path(), "");
    assert!(farm.with_account(id, |a| a.suspect).unwrap());
    let (stop, shutdown) = watch::channel(false);
    let scheduler = tokio::spawn(run_refresh_scheduler(farm.clone(), shutdown));
    pass(Duration::from_millis(10)).await;
    assert_eq!(
        provider.grants(),
        1,
        "only the interrupted account, at once"
    );
    assert_eq!(refresh_token(&farm, id), "rt-1");
    assert!(!farm.with_account(id, |a| a.suspect).unwrap());
    stop.send(true).unwrap();
    scheduler.await.unwrap();
    let stored = farm.store.load_accounts(farm.clock.now()).unwrap();
    assert!(stored.iter().all(|a| !a.suspect), "the marker is cleared");
}

/// The time of the account's current tokens.
fn issued_at(farm: &super::Farm, id: i64) -> DateTime<chrono::Utc> {
    farm.with_account(id, |a| a.tokens.as_ref().unwrap().issued_at)
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_scheduler_refreshes_margin_before_expiry_and_wakes_every_max_sleep() {
    let dir = scratch_dir();
    let (farm, clock, provider) = scripted_farm(
        dir.path(),
        "[scheduler]\nrefresh_margin = \"5m\"\nmax_sleep = \"30s\"\n",
    );
    let (id, _) = logged_in(&farm, "alice", TOKEN_LIFE);
    let first_issued = issued_at(&farm, id);
    let (stop, shutdown) = watch::channel(false);
    let scheduler = tokio::spawn(run_refresh_scheduler(farm.clone(), shutdown));
    pass(55 * MINUTE - Duration::from_secs(1)).await;
    assert_eq!(provider.grants(), 0, "not before expires_at - margin");
    // Nothing was due for 55 minutes, yet it looked every 30 s.
    let rounds = farm.metrics.scheduler_rounds();
    assert!((110..=112).contains(&rounds), "{rounds} rounds");
    pass(Duration::from_secs(2)).await;
    assert_eq!(provider.grants(), 1, "at expires_at - margin");
    let refreshed = issued_at(&farm, id) - first_issued;
    assert_eq!(
        refreshed,
        chrono::Duration::minutes(55),
        "on time, to the ms"
    );
    // The new token's turn comes 55 minutes after it was issued.
    pass(54 * MINUTE).await;
    assert_eq!(provider.grants(), 1);
    pass(2 * MINUTE).await;
    assert_eq!(provider.grants(), 2);
    assert!(clock.now() > first_issued);
    stop.send(true).unwrap();
    scheduler.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_scheduler_catches_up_after_a_jump_with_one_grant() {
    let dir = scratch_dir();
    let (farm, clock, provider) = scripted_farm(dir.path(), "[scheduler]\nmax_sleep = \"30s\"\n");
    let (id, _) = logged_in(&farm, "alice", TOKEN_LIFE);
    let (stop, shutdown) = watch::channel(false);
    let scheduler = tokio::spawn(run_refresh_scheduler(farm.clone(), shutdown));
    pass(Duration::from_secs(1)).await;

    // Suspended for two hours: the wall clock jumps, tokio's did not move.
    // The scheduler's sleep was capped at max_sleep, so it notices within it.
    clock.jump(chrono::Duration::hours(2));
    pass(Duration::from_secs(25)).await;
    assert_eq!(
        provider.grants(),
        0,
        "still in the sleep begun before the jump"
    );
    pass(Duration::from_secs(5)).await;
    assert_eq!(provider.grants(), 1, "caught up within max_sleep");

    // Tokio's time itself moving past a whole token life (a busy runtime,
    // a stopped process): one grant per account, not one per missed round.
    tokio::time::advance(3 * TOKEN_LIFE).await;
    pass(Duration::from_millis(10)).await;
    assert_eq!(provider.grants(), 2);
    assert_eq!(refresh_token(&farm, id), "rt-2");
    stop.send(true).unwrap();
    scheduler.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn many_accounts_due_together_do_not_storm_the_provider() {
    const ACCOUNTS: usize = 40;
    let dir = scratch_dir();
    let (farm, _clock, provider) = scripted_farm(
        dir.path(),
        "[scheduler]\nmax_concurrent_refreshes = 4\nretry_initial = \"10s\"\nretry_max = \"5m\"\n",
    );
    let ids: Vec<i64> = (0..ACCOUNTS)
        .map(|i| logged_in(&farm, &format!("a{i}"), TOKEN_LIFE).0)
        .collect();
    provider.delay(Duration::from_secs(1));
    let (stop, shutdown) = watch::channel(false);
    let scheduler = tokio::spawn(run_refresh_scheduler(farm.clone(), shutdown));
    // All due together at 55 min, four grants at a time (ten seconds for
    // all of them); then each once per token life: about 1 h 50, 2 h 45.
    pass(3 * TOKEN_LIFE - 10 * MINUTE).await;
    assert_eq!(
        provider.grants(),
        3 * ACCOUNTS,
        "one grant per account per life"
    );
    assert_eq!(provider.max_in_flight(), 4, "max_concurrent_refreshes");
    for &id in &ids {
        assert_eq!(farm.with_account(id, |a| a.generation).unwrap(), 4);
    }

    // The provider is down when they are next due (about 3 h 40) and for
    // the half hour after. Backoff waits at least half of 10, 20, 40, 80,
    // 160 s, then of 300 s: at most 1 + 5 + (1800 - 155) / 150 = 16 tries
    // per account in 30 minutes, however often the scheduler wakes.
    provider.otherwise(Answer::Transient);
    let tokens: Vec<String> = ids.iter().map(|&id| refresh_token(&farm, id)).collect();
    let before = provider.presented().len();
    let rounds_before = farm.metrics.scheduler_rounds();
    pass(80 * MINUTE).await;
    let presented = provider.presented();
    for (id, token) in ids.iter().zip(&tokens) {
        let tries = presented[before..].iter().filter(|t| *t == token).count();
        assert!((8..=16).contains(&tries), "account {id}: {tries} tries");
        let (auth, kept) = farm
            .with_account(*id, |a| a.auth)
            .map(|auth| (auth, refresh_token(&farm, *id)))
            .unwrap();
        assert_eq!((auth, &kept), (AuthState::Active, token));
    }
    let rounds = farm.metrics.scheduler_rounds() - rounds_before;
    assert!(
        rounds > 2 * 16,
        "{rounds} rounds: the backoff, not sleep, bounds the tries"
    );
    stop.send(true).unwrap();
    scheduler.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_is_waited_out_as_told_and_never_needs_a_relogin() {
    let dir = scratch_dir();
    let (farm, clock, provider) = scripted_farm(
        dir.path(),
        "[scheduler]\nretry_initial = \"1s\"\nretry_max = \"2s\"\nmax_sleep = \"1s\"\n",
    );
    let (id, _) = logged_in(&farm, "alice", TOKEN_LIFE);
    farm.with_account(id, |a| a.suspect = true).unwrap(); // due at once
    provider.script([
        Answer::RetryAfter(Duration::from_secs(30)),
        Answer::RetryAfter(Duration::from_secs(30)),
    ]);
    let (stop, shutdown) = watch::channel(false);
    let scheduler = tokio::spawn(run_refresh_scheduler(farm.clone(), shutdown));
    pass(Duration::from_millis(10)).await;
    assert_eq!(provider.grants(), 1);
    let retry_at = farm.with_account(id, |a| a.retry_at).unwrap().unwrap();
    assert_eq!(
        retry_at - clock.now(),
        chrono::Duration::seconds(30) - chrono::Duration::milliseconds(10),
        "the provider's 30 s, not the 1 s backoff"
    );
    pass(Duration::from_secs(29)).await;
    assert_eq!(provider.grants(), 1, "not before Retry-After");
    pass(Duration::from_secs(2)).await;
    assert_eq!(provider.grants(), 2);
    pass(Duration::from_secs(31)).await;
    assert_eq!(provider.grants(), 3, "then the grant goes through");
    let (auth, failures) = farm
        .with_account(id, |a| (a.auth, a.refresh_failures))
        .unwrap();
    assert_eq!((auth, failures), (AuthState::Active, 0));
    assert_eq!(refresh_token(&farm, id), "rt-3");
    assert_eq!(provider.presented(), ["rt-0", "rt-0", "rt-0"]);
    stop.send(true).unwrap();
    scheduler.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_providers_own_dead_code_marks_needs_relogin() {
    let dir = scratch_dir();
    let (farm, _clock, provider) = scripted_farm(dir.path(), "");
    let (id, generation) = logged_in(&farm, "alice", TOKEN_LIFE);
    provider.script([Answer::Dead("refresh_token_reused")]);
    farm.refresh(id, Some(generation), "test")
        .await
        .unwrap_err();
    let (auth, error) = farm
        .with_account(id, |a| (a.auth, a.last_error.clone().unwrap().message))
        .unwrap();
    assert_eq!(auth, AuthState::NeedsRelogin);
    assert!(error.contains("refresh_token_reused"), "{error}");
    assert_eq!(refresh_token(&farm, id), "rt-0");
}

#[tokio::test(start_paused = true)]
async fn a_refresh_answer_without_a_refresh_token_keeps_the_old_one() {
    let dir = scratch_dir();
    let (farm, clock, provider) = scripted_farm(dir.path(), "");
    let (id, _) = logged_in(&farm, "alice", TOKEN_LIFE);
    provider.script([Answer::TokensWithoutRefreshToken(TOKEN_LIFE)]);
    farm.refresh(id, None, "first").await.unwrap();
    assert_eq!(refresh_token(&farm, id), "rt-0", "in memory");
    let stored = farm.store.load_accounts(clock.now()).unwrap();
    let tokens = stored[0].tokens.as_ref().unwrap();
    assert_eq!(
        (
            tokens.access_token.expose(),
            tokens.refresh_token.as_ref().unwrap().expose()
        ),
        ("at-1", "rt-0"),
        "on disk"
    );
    // And it works again: the same (non-rotating) refresh token is sent.
    farm.refresh(id, None, "second").await.unwrap();
    assert_eq!(provider.presented(), ["rt-0", "rt-0"]);
    assert_eq!(refresh_token(&farm, id), "rt-2");
}

#[tokio::test(start_paused = true)]
async fn a_jwt_access_token_without_expires_in_lives_until_its_exp() {
    let dir = scratch_dir();
    let (farm, clock, provider) = scripted_farm(dir.path(), "");
    let (id, _) = logged_in(&farm, "alice", TOKEN_LIFE);
    // Ten minutes: not the one hour a missing expires_in would default to.
    provider.script([Answer::JwtWithoutExpiresIn(10 * MINUTE)]);
    farm.refresh(id, None, "test").await.unwrap();
    let expires_at = farm
        .with_account(id, |a| a.tokens.as_ref().unwrap().expires_at)
        .unwrap();
    let exp = clock.now().timestamp() + 600;
    assert_eq!(expires_at.timestamp(), exp);
}
