//! "Add accounts by recording a login script": a person logs in once in the
//! account's own profile; their clicks, typing and key presses become a
//! [`LoginScript`], and what they typed into password fields becomes a
//! secret instead of script text.
//!
//! The injected recorder also sees input driven by Playwright, so a test
//! (or a person's remote desktop tooling) can play the person through
//! [`Recorder::page`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use url::Url;

use crate::browser::runner::{first_line, BrowserPool, PersonHold, PoolError, ProfileUse, Session};
use crate::browser::script::{Action, LoginScript, Piece, Step, Template, Var, DEFAULT_TIMEOUT_MS};
use crate::secret::Secret;

/// The recorder script injected into every page.
const RECORDER_JS: &str = include_str!("recorder.js");
/// The function the recorder calls with each event.
const BINDING: &str = "__reloginRecord";

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// `provider` of the resulting script.
    pub provider: String,
    /// Where the recording starts (recorded as `goto = "${authorize_url}"`).
    pub authorize_url: Url,
    /// Recording stops when the browser is sent here.
    pub redirect_uri: Url,
    /// Headless for automation (`--headless`, tests); headed needs a display.
    pub headless: bool,
    /// How long the person has.
    pub timeout: Duration,
}

/// Where a recording starts: the authorize URL asking the provider for its
/// consent page (OpenID Connect `prompt=consent`, added to a `prompt` the
/// URL has, unless that is `none`, which stands alone). A provider that
/// remembers a consent skips its page, so without this a recording would
/// lack the step, and a later login that meets it (the consent forgotten
/// or expired) would fail; recorded, the step is optional like every one
/// after the first, and a relogin (whose authorize URL does not ask)
/// passes over it while the consent is remembered. A provider without
/// `prompt` ignores the parameter (RFC 6749 §3.1).
pub fn showing_consent(authorize_url: &Url) -> Url {
    let pairs: Vec<(String, String)> = authorize_url.query_pairs().into_owned().collect();
    let prompt = pairs.iter().find(|(k, _)| k == "prompt").map(|(_, v)| v);
    let asks = |v: &String, word| v.split(' ').any(|w| w == word);
    if prompt.is_some_and(|v| asks(v, "consent") || asks(v, "none")) {
        return authorize_url.clone();
    }
    let mut url = authorize_url.clone();
    {
        let mut query = url.query_pairs_mut();
        query.clear();
        for (k, v) in &pairs {
            match k.as_str() {
                "prompt" => query.append_pair(k, &format!("{v} consent")),
                _ => query.append_pair(k, v),
            };
        }
        if prompt.is_none() {
            query.append_pair("prompt", "consent");
        }
    }
    url
}

/// A finished recording.
#[derive(Debug, Clone)]
pub struct Recording {
    pub script: LoginScript,
    /// Secrets the script refers to (`password`, `password_2`…), as typed:
    /// store them encrypted; they are never written into the script.
    pub secrets: BTreeMap<String, Secret>,
    /// The redirect that ended the recording (the account is logged in:
    /// the caller may redeem its code).
    pub redirect_url: Url,
    /// A one-time-code field was filled: the script uses `${totp}`, and the
    /// account needs its `totp` seed set before a replay can pass that page.
    pub needs_totp_seed: bool,
}

impl Recording {
    /// The recording of a device login (started at the verification
    /// page): its `goto` is `${verification_uri}`, and what was typed that
    /// is the login's user code is `${user_code}` (a new one every run).
    pub fn for_device_login(mut self, user_code: &str) -> Recording {
        for step in &mut self.script.steps {
            match &mut step.action {
                Action::Goto { url } if url.vars().any(|v| *v == Var::AuthorizeUrl) => {
                    *url = Template::var(Var::VerificationUri)
                }
                Action::Fill { value, .. }
                    if value.pieces() == [Piece::Text(user_code.to_owned())] =>
                {
                    *value = Template::var(Var::UserCode)
                }
                _ => {}
            }
        }
        self
    }

    /// Whether any step acts on the page (more than the `goto`): a script
    /// without one logs in only while a session is live, and must never
    /// replace a working one.
    pub fn acts_on_page(&self) -> bool {
        self.script.steps.len() > 1
    }
}

/// Why a recording without a step acting on the page is not attached.
pub const NOTHING_RECORDED: &str =
    "the recording has no step that acts on the page (the login went straight through): \
     nothing is attached; record again and log in with the form";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Pool(#[from] PoolError),
    #[error("the recording timed out before the login reached the redirect URI")]
    TimedOut,
    #[error("the browser window was closed before the login reached the redirect URI")]
    WindowClosed,
    #[error("could not set up the recorder: {0}")]
    Setup(String),
}

