//! A Server-Sent Events stream read as it arrives: a thread parses the
//! response body into [`Frame`]s (the `text/event-stream` format: `id:`,
//! `event:`, `data:` lines, `:` comments, a blank line ends a frame) and the
//! test takes them one by one with a deadline.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One dispatched event of the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// The frame's own `id:` line (unlike a browser, not carried over from
    /// earlier frames: a frame without one has `None`).
    pub id: Option<String>,
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

impl Frame {
    /// The data as JSON (panics with the frame when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {self:?}"))
    }

    /// The `id:` field as an event id (panics when there is none).
    pub fn event_id(&self) -> i64 {
        let id = self
            .id
            .as_deref()
            .unwrap_or_else(|| panic!("SSE frame without an id: {self:?}"));
        id.parse()
            .unwrap_or_else(|_| panic!("SSE id is not an integer: {self:?}"))
    }
}

/// The frames of an open stream. The connection closes when the farm ends
/// it (or stops); the reading thread then ends.
pub struct EventStream {
    frames: Receiver<Frame>,
}

impl EventStream {
    /// Parses `body` on a thread of its own.
    pub fn read(body: impl Read + Send + 'static) -> EventStream {
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut id, mut event, mut data) = (None, None, Vec::<String>::new());
            for line in BufReader::new(body).lines() {
                let Ok(line) = line else { return };
                if line.is_empty() {
                    let frame = Frame {
                        id: id.take(),
                        event: event.take(),
                        data: data.join("\n"),
                    };
                    if !data.is_empty() && tx.send(frame).is_err() {
                        return;
                    }
                    data.clear();
                    continue;
                }
                if line.starts_with(':') {
                    continue; // a comment: keep-alive
                }
                let (field, value) = line.split_once(':').unwrap_or((&line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value).to_string();
                match field {
                    "id" => id = Some(value),
                    "event" => event = Some(value),
                    "data" => data.push(value),
                    _ => {}
                }
            }
        });
        EventStream { frames }
    }

    /// The next frame within `timeout`, or `None`.
    pub fn next(&self, timeout: Duration) -> Option<Frame> {
        self.frames.recv_timeout(timeout).ok()
    }

    /// The next `n` frames, all within `timeout`; panics with what came
    /// when fewer did.
    pub fn take(&self, n: usize, timeout: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Some(frame) => got.push(frame),
                None => panic!(
                    "the event stream sent {} of {n} frames within {timeout:?}: {got:#?}",
                    got.len()
                ),
            }
        }
        got
    }
}
