//! The upstream answer's body on its way to the client, chunk by chunk.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::store::leases::BodyEnd;

type Chunks = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Told, once, how the body ended and how many bytes went through.
pub type Finish = Box<dyn FnOnce(u64, BodyEnd) + Send>;

/// Passes each chunk on as it arrives and ends the body with an error after
/// `idle` without one. Dropping it (the client went away) drops the
/// upstream response, which cancels the upstream request. Its [`Finish`]
/// learns how it ended: complete, broken off upstream, or (dropped before
/// the end) the client gone.
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
    bytes: u64,
    /// The upstream's `content-length`: the client's server stops asking
    /// for more once that much went out, so the end may never be polled.
    length: Option<u64>,
    finish: Option<Finish>,
}

impl Inner {
    fn end(&mut self, how: BodyEnd) {
        self.done = true;
        if let Some(finish) = self.finish.take() {
            finish(self.bytes, how);
        }
    }
}

impl Relay {
    pub fn new(response: reqwest::Response, idle: Duration, finish: Option<Finish>) -> Relay {
        let length = response.content_length();
        Relay {
            inner: Mutex::new(Inner {
                length,
                chunks: Box::pin(response.bytes_stream()),
                idle,
                deadline: Box::pin(tokio::time::sleep(idle)),
                done: false,
                bytes: 0,
                finish,
            }),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        if !inner.done {
            let all = inner.length == Some(inner.bytes);
            inner.end(if all {
                BodyEnd::Complete
            } else {
                BodyEnd::ClientGone
            });
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
                inner.bytes += chunk.len() as u64;
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                inner.end(BodyEnd::UpstreamBroke);
                Poll::Ready(Some(Err(RelayError::Upstream(e))))
            }
            Poll::Ready(None) => {
                inner.end(BodyEnd::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => match inner.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    inner.end(BodyEnd::UpstreamBroke);
                    Poll::Ready(Some(Err(RelayError::Idle(inner.idle))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use tokio::time::Instant;

    use super::{Relay, RelayError};
    use crate::store::leases::BodyEnd;

    /// An upstream answer whose body is what `chunks` sends, then whatever
    /// comes until the sender is dropped.
    fn answer(chunks: tokio::sync::mpsc::UnboundedReceiver<Bytes>) -> reqwest::Response {
        let body = futures_util::stream::unfold(chunks, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, std::io::Error>(chunk), rx))
        });
        let resp = warp::http::Response::new(reqwest::Body::wrap_stream(body));
        reqwest::Response::from(resp)
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_silent_for_the_idle_timeout_cuts_the_body() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let ended = Arc::new(std::sync::Mutex::new(None));
        let finish = {
            let ended = ended.clone();
            Box::new(move |bytes, how| *ended.lock().unwrap() = Some((bytes, how)))
        };
        let idle = Duration::from_secs(5);
        let mut relay = Relay::new(answer(rx), idle, Some(finish));
        let started = Instant::now();
        tx.send(Bytes::from_static(b"first")).unwrap();
        let first = relay.next().await.unwrap().unwrap();
        assert_eq!(&first[..], b"first");
        // A chunk within the idle time moves the deadline on.
        tokio::time::sleep(Duration::from_secs(4)).await;
        tx.send(Bytes::from_static(b"second")).unwrap();
        relay.next().await.unwrap().unwrap();
        // Then silence: the body ends with an error once idle has passed.
        let cut = tokio::time::timeout(Duration::from_secs(60), relay.next())
            .await
            .expect("the relay waited on past its idle timeout")
            .unwrap();
        assert!(
            matches!(cut, Err(RelayError::Idle(d)) if d == idle),
            "{cut:?}"
        );
        let took = started.elapsed();
        assert_eq!(took.as_secs(), 9, "{took:?}");
        assert!(relay.next().await.is_none());
        assert_eq!(*ended.lock().unwrap(), Some((11, BodyEnd::UpstreamBroke)));
        drop(tx);
    }
}
