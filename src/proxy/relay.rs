//! The upstream answer's body on its way to the client, chunk by chunk.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::store::leases::BodyEnd;

type Chunks = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Told, once, how the body ended and how many bytes went through.
pub type Finish = Box<dyn FnOnce(u64, BodyEnd) + Send>;

/// The most a burst gathered into one chunk may hold.
const MAX_GATHERED: usize = 64 * 1024;

/// Passes each chunk on as it arrives and ends the body with an error after
/// `idle` without one. Dropping it (the client went away) drops the
/// upstream response, which cancels the upstream request. Its [`Finish`]
/// learns how it ended: complete, broken off upstream, or (dropped before
/// the end) the client gone.
///
/// A burst goes on as one chunk. The upstream's connection hands its
/// decoded chunks over one at a time (it decodes the next once this one is
/// taken), so a stream that arrived in one read would otherwise leave as
/// one write (and one wake-up of the client) per event. After taking a
/// chunk the relay lets the scheduler run the rest of what is ready once
/// (`yield_now`: that connection decodes its next chunk if it has one
/// read); whatever came meanwhile joins it, and as soon as nothing more is
/// ready the gathered bytes go on. Nothing waits for bytes that have not
/// arrived: a lone event leaves after one scheduler pass, and the first
/// chunk at once (it goes out with the answer's head).
pub struct Relay {
    // warp wants a `Sync` body; the stream is only ever polled through
    // `&mut`, so this lock is never contended (`get_mut`).
    inner: Mutex<Inner>,
}

struct Inner {
    chunks: Chunks,
    idle: Duration,
    /// Armed for `idle` after the last chunk once the upstream first keeps
    /// the relay waiting (an answer that comes whole never needs it); moved
    /// on lazily (see `last_chunk`), not on every chunk.
    deadline: Option<Pin<Box<Sleep>>>,
    /// When the last chunk came: the idle timeout counts from here.
    last_chunk: Instant,
    done: bool,
    bytes: u64,
    /// The upstream's `content-length`: the client's server stops asking
    /// for more once that much went out, so the end may never be polled.
    length: Option<u64>,
    finish: Option<Finish>,
    /// Taken from the upstream, not passed on yet.
    gathered: Vec<Bytes>,
    /// The scheduler pass given after a chunk was taken.
    pass: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// The upstream's error, held until the gathered bytes before it went on.
    broke: Option<reqwest::Error>,
}

impl Inner {
    fn end(&mut self, how: BodyEnd) {
        self.done = true;
        if let Some(finish) = self.finish.take() {
            finish(self.bytes, how);
        }
    }

    fn gathered_len(&self) -> usize {
        self.gathered.iter().map(Bytes::len).sum()
    }

