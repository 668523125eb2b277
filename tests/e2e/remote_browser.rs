//! The admin page's remote browser, through the real binary, the real OIDC
//! provider and the farm's own headless Chromium: a WebSocket client
//! authenticates with its first message, reads JPEG frames, and logs an
//! account in by sending input messages only; the socket's refusals; the
//! profile lock against relogins and second sessions; the idle timeout.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::browser_engine::support::chromium_pids_under;
use crate::support::bed::BrowserSettings;
use crate::support::schema::validate_answer;
use crate::support::{json, secs, wait_for, Bed, Settings, Value, PROVIDER};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const HOLDER: &str = "a person (admin page)";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn open_session(bed: &Bed, id: i64, body: Value) -> Value {
    let resp = bed
        .admin()
        .post(&format!("/api/accounts/{id}/browser/session"), body);
    let doc = bed.admin().get("/api/openapi.json").ok();
    let problems = validate_answer(&doc, "POST", "/api/accounts/{id}/browser/session", &resp);
    assert!(problems.is_empty(), "{problems:?}");
    resp.expect(201)
}

async fn connect(bed: &Bed, session_id: &str) -> Socket {
    let url = format!(
        "ws://127.0.0.1:{}/api/browser/sessions/{session_id}/ws",
        bed.port()
    );
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn send_json(socket: &mut Socket, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .unwrap();
}

/// The next message of the socket (panics after `within`).
async fn next(socket: &mut Socket, within: Duration) -> Message {
    tokio::time::timeout(within, socket.next())
        .await
        .expect("a message in time")
        .expect("the socket is open")
        .expect("a valid message")
}

/// Reads until a text message of `kind`; returns it.
async fn until_text(socket: &mut Socket, kind: &str, within: Duration) -> Value {
    let end = tokio::time::Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        if let Message::Text(text) = next(socket, left).await {
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["type"] == kind {
                return value;
            }
        }
    }
}

