//! The event bus: every state change becomes an [`Event`], stored (so it
//! can be replayed after a reconnect, within the retention) and broadcast
//! to live subscribers (the SSE stream, webhooks).
//!
//! Emitting never blocks the farm: the store write is one small INSERT and
//! the broadcast drops the oldest events for a subscriber that lags (it
//! then catches up from the store by id).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::clock::Clock;
use crate::domain::AccountId;
use crate::store::Store;

crate::named_enum! {
    /// What happened. The spelling (`as_str`) is the `kind` field and the SSE
    /// event name, and what `webhook.events` lists.
    pub enum EventKind {
        AccountAdded = "account_added",
        AccountRemoved = "account_removed",
        AccountUpdated = "account_updated",
        LoginStarted = "login_started",
        LoginCompleted = "login_completed",
        LoginFailed = "login_failed",
        RefreshOk = "refresh_ok",
        RefreshFailed = "refresh_failed",
        NeedsRelogin = "needs_relogin",
        ReloginStarted = "relogin_started",
        ReloginSucceeded = "relogin_succeeded",
        ReloginFailed = "relogin_failed",
        NeedsHuman = "needs_human",
        HumanTakeoverCompleted = "human_takeover_completed",
        CooldownStarted = "cooldown_started",
        CooldownEnded = "cooldown_ended",
        ClientCreated = "client_created",
        ClientRevoked = "client_revoked",
        WebhookFailed = "webhook_failed",
        BackupCreated = "backup_created",
        BackupFailed = "backup_failed",
        BackupRestored = "backup_restored",
        ProxyFailover = "proxy_failover",
        CanaryPassed = "canary_passed",
        CanaryFailed = "canary_failed",
        Digest = "digest",
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Monotonic (the store's row id): resume points for `Last-Event-ID`.
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: EventKind,
    pub account_id: Option<AccountId>,
    /// A human sentence; never a secret.
    pub detail: String,
    /// What the sentence says, for programs (a failed canary's step, line
    /// and screenshot; a digest's counts): stored with the event, so a
    /// replay reads the same. Absent for most kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// Cloned by the webhook tasks, which announce their own failures.
#[derive(Clone)]
pub struct EventBus {
    store: Arc<Store>,
    live: broadcast::Sender<Event>,
    /// The farm's clock: events are stamped with the time the farm's
    /// decisions read.
    clock: Arc<dyn Clock>,
}

impl EventBus {
    pub fn new(store: Arc<Store>, buffer: usize, clock: Arc<dyn Clock>) -> Self {
        let (live, _) = broadcast::channel(buffer.max(16));
        EventBus { store, live, clock }
    }

    /// Now, by the farm's clock (the webhooks' delivery times).
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Records and broadcasts an event. A store failure is logged, not
    /// propagated: losing an event must never fail the operation it describes.
    pub fn emit(&self, kind: EventKind, account_id: Option<AccountId>, detail: impl Into<String>) {
        self.emit_with(kind, account_id, detail, None);
    }

    /// [`emit`](Self::emit) with the event's `data`.
    pub fn emit_with(
        &self,
        kind: EventKind,
        account_id: Option<AccountId>,
        detail: impl Into<String>,
        data: Option<serde_json::Value>,
    ) {
        let detail = detail.into();
        // Milliseconds, as stored: a live event and its replay must read the same.
        let now = self.clock.now();
        let at = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
        match self
            .store
            .insert_event(at, kind.as_str(), account_id, &detail, data.as_ref())
        {
            Ok(id) => {
                tracing::debug!(id, kind = kind.as_str(), account = account_id, "event");
                let _ = self.live.send(Event {
                    id,
                    at,
                    kind,
                    account_id,
                    detail,
                    data,
                });
            }
            Err(e) => tracing::error!(error = %e, kind = kind.as_str(), "could not record event"),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// The id of the newest stored event (0 when there is none).
    pub fn latest_id(&self) -> i64 {
        self.store.latest_event_id().unwrap_or(0)
    }

    /// Stored events with `id > after`, oldest first, at most `limit`.
    pub fn since(&self, after: i64, limit: usize) -> crate::store::Result<Vec<Event>> {
        let rows = self.store.events_since(after, limit)?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, at, kind, account_id, detail, data)| {
                Some(Event {
                    id,
                    at,
                    kind: kind.parse().ok()?,
                    account_id,
                    detail,
                    data: data.and_then(|d| serde_json::from_str(&d).ok()),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's list of kinds is this one.
    #[test]
    fn readme_lists_the_kinds() {
        let readme = include_str!("../README.md");
        let listed = readme
            .lines()
            .find_map(|l| {
                l.strip_prefix("a monotonic `id`, stored for `events.retention`. The kinds: ")
            })
            .expect("the README's list of event kinds");
        let listed: Vec<&str> = listed
            .trim_end_matches('.')
            .split(", ")
            .map(|k| k.trim_matches('`'))
            .collect();
        assert_eq!(listed, EventKind::NAMES);
    }

    #[test]
    fn kinds_round_trip_and_match_serde() {
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(*k));
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
    }

    /// An event's `data` is stored with it: a replay reads what was sent.
    #[test]
    fn data_is_replayed_as_sent() {
        let dir = tempfile::tempdir().unwrap();
        let farm = crate::farm::test_farm(dir.path(), "");
        let bus = farm.event_bus_for_test();
        let mut live = bus.subscribe();
        let data = serde_json::json!({"step": 3, "line": 9, "screenshot": "/a/b.png"});
        bus.emit_with(
            EventKind::CanaryFailed,
            Some(7),
            "canary login failed",
            Some(data.clone()),
        );
        bus.emit(EventKind::ClientCreated, None, "client 1 created");
        let sent = live.try_recv().unwrap();
        assert_eq!(sent.data.as_ref(), Some(&data));
        let stored = bus.since(0, 10).unwrap();
        assert_eq!(stored[0], sent);
        assert_eq!(stored[1].data, None);
        let json = serde_json::to_value(&stored[1]).unwrap();
        assert!(json.get("data").is_none(), "absent, not null: {json}");
    }
}
