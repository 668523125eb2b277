//! What a provider's answers mean, free of I/O: a token endpoint's answer
//! (tokens, a dead grant, or "come back later"), a token's lifetime, a
//! pasted login code, the device-flow poll, and claims read from a JWT.
//!
//! Providers bend the textbook in many small ways; every bend the farm
//! knows is a rule or a fallback here, so none needs an
//! `if provider == …` anywhere else. The rules that classify an error
//! answer are data ([`Rule`]): a provider's own table can be put before
//! [`default_rules`] without changing the code that applies them.

use base64::Engine;
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::Value;
use url::Url;

use super::ratelimit;
use crate::secret::Secret;

crate::named_enum! {
    /// How a token request's body is encoded (`token_request`,
    /// `refresh_request`).
    #[derive(Default)]
    pub enum BodyFormat {
        /// `application/x-www-form-urlencoded`, as RFC 6749 says.
        #[default]
        Form = "form",
        /// A JSON object of strings (the code exchange then carries `state`).
        Json = "json",
    }
}

crate::named_enum! {
    /// How a provider's accounts log in (`login`).
    #[derive(Default)]
    pub enum LoginKind {
        /// Authorization code + PKCE, back on the `redirect_uri`.
        #[default]
        Code = "code",
        /// The device authorization grant (RFC 8628): a user code entered
        /// at the provider's verification page while the farm polls.
        Device = "device",
    }
}

/// A token endpoint's answer, as received.
#[derive(Clone, Copy, Debug)]
pub struct TokenAnswer<'a> {
    pub status: u16,
    /// `(name, value)`; names compared without case.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl TokenAnswer<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    fn is_html(&self) -> bool {
        self.header("content-type")
            .is_some_and(|c| c.to_ascii_lowercase().starts_with("text/html"))
    }
}

/// A token set as the provider sent it.
#[derive(Debug)]
pub struct TokenSet {
    pub access_token: Secret,
    pub token_type: String,
    /// Seconds, when the answer said.
    pub expires_in: Option<u64>,
    pub refresh_token: Option<Secret>,
    pub id_token: Option<Secret>,
}

/// What a token endpoint's answer means.
#[derive(Debug)]
pub enum Verdict {
    Tokens(TokenSet),
    /// The code or refresh token is dead: only a login helps.
    Dead {
        /// The provider's error code (`invalid_grant`, `refresh_token_reused`),
        /// or `HTTP <status>` when it gave none.
        code: String,
        description: Option<String>,
    },
    /// Worth retrying with the same refresh token, not before `retry_at`
    /// when the provider said when (`Retry-After-Ms`, `Retry-After`).
    Transient {
        reason: String,
        /// The provider's error code, when it gave one (the device flow's
        /// `authorization_pending`, `slow_down`, … are read from it).
        code: Option<String>,
        retry_at: Option<DateTime<Utc>>,
    },
}

/// What a matching [`Rule`] makes of an error answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Dead,
    Transient,
}

/// One line of a classification table; every given field must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Inclusive status range; `None`: any status.
    pub status: Option<(u16, u16)>,
    /// The error code: the body's `error` when it is a string, or
    /// `error.code` (`error.type`) when it is an object.
    pub error: Option<String>,
    /// Only an HTML answer (a challenge page), or only a non-HTML one.
    pub html: Option<bool>,
    pub class: Class,
}

impl Rule {
    fn matches(&self, answer: &TokenAnswer, error: Option<&str>) -> bool {
        self.status
            .is_none_or(|(lo, hi)| (lo..=hi).contains(&answer.status))
            && self.error.as_deref().is_none_or(|e| error == Some(e))
            && self.html.is_none_or(|h| h == answer.is_html())
    }
}

