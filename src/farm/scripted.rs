//! A scripted token endpoint and a farm around it, for unit tests of the
//! refresh protocol and the scheduler on a paused tokio clock.
//!
//! The endpoint answers from a queue (then a default), counts the grants
//! it was sent and the most in flight at once, remembers the refresh
//! tokens presented, and can take (paused, so free) time to answer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;

use super::Farm;
use crate::clock::{Clock, TestClock};
use crate::config::ProviderConfig;
use crate::domain::{AccountId, Tokens};
use crate::oauth::{AuthorizeRequest, EndpointFuture, Grant, OAuthError, TokenEndpoint};
use crate::secret::Secret;

/// One scripted answer to a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// New tokens (`at-N`, `rt-N` for the N-th grant) living this long.
    Tokens(Duration),
    /// `invalid_grant`: the refresh token is dead.
    InvalidGrant,
    /// Another code the provider uses for a dead refresh token.
    Dead(&'static str),
    /// A network failure: worth retrying.
    Transient,
    /// The grant went out, the answer was cut off: the refresh token sent
    /// may be spent.
    Cut,
    /// The provider asks to come back after this long (a 429 with
    /// `Retry-After`).
    RetryAfter(Duration),
    /// New tokens without a refresh token: the old one stays.
    TokensWithoutRefreshToken(Duration),
    /// A JWT access token whose `exp` is this far ahead, and no `expires_in`.
    JwtWithoutExpiresIn(Duration),
}

pub(crate) struct ScriptedEndpoint {
    config: ProviderConfig,
    clock: Arc<TestClock>,
    script: Mutex<VecDeque<Answer>>,
    /// The answer once the script is used up.
    otherwise: Mutex<Answer>,
    delay: Mutex<Duration>,
    grants: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    presented: Mutex<Vec<String>>,
}

/// The lifetime of the tokens a [`ScriptedEndpoint`] issues by default.
pub(crate) const TOKEN_LIFE: Duration = Duration::from_secs(3600);

impl ScriptedEndpoint {
    fn new(config: ProviderConfig, clock: Arc<TestClock>) -> Self {
        ScriptedEndpoint {
            config,
            clock,
            script: Mutex::default(),
            otherwise: Mutex::new(Answer::Tokens(TOKEN_LIFE)),
            delay: Mutex::default(),
            grants: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            presented: Mutex::default(),
        }
    }

    /// Queues answers for the next grants.
    pub(crate) fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.script.lock().unwrap().extend(answers);
    }

    /// The answer once the queue is empty.
    pub(crate) fn otherwise(&self, answer: Answer) {
        *self.otherwise.lock().unwrap() = answer;
    }

    /// How long each grant takes to be answered (tokio time).
    pub(crate) fn delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    /// Refresh grants and code exchanges sent so far.
    pub(crate) fn grants(&self) -> usize {
        self.grants.load(Ordering::SeqCst)
    }

    pub(crate) fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// The refresh tokens presented, in order.
    pub(crate) fn presented(&self) -> Vec<String> {
        self.presented.lock().unwrap().clone()
    }

    async fn answer(&self) -> Result<Grant, OAuthError> {
        let n = self.grants.fetch_add(1, Ordering::SeqCst) + 1;
        let now_in_flight = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight
            .fetch_max(now_in_flight, Ordering::SeqCst);
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let answer = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(*self.otherwise.lock().unwrap());
        let tokens = |expires_in: Option<Duration>, access_token: String, rotate: bool| {
            Ok(Grant {
                access_token: Secret::new(access_token),
                token_type: "Bearer".into(),
                expires_in: expires_in.map(|d| d.as_secs()),
                refresh_token: rotate.then(|| Secret::new(format!("rt-{n}"))),
                id_token: None,
            })
        };
        match answer {
            Answer::Tokens(life) => tokens(Some(life), format!("at-{n}"), true),
            Answer::TokensWithoutRefreshToken(life) => tokens(Some(life), format!("at-{n}"), false),
            Answer::JwtWithoutExpiresIn(life) => {
                let exp = self.clock.now().timestamp() + life.as_secs() as i64;
                let b64 = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
                let jwt = format!(
                    "{}.{}.",
                    b64(r#"{"alg":"none"}"#.into()),
                    b64(format!(r#"{{"exp":{exp},"n":{n}}}"#))
                );
                tokens(None, jwt, true)
            }
            Answer::InvalidGrant => Err(OAuthError::Dead {
                code: "invalid_grant".into(),
                description: Some("scripted".into()),
            }),
            Answer::Dead(code) => Err(OAuthError::Dead {
                code: code.into(),
                description: None,
            }),
            Answer::Transient => Err(OAuthError::Transport("scripted outage".into())),
            Answer::Cut => Err(OAuthError::AnswerLost("scripted cut".into())),
            Answer::RetryAfter(wait) => Err(OAuthError::Unavailable {
                reason: "HTTP 429".into(),
                retry_at: Some(self.clock.now() + super::chrono_dur(wait)),
            }),
        }
    }
}

impl TokenEndpoint for ScriptedEndpoint {
    fn config(&self) -> &ProviderConfig {
        &self.config
    }

    fn authorize(&self) -> EndpointFuture<'_, AuthorizeRequest> {
        Box::pin(async {
            Err(OAuthError::Config {
                provider: self.config.name.clone(),
                reason: "the scripted endpoint has no authorize URL".into(),
            })
        })
    }

    fn exchange_code<'a>(
        &'a self,
        _: &'a Secret,
        _: &'a Secret,
        _: &'a Secret,
    ) -> EndpointFuture<'a, Grant> {
        Box::pin(self.answer())
    }

    fn device_authorize(&self) -> EndpointFuture<'_, crate::oauth::DeviceStart> {
        Box::pin(async {
            Err(OAuthError::Config {
                provider: self.config.name.clone(),
                reason: "the scripted endpoint has no device flow".into(),
            })
        })
    }

    fn poll_device<'a>(
        &'a self,
        _: &'a Secret,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = (crate::domain::provider::PollAnswer, Option<Grant>)>
                + Send
                + 'a,
        >,
    > {
        Box::pin(async { (crate::domain::provider::PollAnswer::Unreadable, None) })
    }

    fn refresh<'a>(&'a self, refresh_token: &'a Secret) -> EndpointFuture<'a, Grant> {
        self.presented
            .lock()
            .unwrap()
            .push(refresh_token.expose().to_owned());
        Box::pin(self.answer())
    }

    fn userinfo<'a>(&'a self, _: &'a Secret) -> EndpointFuture<'a, serde_json::Value> {
        Box::pin(async {
            Err(OAuthError::Config {
                provider: self.config.name.clone(),
                reason: "the scripted endpoint has no userinfo endpoint".into(),
            })
        })
    }
}