/// One event from the page.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RecordedEvent {
    kind: EventKind,
    selector: String,
    #[serde(default)]
    value: Secret,
    #[serde(default)]
    key: String,
    #[serde(default)]
    password: bool,
    #[serde(default)]
    otp: bool,
    /// The page (origin and path) and form the event happened in: a field
    /// filled again there is a retry.
    #[serde(default)]
    form: String,
    /// Epoch milliseconds in the page, for ordering across pages.
    t: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum EventKind {
    Fill,
    Click,
    Press,
}

pub(crate) type Events = Arc<Mutex<Vec<RecordedEvent>>>;

/// A recording in progress: the browser is open on the authorize URL.
/// Call [`finish`](Self::finish); dropped unfinished, it still closes the
/// browser cleanly, in the background.
pub struct Recorder {
    pool: BrowserPool,
    /// `None` once finished.
    open: Option<(Session, PersonHold)>,
    captured: watch::Receiver<Option<Url>>,
    closed: watch::Receiver<bool>,
    events: Events,
    options: RecordOptions,
}

impl Recorder {
    /// Opens a throwaway profile (no cookies) at the authorize URL with the
    /// recorder injected. `profile_key` is held (relogins are refused) until
    /// [`finish`](Self::finish).
    pub async fn start(
        pool: &BrowserPool,
        profile_key: &str,
        options: RecordOptions,
    ) -> Result<Recorder, RecordError> {
        let hold = pool.hold_for_person(profile_key, ProfileUse::Recorder, options.headless)?;
        // Not the profile itself: its live session would skip the login
        // steps, and the script would record none of them.
        let session = pool.launch_throwaway(options.headless, false).await?;
        let closed = session.closed_by_user().await;
        let events = Events::default();
        let setup = async {
            install_recorder(&session, events.clone()).await?;
            let captured = session.capture_redirect(&options.redirect_uri).await?;
            let start = showing_consent(&options.authorize_url);
            let opened = session.page.goto(start.as_str(), None).await;
            // A live session goes straight to the (blocked) redirect: the
            // navigation fails, and the recording is already complete.
            match opened {
                Err(e) if captured.borrow().is_none() => {
                    Err(RecordError::Setup(first_line(&e.to_string())))
                }
                _ => Ok(captured),
            }
        };
        match setup.await {
            Ok(captured) => Ok(Recorder {
                pool: pool.clone(),
                open: Some((session, hold)),
                captured,
                closed,
                events,
                options,
            }),
            Err(e) => {
                session.close().await;
                Err(e)
            }
        }
    }

    /// The page the person uses (tests play the person through it).
    pub fn page(&self) -> &playwright_rs::Page {
        &self.open.as_ref().expect("open until finish").0.page
    }

    /// Waits for the login to reach the redirect URI, closes the browser
    /// (its throwaway profile goes with it) and returns the script.
    pub async fn finish(mut self) -> Result<Recording, RecordError> {
        let end = self.wait_for_redirect().await;
        // Let events still in flight from the last page land.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some((session, hold)) = self.open.take() {
            session.close().await;
            drop(hold);
        }
        let redirect_url = end?;
        Ok(recording_from(
            &self.options.provider,
            &self.events,
            redirect_url,
        ))
    }

    async fn wait_for_redirect(&mut self) -> Result<Url, RecordError> {
        let mut stopping = self.pool.stopping();
        tokio::select! {
            url = self.captured.wait_for(Option::is_some) => {
                url.ok().and_then(|u| u.clone()).ok_or(RecordError::WindowClosed)
            }
            _ = self.closed.wait_for(|c| *c) => Err(RecordError::WindowClosed),
            _ = stopping.wait_for(|s| *s) => Err(RecordError::Pool(PoolError::ShuttingDown)),
            _ = tokio::time::sleep(self.options.timeout) => Err(RecordError::TimedOut),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let (Some((session, hold)), Ok(runtime)) =
            (self.open.take(), tokio::runtime::Handle::try_current())
        else {
            return; // finished, or no runtime: playwright-rs's own Drop stops the driver
        };
        runtime.spawn(async move {
            session.close().await;
            drop(hold);
        });
    }
}

/// Records `profile_key` until the person reaches the redirect URI.
pub async fn record(
    pool: &BrowserPool,
    profile_key: &str,
    options: RecordOptions,
) -> Result<Recording, RecordError> {
    Recorder::start(pool, profile_key, options)
        .await?
        .finish()
        .await
}

