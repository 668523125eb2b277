//! The admin page's remote browser sessions: a person drives the account's
//! own profile in the farm's headless browser (see `browser::remote`) to
//! record a login, rescue a stuck one, or look around. A session holds the
//! profile like a relogin does (relogins are refused meanwhile and retried
//! later) and one of the pool's slots; it ends on `DELETE`, when its socket
//! closes, after `browser.session_idle` without input, after
//! `browser.session_max`, at shutdown, or once the login completed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use url::Url;

use super::{Farm, FarmError, Result};
use crate::browser::remote::{Input, RemoteBrowser, RemoteOptions};
use crate::browser::runner::LoginProgress;
use crate::config::Endpoints;
use crate::domain::provider::LoginKind;
use crate::domain::{AccountId, AuthState};
use crate::events::EventKind;

/// Input messages queued for the browser; past this the socket waits
/// (the page's rate is bounded by the socket's own limit first).
const INPUT_QUEUE: usize = 64;
/// Text messages queued for the page (`url`, `done`, `script`, `closed`).
const OUT_QUEUE: usize = 16;
/// How often the page's URL is looked at (a local read, no browser call).
const URL_POLL: std::time::Duration = std::time::Duration::from_millis(500);
/// How long `DELETE` waits for the session's browser to close (a close
/// that takes longer goes on in the background).
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);
/// The viewport when the page does not say.
const DEFAULT_SIZE: (u32, u32) = (1280, 800);

/// What the remote browser is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RemoteMode {
    /// Record a login script: starts at a fresh authorize URL.
    Record,
    /// Finish a login the script could not: starts at a fresh authorize URL.
    Takeover,
    /// Look around: starts at the provider's site.
    View,
}

/// `POST /api/accounts/{id}/browser/session`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteRequest {
    pub mode: RemoteMode,
    /// Viewport width in CSS pixels (200 to 1920; default 1280).
    pub width: Option<u32>,
    /// Viewport height in CSS pixels (200 to 1920; default 800).
    pub height: Option<u32>,
}

/// The answer: connect to `/api/browser/sessions/{session_id}/ws`.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RemoteStarted {
    pub session_id: String,
    /// When the session ends at the latest (`browser.session_max`).
    pub expires_at: DateTime<Utc>,
}

/// A text message to the page (the WebSocket protocol, farm → page).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Outgoing {
    Url {
        url: String,
    },
    Done {
        account_state: String,
        detail: String,
    },
    Script {
        toml: String,
    },
    /// In `takeover` mode, first: where the last scripted relogin stopped.
    /// `screenshot` is the admin route serving its screenshot (fetched
    /// with the admin token), if there is one.
    Failure {
        step: Option<usize>,
        line: Option<usize>,
        detail: String,
        screenshot: Option<String>,
    },
    /// An input the browser could not play (the session goes on).
    Error {
        detail: String,
    },
    Closed {
        reason: String,
    },
}

/// What a socket gets when it attaches to a session.
pub struct Attached {
    pub account: AccountId,
    pub input: mpsc::Sender<Input>,
    pub out: mpsc::Receiver<Outgoing>,
    /// The latest JPEG frame.
    pub frames: watch::Receiver<Option<Bytes>>,
}

#[derive(Default)]
pub(crate) struct RemoteSessions {
    by_id: Mutex<HashMap<String, Arc<Remote>>>,
}

struct Remote {
    account: AccountId,
    /// Taken by the one socket that attaches.
    socket_side: Mutex<Option<(mpsc::Sender<Input>, mpsc::Receiver<Outgoing>)>>,
    frames: watch::Receiver<Option<Bytes>>,
    /// `DELETE` ends the session.
    stop: Notify,
    /// Becomes `true` once the session ended and its browser is closed.
    ended: watch::Receiver<bool>,
}

