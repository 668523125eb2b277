//! A remote browser for a person on the admin page: the account's own
//! profile, headless in the farm's pool, shown to the page as JPEG frames
//! (CDP `Page.startScreencast`: Chromium sends a frame only when the page
//! changed, so a still page costs nothing) and driven by the page's pointer
//! and keyboard input. Knows nothing of the farm: the farm says where the
//! browser starts and what to do with the redirect.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use playwright_rs::protocol::{CDPSession, MouseButton, MouseOptions};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{watch, OwnedSemaphorePermit};
use url::Url;

use crate::browser::recorder::{self, Events, Recording};
use crate::browser::runner::{
    answer_cdp_event, first_line, BrowserPool, NavigationPolicy, PersonHold, PoolError, ProfileUse,
    Session,
};

/// Smallest and largest viewport side the page may ask for (CSS pixels):
/// bounds the frames' size, and so their cost.
pub const VIEWPORT_MIN: u32 = 200;
pub const VIEWPORT_MAX: u32 = 1920;
/// JPEG quality of the frames: legible text at a fraction of PNG's bytes.
const FRAME_QUALITY: u32 = 60;
/// Longest text one `type` message may carry.
pub const MAX_TYPED: usize = 1024;

/// Where a remote browser starts and what it watches for.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    pub start_url: Url,
    /// The provider's redirect URI: the first navigation to it is captured
    /// (and blocked, so its code is redeemed once, by the farm). `None` for
    /// a device login, which the farm's poll sees end.
    pub redirect_uri: Option<Url>,
    pub width: u32,
    pub height: u32,
    /// Record the person's input as a login script for this provider.
    pub record_for: Option<String>,
}

/// One message from the page (the WebSocket protocol, page → farm).
/// Coordinates are CSS pixels of the frame.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Input {
    Click {
        x: f64,
        y: f64,
        #[serde(default)]
        button: Option<Button>,
    },
    Move {
        x: f64,
        y: f64,
    },
    Down {
        x: f64,
        y: f64,
    },
    Up {
        x: f64,
        y: f64,
    },
    Scroll {
        dx: f64,
        dy: f64,
    },
    Type {
        text: String,
    },
    Key {
        key: String,
    },
    Navigate {
        url: String,
    },
    Back,
    Reload,
    Resize {
        width: u32,
        height: u32,
    },
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Button {
    Left,
    Right,
    Middle,
}

impl std::fmt::Debug for RemoteBrowser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemoteBrowser")
    }
}

/// An open remote browser. Close it with [`close`](Self::close) (the
/// profile's cookies reach disk then).
pub struct RemoteBrowser {
    session: Session,
    _hold: PersonHold,
    _slot: OwnedSemaphorePermit,
    screencast: CDPSession,
    captured: watch::Receiver<Option<Url>>,
    policy: NavigationPolicy,
    recording: Option<(String, Events)>,
}

impl BrowserPool {
    /// Opens the profile for a person on the admin page: takes the profile
    /// (never waits: a relogin or another person holding it is a refusal
    /// naming them) and one of the pool's `max_concurrent` slots, launches
    /// headless Chromium on it with the same navigation rule as a login
    /// script, and goes to `start_url`.
    pub async fn open_remote(
        &self,
        profile_key: &str,
        options: &RemoteOptions,
    ) -> Result<RemoteBrowser, PoolError> {
        let hold = self.hold_for_person(profile_key, ProfileUse::AdminPage, true)?;
        let slot = self.try_slot()?;
        // A recording starts without the profile's session (which would
        // skip the login steps it must capture).
        let session = match options.record_for {
            Some(_) => self.launch_throwaway(true, true).await?,
            None => self.launch_shared(profile_key, true).await?,
        };
        match RemoteBrowser::set_up(session, options, &self.config().allowed_hosts).await {
            Ok((session, screencast, captured, policy, recording)) => Ok(RemoteBrowser {
                session,
                _hold: hold,
                _slot: slot,
                screencast,
                captured,
                policy,
                recording,
            }),
            Err((session, e)) => {
                session.close().await;
                Err(e)
            }
        }
    }
}

type SetUp = (
    Session,
    CDPSession,
    watch::Receiver<Option<Url>>,
    NavigationPolicy,
    Option<(String, Events)>,
);

