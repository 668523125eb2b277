//! An account as the farm knows it, and the state a person sees.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

pub type AccountId = i64;

/// Where an account stands with its provider. Persisted.
///
/// Transient conditions (a refresh in flight, a cooldown, disabled) are not
/// part of this: they overlay it, see [`DisplayState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthState {
    /// Created, never logged in.
    PendingLogin,
    /// Has tokens the farm believes are good.
    Active,
    /// The refresh token is dead (`invalid_grant`); a new login is needed.
    NeedsRelogin,
    /// Automatic relogin failed; a person has to look.
    NeedsHuman,
}

impl AuthState {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthState::PendingLogin => "pending_login",
            AuthState::Active => "active",
            AuthState::NeedsRelogin => "needs_relogin",
            AuthState::NeedsHuman => "needs_human",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending_login" => AuthState::PendingLogin,
            "active" => AuthState::Active,
            "needs_relogin" => AuthState::NeedsRelogin,
            "needs_human" => AuthState::NeedsHuman,
            _ => return None,
        })
    }
}

/// The state shown to people and clients: the persisted [`AuthState`] with
/// the transient conditions laid over it, most important first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisplayState {
    Disabled,
    PendingLogin,
    NeedsRelogin,
    NeedsHuman,
    /// `Active`, but the token is past its expiry: nothing can be served
    /// until a refresh or a login replaces it.
    Expired,
    Refreshing,
    CoolingDown,
    Healthy,
}

impl DisplayState {
    pub fn as_str(self) -> &'static str {
        match self {
            DisplayState::Disabled => "disabled",
            DisplayState::PendingLogin => "pending_login",
            DisplayState::NeedsRelogin => "needs_relogin",
            DisplayState::NeedsHuman => "needs_human",
            DisplayState::Expired => "expired",
            DisplayState::Refreshing => "refreshing",
            DisplayState::CoolingDown => "cooling_down",
            DisplayState::Healthy => "healthy",
        }
    }

    pub const ALL: [DisplayState; 8] = [
        DisplayState::Disabled,
        DisplayState::PendingLogin,
        DisplayState::NeedsRelogin,
        DisplayState::NeedsHuman,
        DisplayState::Expired,
        DisplayState::Refreshing,
        DisplayState::CoolingDown,
        DisplayState::Healthy,
    ];
}

/// The token set obtained from the provider.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub access_token: Secret,
    pub token_type: String,
    pub expires_at: DateTime<Utc>,
    /// When these tokens were obtained; with `expires_at` it gives the
    /// token's lifetime, which bounds the refresh margin.
    pub issued_at: DateTime<Utc>,
    pub refresh_token: Option<Secret>,
}

#[derive(Clone, Debug)]
pub struct LastError {
    pub at: DateTime<Utc>,
    pub message: String,
}

