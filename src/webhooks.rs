//! Webhooks: every event a webhook subscribes to is POSTed to it as JSON,
//! signed with HMAC-SHA256, retried with exponential backoff, and never
//! allowed to block the farm.
//!
//! Per webhook, one task moves events from the bus into a bounded queue
//! (dropping — and counting — what does not fit) and another delivers the
//! queue in order. A delivery that exhausts its attempts is given up,
//! counted in the webhook's status (shown on the admin page), and announced
//! as a `webhook_failed` event to the *other* webhooks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;

use crate::config::{WebhookConfig, WebhookFormat};
use crate::events::{Event, EventBus, EventKind};
use crate::shutdown::{wait_shutdown, Shutdown};
use crate::store::crypto::hex;

/// Events waiting for one webhook at most; beyond that they are dropped.
const QUEUE: usize = 1000;
/// First retry delay; doubles per attempt.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(300);

pub const SIGNATURE_HEADER: &str = "x-relogin-farm-signature";

/// A webhook's health; the API answers with `http::types::Webhook`.
#[derive(Clone, Debug, Default)]
pub struct WebhookStatus {
    pub index: usize,
    /// Scheme and host only: chat services put tokens in the path and query.
    pub target: String,
    pub events: Vec<String>,
    pub delivered: u64,
    pub failed_attempts: u64,
    pub given_up: u64,
    pub dropped: u64,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

pub struct Webhook {
    config: WebhookConfig,
    status: Mutex<WebhookStatus>,
}

impl Webhook {
    pub fn new(index: usize, config: WebhookConfig) -> Self {
        let u = &config.url;
        let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
        let target = format!("{}://{}{port}/…", u.scheme(), u.host_str().unwrap_or(""));
        let status = WebhookStatus {
            index,
            target,
            events: config.events.clone(),
            ..Default::default()
        };
        Webhook {
            config,
            status: Mutex::new(status),
        }
    }

    pub fn status(&self) -> WebhookStatus {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WebhookStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wants(&self, ev: &Event) -> bool {
        if ev.kind == EventKind::WebhookFailed
            && ev
                .detail
                .starts_with(&format!("webhook {} ", self.lock().index))
        {
            return false; // never report a webhook's failure to itself
        }
        self.config.events.is_empty() || self.config.events.iter().any(|k| k == ev.kind.as_str())
    }
}

/// The HMAC-SHA256 signature header value of a body: `sha256=<hex>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// Starts the two tasks of every webhook.
///
/// Each webhook subscribes to the bus here, before this returns, not in its
/// task: an event emitted between the spawn and the task's first poll (the
/// first request the server answers, say) would otherwise never be sent.
pub fn spawn_all(hooks: &[Arc<Webhook>], events: &EventBus, shutdown: &Shutdown) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a rustls reqwest client always builds");
    for hook in hooks.iter().cloned() {
        let (tx, rx) = mpsc::channel(QUEUE);
        let live = events.subscribe();
        tokio::spawn(enqueue(live, hook.clone(), tx, shutdown.clone()));
        tokio::spawn(deliver(
            events.clone(),
            hook,
            rx,
            client.clone(),
            shutdown.clone(),
        ));
    }
}

async fn enqueue(
    mut live: broadcast::Receiver<Event>,
    hook: Arc<Webhook>,
    tx: mpsc::Sender<Event>,
    mut shutdown: Shutdown,
) {
    loop {
        let ev = tokio::select! {
            ev = live.recv() => ev,
            _ = wait_shutdown(&mut shutdown) => return,
        };
        match ev {
            Ok(ev) if hook.wants(&ev) => {
                if tx.try_send(ev).is_err() {
                    hook.lock().dropped += 1;
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => hook.lock().dropped += n,
            Err(RecvError::Closed) => return,
        }
    }
}

async fn deliver(
    events: EventBus,
    hook: Arc<Webhook>,
    mut rx: mpsc::Receiver<Event>,
    http: reqwest::Client,
    mut shutdown: Shutdown,
) {
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => match ev { Some(ev) => ev, None => return },
            _ = wait_shutdown(&mut shutdown) => return,
        };
        let body = body_of(&ev, hook.config.format);
        let mut delay = FIRST_RETRY;
        let mut attempt = 1;
        loop {
            match post(&http, &hook.config, &ev, &body).await {
                Ok(()) => {
                    let mut s = hook.lock();
                    s.delivered += 1;
                    s.last_success_at = Some(events.now());
                    break;
                }
                Err(reason) => {
                    {
                        let mut s = hook.lock();
                        s.failed_attempts += 1;
                        s.last_error = Some(reason.clone());
                        s.last_error_at = Some(events.now());
                    }
                    if attempt >= hook.config.max_attempts {
                        let index = hook.lock().index;
                        hook.lock().given_up += 1;
                        tracing::warn!(webhook = index, event = ev.id, attempts = attempt, %reason, "webhook delivery given up");
                        events.emit(
                            EventKind::WebhookFailed,
                            ev.account_id,
                            format!("webhook {index} gave up on event {} after {attempt} attempts: {reason}", ev.id),
                        );
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = wait_shutdown(&mut shutdown) => return,
                    }
                    delay = (delay * 2).min(MAX_RETRY);
                    attempt += 1;
                }
            }
        }
    }
}

/// A webhook's body for `ev`: the event as JSON, or its text.
fn body_of(ev: &Event, format: WebhookFormat) -> Vec<u8> {
    match format {
        WebhookFormat::Json => serde_json::to_vec(ev).unwrap_or_default(),
        WebhookFormat::Text => text_of(ev).into_bytes(),
    }
}

/// An event as a push notification shows it: a digest is already its
/// own lines; any other event is one line naming its kind and account.
fn text_of(ev: &Event) -> String {
    match (ev.kind, ev.account_id) {
        (EventKind::Digest, _) => ev.detail.clone(),
        (kind, Some(id)) => format!("{kind} (account {id}): {}", ev.detail),
        (kind, None) => format!("{kind}: {}", ev.detail),
    }
}

fn content_type(format: WebhookFormat) -> &'static str {
    match format {
        WebhookFormat::Json => "application/json",
        WebhookFormat::Text => "text/plain; charset=utf-8",
    }
}