impl RemoteSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Remote>>> {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Farm {
    /// Opens a remote browser on the account's profile for the admin page.
    pub async fn open_remote_browser(
        self: &Arc<Self>,
        id: AccountId,
        request: RemoteRequest,
    ) -> Result<RemoteStarted> {
        let pool = self.browser.clone().ok_or_else(|| {
            FarmError::Conflict("the browser is disabled ([browser] enabled = false)".into())
        })?;
        let provider_name = self.with_account(id, |a| a.provider.clone())?;
        let provider = self.provider(&provider_name)?.clone();
        let device_flow = provider.config().login == LoginKind::Device;
        let mut redirect_uri = Some(provider.config().redirect_uri.clone());
        let mut device = None;
        let start_url = match request.mode {
            // A device login: its verification page (a takeover's with the
            // code already in it, when the provider gives that page); the
            // farm's poll ends the session.
            RemoteMode::Record | RemoteMode::Takeover if device_flow => {
                let begun = self.begin_device_login(id).await?;
                let start = match request.mode {
                    RemoteMode::Takeover => begun
                        .verification_uri_complete
                        .clone()
                        .unwrap_or_else(|| begun.verification_uri.clone()),
                    _ => begun.verification_uri.clone(),
                };
                redirect_uri = None;
                device = Some(RemoteDevice {
                    progress: begun.progress,
                    user_code: begun.user_code,
                    page: start.clone(),
                });
                start
            }
            // A new pending login (new PKCE and state): its code is the one
            // the farm redeems when the browser reaches the redirect.
            RemoteMode::Record | RemoteMode::Takeover => {
                self.start_browser_login(id).await?.authorize_url
            }
            // The root of the provider's login site: where its authorize
            // URL (or, with no authorize URL, its device endpoint) lives.
            RemoteMode::View => {
                let mut site = match &provider.config().endpoints {
                    Endpoints::Device {
                        device_authorization_url,
                        ..
                    } => device_authorization_url.clone(),
                    Endpoints::Discovery { issuer } if device_flow => issuer.clone(),
                    _ => {
                        provider
                            .authorize()
                            .await
                            .map_err(|e| FarmError::Login(e.to_string()))?
                            .url
                    }
                };
                site.set_path("/");
                site.set_query(None);
                site
            }
        };
        let options = RemoteOptions {
            start_url,
            redirect_uri,
            width: request.width.unwrap_or(DEFAULT_SIZE.0),
            height: request.height.unwrap_or(DEFAULT_SIZE.1),
            record_for: (request.mode == RemoteMode::Record).then_some(provider_name),
        };
        let browser = match pool.open_remote(&id.to_string(), &options).await {
            Ok(browser) => browser,
            Err(e) => {
                if request.mode != RemoteMode::View {
                    self.logins.forget_account(id);
                }
                return Err(FarmError::Conflict(e.to_string()));
            }
        };
        let (frames_tx, frames) = watch::channel(None);
        if let Err(e) = browser.start_screencast(frames_tx).await {
            browser.close().await;
            return Err(FarmError::Conflict(format!(
                "the remote browser cannot stream its page: {e}"
            )));
        }
        let session_id = format!("{:032x}", rand::thread_rng().gen::<u128>());
        let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        if request.mode == RemoteMode::Takeover {
            if let Some(failure) = self.last_failure(id) {
                let _ = out_tx.try_send(failure);
            }
        }
        let (ended_tx, ended) = watch::channel(false);
        let remote = Arc::new(Remote {
            account: id,
            socket_side: Mutex::new(Some((input_tx, out_rx))),
            frames,
            stop: Notify::new(),
            ended,
        });
        self.remote
            .lock()
            .insert(session_id.clone(), remote.clone());
        let max = self.config.browser.session_max;
        let expires_at = self.clock.now() + super::chrono_dur(max);
        tracing::info!(account = id, mode = ?request.mode, "remote browser session opened");
        let farm = self.clone();
        let run = RemoteRun {
            id,
            mode: request.mode,
            session_id: session_id.clone(),
            deadline: Instant::now() + max,
            device,
        };
        tokio::spawn(async move {
            let reason = farm
                .drive_remote(&run, &remote, browser, input_rx, &out_tx)
                .await;
            farm.remote.lock().remove(&run.session_id);
            ended_tx.send_replace(true);
            tracing::info!(account = run.id, %reason, "remote browser session ended");
            let _ = out_tx.send(Outgoing::Closed { reason }).await;
        });
        Ok(RemoteStarted {
            session_id,
            expires_at,
        })
    }

    /// The last failed relogin, for a takeover's page (its text was
    /// scrubbed of secrets when it was recorded).
    fn last_failure(&self, id: AccountId) -> Option<Outgoing> {
        self.with_account(id, |a| {
            let detail = a.last_error.as_ref()?.message.clone();
            Some(Outgoing::Failure {
                step: a.last_failed_step.map(|(step, _)| step),
                line: a.last_failed_step.map(|(_, line)| line),
                detail,
                screenshot: a
                    .last_screenshot
                    .as_ref()
                    .map(|_| format!("/api/accounts/{id}/screenshot")),
            })
        })
        .ok()
        .flatten()
    }