#[derive(Clone, Debug)]
pub struct Account {
    pub id: AccountId,
    pub provider: String,
    pub label: String,
    /// Lower is preferred by the fill-first strategy.
    pub priority: i64,
    pub enabled: bool,
    pub auth: AuthState,
    pub tokens: Option<Tokens>,
    /// Bumped by every successful token write. A refresh trigger carries the
    /// generation it saw; if the generation moved meanwhile, someone else
    /// already refreshed and no second grant is sent.
    pub generation: i64,
    pub cooldown_until: Option<DateTime<Utc>>,
    pub last_refresh_at: Option<DateTime<Utc>>,
    pub last_error: Option<LastError>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Set while a refresh grant is in flight (persisted too, so a crash in
    /// the middle is noticed at the next start).
    pub refreshing: bool,
    /// A client reported the token as rejected: skip the account until the
    /// next successful refresh.
    pub suspect: bool,
    /// Consecutive transient refresh failures, for backoff.
    pub refresh_failures: u32,
    /// Not before this time is a failed refresh retried.
    pub retry_at: Option<DateTime<Utc>>,
    /// Leases handed out (since start, seeded with the last day's count).
    pub uses: u64,
    /// A login script is attached (to the account or its provider), so the
    /// farm can log it in with a browser by itself.
    pub has_login_script: bool,
    /// The screenshot of the last failed browser relogin (cleared by a login).
    pub last_screenshot: Option<std::path::PathBuf>,
    /// The step (1-based) and script line the last failed browser relogin
    /// stopped at (cleared by a login): shown beside a takeover.
    pub last_failed_step: Option<(usize, usize)>,
    /// Consecutive failed browser relogins, for backoff.
    pub relogin_failures: u32,
    /// Not before this time is a failed relogin retried.
    pub relogin_retry_at: Option<DateTime<Utc>>,
    /// Whose tokens these are, pinned at the first login that named one.
    pub identity: Option<super::identity::Identity>,
    /// The last login yielded another identity and was refused: the
    /// account needs a person, but the tokens it holds are still the
    /// pinned user's and are served until they expire.
    pub identity_refused: bool,
}

impl Account {
    pub fn new(
        id: AccountId,
        provider: String,
        label: String,
        priority: i64,
        now: DateTime<Utc>,
    ) -> Self {
        Account {
            id,
            provider,
            label,
            priority,
            enabled: true,
            auth: AuthState::PendingLogin,
            tokens: None,
            generation: 0,
            cooldown_until: None,
            last_refresh_at: None,
            last_error: None,
            last_used_at: None,
            created_at: now,
            refreshing: false,
            suspect: false,
            refresh_failures: 0,
            retry_at: None,
            uses: 0,
            has_login_script: false,
            last_screenshot: None,
            last_failed_step: None,
            relogin_failures: 0,
            relogin_retry_at: None,
            identity: None,
            identity_refused: false,
        }
    }

    /// New tokens from a refresh or a login, already persisted as
    /// `generation`. A provider that did not rotate the refresh token sends
    /// none: the old one stays. Clears every failure mark.
    pub fn install_tokens(&mut self, mut tokens: Tokens, generation: i64, now: DateTime<Utc>) {
        tokens.refresh_token = super::provider::refresh_token_after(
            tokens.refresh_token.take(),
            self.tokens.as_ref().and_then(|t| t.refresh_token.as_ref()),
        );
        self.tokens = Some(tokens);
        self.generation = generation;
        self.auth = AuthState::Active;
        self.refreshing = false;
        self.suspect = false;
        self.refresh_failures = 0;
        self.retry_at = None;
        self.last_error = None;
        self.last_screenshot = None;
        self.last_failed_step = None;
        self.last_refresh_at = Some(now);
        self.identity_refused = false;
    }

    pub fn display_state(&self, now: DateTime<Utc>) -> DisplayState {
        if !self.enabled {
            return DisplayState::Disabled;
        }
        match self.auth {
            AuthState::PendingLogin => return DisplayState::PendingLogin,
            AuthState::NeedsRelogin => return DisplayState::NeedsRelogin,
            AuthState::NeedsHuman => return DisplayState::NeedsHuman,
            AuthState::Active => {}
        }
        // The stored state says `Active`, but a token past its expiry is
        // dead whatever the farm believes: say so (a refresh in flight or a
        // cooldown is the lesser news).
        if self.tokens.as_ref().is_none_or(|t| t.expires_at <= now) {
            DisplayState::Expired
        } else if self.refreshing {
            DisplayState::Refreshing
        } else if self.is_cooling_down(now) {
            DisplayState::CoolingDown
        } else {
            DisplayState::Healthy
        }
    }

    /// At start, for an account whose last refresh was interrupted (the
    /// crash marker, loaded as `suspect`): whether to log it in with the
    /// browser rather than replay its refresh token. The grant may have
    /// reached the provider, so the stored refresh token may be spent; a
    /// provider that detects reuse (`reuse_detection`) answers a replay by
    /// revoking the whole grant. With a login script and the browser, a
    /// relogin gets a fresh grant without that risk.
    pub fn relogin_after_interrupted_refresh(&self, reuse_detection: bool, browser: bool) -> bool {
        self.suspect && self.relogin_instead_of_replay(reuse_detection, browser)
    }

