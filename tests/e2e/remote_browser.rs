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

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) fn open_session(bed: &Bed, id: i64, body: Value) -> Value {
    let resp = bed
        .admin()
        .post(&format!("/api/accounts/{id}/browser/session"), body);
    let doc = bed.admin().get("/api/openapi.json").ok();
    let problems = validate_answer(&doc, "POST", "/api/accounts/{id}/browser/session", &resp);
    assert!(problems.is_empty(), "{problems:?}");
    resp.expect(201)
}

pub(crate) async fn connect(bed: &Bed, session_id: &str) -> Socket {
    let url = format!(
        "ws://127.0.0.1:{}/api/browser/sessions/{session_id}/ws",
        bed.port()
    );
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

pub(crate) async fn send_json(socket: &mut Socket, message: Value) {
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
pub(crate) async fn until_text(socket: &mut Socket, kind: &str, within: Duration) -> Value {
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

/// Reads messages until none came for `quiet` (no new frame: the page is
/// still, its autofocus applied) or `done` came, giving up after `within`;
/// returns the text messages read meanwhile.
async fn until_still(socket: &mut Socket, quiet: Duration, within: Duration) -> Vec<Value> {
    let end = tokio::time::Instant::now() + within;
    let mut texts = Vec::new();
    while tokio::time::Instant::now() < end {
        match tokio::time::timeout(quiet, socket.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Text(text)))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                // What follows `done` (`script`, `closed`) is the caller's.
                let done = message["type"] == "done";
                texts.push(message);
                if done {
                    break;
                }
            }
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("the socket ended while the page loaded: {other:?}"),
        }
    }
    texts
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

/// Logs `user` in on the login page shown (whose address is `url`) with
/// input messages only: a click on the page (blurs the autofocused field),
/// Tab to the username, type, Tab, the password, Enter; Enter again on the
/// consent page if one comes (its Allow button has the focus). Returns the
/// `done` message.
async fn log_in_by_messages(socket: &mut Socket, url: &Value, user: &str) -> Value {
    // As a person would: once the page has stopped changing. Input sent while
    // it still loads can land before its autofocus moves the focus (the Tabs
    // below then count from the wrong field; an Enter meant for the consent
    // page's focused Allow button is lost).
    until_still(socket, Duration::from_millis(700), secs(10)).await;
    send_json(socket, json!({"type": "move", "x": 5, "y": 5})).await;
    send_json(socket, json!({"type": "click", "x": 5, "y": 5})).await;
    send_json(socket, json!({"type": "scroll", "dx": 0, "dy": 10})).await;
    send_json(socket, json!({"type": "key", "key": "Tab"})).await;
    send_json(socket, json!({"type": "type", "text": user})).await;
    send_json(socket, json!({"type": "key", "key": "Tab"})).await;
    let password = format!("{user}-password");
    send_json(socket, json!({"type": "type", "text": password})).await;
    send_json(socket, json!({"type": "key", "key": "Enter"})).await;
    // A consent the provider remembers goes straight to the redirect.
    let mut allowed = false;
    loop {
        let Message::Text(text) = next(socket, secs(20)).await else {
            continue;
        };
        let seen: Value = serde_json::from_str(&text).unwrap();
        if seen["type"] == "done" {
            return seen;
        }
        if seen["type"] == "url" && seen["url"] != url["url"] && !allowed {
            allowed = true;
            let read = until_still(socket, Duration::from_millis(700), secs(10)).await;
            if let Some(done) = read.into_iter().find(|m| m["type"] == "done") {
                return done;
            }
            send_json(socket, json!({"type": "key", "key": "Enter"})).await;
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

pub(crate) async fn auth(bed: &Bed, socket: &mut Socket) {
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
fn a_person_takes_over_a_stuck_login_with_input_messages_only() {
    let bed = browser_bed("10m");
    let user = "remy";
    let id = stuck_account(&bed, user);
    // The screenshot a takeover's failure message points to.
    let png = bed.admin().get(&format!("/api/accounts/{id}/screenshot"));
    assert_eq!(
        (png.status, png.header("content-type")),
        (200, Some("image/png"))
    );
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
        // A frame of the login page, at the asked size, and its address
        // (in either order).
        let (mut frame, mut url, mut failure) = (None, None, None);
        while frame.is_none() || url.is_none() {
            match next(&mut socket, secs(15)).await {
                Message::Binary(jpeg) => frame = Some(jpeg),
                Message::Text(text) => {
                    let message: Value = serde_json::from_str(&text).unwrap();
                    if message["type"] == "failure" {
                        failure = Some(message.clone());
                    }
                    let shown = message["url"].as_str().unwrap_or_default();
                    if message["type"] == "url" && shown.contains("/interaction/") {
                        url = Some(message);
                    }
                }
                _ => {}
            }
        }
        let (frame, url) = (frame.unwrap(), url.unwrap());
        // Beside the live view: where the script stopped, and what it saw.
        let failure = failure.expect("a takeover starts with the failure");
        assert!(failure["step"].as_u64().unwrap() >= 1, "{failure}");
        assert!(failure["line"].as_u64().unwrap() >= 1, "{failure}");
        assert!(!failure["detail"].as_str().unwrap().is_empty(), "{failure}");
        assert!(
            !failure.to_string().contains("not-the-password"),
            "{failure}"
        );
        assert_eq!(
            failure["screenshot"],
            format!("/api/accounts/{id}/screenshot")
        );
        assert_eq!(jpeg_size(&frame), (800, 600));
        assert!(
            url["url"].as_str().unwrap().contains("/interaction/"),
            "{url}"
        );
        assert!(
            !url["url"].as_str().unwrap().contains('?'),
            "no query shown: {url}"
        );
        // A second socket on the session is refused.
        let (status, body) = refused_upgrade(&bed, &session_id).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (409, Some("conflict")),
            "{body}"
        );

        let done = log_in_by_messages(&mut socket, &url, user).await;
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
    // Frames acknowledged, and the redirect's request answered, while the
    // page closes are no error: no warning with the driver's stack trace.
    assert!(!log.contains("CDPSession event handler error"), "{log}");
}

#[test]
fn the_socket_wants_the_admin_token_first_and_a_session_ends_on_delete_or_idle() {
    let bed = browser_bed("3s");
    let id = bed.add_account("sam", 0);
    let started = open_session(&bed, id, json!({"mode": "view"}));
    let session_id = started["session_id"].as_str().unwrap().to_string();
    let (_, client_key) = bed.new_client("c");
    // A plain GET is told to upgrade.
    bed.admin()
        .get(&format!("/api/browser/sessions/{session_id}/ws"))
        .expect_error(426, "upgrade_required");
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
        // No socket is made for a session that is not waiting for one.
        let (status, body) = refused_upgrade(&bed, "feedface").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("not_found")),
            "{body}"
        );
    });
    // Refused sockets took nothing: the right one attaches; input keeps
    // the session alive past the idle limit; DELETE ends it.
    let mut socket = rt.block_on(async {
        let mut socket = connect(&bed, &session_id).await;
        auth(&bed, &mut socket).await;
        first_frame(&mut socket).await;
        let (status, body) = refused_upgrade(&bed, &session_id).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (409, Some("conflict")),
            "{body}"
        );
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
    // An ended session is gone: no socket, not even a 426.
    bed.admin()
        .get(&format!("/api/browser/sessions/{session_id}/ws"))
        .expect_error(404, "not_found");
    assert!(!bed.farm_log().contains(&bed.admin_token));
}

/// Reads until the first frame: the socket is attached to its session.
async fn first_frame(socket: &mut Socket) {
    while !next(socket, secs(30)).await.is_binary() {}
}

/// The HTTP answer to a WebSocket upgrade the farm refuses: status, body.
async fn refused_upgrade(bed: &Bed, session_id: &str) -> (u16, Value) {
    let url = format!(
        "ws://127.0.0.1:{}/api/browser/sessions/{session_id}/ws",
        bed.port()
    );
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("the farm upgraded a socket for {session_id}"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            let body = serde_json::from_slice(body)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("refused without an HTTP answer: {e}"),
    }
}

/// A connection to the farm from `source`, a loopback address of this host.
async fn tcp_from(bed: &Bed, source: [u8; 4]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind((std::net::Ipv4Addr::from(source), 0).into())
        .unwrap();
    socket
        .connect(([127, 0, 0, 1], bed.port()).into())
        .await
        .unwrap()
}

/// Whether a new connection from `source` is served (`/healthz` answers)
/// rather than closed at once.
async fn served_from(bed: &Bed, source: [u8; 4]) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tcp_from(bed, source).await;
    let _ = tcp
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: farm\r\nConnection: close\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(secs(10), tcp.read_to_end(&mut answer)).await;
    answer.starts_with(b"HTTP/1.1 200")
}