    /// `DELETE /api/accounts/{id}/browser/session`: ends the account's
    /// session and returns once its browser closed cleanly (the profile is
    /// free again: a new session or a relogin may start at once).
    pub async fn close_remote_browser(&self, id: AccountId) -> Result<()> {
        self.with_account(id, |_| ())?;
        let remote = self
            .remote
            .lock()
            .values()
            .find(|r| r.account == id)
            .cloned()
            .ok_or_else(|| FarmError::NotFound {
                what: "remote browser session for account",
                id: id.to_string(),
            })?;
        remote.stop.notify_one();
        let mut ended = remote.ended.clone();
        // The browser's own close is bounded; this only bounds the answer.
        let _ = tokio::time::timeout(CLOSE_WAIT, ended.wait_for(|e| *e)).await;
        Ok(())
    }

    /// Whether a socket may attach to `session_id` now: asked before the
    /// WebSocket upgrade, so an unknown or taken session costs a plain
    /// answer and no socket. [`Farm::attach_remote_browser`] decides again
    /// after the upgrade (two sockets may race past this check).
    pub fn remote_browser_attachable(&self, session_id: &str) -> Result<()> {
        let free = self
            .remote_session(session_id)?
            .socket_side
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if free {
            Ok(())
        } else {
            Err(socket_taken())
        }
    }

    /// The one socket of a session takes its channels; a second is refused.
    pub fn attach_remote_browser(&self, session_id: &str) -> Result<Attached> {
        let remote = self.remote_session(session_id)?;
        let (input, out) = remote
            .socket_side
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(socket_taken)?;
        Ok(Attached {
            account: remote.account,
            input,
            out,
            frames: remote.frames.clone(),
        })
    }

    /// A live session, by its id.
    fn remote_session(&self, session_id: &str) -> Result<Arc<Remote>> {
        self.remote
            .lock()
            .get(session_id)
            .cloned()
            .ok_or_else(session_not_found)
    }

    /// Runs a session until it ends; returns why (for the `closed` message).
    async fn drive_remote(
        self: &Arc<Self>,
        run: &RemoteRun,
        remote: &Remote,
        browser: RemoteBrowser,
        mut input: mpsc::Receiver<Input>,
        out: &mpsc::Sender<Outgoing>,
    ) -> String {
        let idle = self.config.browser.session_idle;
        let mut last_input = Instant::now();
        let mut shown_url = String::new();
        let mut stopping = self.browser.as_ref().map(|p| p.stopping());
        let mut url_poll = tokio::time::interval(URL_POLL);
        let reason = loop {
            tokio::select! {
                message = input.recv() => match message {
                    Some(message) => {
                        last_input = Instant::now();
                        if let Err(detail) = browser.input(&message).await {
                            let _ = out.try_send(Outgoing::Error { detail });
                        }
                    }
                    // The socket closed (or never came and the session was
                    // dropped from the registry).
                    None => break "the page's socket closed".to_string(),
                },
                redirect = browser.redirected() => {
                    let done = self.finish_remote_login(run, &browser, redirect).await;
                    for message in done {
                        let _ = out.send(message).await;
                    }
                    break "the login reached the redirect".to_string();
                }
                end = device_login_end(run.device.as_ref()) => {
                    let ok = end.is_ok();
                    let was = self.with_account(run.id, |a| a.auth).ok();
                    let done = self.after_remote_login(run, &browser, was, end.map(|()| None)).await;
                    for message in done {
                        let _ = out.send(message).await;
                    }
                    break match ok {
                        true => "the device login completed",
                        false => "the device login failed",
                    }.to_string();
                }
                _ = url_poll.tick() => {
                    let url = browser.url();
                    if url != shown_url {
                        shown_url = url.clone();
                        let _ = out.try_send(Outgoing::Url { url: redact_query(&url) });
                    }
                }
                _ = remote.stop.notified() => break "ended by the admin (DELETE)".to_string(),
                _ = tokio::time::sleep_until(last_input + idle) => {
                    break format!("no input for {} (browser.session_idle)", humantime::format_duration(idle));
                }
                _ = tokio::time::sleep_until(run.deadline) => {
                    break "the session reached browser.session_max".to_string();
                }
                _ = async { match stopping.as_mut() {
                    Some(s) => { let _ = s.wait_for(|s| *s).await; }
                    None => std::future::pending().await,
                } } => break "the farm is shutting down".to_string(),
            }
        };
        browser.close().await;
        reason
    }