    /// Whether a refresh token that may be spent (its grant reached the
    /// provider, the answer never came back) is better left alone: with
    /// `reuse_detection`, replaying it revokes the whole grant, the access
    /// token being served included, while a browser relogin with the login
    /// script gets a fresh grant and leaves the old one be.
    pub fn relogin_instead_of_replay(&self, reuse_detection: bool, browser: bool) -> bool {
        self.auth == AuthState::Active && self.has_login_script && reuse_detection && browser
    }

    pub fn is_cooling_down(&self, now: DateTime<Utc>) -> bool {
        self.cooldown_until.is_some_and(|until| until > now)
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.tokens.as_ref().map(|t| t.expires_at)
    }

    pub fn has_refresh_token(&self) -> bool {
        self.tokens
            .as_ref()
            .is_some_and(|t| t.refresh_token.is_some())
    }

    /// Can this account's current token be handed to a client now? A
    /// `needs_human` account whose last login was refused for its identity
    /// still holds its own valid tokens: they are served.
    pub fn is_servable(&self, now: DateTime<Utc>, min_validity: chrono::Duration) -> bool {
        self.enabled
            && (self.auth == AuthState::Active
                || (self.auth == AuthState::NeedsHuman && self.identity_refused))
            && !self.suspect
            && !self.is_cooling_down(now)
            && self
                .tokens
                .as_ref()
                .is_some_and(|t| t.expires_at - now >= min_validity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn active(now: DateTime<Utc>) -> Account {
        let mut a = Account::new(1, "demo".into(), "alice".into(), 0, now);
        a.auth = AuthState::Active;
        a.tokens = Some(Tokens {
            access_token: Secret::new("at"),
            token_type: "Bearer".into(),
            expires_at: now + Duration::minutes(10),
            issued_at: now,
            refresh_token: Some(Secret::new("rt")),
        });
        a
    }

    #[test]
    fn display_state_precedence() {
        let now = Utc::now();
        let mut a = active(now);
        assert_eq!(a.display_state(now), DisplayState::Healthy);
        a.cooldown_until = Some(now + Duration::seconds(5));
        assert_eq!(a.display_state(now), DisplayState::CoolingDown);
        assert_eq!(
            a.display_state(now + Duration::seconds(6)),
            DisplayState::Healthy
        );
        a.refreshing = true;
        assert_eq!(a.display_state(now), DisplayState::Refreshing);
        a.auth = AuthState::NeedsRelogin;
        assert_eq!(a.display_state(now), DisplayState::NeedsRelogin);
        a.enabled = false;
        assert_eq!(a.display_state(now), DisplayState::Disabled);
    }

    #[test]
    fn a_login_refused_for_its_identity_keeps_serving_the_valid_token() {
        let now = Utc::now();
        let min = Duration::seconds(30);
        let mut a = active(now);
        a.auth = AuthState::NeedsHuman;
        assert!(
            !a.is_servable(now, min),
            "a plain needs_human is not served"
        );
        a.identity_refused = true;
        assert!(a.is_servable(now, min));
        assert_eq!(a.display_state(now), DisplayState::NeedsHuman);
        let expiry = a.expires_at().unwrap();
        assert!(!a.is_servable(expiry - Duration::seconds(10), min));
        a.enabled = false;
        assert!(!a.is_servable(now, min));
        a.enabled = true;
        // The right user's login clears it.
        let tokens = a.tokens.clone().unwrap();
        a.install_tokens(tokens, a.generation + 1, now);
        assert!(!a.identity_refused && a.auth == AuthState::Active);
    }

    #[test]
    fn an_active_account_past_its_expiry_shows_expired() {
        let now = Utc::now();
        let mut a = active(now);
        let expiry = a.expires_at().unwrap();
        assert_eq!(
            a.display_state(expiry - Duration::milliseconds(1)),
            DisplayState::Healthy
        );
        assert_eq!(a.display_state(expiry), DisplayState::Expired);
        assert_eq!(
            a.display_state(expiry + Duration::seconds(40)),
            DisplayState::Expired,
            "the stored state still says active"
        );
        assert_eq!(a.auth, AuthState::Active);
        a.refreshing = true;
        a.cooldown_until = Some(expiry + Duration::hours(1));
        assert_eq!(
            a.display_state(expiry + Duration::seconds(1)),
            DisplayState::Expired
        );
        a.auth = AuthState::NeedsRelogin;
        assert_eq!(
            a.display_state(expiry + Duration::seconds(1)),
            DisplayState::NeedsRelogin,
            "a dead refresh token is the more useful news"
        );
        a.auth = AuthState::Active;
        a.tokens = None;
        assert_eq!(a.display_state(now), DisplayState::Expired);
    }

    #[test]
    fn an_interrupted_refresh_goes_to_the_browser_only_when_a_replay_is_dangerous() {
        let now = Utc::now();
        let mut a = active(now);
        a.suspect = true; // the crash marker
        a.has_login_script = true;
        assert!(a.relogin_after_interrupted_refresh(true, true));
        assert!(
            !a.relogin_after_interrupted_refresh(false, true),
            "no reuse detection: replaying is safe"
        );
        assert!(
            !a.relogin_after_interrupted_refresh(true, false),
            "no browser: the refresh is the only way"
        );
        a.has_login_script = false;
        assert!(
            !a.relogin_after_interrupted_refresh(true, true),
            "no script"
        );
        a.has_login_script = true;
        a.suspect = false;
        assert!(
            !a.relogin_after_interrupted_refresh(true, true),
            "not interrupted"
        );
        a.suspect = true;
        a.auth = AuthState::NeedsRelogin;
        assert!(
            !a.relogin_after_interrupted_refresh(true, true),
            "already dead"
        );
    }

    #[test]
    fn servable_needs_validity_and_no_cooldown() {
        let now = Utc::now();
        let mut a = active(now);
        let min = Duration::seconds(30);
        assert!(a.is_servable(now, min));
        assert!(
            !a.is_servable(now + Duration::seconds(571), min),
            "less than 30 s left"
        );
        a.suspect = true;
        assert!(!a.is_servable(now, min));
        a.suspect = false;
        a.cooldown_until = Some(now + Duration::seconds(1));
        assert!(!a.is_servable(now, min));
    }

    #[test]
    fn installing_tokens_keeps_an_unrotated_refresh_token_and_clears_failures() {
        let now = Utc::now();
        let mut a = active(now);
        a.auth = AuthState::NeedsRelogin;
        a.suspect = true;
        a.refresh_failures = 3;
        a.last_error = Some(LastError {
            at: now,
            message: "x".into(),
        });
        let fresh = Tokens {
            access_token: Secret::new("at2"),
            token_type: "Bearer".into(),
            expires_at: now + Duration::minutes(5),
            issued_at: now,
            refresh_token: None,
        };
        a.install_tokens(fresh, 7, now);
        assert_eq!(a.generation, 7);
        assert_eq!(
            a.tokens
                .as_ref()
                .unwrap()
                .refresh_token
                .as_ref()
                .unwrap()
                .expose(),
            "rt"
        );
        assert_eq!(a.display_state(now), DisplayState::Healthy);
        assert!(a.last_error.is_none() && a.refresh_failures == 0);
    }

    #[test]
    fn auth_state_round_trips() {
        for s in [
            AuthState::PendingLogin,
            AuthState::Active,
            AuthState::NeedsRelogin,
            AuthState::NeedsHuman,
        ] {
            assert_eq!(AuthState::parse(s.as_str()), Some(s));
        }
        assert_eq!(AuthState::parse("bogus"), None);
    }
}