pub(crate) async fn install_recorder(session: &Session, events: Events) -> Result<(), RecordError> {
    let setup_error = |e: playwright_rs::Error| RecordError::Setup(first_line(&e.to_string()));
    session
        .context
        .expose_binding(BINDING, move |args| {
            let event = args
                .first()
                .and_then(|a| a.as_str())
                .and_then(|json| serde_json::from_str::<RecordedEvent>(json).ok());
            if let Some(event) = event {
                events.lock().expect("poisoned").push(event);
            }
            async { serde_json::Value::Null }
        })
        .await
        .map_err(setup_error)?;
    session
        .context
        .add_init_script(RECORDER_JS)
        .await
        .map_err(setup_error)
}

/// The recording of the events so far (taken: a second call sees none).
pub(crate) fn recording_from(provider: &str, events: &Events, redirect_url: Url) -> Recording {
    let events = std::mem::take(&mut *events.lock().expect("poisoned"));
    build_recording(provider, events, redirect_url)
}

/// Events → script and secrets. Pure, so the rules are unit-tested.
fn build_recording(provider: &str, mut events: Vec<RecordedEvent>, redirect_url: Url) -> Recording {
    events.sort_by(|a, b| a.t.total_cmp(&b.t));
    // A click on the page's background has no selector (and no effect a
    // replay needs); as a step it would make the script invalid.
    events.retain(|e| !e.selector.is_empty());
    let events = drop_retries(coalesce_fills(events));
    let mut secrets = SecretNames::default();
    let mut needs_totp_seed = false;
    let mut steps = vec![step(
        Action::Goto {
            url: Template::var(Var::AuthorizeUrl),
        },
        false,
    )];
    for event in events {
        let action = match event.kind {
            EventKind::Fill => {
                let value = if event.password {
                    Template::var(Var::Secret(secrets.name_for(event.value)))
                } else if event.otp {
                    needs_totp_seed = true;
                    Template::var(Var::Totp)
                } else {
                    Template::literal(event.value.expose())
                };
                Action::Fill {
                    selector: event.selector,
                    value,
                }
            }
            EventKind::Click => Action::Click {
                selector: event.selector,
            },
            EventKind::Press => Action::Press {
                selector: event.selector,
                key: event.key,
            },
        };
        // Everything after the goto is on a page a live session may skip
        // (login, second factor, consent): optional.
        steps.push(step(action, true));
    }
    let script = LoginScript {
        provider: provider.to_string(),
        timeout_ms: DEFAULT_TIMEOUT_MS,
        steps,
    };
    Recording {
        script,
        secrets: secrets.values,
        redirect_url,
        needs_totp_seed,
    }
}

fn step(action: Action, optional: bool) -> Step {
    Step {
        action,
        optional,
        timeout_ms: None,
        line: 0,
    }
}

/// Typing fires one event per keystroke: keep the last value of each run of
/// fills into the same field.
fn coalesce_fills(events: Vec<RecordedEvent>) -> Vec<RecordedEvent> {
    let mut out: Vec<RecordedEvent> = Vec::with_capacity(events.len());
    for event in events {
        match out.last_mut() {
            Some(last)
                if last.kind == EventKind::Fill
                    && event.kind == EventKind::Fill
                    && last.selector == event.selector =>
            {
                *last = event;
            }
            _ => out.push(event),
        }
    }
    out
}

/// A field filled again in the same page and form is a retry (a mistyped
/// password, a corrected user name): the earlier attempt, from that field's
/// first fill up to the retry, is dropped, so the script replays only the
/// attempt that led on.
fn drop_retries(events: Vec<RecordedEvent>) -> Vec<RecordedEvent> {
    let mut out: Vec<RecordedEvent> = Vec::with_capacity(events.len());
    for event in events {
        let earlier = (event.kind == EventKind::Fill)
            .then(|| {
                out.iter().position(|e| {
                    e.kind == EventKind::Fill
                        && e.selector == event.selector
                        && e.form == event.form
                })
            })
            .flatten();
        if let Some(at) = earlier {
            out.truncate(at);
        }
        out.push(event);
    }
    out
}

/// Names password values `password`, `password_2`…; the same value typed
/// twice (e.g. a confirmation field) is one secret.
#[derive(Default)]
struct SecretNames {
    values: BTreeMap<String, Secret>,
}