/// The farm's rules for the shapes providers are known to answer; a
/// provider's own rules go before them (the first match wins). An error
/// answer no rule matches is transient: a failed refresh never drops a
/// refresh token on a guess.
pub fn default_rules() -> Vec<Rule> {
    let rule = |status: Option<(u16, u16)>, error: Option<&str>, html, class| Rule {
        status,
        error: error.map(str::to_owned),
        html,
        class,
    };
    let mut rules = vec![
        // RFC 6749 §5.2: the grant is invalid, expired, revoked or reused.
        rule(None, Some("invalid_grant"), None, Class::Dead),
    ];
    // OpenAI-style: 401 with `{"error": {"code": …}}` naming why.
    for code in [
        "refresh_token_expired",
        "refresh_token_reused",
        "refresh_token_invalidated",
    ] {
        rules.push(rule(Some((401, 401)), Some(code), None, Class::Dead));
    }
    rules.extend([
        rule(Some((429, 429)), None, None, Class::Transient),
        rule(Some((500, 599)), None, None, Class::Transient),
        // A Cloudflare-style challenge page stands in front of the endpoint.
        rule(Some((403, 403)), None, Some(true), Class::Transient),
    ]);
    rules
}

/// Classifies a token endpoint's answer. `rules` are tried in order; a
/// provider-announced retry time is honoured, but never more than
/// `max_wait` ahead.
pub fn classify(
    answer: &TokenAnswer,
    rules: &[Rule],
    now: DateTime<Utc>,
    max_wait: Duration,
) -> Verdict {
    let json: Option<Value> = serde_json::from_slice(answer.body).ok();
    if (200..300).contains(&answer.status) {
        if let Some(tokens) = json.as_ref().and_then(token_set) {
            return Verdict::Tokens(tokens);
        }
    }
    let (error, description) = json.as_ref().map(error_of).unwrap_or_default();
    let retry_at = || {
        let header = |name: &str| answer.header(name);
        ratelimit::announced_retry(&header, now).map(|t| t.min(now + max_wait))
    };
    let class = rules
        .iter()
        .find(|r| r.matches(answer, error.as_deref()))
        .map(|r| r.class);
    match class {
        Some(Class::Dead) => Verdict::Dead {
            code: error.unwrap_or_else(|| format!("HTTP {}", answer.status)),
            description,
        },
        _ => Verdict::Transient {
            reason: transient_reason(answer, error.as_deref(), description),
            code: error,
            retry_at: retry_at(),
        },
    }
}

fn transient_reason(
    answer: &TokenAnswer,
    error: Option<&str>,
    description: Option<String>,
) -> String {
    let mut reason = format!("HTTP {}", answer.status);
    if (200..300).contains(&answer.status) {
        reason.push_str(" without an access token");
    } else if answer.is_html() {
        reason.push_str(" with an HTML page (a challenge or error page)");
    }
    if let Some(e) = error {
        reason.push(' ');
        reason.push_str(e);
    }
    if let Some(d) = description {
        reason.push_str(": ");
        reason.push_str(&d);
    }
    reason
}

/// A successful body's tokens; `None` without an access token.
fn token_set(body: &Value) -> Option<TokenSet> {
    let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
    let expires_in = match body.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        // Some providers send it as a string.
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    Some(TokenSet {
        access_token: Secret::new(text("access_token")?),
        token_type: text("token_type").unwrap_or_else(|| "Bearer".into()),
        expires_in,
        refresh_token: text("refresh_token").map(Secret::new),
        id_token: text("id_token").map(Secret::new),
    })
}

/// The error code and description of an error body: RFC 6749's
/// `{"error": "…", "error_description": "…"}`, or an object
/// `{"error": {"code"|"type": "…", "message": "…"}}`.
fn error_of(body: &Value) -> (Option<String>, Option<String>) {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    match body.get("error") {
        Some(Value::String(code)) => (Some(code.clone()), text(body.get("error_description"))),
        Some(obj @ Value::Object(_)) => (
            text(obj.get("code")).or_else(|| text(obj.get("type"))),
            text(obj.get("message")),
        ),
        _ => (None, None),
    }
}

