//! `GET /api/events`: Server-Sent Events with `Last-Event-ID` resume, or
//! JSON with `?since=ID` for polling.
//!
//! The stream subscribes to the live bus *before* reading the backlog from
//! the store, and drops anything not newer than the last id it sent, so a
//! resume has neither gaps nor duplicates. A subscriber that lags behind
//! the bus catches up from the store the same way.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, Stream};
use tokio::sync::broadcast::{self, error::RecvError};
use warp::sse;

use crate::events::Event;
use crate::farm::Farm;

/// Most events returned per JSON poll or read per backlog page.
pub const PAGE: usize = 1000;

struct Cursor {
    farm: Arc<Farm>,
    live: broadcast::Receiver<Event>,
    backlog: VecDeque<Event>,
    /// The last id sent (or the resume point).
    last: i64,
    /// Still reading stored events before switching to the live bus.
    catching_up: bool,
}

impl Cursor {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(ev) = self.backlog.pop_front() {
                if ev.id > self.last {
                    self.last = ev.id;
                    return Some(ev);
                }
                continue;
            }
            if self.catching_up {
                match self.farm.replay_events(self.last, PAGE) {
                    Ok(page) if !page.is_empty() => self.backlog = page.into(),
                    Ok(_) => self.catching_up = false,
                    Err(e) => {
                        tracing::error!(error = %e, "reading the event backlog failed");
                        self.catching_up = false;
                    }
                }
                continue;
            }
            match self.live.recv().await {
                Ok(ev) => self.backlog.push_back(ev),
                Err(RecvError::Lagged(_)) => self.catching_up = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// The event stream, starting after `resume_after` (replaying stored
/// events) or, without it, with the next live event.
pub fn stream(
    farm: Arc<Farm>,
    resume_after: Option<i64>,
) -> impl Stream<Item = Result<sse::Event, Infallible>> + Send {
    let live = farm.subscribe_events();
    let last = resume_after.unwrap_or_else(|| farm.newest_event_id());
    let cursor = Cursor {
        farm,
        live,
        backlog: VecDeque::new(),
        last,
        catching_up: resume_after.is_some(),
    };
    stream::unfold(cursor, |mut c| async move {
        let ev = c.next().await?;
        let frame = sse::Event::default()
            .id(ev.id.to_string())
            .event(ev.kind.as_str())
            .json_data(super::types::Event::from(&ev))
            .unwrap_or_else(|_| sse::Event::default().comment("unserializable event"));
        Some((Ok(frame), c))
    })
}

/// How often an event stream sends a keep-alive comment: often enough that
/// the listener's `server.idle_timeout` never closes a stream whose reader
/// keeps up.
pub fn keep_alive(idle_timeout: Duration) -> Duration {
    (idle_timeout / 2).min(Duration::from_secs(15))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn event_streams_keep_alive_within_the_idle_timeout() {
        let secs = Duration::from_secs;
        assert_eq!(super::keep_alive(secs(60)), secs(15));
        assert_eq!(super::keep_alive(secs(2)), secs(1));
    }
}
