//! The admin page's remote browser over a WebSocket
//! (`GET /api/browser/sessions/{session_id}/ws`). The admin token is never
//! in a URL: the route is public to the router, and the socket's first
//! message must be `{"type":"auth","token":…}` with the admin token, or the
//! socket is closed with 4401. An unknown session, or one that has its
//! socket, is refused before the upgrade (404, 409). Then JPEG frames
//! (binary) and the farm's text messages go out, the page's input messages
//! come in, within the bounds below; one socket per session.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::time::Instant;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::ws::{Message, WebSocket, Ws};
use warp::Reply;

use super::auth::Anyone;
use super::error::{render, ApiError};
use crate::browser::remote::Input;
use crate::farm::{Farm, FarmError, Outgoing, Principal};

/// Largest message the page may send (a `type` message's text is bounded
/// again by the browser side).
pub const MAX_MESSAGE: usize = 8 * 1024;
/// The auth message must arrive this soon after the upgrade.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Input messages one socket may send per second; more closes it (4429).
/// The admin page sends pointer moves at most every 40 ms.
pub const MAX_INPUTS_PER_SEC: u32 = 100;

/// Close codes (4000-4999 are the application's).
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
pub const CLOSE_NOT_FOUND: u16 = 4404;
pub const CLOSE_TAKEN: u16 = 4409;
pub const CLOSE_RATE: u16 = 4429;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum AuthMessage {
    Auth { token: String },
}

/// The route's handler: an unknown session is a 404 and one that has its
/// socket a 409, before any upgrade (a socket is only made for a session
/// waiting for one); a request without a WebSocket upgrade is a 426.
pub async fn socket(session_id: String, farm: Arc<Farm>, ws: Option<Ws>, _: Anyone) -> Response {
    if let Err(e) = farm.remote_browser_attachable(&session_id) {
        return render::<Response>(Err(e.into()));
    }
    let Some(ws) = ws else {
        return render::<Response>(Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this is a WebSocket: connect with an Upgrade: websocket request",
        )));
    };
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| serve(socket, farm, session_id))
        .into_response()
}

async fn serve(socket: WebSocket, farm: Arc<Farm>, session_id: String) {
    let (mut tx, mut rx) = socket.split();
    let close = |code: u16, reason: &str| Message::close_with(code, reason.to_string());
    if !authenticated(&farm, &mut rx).await {
        let _ = tx
            .send(close(
                CLOSE_UNAUTHORIZED,
                "the first message must be {\"type\":\"auth\",\"token\":\"<admin token>\"}",
            ))
            .await;
        return;
    }
    let mut attached = match farm.attach_remote_browser(&session_id) {
        Ok(attached) => attached,
        Err(e) => {
            let code = match e {
                FarmError::NotFound { .. } => CLOSE_NOT_FOUND,
                _ => CLOSE_TAKEN,
            };
            let _ = tx.send(close(code, &e.to_string())).await;
            return;
        }
    };
    let mut window = (Instant::now(), 0u32);
    let mut frames_open = true;
    loop {
        tokio::select! {
            incoming = rx.next() => {
                let message = match incoming {
                    Some(Ok(m)) if m.is_close() => break,
                    Some(Ok(m)) => m,
                    Some(Err(_)) | None => break,
                };
                if message.is_ping() || message.is_pong() {
                    continue;
                }
                if window.0.elapsed() >= Duration::from_secs(1) {
                    window = (Instant::now(), 0);
                }
                window.1 += 1;
                if window.1 > MAX_INPUTS_PER_SEC {
                    let reason = format!("more than {MAX_INPUTS_PER_SEC} input messages in a second");
                    let _ = tx.send(close(CLOSE_RATE, &reason)).await;
                    break;
                }
                let parsed = message
                    .to_str()
                    .ok()
                    .and_then(|text| serde_json::from_str::<Input>(text).ok());
                match parsed {
                    Some(input) => {
                        if attached.input.send(input).await.is_err() {
                            break;
                        }
                    }
                    // Not echoed: it may hold typed text.
                    None => {
                        let error = Outgoing::Error {
                            detail: "not an input message of the protocol (see the README)".into(),
                        };
                        if tx.send(text(&error)).await.is_err() {
                            break;
                        }
                    }
                }
            }
            out = attached.out.recv() => match out {
                Some(Outgoing::Closed { reason }) => {
                    let _ = tx.send(text(&Outgoing::Closed { reason })).await;
                    let _ = tx.send(Message::close_with(1000u16, "session ended")).await;
                    break;
                }
                Some(message) => {
                    if tx.send(text(&message)).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            changed = attached.frames.changed(), if frames_open => match changed {
                Ok(()) => {
                    let frame = attached.frames.borrow_and_update().clone();
                    if let Some(jpeg) = frame {
                        if tx.send(Message::binary(jpeg)).await.is_err() {
                            break;
                        }
                    }
                }
                Err(_) => frames_open = false,
            },
        }
    }
    // Dropping `attached.input` tells the session its socket is gone.
    tracing::debug!(account = attached.account, "remote browser socket closed");
}

/// Whether the first message is the auth message with the admin token.
async fn authenticated(farm: &Farm, rx: &mut futures_util::stream::SplitStream<WebSocket>) -> bool {
    let first = match tokio::time::timeout(AUTH_TIMEOUT, rx.next()).await {
        Ok(Some(Ok(message))) => message,
        _ => return false,
    };
    let Ok(AuthMessage::Auth { token }) = first
        .to_str()
        .map_err(drop)
        .and_then(|t| serde_json::from_str(t).map_err(drop))
    else {
        return false;
    };
    farm.authenticate(&token) == Some(Principal::Admin)
}

fn text(message: &Outgoing) -> Message {
    Message::text(serde_json::to_string(message).expect("serializable"))
}