/// A directory for a scripted farm's database: in memory (`/dev/shm`)
/// where the system has one, so the store's fsyncs (`synchronous = FULL`)
/// do not turn hours of paused time into seconds of real time. The store
/// is the real one either way.
pub(crate) fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary directory")
}

/// The one provider of a scripted farm.
pub(crate) const PROVIDER: &str =
    "[[provider]]\nname = \"demo\"\nissuer = \"http://127.0.0.1:9\"\n\
     client_id = \"c\"\nredirect_uri = \"http://127.0.0.1:9/callback\"\n";

/// A farm in `dir` on a [`TestClock`] whose provider `demo` is a
/// [`ScriptedEndpoint`]; `extra_toml` comes after the provider. Call from a
/// runtime with paused time.
pub(crate) fn scripted_farm(
    dir: &std::path::Path,
    extra_toml: &str,
) -> (Arc<Farm>, Arc<TestClock>, Arc<ScriptedEndpoint>) {
    scripted_farm_with(dir, false, extra_toml)
}

/// [`scripted_farm`] with the browser enabled or not (it launches nothing
/// until a relogin runs).
pub(crate) fn scripted_farm_with(
    dir: &std::path::Path,
    browser: bool,
    extra_toml: &str,
) -> (Arc<Farm>, Arc<TestClock>, Arc<ScriptedEndpoint>) {
    let clock = TestClock::new();
    let endpoint = OnceLock::new();
    let farm = super::test_farm_with(
        dir,
        browser,
        &format!("{PROVIDER}{extra_toml}"),
        clock.clone(),
        |p| {
            let e = endpoint
                .get_or_init(|| Arc::new(ScriptedEndpoint::new(p.clone(), clock.clone())))
                .clone();
            e as Arc<dyn TokenEndpoint>
        },
    );
    let endpoint = endpoint.get().expect("the provider is configured").clone();
    (farm, clock, endpoint)
}

/// Adds an account of `demo` logged in now with tokens living `life`
/// (refresh token `rt-0`), on disk and in memory. Returns its id and
/// generation.
pub(crate) fn logged_in(farm: &Farm, label: &str, life: Duration) -> (AccountId, i64) {
    let id = farm.add_account("demo", label, 0).unwrap().id;
    let now = farm.clock.now();
    let tokens = Tokens {
        access_token: Secret::new("at-0"),
        token_type: "Bearer".into(),
        expires_at: now + super::chrono_dur(life),
        issued_at: now,
        refresh_token: Some(Secret::new("rt-0")),
    };
    let generation = farm.store.save_tokens(id, &tokens, now).unwrap().unwrap();
    farm.with_account(id, |a| a.install_tokens(tokens, generation, now))
        .unwrap();
    (id, generation)
}
