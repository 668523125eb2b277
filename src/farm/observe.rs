//! What the farm shows besides its API answers: the event stream (SSE and
//! the webhooks, which it starts), and the counters the listener keeps on
//! its connections.

use tokio::sync::broadcast;

use super::{Farm, Result};
use crate::events::Event;
use crate::metrics::ConnectionClosed;
use crate::shutdown::Shutdown;

impl Farm {
    /// Live events from now on; a receiver that lags is told so and
    /// catches up with [`Farm::replay_events`].
    pub fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Up to `limit` stored events after id `after`, oldest first.
    pub fn replay_events(&self, after: i64, limit: usize) -> Result<Vec<Event>> {
        Ok(self.events.since(after, limit)?)
    }

    /// The id of the newest stored event (0: none yet).
    pub fn newest_event_id(&self) -> i64 {
        self.events.latest_id()
    }

    /// Starts the delivery tasks of every configured webhook; they stop
    /// with `shutdown`.
    pub fn start_webhooks(&self, shutdown: &Shutdown) {
        crate::webhooks::spawn_all(&self.webhooks, &self.events, shutdown);
    }

    pub fn webhook_status(&self) -> Vec<crate::webhooks::WebhookStatus> {
        self.webhooks.iter().map(|w| w.status()).collect()
    }

    /// The listener opened (`+1`) or closed (`-1`) a client connection.
    pub fn record_connection(&self, delta: i64) {
        self.metrics.record_connection(delta);
    }

    /// The listener closed a client connection itself, and why.
    pub fn record_connection_closed(&self, why: ConnectionClosed) {
        self.metrics.record_connection_closed(why);
    }

    /// The listener's `server.idle_timeout` (the event stream's keep-alive
    /// must beat it).
    pub fn idle_timeout(&self) -> std::time::Duration {
        self.config.server.idle_timeout
    }
}