async fn post(
    http: &reqwest::Client,
    cfg: &WebhookConfig,
    ev: &Event,
    body: &[u8],
) -> Result<(), String> {
    let mut req = http
        .post(cfg.url.clone())
        .timeout(cfg.timeout)
        .header("content-type", content_type(cfg.format))
        .header("x-relogin-farm-event", ev.kind.as_str())
        .header("x-relogin-farm-delivery", ev.id.to_string())
        .body(body.to_vec());
    if let Some(secret) = &cfg.secret {
        req = req.header(SIGNATURE_HEADER, sign(secret.expose().as_bytes(), body));
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("request failed: {}", e.without_url()))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered HTTP {}", resp.status().as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// On a current-thread runtime a spawned task does not run before the
    /// spawner yields, so an event emitted right after `spawn_all` reaches the
    /// webhook only if it subscribed inside `spawn_all` itself.
    #[tokio::test]
    async fn an_event_emitted_right_after_start_is_delivered() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let receiver = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let port = receiver.local_addr().expect("its address").port();
        let hook = format!(
            "[[webhook]]\nurl = \"http://127.0.0.1:{port}/hook\"\nevents = [\"client_created\"]\n"
        );
        let farm = crate::farm::test_farm(dir.path(), &hook);
        let (_stop, shutdown) = tokio::sync::watch::channel(false);

        farm.start_webhooks(&shutdown);
        farm.emit(EventKind::ClientCreated, None, "client 1 created");

        let accepted = tokio::time::timeout(Duration::from_secs(10), receiver.accept()).await;
        let (mut conn, _) = accepted
            .expect("the webhook posted the event within 10 s")
            .expect("accept");
        let mut request = vec![0; 4096];
        let n = conn.read(&mut request).await.expect("read the request");
        let request = String::from_utf8_lossy(&request[..n]);
        assert!(request.starts_with("POST /hook "), "{request}");
        assert!(request.contains("client_created"), "{request}");
        let _ = conn
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
    }

    #[test]
    fn signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