/// When a token expires: `expires_in` after `issued_at` when the answer
/// said, else the access token's own `exp` when it is a JWT, else
/// `default_ttl` after `issued_at`.
pub fn expires_at(
    expires_in: Option<u64>,
    access_token: &str,
    issued_at: DateTime<Utc>,
    default_ttl: Duration,
) -> DateTime<Utc> {
    if let Some(secs) = expires_in {
        return issued_at + Duration::seconds(secs.min(MAX_LIFETIME_SECS) as i64);
    }
    jwt_claims(access_token)
        .and_then(|c| c.get("exp").and_then(Value::as_i64))
        .and_then(|exp| Utc.timestamp_opt(exp, 0).single())
        .unwrap_or(issued_at + default_ttl)
}

/// Ten years: a longer lifetime is a mistake, and chrono would overflow on
/// the extreme.
const MAX_LIFETIME_SECS: u64 = 10 * 365 * 86_400;

/// The refresh token to keep after a grant: the new one, or the old one
/// when the answer carried none (providers whose refresh tokens do not
/// rotate may leave it out).
pub fn refresh_token_after(new: Option<Secret>, old: Option<&Secret>) -> Option<Secret> {
    new.or_else(|| old.cloned())
}

/// The claims of a JWT (its middle part), unverified.
///
/// The farm reads identity only from tokens it received itself, over TLS,
/// straight from the provider's token endpoint as the answer to its own
/// grant: their origin is the channel, so no signature is checked (and no
/// provider key needs fetching). Never use this on a token somebody else
/// handed in.
pub fn jwt_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    parts.next()?; // a signature part (possibly empty) must follow
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.is_object().then_some(claims)
}

/// The value at `path` in `claims`: each element is one key, taken whole
/// (keys with dots or slashes, such as `https://api.openai.com/auth`, need
/// no escaping). Strings as they are, numbers and booleans as text.
pub fn claim(claims: &Value, path: &[impl AsRef<str>]) -> Option<String> {
    let value = path
        .iter()
        .try_fold(claims, |v, key| v.as_object()?.get(key.as_ref()))?;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// What the provider sent back to the redirect URI.
#[derive(Debug)]
pub struct Callback {
    pub code: Secret,
    pub state: Secret,
    pub iss: Option<String>,
}

/// What a person pasted to finish a login.
#[derive(Debug)]
pub struct Pasted {
    pub code: Secret,
    /// `None` for a bare code (nothing to check it against; PKCE still
    /// binds it to the pending login's verifier).
    pub state: Option<Secret>,
    pub iss: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CallbackError {
    #[error("the provider refused the login: {0}")]
    Refused(String),
    #[error("the redirect URL has no {0} parameter")]
    Missing(&'static str),
    #[error("not a URL: {0}")]
    NotAUrl(String),
    #[error("the state does not match the pending login's")]
    StateMismatch,
    #[error("no code given")]
    Empty,
    #[error("not a code: it has spaces in it (paste the redirect URL or the code alone)")]
    NotACode,
}

/// Parses the query of a redirect (`?code=&state=&iss=`, or `?error=`).
pub fn parse_callback(url: &Url) -> Result<Callback, CallbackError> {
    let mut code = None;
    let mut state = None;
    let mut iss = None;
    let mut error = None;
    let mut error_description = None;
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "code" => code = Some(Secret::new(v.into_owned())),
            "state" => state = Some(Secret::new(v.into_owned())),
            "iss" => iss = Some(v.into_owned()),
            "error" => error = Some(v.into_owned()),
            "error_description" => error_description = Some(v.into_owned()),
            _ => {}
        }
    }
    if let Some(e) = error {
        return Err(CallbackError::Refused(match error_description {
            Some(d) => format!("{e} ({d})"),
            None => e,
        }));
    }
    Ok(Callback {
        code: code.ok_or(CallbackError::Missing("code"))?,
        state: state.ok_or(CallbackError::Missing("state"))?,
        iss,
    })
}

/// Reads what a person pasted to finish a login: the whole redirect URL,
/// `code#state` (the form some providers' redirect pages show), or a bare
/// code. A state, when there is one, must be the pending login's.
pub fn parse_pasted(input: &str, expected_state: &Secret) -> Result<Pasted, CallbackError> {
    let input = input.trim();
    if input.is_empty() {
        return Err(CallbackError::Empty);
    }
    let pasted = if input.contains("://") {
        let url = Url::parse(input).map_err(|e| CallbackError::NotAUrl(e.to_string()))?;
        let c = parse_callback(&url)?;
        Pasted {
            code: c.code,
            state: Some(c.state),
            iss: c.iss,
        }
    } else {
        let (code, state) = match input.split_once('#') {
            Some((code, state)) => (code, Some(Secret::new(state))),
            None => (input, None),
        };
        if code.is_empty() {
            return Err(CallbackError::Empty);
        }
        if input.contains(char::is_whitespace) {
            return Err(CallbackError::NotACode);
        }
        Pasted {
            code: Secret::new(code),
            state,
            iss: None,
        }
    };
    match &pasted.state {
        Some(state) if !state.ct_eq(expected_state.expose()) => Err(CallbackError::StateMismatch),
        _ => Ok(pasted),
    }
}

/// The device authorization grant's polling (RFC 8628 §3.5), as a state
/// machine: the farm asks [`DevicePoll::next_poll_at`], polls, and feeds
/// the answer to [`DevicePoll::on_answer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicePoll {
    pub interval: Duration,
    pub expires_at: DateTime<Utc>,
    pub next_poll_at: DateTime<Utc>,
}