/// The close code the socket ends with.
async fn close_code(socket: &mut Socket) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(secs(10), socket.next()).await.ok()? {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

/// Width and height from a JPEG's start-of-frame marker.
fn jpeg_size(jpeg: &[u8]) -> (u16, u16) {
    assert_eq!(&jpeg[..2], [0xFF, 0xD8], "a JPEG starts with SOI");
    let mut i = 2;
    while i + 9 < jpeg.len() {
        assert_eq!(jpeg[i], 0xFF, "marker at {i}");
        let marker = jpeg[i + 1];
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        if matches!(marker, 0xC0..=0xC3) {
            let h = u16::from_be_bytes([jpeg[i + 5], jpeg[i + 6]]);
            let w = u16::from_be_bytes([jpeg[i + 7], jpeg[i + 8]]);
            return (w, h);
        }
        i += 2 + len;
    }
    panic!("no SOF marker")
}

async fn auth(bed: &Bed, socket: &mut Socket) {
    send_json(socket, json!({"type": "auth", "token": bed.admin_token})).await;
}

/// An account whose script fails (a wrong password): `needs_human`.
fn stuck_account(bed: &Bed, user: &str) -> i64 {
    let id = bed.add_account(user, 0);
    let body = json!({"value": "not-the-password"})
        .to_string()
        .into_bytes();
    bed.admin()
        .send(
            Method::PUT,
            &format!("/api/accounts/{id}/secrets/password"),
            Some(body),
        )
        .expect(204);
    let script = format!(
        "provider = \"{PROVIDER}\"\ntimeout_ms = 3000\n[[step]]\ngoto = \"${{authorize_url}}\"\n\
         [[step]]\nfill = \"#username\"\nvalue = \"{user}\"\n[[step]]\nfill = \"#password\"\n\
         value = \"${{secret:password}}\"\n[[step]]\nclick = \"#submit\"\n[[step]]\nclick = \"#allow\"\n"
    );
    bed.admin()
        .send(
            Method::PUT,
            &format!("/api/accounts/{id}/script"),
            Some(script.into_bytes()),
        )
        .ok();
    bed.wait_state(id, "needs_human", secs(40));
    id
}

/// Every session's Chromium has exited (their browsers were closed).
fn no_chromium_left(bed: &Bed) {
    wait_for("no Chromium left", secs(20), || {
        let left = chromium_pids_under(&bed.layout.profiles_dir());
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
}

fn browser_bed(session_idle: &'static str) -> Bed {
    let settings = Settings {
        log_level: "debug",
        rust_log: Some("debug"),
        ..Settings::default()
    };
    Bed::start(settings.with_browser(BrowserSettings {
        retry_initial: "1h",
        retry_max: "6h",
        session_idle,
        ..BrowserSettings::default()
    }))
}

#[test]
#[ignore = "known bug, open: after the merges no screencast frame reaches a takeover session opened right after a failed relogin (record and view sessions stream); run with --ignored"]
fn a_person_takes_over_a_stuck_login_with_input_messages_only() {
    let bed = browser_bed("10m");
    let user = "remy";
    let id = stuck_account(&bed, user);
    let started = open_session(
        &bed,
        id,
        json!({"mode": "takeover", "width": 800, "height": 600}),
    );
    let session_id = started["session_id"].as_str().unwrap().to_string();

    // The profile is the person's now: a second session and a relogin are
    // refused, naming the holder.
    let second = bed.admin().post(
        &format!("/api/accounts/{id}/browser/session"),
        json!({"mode": "view"}),
    );
    assert!(second.expect_error(409, "conflict")["detail"]
        .as_str()
        .unwrap()
        .contains(HOLDER));
    let relogin = bed
        .admin()
        .post(&format!("/api/accounts/{id}/relogin"), json!({}));
    assert!(
        relogin.expect_error(409, "conflict")["detail"]
            .as_str()
            .unwrap()
            .contains(HOLDER),
        "{}",
        relogin.text
    );
    assert_eq!(
        bed.account(id)["state"],
        "needs_human",
        "a refusal is no failure"
    );

    runtime().block_on(async {
        let mut socket = connect(&bed, &session_id).await;
        auth(&bed, &mut socket).await;
        // A frame of the login page, at the asked size.
        let frame = loop {
            if let Message::Binary(jpeg) = next(&mut socket, secs(15)).await {
                break jpeg;
            }
        };
        assert_eq!(jpeg_size(&frame), (800, 600));
        let url = until_text(&mut socket, "url", secs(10)).await;
        assert!(
            url["url"].as_str().unwrap().contains("/interaction/"),
            "{url}"
        );
        assert!(
            !url["url"].as_str().unwrap().contains('?'),
            "no query shown: {url}"
        );
        // A second socket on the session is refused.
        let mut other = connect(&bed, &session_id).await;
        auth(&bed, &mut other).await;
        assert_eq!(close_code(&mut other).await, Some(CloseCode::from(4409)));

        // Click on the page (blurs the autofocused field), then Tab to the
        // first field: the username.
        send_json(&mut socket, json!({"type": "move", "x": 5, "y": 5})).await;
        send_json(&mut socket, json!({"type": "click", "x": 5, "y": 5})).await;
        send_json(&mut socket, json!({"type": "scroll", "dx": 0, "dy": 10})).await;
        send_json(&mut socket, json!({"type": "key", "key": "Tab"})).await;
        send_json(&mut socket, json!({"type": "type", "text": user})).await;
        send_json(&mut socket, json!({"type": "key", "key": "Tab"})).await;
        send_json(
            &mut socket,
            json!({"type": "type", "text": format!("{user}-password")}),
        )
        .await;
        send_json(&mut socket, json!({"type": "key", "key": "Enter"})).await;
        // The consent page (its Allow button has the focus).
        let before = url["url"].clone();
        loop {
            let seen = until_text(&mut socket, "url", secs(15)).await;
            if seen["url"] != before {
                break;
            }
        }
        send_json(&mut socket, json!({"type": "key", "key": "Enter"})).await;
        let done = until_text(&mut socket, "done", secs(20)).await;
        assert_eq!(done["account_state"], "healthy", "{done}");
        let closed = until_text(&mut socket, "closed", secs(20)).await;
        assert!(
            closed["reason"].as_str().unwrap().contains("redirect"),
            "{closed}"
        );
    });

    assert_eq!(bed.account(id)["state"], "healthy");
    let kinds: Vec<String> = bed
        .events_since(0)
        .iter()
        .filter(|e| e["account_id"] == id)
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.iter().any(|k| k == "human_takeover_completed"),
        "{kinds:?}"
    );
    no_chromium_left(&bed);
    // The profile is free again: a relogin runs (the live session goes
    // straight through).
    bed.admin()
        .post(&format!("/api/accounts/{id}/relogin"), json!({}))
        .ok();
    let log = bed.farm_log();
    assert!(
        !log.contains(&bed.admin_token),
        "the admin token is in the log"
    );
    assert!(
        !log.contains(&format!("{user}-password")),
        "typed text is in the log"
    );
}

#[test]
fn the_socket_wants_the_admin_token_first_and_a_session_ends_on_delete_or_idle() {
    let bed = browser_bed("3s");
    let id = bed.add_account("sam", 0);
    let started = open_session(&bed, id, json!({"mode": "view"}));
    let session_id = started["session_id"].as_str().unwrap().to_string();
    let (_, client_key) = bed.new_client("c");
    let rt = runtime();
    rt.block_on(async {
        for first in [
            json!({"type": "click", "x": 1, "y": 1}),
            json!({"type": "auth", "token": "adm-wrong"}),
            json!({"type": "auth", "token": client_key}),
            json!({"type": "auth"}),
        ] {
            let mut socket = connect(&bed, &session_id).await;
            send_json(&mut socket, first.clone()).await;
            assert_eq!(
                close_code(&mut socket).await,
                Some(CloseCode::from(4401)),
                "{first}"
            );
        }
        let mut unknown = connect(&bed, "feedface").await;
        auth(&bed, &mut unknown).await;
        assert_eq!(close_code(&mut unknown).await, Some(CloseCode::from(4404)));
    });
    // Refused sockets took nothing: the right one attaches; input keeps
    // the session alive past the idle limit; DELETE ends it.
    let mut socket = rt.block_on(async {
        let mut socket = connect(&bed, &session_id).await;
        auth(&bed, &mut socket).await;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(900)).await;
            send_json(&mut socket, json!({"type": "move", "x": 10, "y": 10})).await;
        }
        socket
    });
    bed.admin()
        .delete(&format!("/api/accounts/{id}/browser/session"))
        .expect(204);
    rt.block_on(async {
        let closed = until_text(&mut socket, "closed", secs(20)).await;
        assert!(
            closed["reason"].as_str().unwrap().contains("DELETE"),
            "{closed}"
        );
        assert_eq!(close_code(&mut socket).await, Some(CloseCode::Normal));
    });
    bed.admin()
        .delete(&format!("/api/accounts/{id}/browser/session"))
        .expect_error(404, "not_found");

    // Without input, a session ends after browser.session_idle.
    let started = open_session(&bed, id, json!({"mode": "view"}));
    rt.block_on(async {
        let mut socket = connect(&bed, started["session_id"].as_str().unwrap()).await;
        auth(&bed, &mut socket).await;
        let closed = until_text(&mut socket, "closed", secs(20)).await;
        assert!(
            closed["reason"]
                .as_str()
                .unwrap()
                .contains("browser.session_idle"),
            "{closed}"
        );
    });

    // Too many input messages in a second close the socket.
    let started = open_session(&bed, id, json!({"mode": "view"}));
    rt.block_on(async {
        let mut socket = connect(&bed, started["session_id"].as_str().unwrap()).await;
        auth(&bed, &mut socket).await;
        for _ in 0..150 {
            if socket
                .send(Message::text(
                    json!({"type": "move", "x": 1, "y": 1}).to_string(),
                ))
                .await
                .is_err()
            {
                break;
            }
        }
        assert_eq!(close_code(&mut socket).await, Some(CloseCode::from(4429)));
    });
    no_chromium_left(&bed);
    // A plain GET is told to upgrade.
    bed.admin()
        .get(&format!("/api/browser/sessions/{session_id}/ws"))
        .expect_error(426, "upgrade_required");
    assert!(!bed.farm_log().contains(&bed.admin_token));
}