    /// The browser reached the redirect: redeems its code (once: the
    /// browser's own request was blocked), as a scripted relogin does.
    async fn finish_remote_login(
        &self,
        run: &RemoteRun,
        browser: &RemoteBrowser,
        redirect: Url,
    ) -> Vec<Outgoing> {
        let was = self.with_account(run.id, |a| a.auth).ok();
        let completed = self.complete_login(redirect.as_str(), Some(run.id)).await;
        let completed = completed
            .map(|_| Some(redirect))
            .map_err(|e| format!("the browser reached the redirect, but {e}"));
        self.after_remote_login(run, browser, was, completed).await
    }

    /// The messages for the page once the session's login ended: `done`
    /// (and, recording, the script), after the run is recorded. `completed`
    /// holds the redirect of a code login (`None`: a device login, whose
    /// poll stored the tokens) or why the login failed.
    async fn after_remote_login(
        &self,
        run: &RemoteRun,
        browser: &RemoteBrowser,
        was: Option<AuthState>,
        completed: std::result::Result<Option<Url>, String>,
    ) -> Vec<Outgoing> {
        let id = run.id;
        let mut messages = Vec::new();
        let detail = match completed {
            Ok(redirect) => {
                if let Err(e) = self.browser_login_done(id, None) {
                    tracing::warn!(account = id, error = %e, "browser run not recorded");
                }
                if run.mode == RemoteMode::Takeover && was == Some(AuthState::NeedsHuman) {
                    self.emit(
                        EventKind::HumanTakeoverCompleted,
                        Some(id),
                        "a person finished the login in the admin page's browser",
                    );
                }
                let recording = match (redirect, &run.device) {
                    (Some(redirect), _) => browser.recording(redirect),
                    (None, Some(device)) => browser
                        .recording(device.page.clone())
                        .map(|r| r.for_device_login(&device.user_code)),
                    (None, None) => None,
                };
                if let Some(recording) = recording.as_ref().filter(|r| !r.acts_on_page()) {
                    tracing::info!(
                        account = id,
                        steps = recording.script.steps.len(),
                        "recording not proposed"
                    );
                    messages.push(Outgoing::Error {
                        detail: crate::browser::recorder::NOTHING_RECORDED.into(),
                    });
                } else if let Some(recording) = recording {
                    for (name, value) in &recording.secrets {
                        if let Err(e) = self.set_secret(id, name, value) {
                            tracing::warn!(account = id, error = %e, "recorded secret not stored");
                        }
                    }
                    messages.push(Outgoing::Script {
                        toml: recording.script.to_toml(),
                    });
                }
                "logged in".to_string()
            }
            Err(e) => e,
        };
        let account_state = self
            .account(id)
            .map(|a| a.state.as_str().to_string())
            .unwrap_or_default();
        messages.insert(
            0,
            Outgoing::Done {
                account_state,
                detail,
            },
        );
        messages
    }
}

struct RemoteRun {
    id: AccountId,
    mode: RemoteMode,
    session_id: String,
    deadline: Instant,
    /// A device login's: the session ends when its poll does.
    device: Option<RemoteDevice>,
}

struct RemoteDevice {
    progress: watch::Receiver<LoginProgress>,
    user_code: String,
    /// Where the session started.
    page: Url,
}

/// The end of a session's device login; never, for a code login.
async fn device_login_end(device: Option<&RemoteDevice>) -> std::result::Result<(), String> {
    match device {
        Some(device) => LoginProgress::end_of(device.progress.clone()).await,
        None => std::future::pending().await,
    }
}

/// A page URL for the admin page: without its query and fragment, which
/// may carry a state, a code or a login hint.
fn redact_query(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.query().is_some() || u.fragment().is_some() => {
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// A session id is a bearer of sorts: the answer does not repeat it.
fn session_not_found() -> FarmError {
    FarmError::NotFound {
        what: "remote browser session",
        id: "(given)".into(),
    }
}

fn socket_taken() -> FarmError {
    FarmError::Conflict("the session already has its socket (one per session)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_urls_lose_query_and_fragment() {
        assert_eq!(
            redact_query("http://127.0.0.1:9/auth?state=s&code_challenge=c#x"),
            "http://127.0.0.1:9/auth"
        );
        assert_eq!(redact_query("about:blank"), "about:blank");
    }

    #[test]
    fn messages_to_the_page_are_tagged_by_type() {
        let done = Outgoing::Done {
            account_state: "healthy".into(),
            detail: "logged in".into(),
        };
        assert_eq!(
            serde_json::to_value(&done).unwrap(),
            serde_json::json!({"type": "done", "account_state": "healthy", "detail": "logged in"})
        );
    }
}