impl RemoteBrowser {
    async fn set_up(
        session: Session,
        options: &RemoteOptions,
        allowed_hosts: &[String],
    ) -> Result<SetUp, (Session, PoolError)> {
        let policy = NavigationPolicy::new(
            allowed_hosts,
            [&options.start_url]
                .into_iter()
                .chain(&options.redirect_uri),
        );
        let steps = async {
            let recording = match &options.record_for {
                Some(provider) => {
                    let events = Events::default();
                    recorder::install_recorder(&session, events.clone())
                        .await
                        .map_err(|e| PoolError::Launch(e.to_string()))?;
                    Some((provider.clone(), events))
                }
                None => None,
            };
            session.restrict_navigation(policy.clone()).await?;
            let captured = match &options.redirect_uri {
                Some(uri) => session.capture_redirect(uri).await?,
                // Never captured: the farm ends the session.
                None => watch::channel(None).1,
            };
            let pw = |e: playwright_rs::Error| PoolError::Launch(first_line(&e.to_string()));
            session
                .page
                .set_viewport_size(viewport(options.width, options.height))
                .await
                .map_err(pw)?;
            let screencast = session
                .context
                .new_cdp_session(&session.page)
                .await
                .map_err(pw)?;
            // A live session may go straight to the (blocked) redirect: the
            // navigation then fails, and the login is already done.
            // A recording meets the consent page a remembered consent skips.
            let start = match options.record_for {
                Some(_) => recorder::showing_consent(&options.start_url),
                None => options.start_url.clone(),
            };
            if let Err(e) = session.page.goto(start.as_str(), None).await {
                tracing::info!(error = %first_line(&e.to_string()), "remote browser: start page did not load");
            }
            Ok::<_, PoolError>((screencast, captured, recording))
        };
        match steps.await {
            Ok((screencast, captured, recording)) => {
                Ok((session, screencast, captured, policy, recording))
            }
            Err(e) => Err((session, e)),
        }
    }

