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

use crate::domain::AccountId;
use crate::store::Store;

/// What happened. The spelling (`as_str`) is the `kind` field and the SSE
/// event name, and what `webhook.events` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    AccountAdded,
    AccountRemoved,
    AccountUpdated,
    LoginStarted,
    LoginCompleted,
    LoginFailed,
    RefreshOk,
    RefreshFailed,
    NeedsRelogin,
    ReloginStarted,
    ReloginSucceeded,
    ReloginFailed,
    NeedsHuman,
    CooldownStarted,
    CooldownEnded,
    ClientCreated,
    ClientRevoked,
    WebhookFailed,
    BackupCreated,
    BackupFailed,
    BackupRestored,
    ProxyFailover,
}

impl EventKind {
    pub const ALL: &'static [EventKind] = &[
        EventKind::AccountAdded,
        EventKind::AccountRemoved,
        EventKind::AccountUpdated,
        EventKind::LoginStarted,
        EventKind::LoginCompleted,
        EventKind::LoginFailed,
        EventKind::RefreshOk,
        EventKind::RefreshFailed,
        EventKind::NeedsRelogin,
        EventKind::ReloginStarted,
        EventKind::ReloginSucceeded,
        EventKind::ReloginFailed,
        EventKind::NeedsHuman,
        EventKind::CooldownStarted,
        EventKind::CooldownEnded,
        EventKind::ClientCreated,
        EventKind::ClientRevoked,
        EventKind::WebhookFailed,
        EventKind::BackupCreated,
        EventKind::BackupFailed,
        EventKind::BackupRestored,
        EventKind::ProxyFailover,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AccountAdded => "account_added",
            EventKind::AccountRemoved => "account_removed",
            EventKind::AccountUpdated => "account_updated",
            EventKind::LoginStarted => "login_started",
            EventKind::LoginCompleted => "login_completed",
            EventKind::LoginFailed => "login_failed",
            EventKind::RefreshOk => "refresh_ok",
            EventKind::RefreshFailed => "refresh_failed",
            EventKind::NeedsRelogin => "needs_relogin",
            EventKind::ReloginStarted => "relogin_started",
            EventKind::ReloginSucceeded => "relogin_succeeded",
            EventKind::ReloginFailed => "relogin_failed",
            EventKind::NeedsHuman => "needs_human",
            EventKind::CooldownStarted => "cooldown_started",
            EventKind::CooldownEnded => "cooldown_ended",
            EventKind::ClientCreated => "client_created",
            EventKind::ClientRevoked => "client_revoked",
            EventKind::WebhookFailed => "webhook_failed",
            EventKind::BackupCreated => "backup_created",
            EventKind::BackupFailed => "backup_failed",
            EventKind::BackupRestored => "backup_restored",
            EventKind::ProxyFailover => "proxy_failover",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
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
}

pub struct EventBus {
    store: Arc<Store>,
    live: broadcast::Sender<Event>,
}

impl EventBus {
    pub fn new(store: Arc<Store>, buffer: usize) -> Self {
        let (live, _) = broadcast::channel(buffer.max(16));
        EventBus { store, live }
    }

    /// Records and broadcasts an event. A store failure is logged, not
    /// propagated: losing an event must never fail the operation it describes.
    pub fn emit(&self, kind: EventKind, account_id: Option<AccountId>, detail: impl Into<String>) {
        let detail = detail.into();
        // Milliseconds, as stored: a live event and its replay must read the same.
        let now = Utc::now();
        let at = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
        match self
            .store
            .insert_event(at, kind.as_str(), account_id, &detail)
        {
            Ok(id) => {
                tracing::debug!(id, kind = kind.as_str(), account = account_id, "event");
                let _ = self.live.send(Event {
                    id,
                    at,
                    kind,
                    account_id,
                    detail,
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
            .filter_map(|(id, at, kind, account_id, detail)| {
                Some(Event {
                    id,
                    at,
                    kind: EventKind::parse(&kind)?,
                    account_id,
                    detail,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_match_the_config_list() {
        let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, crate::config::EVENT_KINDS);
    }

    #[test]
    fn kinds_round_trip_and_match_serde() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(*k));
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
    }
}