/// RFC 8628 §3.2: the interval when the provider names none, and what
/// `slow_down` adds to it (§3.5).
pub const DEVICE_DEFAULT_INTERVAL_SECS: i64 = 5;
pub const DEVICE_SLOW_DOWN_SECS: i64 = 5;

/// One poll's answer, as the token endpoint's verdict and error code say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PollAnswer {
    Tokens,
    /// An error answer with this code (`authorization_pending`,
    /// `slow_down`, `access_denied`, `expired_token`, …).
    Error(String),
    /// No answer, or one without an error code: try again.
    Unreadable,
}

impl PollAnswer {
    /// A device-code poll's answer, from the token endpoint's verdict.
    pub fn of(verdict: &Verdict) -> PollAnswer {
        match verdict {
            Verdict::Tokens(_) => PollAnswer::Tokens,
            Verdict::Dead { code, .. } => PollAnswer::Error(code.clone()),
            Verdict::Transient { code: Some(c), .. } => PollAnswer::Error(c.clone()),
            Verdict::Transient { code: None, .. } => PollAnswer::Unreadable,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PollStep {
    /// Poll again at this time.
    WaitUntil(DateTime<Utc>),
    /// The person logged in: the answer carries the tokens.
    Done,
    /// The user code expired before the person entered it.
    Expired,
    /// The person (or the provider) refused.
    Denied(String),
}

impl DevicePoll {
    /// After the device authorization answer (`expires_in`, `interval`).
    pub fn start(now: DateTime<Utc>, expires_in_secs: u64, interval_secs: Option<u64>) -> Self {
        let interval = Duration::seconds(
            interval_secs
                .map(|i| i.clamp(1, 3600) as i64)
                .unwrap_or(DEVICE_DEFAULT_INTERVAL_SECS),
        );
        DevicePoll {
            interval,
            expires_at: now + Duration::seconds(expires_in_secs.min(86_400) as i64),
            next_poll_at: now + interval,
        }
    }

    pub fn on_answer(&mut self, answer: &PollAnswer, now: DateTime<Utc>) -> PollStep {
        match answer {
            PollAnswer::Tokens => return PollStep::Done,
            PollAnswer::Error(code) => match code.as_str() {
                "authorization_pending" => {}
                "slow_down" => self.interval += Duration::seconds(DEVICE_SLOW_DOWN_SECS),
                "expired_token" => return PollStep::Expired,
                "access_denied" | "invalid_grant" => return PollStep::Denied(code.clone()),
                // Anything else (a 5xx, a challenge page) is polled again.
                _ => {}
            },
            PollAnswer::Unreadable => {}
        }
        if now >= self.expires_at {
            return PollStep::Expired;
        }
        self.next_poll_at = now + self.interval;
        PollStep::WaitUntil(self.next_poll_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn verdict(status: u16, h: &[(&str, &str)], body: &str) -> Verdict {
        let h = headers(h);
        let answer = TokenAnswer {
            status,
            headers: &h,
            body: body.as_bytes(),
        };
        classify(&answer, &default_rules(), t0(), Duration::hours(1))
    }

    fn dead_code(v: Verdict) -> String {
        match v {
            Verdict::Dead { code, .. } => code,
            other => panic!("not dead: {other:?}"),
        }
    }

    fn transient_until(v: Verdict) -> Option<DateTime<Utc>> {
        match v {
            Verdict::Transient { retry_at, .. } => retry_at,
            other => panic!("not transient: {other:?}"),
        }
    }

    #[test]
    fn tokens_are_read_from_a_successful_answer() {
        let v = verdict(
            200,
            &[("Content-Type", "application/json")],
            r#"{"access_token":"a","token_type":"bearer","expires_in":"60","refresh_token":"r","id_token":"i"}"#,
        );
        let Verdict::Tokens(t) = v else {
            panic!("{v:?}")
        };
        assert_eq!(
            (
                t.access_token.expose(),
                t.token_type.as_str(),
                t.expires_in,
                t.refresh_token.unwrap().expose(),
                t.id_token.unwrap().expose()
            ),
            ("a", "bearer", Some(60), "r", "i")
        );
        let Verdict::Tokens(t) = verdict(200, &[], r#"{"access_token":"a"}"#) else {
            panic!()
        };
        assert_eq!((t.expires_in, t.refresh_token.is_none()), (None, true));
        // A 200 without an access token is not a success.
        assert_eq!(transient_until(verdict(200, &[], "{}")), None);
    }

    #[test]
    fn dead_answers() {
        assert_eq!(
            dead_code(verdict(400, &[], r#"{"error":"invalid_grant"}"#)),
            "invalid_grant"
        );
        for code in [
            "refresh_token_reused",
            "refresh_token_expired",
            "refresh_token_invalidated",
        ] {
            let body = format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#);
            let Verdict::Dead {
                code: c,
                description,
            } = verdict(401, &[], &body)
            else {
                panic!("{code}")
            };
            assert_eq!((c.as_str(), description.as_deref()), (code, Some("m")));
            // The same code with another status is not the known shape.
            assert!(matches!(
                verdict(400, &[], &body),
                Verdict::Transient { .. }
            ));
        }
        // Another OAuth error is not taken for a dead grant.
        assert!(matches!(
            verdict(401, &[], r#"{"error":"invalid_client"}"#),
            Verdict::Transient { .. }
        ));
    }

    #[test]
    fn rate_limits_and_outages_are_transient_and_honour_retry_after() {
        assert_eq!(
            transient_until(verdict(429, &[("Retry-After", "7")], "")),
            Some(t0() + Duration::seconds(7))
        );
        // Retry-After-Ms first.
        assert_eq!(
            transient_until(verdict(
                429,
                &[("retry-after-ms", "1500"), ("retry-after", "7")],
                ""
            )),
            Some(t0() + Duration::milliseconds(1500))
        );
        // An HTTP date.
        assert_eq!(
            transient_until(verdict(
                503,
                &[("Retry-After", "Fri, 02 Jan 2026 03:05:05 GMT")],
                "<html>"
            )),
            Some(t0() + Duration::seconds(60))
        );
        // Capped.
        assert_eq!(
            transient_until(verdict(429, &[("Retry-After", "86400")], "")),
            Some(t0() + Duration::hours(1))
        );
        assert_eq!(transient_until(verdict(429, &[], "")), None);
        assert_eq!(transient_until(verdict(502, &[], "bad gateway")), None);
    }

    #[test]
    fn a_challenge_page_is_transient() {
        let page = "<!DOCTYPE html><title>Just a moment...</title>";
        let v = verdict(403, &[("content-type", "text/html; charset=UTF-8")], page);
        let Verdict::Transient { reason, .. } = v else {
            panic!("{v:?}")
        };
        assert!(reason.contains("HTML"), "{reason}");
    }

    #[test]
    fn a_providers_own_rule_comes_first() {
        let mut rules = vec![Rule {
            status: Some((400, 400)),
            error: Some("invalid_grant".into()),
            html: None,
            class: Class::Transient,
        }];
        rules.extend(default_rules());
        let h = headers(&[]);
        let answer = TokenAnswer {
            status: 400,
            headers: &h,
            body: br#"{"error":"invalid_grant"}"#,
        };
        assert!(matches!(
            classify(&answer, &rules, t0(), Duration::hours(1)),
            Verdict::Transient { .. }
        ));
    }

    fn jwt(claims: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b(r#"{"alg":"RS256"}"#), b(claims))
    }

    #[test]
    fn lifetime_from_expires_in_then_the_jwt_exp_then_the_default() {
        let day = Duration::days(1);
        let exp = (t0() + Duration::seconds(90)).timestamp();
        let token = jwt(&format!(r#"{{"exp":{exp}}}"#));
        assert_eq!(
            expires_at(Some(30), &token, t0(), day),
            t0() + Duration::seconds(30)
        );
        assert_eq!(
            expires_at(None, &token, t0(), day),
            t0() + Duration::seconds(90)
        );
        assert_eq!(expires_at(None, "opaque", t0(), day), t0() + day);
        assert_eq!(expires_at(None, &jwt("{}"), t0(), day), t0() + day);
        assert_eq!(
            expires_at(Some(u64::MAX), "x", t0(), day),
            t0() + Duration::seconds(MAX_LIFETIME_SECS as i64)
        );
    }

    #[test]
    fn a_refresh_answer_without_a_refresh_token_keeps_the_old_one() {
        let old = Secret::new("old");
        assert_eq!(
            refresh_token_after(None, Some(&old)).unwrap().expose(),
            "old"
        );
        assert_eq!(
            refresh_token_after(Some(Secret::new("new")), Some(&old))
                .unwrap()
                .expose(),
            "new"
        );
        assert!(refresh_token_after(None, None).is_none());
    }

    #[test]
    fn claims_by_path() {
        let token = jwt(
            r#"{"sub":"u1","n":7,"https://api.openai.com/auth":{"chatgpt_account_id":"acc-1"}}"#,
        );
        let claims = jwt_claims(&token).unwrap();
        assert_eq!(
            claim(
                &claims,
                &["https://api.openai.com/auth", "chatgpt_account_id"]
            )
            .as_deref(),
            Some("acc-1")
        );
        assert_eq!(claim(&claims, &["sub"]).as_deref(), Some("u1"));
        assert_eq!(claim(&claims, &["n"]).as_deref(), Some("7"));
        assert_eq!(claim(&claims, &["https://api.openai.com/auth"]), None);
        assert_eq!(claim(&claims, &["missing", "x"]), None);
        assert!(jwt_claims("opaque").is_none());
        assert!(jwt_claims("a.!!!.c").is_none());
        assert!(jwt_claims(&jwt("[1]")).is_none());
    }

    #[test]
    fn pasted_codes() {
        let state = Secret::new("st");
        let url = parse_pasted(" http://127.0.0.1:1/cb?code=c1&state=st ", &state).unwrap();
        assert_eq!(url.code.expose(), "c1");
        let hashed = parse_pasted("c2#st", &state).unwrap();
        assert_eq!(
            (hashed.code.expose(), hashed.state.unwrap().expose()),
            ("c2", "st")
        );
        let bare = parse_pasted("c3", &state).unwrap();
        assert_eq!((bare.code.expose(), bare.state.is_none()), ("c3", true));
        assert_eq!(
            parse_pasted("c2#other", &state).unwrap_err(),
            CallbackError::StateMismatch
        );
        assert_eq!(
            parse_pasted("http://x/cb?code=c&state=other", &state).unwrap_err(),
            CallbackError::StateMismatch
        );
        assert_eq!(
            parse_pasted("http://x/cb?error=access_denied", &state).unwrap_err(),
            CallbackError::Refused("access_denied".into())
        );
        assert_eq!(
            parse_pasted("#st", &state).unwrap_err(),
            CallbackError::Empty
        );
        assert_eq!(
            parse_pasted("  ", &state).unwrap_err(),
            CallbackError::Empty
        );
    }

    #[test]
    fn callback_parsing() {
        let u = Url::parse("http://127.0.0.1:1/callback?code=abc&state=xyz&iss=http%3A%2F%2Fi")
            .unwrap();
        let c = parse_callback(&u).unwrap();
        assert_eq!(
            (c.code.expose(), c.state.expose(), c.iss.as_deref()),
            ("abc", "xyz", Some("http://i"))
        );
        let u = Url::parse("http://x/cb?error=access_denied&state=s").unwrap();
        assert_eq!(
            parse_callback(&u).unwrap_err(),
            CallbackError::Refused("access_denied".into())
        );
        let u = Url::parse("http://x/cb?state=s").unwrap();
        assert_eq!(
            parse_callback(&u).unwrap_err(),
            CallbackError::Missing("code")
        );
    }

    #[test]
    fn device_poll_answers_from_the_token_endpoint() {
        let of = |status, body: &str| PollAnswer::of(&verdict(status, &[], body));
        assert_eq!(
            of(400, r#"{"error":"authorization_pending"}"#),
            PollAnswer::Error("authorization_pending".into())
        );
        assert_eq!(
            of(400, r#"{"error":"slow_down"}"#),
            PollAnswer::Error("slow_down".into())
        );
        assert_eq!(
            of(400, r#"{"error":"invalid_grant"}"#),
            PollAnswer::Error("invalid_grant".into())
        );
        assert_eq!(of(200, r#"{"access_token":"a"}"#), PollAnswer::Tokens);
        assert_eq!(of(502, "<html>"), PollAnswer::Unreadable);
    }

    #[test]
    fn device_polling() {
        let now = t0();
        let mut poll = DevicePoll::start(now, 60, None);
        assert_eq!(poll.next_poll_at, now + Duration::seconds(5));
        let pending = PollAnswer::Error("authorization_pending".into());
        let at = now + Duration::seconds(5);
        assert_eq!(
            poll.on_answer(&pending, at),
            PollStep::WaitUntil(at + Duration::seconds(5))
        );
        let at = at + Duration::seconds(5);
        assert_eq!(
            poll.on_answer(&PollAnswer::Error("slow_down".into()), at),
            PollStep::WaitUntil(at + Duration::seconds(10))
        );
        assert_eq!(poll.interval, Duration::seconds(10));
        let at = at + Duration::seconds(10);
        assert_eq!(
            poll.on_answer(&PollAnswer::Unreadable, at),
            PollStep::WaitUntil(at + Duration::seconds(10))
        );
        assert_eq!(poll.on_answer(&PollAnswer::Tokens, at), PollStep::Done);
        // Pending after the code expired: expired.
        assert_eq!(
            poll.on_answer(&pending, now + Duration::seconds(60)),
            PollStep::Expired
        );
        assert_eq!(
            poll.on_answer(&PollAnswer::Error("expired_token".into()), at),
            PollStep::Expired
        );
        assert_eq!(
            poll.on_answer(&PollAnswer::Error("access_denied".into()), at),
            PollStep::Denied("access_denied".into())
        );
        // The provider's interval, kept within reason.
        assert_eq!(
            DevicePoll::start(now, 60, Some(0)).interval,
            Duration::seconds(1)
        );
        assert_eq!(
            DevicePoll::start(now, 600, Some(2)).next_poll_at,
            now + Duration::seconds(2)
        );
    }
}