/// A connection from `source` the farm keeps open (sending nothing). The
/// farm gives a closed connection's place back a moment after closing it
/// (when its task ends), so one opened right after [`served_from`] can
/// still be closed at once as over the per-IP cap: then it is opened again.
async fn held_from(bed: &Bed, source: [u8; 4]) -> TcpStream {
    let until = tokio::time::Instant::now() + secs(10);
    loop {
        let tcp = tcp_from(bed, source).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        match tcp.try_read(&mut [0u8; 1]) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return tcp,
            _ => assert!(
                tokio::time::Instant::now() < until,
                "the farm kept closing a connection from {source:?}"
            ),
        }
    }
}

/// An upgraded socket keeps its place under the connection caps until it
/// closes: sockets cannot be stacked past `server.max_connections_per_ip`
/// (nor `server.max_connections`).
#[test]
fn a_remote_browser_socket_counts_under_the_connection_caps() {
    let settings = Settings::default().with_server("max_connections_per_ip = 2");
    let bed = Bed::start(settings.with_browser(BrowserSettings {
        retry_initial: "1h",
        retry_max: "6h",
        session_idle: "10m",
        ..BrowserSettings::default()
    }));
    let id = bed.add_account("sid", 0);
    let started = open_session(&bed, id, json!({"mode": "view"}));
    let session_id = started["session_id"].as_str().unwrap().to_string();
    let host = [127, 0, 0, 23];
    runtime().block_on(async {
        let url = format!(
            "ws://127.0.0.1:{}/api/browser/sessions/{session_id}/ws",
            bed.port()
        );
        let tcp = tcp_from(&bed, host).await;
        let (mut socket, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
        auth(&bed, &mut socket).await;
        first_frame(&mut socket).await;
        assert_eq!(refused_upgrade(&bed, &session_id).await.0, 409);
        // The socket and one connection fill the host's two places.
        assert!(
            served_from(&bed, host).await,
            "one place is left for the host"
        );
        let idle = held_from(&bed, host).await;
        wait_async("a third connection from the host to be refused", || async {
            !served_from(&bed, host).await
        })
        .await;
        drop(idle);
        socket.close(None).await.unwrap();
        while let Some(Ok(_)) = socket.next().await {}
        wait_async("the socket's place to be given back", || async {
            served_from(&bed, host).await
        })
        .await;
    });
    assert!(bed.metric("relogin_farm_connections_closed_total{reason=\"per_ip_limit\"}") >= 1.0);
}

/// Polls `ready` until it holds (panics after 10 s).
async fn wait_async<F, Fut>(what: &str, ready: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + secs(10);
    while !ready().await {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn recording_over_the_socket_proposes_a_script_that_proves_itself_in_a_fresh_profile() {
    let bed = browser_bed("10m");
    let user = "rita";
    let id = bed.add_account(user, 0);
    let password = format!("{user}-password");
    // First the profile gets a live session (a person logs in on it)...
    let started = open_session(&bed, id, json!({"mode": "takeover"}));
    let session_id = started["session_id"].as_str().unwrap().to_string();
    runtime().block_on(async {
        let mut socket = connect(&bed, &session_id).await;
        auth(&bed, &mut socket).await;
        let url = until_text(&mut socket, "url", secs(15)).await;
        let done = log_in_by_messages(&mut socket, &url, user).await;
        assert_eq!(done["account_state"], "healthy", "{done}");
        // Sent once the browser closed and the profile is free.
        until_text(&mut socket, "closed", secs(20)).await;
    });
    // ...which a recording does not use: it meets the login form and
    // captures every step.
    let started = open_session(&bed, id, json!({"mode": "record"}));
    let session_id = started["session_id"].as_str().unwrap().to_string();
    let (done, script) = runtime().block_on(async {
        let mut socket = connect(&bed, &session_id).await;
        auth(&bed, &mut socket).await;
        let url = until_text(&mut socket, "url", secs(15)).await;
        assert!(
            url["url"].as_str().unwrap().contains("/interaction/"),
            "the login form, not the redirect: {url}"
        );
        let done = log_in_by_messages(&mut socket, &url, user).await;
        let script = until_text(&mut socket, "script", secs(5)).await;
        until_text(&mut socket, "closed", secs(20)).await;
        (done, script)
    });
    assert_eq!(done["account_state"], "healthy", "{done}");
    let toml = script["toml"].as_str().unwrap();
    assert!(toml.contains("${secret:password}"), "{toml}");
    // The provider remembered the consent given in the takeover, yet the
    // recording met its page: the step is in the script.
    assert!(toml.contains("\"#allow\""), "{toml}");
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
    // The proof: a relogin in a throwaway profile runs the login steps
    // although the account's profile holds a live session.
    let path = format!("/api/accounts/{id}/script/prove");
    let proof = bed.admin().post(&path, json!({}));
    let doc = bed.admin().get("/api/openapi.json").ok();
    let problems = validate_answer(&doc, "POST", "/api/accounts/{id}/script/prove", &proof);
    assert!(problems.is_empty(), "{problems:?}");
    let proof = proof.expect(200);
    assert_eq!(proof["state"], "healthy", "{proof}");
    let lines = proof["relogin"]["lines_run"].as_array().unwrap();
    let password_line = toml
        .lines()
        .position(|l| l.contains("${secret:password}"))
        .unwrap()
        + 1;
    assert!(
        lines
            .iter()
            .any(|l| l.as_u64().unwrap().abs_diff(password_line as u64) <= 2),
        "the password step ran (line {password_line}): {proof}"
    );
    no_chromium_left(&bed);
    let log = bed.farm_log();
    assert!(!log.contains(&password), "typed text is in the log");
}
