//! The upstream answer's body on its way to the client, chunk by chunk.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

type Chunks = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Passes each chunk on as it arrives and ends the body with an error after
/// `idle` without one. Dropping it (the client went away) drops the
/// upstream response, which cancels the upstream request.
pub struct Relay {
    // warp wants a `Sync` body; the stream is only ever polled through
    // `&mut`, so this lock is never contended (`get_mut`).
    inner: Mutex<Inner>,
}

struct Inner {
    chunks: Chunks,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    done: bool,
}

impl Relay {
    pub fn new(response: reqwest::Response, idle: Duration) -> Relay {
        Relay {
            inner: Mutex::new(Inner {
                chunks: Box::pin(response.bytes_stream()),
                idle,
                deadline: Box::pin(tokio::time::sleep(idle)),
                done: false,
            }),
        }
    }
}

/// Why a relayed body ended early; the client sees the body cut.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the upstream sent nothing for {0:?}")]
    Idle(Duration),
    #[error("the upstream answer broke off: {0}")]
    Upstream(#[source] reqwest::Error),
}

impl Stream for Relay {
    type Item = Result<Bytes, RelayError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let inner = self
            .get_mut()
            .inner
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        if inner.done {
            return Poll::Ready(None);
        }
        match inner.chunks.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let next = Instant::now() + inner.idle;
                inner.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                inner.done = true;
                Poll::Ready(Some(Err(RelayError::Upstream(e))))
            }
            Poll::Ready(None) => {
                inner.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => match inner.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    inner.done = true;
                    Poll::Ready(Some(Err(RelayError::Idle(inner.idle))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