impl SecretNames {
    fn name_for(&mut self, value: Secret) -> String {
        if let Some((name, _)) = self.values.iter().find(|(_, v)| **v == value) {
            return name.clone();
        }
        let name = match self.values.len() {
            0 => "password".to_string(),
            n => format!("password_{}", n + 1),
        };
        self.values.insert(name.clone(), value);
        name
    }
}

/// Where `account record` writes a script: `<provider>-<label slug>.toml`.
/// The label is free text (`../../x`, spaces, emoji); the file name keeps
/// only lowercase ASCII letters, digits and single dashes of it, so it
/// cannot leave the scripts directory.
pub fn script_file_name(provider: &str, label: &str) -> String {
    let slug = |text: &str| {
        let mut out = String::new();
        for c in text.chars() {
            if c.is_ascii_alphanumeric() {
                out.push(c.to_ascii_lowercase());
            } else if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
        }
        let mut slug: String = out.trim_end_matches('-').chars().take(64).collect();
        if slug.is_empty() {
            slug.push_str("account");
        }
        slug
    };
    format!("{}-{}.toml", slug(provider), slug(label))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_asks_the_provider_for_its_consent_page() {
        let shown = |url: &str| showing_consent(&Url::parse(url).unwrap()).to_string();
        assert_eq!(
            shown("https://id.example/auth?client_id=c&state=s%20t"),
            "https://id.example/auth?client_id=c&state=s+t&prompt=consent"
        );
        assert_eq!(
            shown("https://id.example/auth?prompt=login&state=s"),
            "https://id.example/auth?prompt=login+consent&state=s"
        );
        for unchanged in [
            "https://id.example/auth?prompt=consent&state=s",
            "https://id.example/auth?prompt=login%20consent",
            "https://id.example/auth?prompt=none",
        ] {
            assert_eq!(shown(unchanged), unchanged);
        }
    }

    #[test]
    fn script_file_names_stay_in_their_directory() {
        for (label, name) in [
            ("alice", "demo-alice.toml"),
            ("Alice Smith", "demo-alice-smith.toml"),
            ("../../tmp/rf-escape/pwned", "demo-tmp-rf-escape-pwned.toml"),
            ("/etc/passwd", "demo-etc-passwd.toml"),
            ("..", "demo-account.toml"),
            ("ünï 😀", "demo-n.toml"),
            ("😀", "demo-account.toml"),
            ("a\\b\0c", "demo-a-b-c.toml"),
        ] {
            assert_eq!(script_file_name("demo", label), name, "{label:?}");
        }
        let long = script_file_name("demo", &"x".repeat(500));
        assert_eq!(long.len(), "demo-".len() + 64 + ".toml".len());
    }

    fn ev(kind: EventKind, selector: &str, value: &str, t: f64) -> RecordedEvent {
        RecordedEvent {
            kind,
            selector: selector.into(),
            value: Secret::new(value),
            key: if kind == EventKind::Press {
                "Enter".into()
            } else {
                String::new()
            },
            password: false,
            otp: false,
            form: "https://p/login#f".into(),
            t,
        }
    }

    #[test]
    fn a_device_login_recording_goes_to_the_verification_page_and_types_the_code() {
        let events = vec![
            ev(EventKind::Fill, "#user_code", "WDJB-MJHT", 1.0),
            ev(EventKind::Fill, "#username", "alice", 2.0),
            ev(EventKind::Click, "#submit", "", 3.0),
        ];
        let page = Url::parse("http://127.0.0.1:1/device").unwrap();
        let rec = build_recording("gh", events, page).for_device_login("WDJB-MJHT");
        let toml = rec.script.to_toml();
        assert!(toml.contains("goto = \"${verification_uri}\""), "{toml}");
        assert!(toml.contains("value = \"${user_code}\""), "{toml}");
        assert!(!toml.contains("WDJB-MJHT"), "{toml}");
        assert!(toml.contains("value = \"alice\""), "{toml}");
        let parsed = LoginScript::parse(&toml).unwrap();
        assert_eq!(parsed.check_login_kind(true), Ok(()));
    }

    #[test]
    fn events_become_a_script_with_secrets_replaced() {
        let mut pw1 = ev(EventKind::Fill, "#password", "s3cr", 4.0);
        pw1.password = true;
        let mut pw2 = ev(EventKind::Fill, "#password", "s3cret!", 5.0);
        pw2.password = true;
        let mut code = ev(EventKind::Fill, "#code", "123456", 8.0);
        code.otp = true;
        let events = vec![
            ev(EventKind::Click, "#submit", "", 6.0),
            ev(EventKind::Fill, "#username", "a", 1.0),
            ev(EventKind::Fill, "#username", "alice", 2.0),
            pw2,
            pw1,
            code,
            ev(EventKind::Press, "#code", "", 9.0),
            ev(EventKind::Click, "role=button[name=\"Allow\"s]", "", 10.0),
        ];
        let redirect = Url::parse("http://127.0.0.1:1/callback?code=x").unwrap();
        let rec = build_recording("demo", events, redirect);
        assert!(rec.needs_totp_seed);
        assert_eq!(rec.secrets.len(), 1);
        assert_eq!(rec.secrets["password"].expose(), "s3cret!");
        let toml = rec.script.to_toml();
        assert!(
            !toml.contains("s3cret") && !toml.contains("123456"),
            "{toml}"
        );
        let expected = r##"provider = "demo"
timeout_ms = 15000

[[step]]
goto = "${authorize_url}"

[[step]]
fill = "#username"
value = "alice"
optional = true

[[step]]
fill = "#password"
value = "${secret:password}"
optional = true

[[step]]
click = "#submit"
optional = true

[[step]]
fill = "#code"
value = "${totp}"
optional = true

[[step]]
press = "#code"
key = "Enter"
optional = true

[[step]]
click = 'role=button[name="Allow"s]'
optional = true
"##;
        assert_eq!(toml, expected);
        assert_eq!(LoginScript::parse(&toml).unwrap().steps.len(), 7);
    }

    #[test]
    fn a_retried_password_replays_only_the_attempt_that_led_on() {
        let mut wrong = ev(EventKind::Fill, "#password", "typo", 2.0);
        wrong.password = true;
        let mut right = ev(EventKind::Fill, "#password", "s3cret", 4.0);
        right.password = true;
        let mut other_site = ev(EventKind::Fill, "#password", "s3cret", 7.0);
        other_site.password = true;
        other_site.form = "https://other/#f".into();
        let events = vec![
            ev(EventKind::Fill, "#username", "alice", 1.0),
            wrong,
            ev(EventKind::Click, "#submit", "", 3.0),
            right,
            ev(EventKind::Click, "#submit", "", 5.0),
            ev(EventKind::Click, "#allow", "", 6.0),
            other_site,
        ];
        let rec = build_recording("demo", events, Url::parse("http://h/cb").unwrap());
        assert_eq!(rec.secrets.len(), 1, "{:?}", rec.secrets.keys());
        assert_eq!(rec.secrets["password"].expose(), "s3cret");
        let actions: Vec<String> = rec.script.steps[1..]
            .iter()
            .map(|s| s.action.to_string())
            .collect();
        assert_eq!(actions.len(), 5, "{actions:?}");
        assert!(actions[0].contains("#username"), "{actions:?}");
        assert!(actions[1].contains("#password"), "{actions:?}");
        assert!(actions[2].contains("#submit"), "{actions:?}");
    }

    #[test]
    fn a_recording_of_only_the_start_page_acts_on_nothing() {
        let url = Url::parse("http://h/cb").unwrap();
        assert!(!build_recording("demo", vec![], url.clone()).acts_on_page());
        let one = vec![ev(EventKind::Click, "#allow", "", 1.0)];
        assert!(build_recording("demo", one, url).acts_on_page());
    }

    #[test]
    fn distinct_passwords_get_distinct_names() {
        let mut names = SecretNames::default();
        assert_eq!(names.name_for(Secret::new("a")), "password");
        assert_eq!(names.name_for(Secret::new("b")), "password_2");
        assert_eq!(names.name_for(Secret::new("a")), "password");
    }

    #[test]
    fn clicks_on_no_element_are_left_out() {
        let rec = build_recording(
            "demo",
            vec![
                ev(EventKind::Click, "", "", 1.0),
                ev(EventKind::Fill, "#user", "ann", 2.0),
            ],
            Url::parse("http://h/cb").unwrap(),
        );
        assert_eq!(rec.script.steps.len(), 2, "{}", rec.script.to_toml());
        LoginScript::parse(&rec.script.to_toml()).unwrap();
    }

    #[test]
    fn literal_dollar_braces_survive() {
        let rec = build_recording(
            "demo",
            vec![ev(EventKind::Fill, "#note", "cost ${x}", 1.0)],
            Url::parse("http://h/cb").unwrap(),
        );
        let back = LoginScript::parse(&rec.script.to_toml()).unwrap();
        assert_eq!(back.steps[1].action, rec.script.steps[1].action);
    }
}