    fn take_gathered(&mut self) -> Bytes {
        if self.gathered.len() == 1 {
            return self.gathered.pop().unwrap_or_default();
        }
        let mut all = BytesMut::with_capacity(self.gathered_len());
        for chunk in self.gathered.drain(..) {
            all.extend_from_slice(&chunk);
        }
        all.freeze()
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
                deadline: None,
                last_chunk: Instant::now(),
                done: false,
                bytes: 0,
                finish,
                gathered: Vec::new(),
                pass: None,
                broke: None,
            }),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        if !inner.done {
            let all = inner.length == Some(inner.bytes) && inner.gathered.is_empty();
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
        loop {
            if let Some(pass) = inner.pass.as_mut() {
                if pass.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                inner.pass = None;
            }
            if let Some(e) = inner.broke.take() {
                return Poll::Ready(Some(Err(RelayError::Upstream(e))));
            }
            if inner.done {
                return Poll::Ready(None);
            }
            match inner.chunks.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    inner.last_chunk = Instant::now();
                    let first = inner.bytes == 0;
                    inner.bytes += chunk.len() as u64;
                    inner.gathered.push(chunk);
                    // The first goes at once, with the answer's head.
                    if first || inner.gathered_len() >= MAX_GATHERED {
                        return Poll::Ready(Some(Ok(inner.take_gathered())));
                    }
                    inner.pass = Some(Box::pin(tokio::task::yield_now()));
                }
                Poll::Ready(Some(Err(e))) => {
                    inner.end(BodyEnd::UpstreamBroke);
                    if inner.gathered.is_empty() {
                        return Poll::Ready(Some(Err(RelayError::Upstream(e))));
                    }
                    inner.broke = Some(e);
                    return Poll::Ready(Some(Ok(inner.take_gathered())));
                }
                Poll::Ready(None) => {
                    inner.end(BodyEnd::Complete);
                    if inner.gathered.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(inner.take_gathered())));
                }
                Poll::Pending if !inner.gathered.is_empty() => {
                    return Poll::Ready(Some(Ok(inner.take_gathered())));
                }
                Poll::Pending => {
                    // The deadline only ever moves to `idle` after the last
                    // chunk, so once it fires the upstream was silent that long.
                    let due = inner.last_chunk + inner.idle;
                    let deadline = inner
                        .deadline
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                    if deadline.deadline() < due {
                        deadline.as_mut().reset(due);
                    }
                    return match deadline.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            inner.end(BodyEnd::UpstreamBroke);
                            Poll::Ready(Some(Err(RelayError::Idle(inner.idle))))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
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

    /// An upstream answer whose body is `items`, all ready at once.
    fn burst(items: Vec<Result<&'static [u8], &'static str>>) -> reqwest::Response {
        let body = futures_util::stream::iter(
            items
                .into_iter()
                .map(|item| item.map(Bytes::from_static).map_err(std::io::Error::other)),
        );
        let resp = warp::http::Response::new(reqwest::Body::wrap_stream(body));
        reqwest::Response::from(resp)
    }

    /// How the body ended, as its [`super::Finish`] was told.
    type Ended = Arc<std::sync::Mutex<Option<(u64, BodyEnd)>>>;

    fn recorder() -> (Ended, super::Finish) {
        let ended = Arc::new(std::sync::Mutex::new(None));
        let finish = {
            let ended = ended.clone();
            Box::new(move |bytes, how| *ended.lock().unwrap() = Some((bytes, how)))
        };
        (ended, finish)
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_that_are_ready_together_go_on_as_one_and_a_lone_chunk_does_not_wait() {
        let (ended, finish) = recorder();
        let events = vec![
            Ok(&b"head "[..]),
            Ok(b"event: a\n\n"),
            Ok(b"event: b\n\n"),
            Ok(b"event: c\n\n"),
        ];
        let mut relay = Relay::new(burst(events), Duration::from_secs(5), Some(finish));
        // The first chunk goes at once (with the answer's head), the burst
        // behind it as one.
        let first = relay.next().await.unwrap().unwrap();
        assert_eq!(&first[..], b"head ");
        let rest = relay.next().await.unwrap().unwrap();
        assert_eq!(&rest[..], b"event: a\n\nevent: b\n\nevent: c\n\n");
        assert!(relay.next().await.is_none());
        assert_eq!(*ended.lock().unwrap(), Some((35, BodyEnd::Complete)));

        // A chunk with nothing behind it yet goes on at once, while the
        // upstream is still open.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut relay = Relay::new(answer(rx), Duration::from_secs(5), None);
        let started = Instant::now();
        for chunk in ["first", "alone"] {
            tx.send(Bytes::from(chunk)).unwrap();
            let got = relay.next().await.unwrap().unwrap();
            assert_eq!(&got[..], chunk.as_bytes());
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
        drop(tx);
    }

    #[tokio::test]
    async fn bytes_gathered_before_an_upstream_break_reach_the_client_before_the_error() {
        let (ended, finish) = recorder();
        let items = vec![
            Ok(&b"head "[..]),
            Ok(b"partial "),
            Ok(b"answer"),
            Err("cut"),
        ];
        let mut relay = Relay::new(burst(items), Duration::from_secs(5), Some(finish));
        let first = relay.next().await.unwrap().unwrap();
        assert_eq!(&first[..], b"head ");
        let gathered = relay.next().await.unwrap().unwrap();
        assert_eq!(&gathered[..], b"partial answer");
        let cut = relay.next().await.unwrap();
        assert!(matches!(cut, Err(RelayError::Upstream(_))), "{cut:?}");
        assert!(relay.next().await.is_none());
        assert_eq!(*ended.lock().unwrap(), Some((19, BodyEnd::UpstreamBroke)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_silent_for_the_idle_timeout_cuts_the_body() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (ended, finish) = recorder();
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
