//! Webhooks (`[[webhook]]` in `farm.toml`): each subscribed event is POSTed
//! once, signed `sha256=<hex HMAC-SHA256 of the body>`; a failing receiver
//! is retried with backoff, then given up on visibly (`GET /api/webhooks`,
//! a `webhook_failed` event).

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::support::receiver::{Hit, Receiver};
use crate::support::{event_kinds, int_of, str_of, wait_for, Bed, Settings, Value};

const SECRET: &str = "hook-secret-\u{e9}t\u{e9}";

/// Asserts that the request carries the HMAC-SHA256 of its exact body.
fn assert_signed(hit: &Hit) {
    let header = hit
        .header("x-relogin-farm-signature")
        .unwrap_or_else(|| panic!("no signature header: {hit:?}"));
    let hex = header
        .strip_prefix("sha256=")
        .unwrap_or_else(|| panic!("signature {header:?} is not sha256=<hex>"));
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<_>>()
        .unwrap_or_else(|| panic!("signature {header:?} is not hex"));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(&hit.body);
    assert!(
        mac.verify_slice(&bytes).is_ok(),
        "bad signature {header:?} for {}",
        String::from_utf8_lossy(&hit.body)
    );
}

/// `GET /api/webhooks` entry `index`.
fn hook_status(bed: &Bed, index: usize) -> Value {
    bed.admin().get("/api/webhooks").ok()[index].clone()
}

#[test]
fn a_failing_receiver_is_retried_with_backoff_then_given_up_visibly() {
    let bad = Receiver::start(500);
    let bed = Bed::start(Settings::default().with_toml(&bad.webhook_toml(
        &["client_created"],
        3,
        Some(SECRET),
    )));
    bed.new_client("worker");
    bed.add_account("ann", 0); // not subscribed: never sent

    let status = wait_for("the webhook to give up", Duration::from_secs(15), || {
        let s = hook_status(&bed, 0);
        if s["given_up"] == 1 {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    let hits = bad.hits();
    assert_eq!(
        hits.len(),
        3,
        "max_attempts = 3 means 3 requests for the one event: {hits:#?}"
    );
    let event = hits[0].json();
    assert_eq!(event["kind"], "client_created", "{event}");
    for hit in &hits {
        assert_eq!((hit.method.as_str(), hit.path.as_str()), ("POST", "/hook"));
        assert_eq!(hit.body, hits[0].body, "every attempt sends the same body");
        assert_eq!(
            hit.header("x-relogin-farm-delivery"),
            Some(event["id"].to_string().as_str()),
            "{hit:?}"
        );
        assert_signed(hit);
    }
    // Backoff: 500 ms before the second attempt, doubled before the third.
    let gaps: Vec<Duration> = hits.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps[0] >= Duration::from_millis(450) && gaps[1] >= Duration::from_millis(950),
        "retry gaps {gaps:?}"
    );

    assert_eq!(
        (
            status["failed_attempts"].as_u64(),
            status["delivered"].as_u64()
        ),
        (Some(3), Some(0)),
        "{status}"
    );
    assert!(
        status["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("http://127.0.0.1:") && !t.contains("/hook")),
        "{status}"
    );
    assert!(str_of(&status, "last_error").contains("500"), "{status}");
    assert!(status["last_error_at"].is_string(), "{status}");

    let failed: Vec<Value> = bed
        .events_since(0)
        .into_iter()
        .filter(|e| e["kind"] == "webhook_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let detail = str_of(&failed[0], "detail");
    assert!(
        detail.contains(&format!("event {}", event["id"])) && detail.contains("3 attempts"),
        "{detail}"
    );
}

#[test]
fn a_receiver_gets_each_subscribed_event_once_signed() {
    let good = Receiver::start(200);
    let subscribed = ["client_created", "account_removed"];
    let bed =
        Bed::start(Settings::default().with_toml(&good.webhook_toml(&subscribed, 3, Some(SECRET))));
    // In order: subscribed, not, not, subscribed. Deliveries keep the bus's
    // order, so once the last one is in, an unsubscribed one would be too.
    let (client, _) = bed.new_client("worker");
    let account = bed.add_account("ann", 0);
    bed.admin()
        .delete(&format!("/api/clients/{client}"))
        .expect(204);
    bed.admin()
        .delete(&format!("/api/accounts/{account}"))
        .expect(204);

    let hits = good.wait_hits(2, Duration::from_secs(10));
    let events = bed.events_since(0);
    assert_eq!(
        event_kinds(&events),
        [
            "client_created",
            "account_added",
            "client_revoked",
            "account_removed"
        ],
        "{events:?}"
    );
    let expected: Vec<&Value> = events
        .iter()
        .filter(|e| subscribed.iter().any(|k| e["kind"] == *k))
        .collect();
    let got: Vec<Value> = hits.iter().map(Hit::json).collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "each subscribed event once, nothing else: {got:#?}"
    );
    for (hit, (body, event)) in hits.iter().zip(got.iter().zip(&expected)) {
        for key in ["id", "kind", "account_id", "detail"] {
            assert_eq!(
                body[key], event[key],
                "{key} of the delivered event {body} vs the stored {event}"
            );
        }
        assert_eq!(
            hit.header("x-relogin-farm-event"),
            event["kind"].as_str(),
            "{hit:?}"
        );
        assert_eq!(
            hit.header("x-relogin-farm-delivery"),
            Some(int_of(event, "id").to_string().as_str()),
            "{hit:?}"
        );
        assert!(
            hit.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{hit:?}"
        );
        assert_signed(hit);
    }
    let status = hook_status(&bed, 0);
    assert_eq!(
        (status["delivered"].as_u64(), status["given_up"].as_u64()),
        (Some(2), Some(0)),
        "{status}"
    );
    assert!(
        status["last_success_at"].is_string() && status["last_error"].is_null(),
        "{status}"
    );
    assert_eq!(status["events"], serde_json::json!(subscribed), "{status}");
}