    /// Streams the page as JPEG frames into `frames` (the latest one wins:
    /// a slow reader skips frames instead of queueing them).
    pub async fn start_screencast(
        &self,
        frames: watch::Sender<Option<Bytes>>,
    ) -> Result<(), String> {
        let frames = Arc::new(frames);
        let first = frames.clone();
        let acker = self.screencast.clone();
        self.screencast
            .on("Page.screencastFrame", move |event: Value| {
                let frame = event["data"]
                    .as_str()
                    .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok());
                if let Some(jpeg) = frame {
                    frames.send_replace(Some(Bytes::from(jpeg)));
                }
                let acker = acker.clone();
                let id = event["sessionId"].clone();
                async move {
                    let ack = json!({ "sessionId": id });
                    answer_cdp_event(&acker, "Page.screencastFrameAck", ack).await
                }
            });
        self.screencast
            .send(
                "Page.startScreencast",
                Some(json!({
                    "format": "jpeg",
                    "quality": FRAME_QUALITY,
                    "maxWidth": VIEWPORT_MAX,
                    "maxHeight": VIEWPORT_MAX,
                })),
            )
            .await
            .map_err(|e| first_line(&e.to_string()))?;
        // A page that finished painting before the screencast started sends
        // no frame until it changes again (headless Chromium): the person
        // would look at nothing. The first frame is a screenshot of it. A
        // page still loading cannot be captured, but its painting sends
        // frames: a failed capture is no failure of the session.
        let shot = self
            .screencast
            .send(
                "Page.captureScreenshot",
                Some(json!({ "format": "jpeg", "quality": FRAME_QUALITY })),
            )
            .await;
        // Playwright's `send` answers `{"result": <the CDP result>}`.
        let jpeg = match &shot {
            Ok(shot) => shot["result"]["data"]
                .as_str()
                .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok()),
            Err(e) => {
                tracing::debug!(error = %first_line(&e.to_string()), "no first frame by screenshot");
                None
            }
        };
        if let Some(jpeg) = jpeg {
            first.send_if_modified(|frame| {
                // A screencast frame that came first is as new.
                frame
                    .is_none()
                    .then(|| *frame = Some(Bytes::from(jpeg)))
                    .is_some()
            });
        }
        Ok(())
    }

    /// The page's URL now (a page refused by the navigation rule shows as
    /// Chromium's error page, never the refused URL's content).
    pub fn url(&self) -> String {
        self.session.page.url()
    }

    /// Resolves with the redirect once the browser was sent to the redirect URI.
    pub async fn redirected(&self) -> Url {
        let mut captured = self.captured.clone();
        let url = match captured.wait_for(Option::is_some).await {
            Ok(url) => url.clone(),
            // The capture's sender lives as long as the context's handler.
            Err(_) => None,
        };
        match url {
            Some(url) => url,
            None => std::future::pending().await,
        }
    }

    /// Plays one input message on the page. The error is a sentence for
    /// the page (it names no typed text).
    pub async fn input(&self, input: &Input) -> Result<(), String> {
        let page = &self.session.page;
        let mouse = page.mouse();
        let keyboard = page.keyboard();
        let result = match input {
            Input::Click { x, y, button } => {
                let options = MouseOptions::builder()
                    .button(match button.unwrap_or(Button::Left) {
                        Button::Left => MouseButton::Left,
                        Button::Right => MouseButton::Right,
                        Button::Middle => MouseButton::Middle,
                    })
                    .build();
                mouse.click(*x, *y, options).await
            }
            Input::Move { x, y } => mouse.move_to(*x, *y, None).await,
            Input::Down { x, y } => match mouse.move_to(*x, *y, None).await {
                Ok(()) => mouse.down(None).await,
                Err(e) => Err(e),
            },
            Input::Up { x, y } => match mouse.move_to(*x, *y, None).await {
                Ok(()) => mouse.up(None).await,
                Err(e) => Err(e),
            },
            Input::Scroll { dx, dy } => mouse.wheel(*dx, *dy).await,
            Input::Type { text } => {
                if text.chars().count() > MAX_TYPED {
                    return Err(format!(
                        "a type message holds at most {MAX_TYPED} characters"
                    ));
                }
                keyboard.insert_text(text).await
            }
            Input::Key { key } => keyboard.press(key, None).await,
            Input::Navigate { url } => {
                if let Err(refusal) = self.policy.check_page(url) {
                    return Err(refusal.to_string());
                }
                page.goto(url, None).await.map(drop)
            }
            Input::Back => page.go_back(None).await.map(drop),
            Input::Reload => page.reload(None).await.map(drop),
            Input::Resize { width, height } => {
                page.set_viewport_size(viewport(*width, *height)).await
            }
        };
        result.map_err(|e| first_line(&e.to_string()))
    }

    /// In record mode: the script the person's input made, with what they
    /// typed into password fields as secrets.
    pub fn recording(&self, redirect_url: Url) -> Option<Recording> {
        let (provider, events) = self.recording.as_ref()?;
        Some(recorder::recording_from(provider, events, redirect_url))
    }

    /// Stops the screencast and closes the browser cleanly (its cookies
    /// reach disk), then frees the profile and the slot.
    pub async fn close(self) {
        let _ = self.screencast.send("Page.stopScreencast", None).await;
        self.session.close().await;
    }
}

fn viewport(width: u32, height: u32) -> playwright_rs::Viewport {
    playwright_rs::Viewport {
        width: width.clamp(VIEWPORT_MIN, VIEWPORT_MAX),
        height: height.clamp(VIEWPORT_MIN, VIEWPORT_MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_messages_parse_as_the_protocol_spells_them() {
        let parse = |s: &str| serde_json::from_str::<Input>(s);
        assert_eq!(
            parse(r#"{"type":"click","x":10.5,"y":3}"#).unwrap(),
            Input::Click {
                x: 10.5,
                y: 3.0,
                button: None
            }
        );
        assert_eq!(
            parse(r#"{"type":"click","x":1,"y":2,"button":"right"}"#).unwrap(),
            Input::Click {
                x: 1.0,
                y: 2.0,
                button: Some(Button::Right)
            }
        );
        assert_eq!(parse(r#"{"type":"back"}"#).unwrap(), Input::Back);
        assert_eq!(
            parse(r#"{"type":"key","key":"Enter"}"#).unwrap(),
            Input::Key {
                key: "Enter".into()
            }
        );
        for bad in [
            r#"{"type":"auth","token":"x"}"#,
            r#"{"type":"click","x":1}"#,
            r#"{"type":"click","x":1,"y":2,"z":3}"#,
            r#"{"x":1,"y":2}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_viewport_is_bounded() {
        let v = viewport(10, 99_999);
        assert_eq!((v.width, v.height), (VIEWPORT_MIN, VIEWPORT_MAX));
    }
}