#[test]
fn recording_over_the_socket_proposes_a_script_with_the_password_as_a_secret() {
    let bed = browser_bed("10m");
    let user = "rita";
    let id = bed.add_account(user, 0);
    let started = open_session(&bed, id, json!({"mode": "record"}));
    let session_id = started["session_id"].as_str().unwrap().to_string();
    let password = format!("{user}-password");
    let (done, script) = runtime().block_on(async {
        let mut socket = connect(&bed, &session_id).await;
        auth(&bed, &mut socket).await;
        let url = until_text(&mut socket, "url", secs(15)).await;
        send_json(&mut socket, json!({"type": "click", "x": 5, "y": 5})).await;
        send_json(&mut socket, json!({"type": "key", "key": "Tab"})).await;
        send_json(&mut socket, json!({"type": "type", "text": user})).await;
        send_json(&mut socket, json!({"type": "key", "key": "Tab"})).await;
        send_json(&mut socket, json!({"type": "type", "text": password})).await;
        send_json(&mut socket, json!({"type": "key", "key": "Enter"})).await;
        loop {
            let seen = until_text(&mut socket, "url", secs(15)).await;
            if seen["url"] != url["url"] {
                break;
            }
        }
        send_json(&mut socket, json!({"type": "key", "key": "Enter"})).await;
        let done = until_text(&mut socket, "done", secs(20)).await;
        let script = until_text(&mut socket, "script", secs(5)).await;
        (done, script)
    });
    assert_eq!(done["account_state"], "healthy", "{done}");
    let toml = script["toml"].as_str().unwrap();
    assert!(toml.contains("${secret:password}"), "{toml}");
    assert!(toml.contains(user), "{toml}");
    assert!(
        !toml.contains(&password),
        "the password is in the script: {toml}"
    );
    // The secret is stored (write-only), and the script saves.
    let secrets = bed.admin().get(&format!("/api/accounts/{id}/secrets")).ok();
    assert_eq!(secrets[0]["name"], "password", "{secrets}");
    bed.admin()
        .send(
            Method::PUT,
            &format!("/api/accounts/{id}/script"),
            Some(toml.as_bytes().to_vec()),
        )
        .ok();
    no_chromium_left(&bed);
    assert!(
        !bed.farm_log().contains(&password),
        "typed text is in the log"
    );
}
