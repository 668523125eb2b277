//! The HTTP listener: accepts client connections and serves each with
//! hyper's HTTP/1 and the warp routes, within limits that hold against slow
//! and flooding clients, with or without a token:
//!
//! - at most `server.max_connections` at once: the accept loop takes a slot
//!   before it accepts, so past the cap connections wait in the kernel's
//!   queue, and descriptors are left for the farm's own outgoing work;
//! - at most `server.max_connections_per_ip` from one address: more are
//!   closed at once, so one host cannot take every slot;
//! - a request head must arrive whole within `server.header_read_timeout`
//!   (of the accept, TLS handshake included, for a connection's first one;
//!   of its first byte after that), so half-sent heads free their slots;
//! - a connection on which nothing moves for `server.idle_timeout` while no
//!   request of it is being handled is closed (idle keep-alive, stalled
//!   readers); event streams send comments often enough to stay open.
//!
//! hyper's own header timeout is not used: it also runs while a keep-alive
//! connection waits for its next request, which would make it the idle
//! timeout too. Each connection has a watchdog over its [`Activity`]
//! instead. The watchdog takes no part in the requests: reads, writes and
//! handlers only note the time in the [`Activity`], and the watchdog looks
//! at it when its own timer fires — at the earliest deadline it knows of,
//! and at least once per `min(header_read_timeout, idle_timeout)`, which is
//! the soonest a deadline it does not know of yet (a head begun while it
//! sleeps, a handler finishing) can fall. No wake-up, timer or lock
//! hand-off per request: a watchdog woken on every request cost the farm
//! more CPU per request than the rest of `/credential/next`.

pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::farm::Farm;
use crate::metrics::ConnectionClosed;
use tls::{TlsCert, TlsError};

/// Descriptors kept for the farm's own work when `server.max_connections`
/// is derived from the file limit: the database and its journal, refresh
/// grants (`scheduler.max_concurrent_refreshes`), relogins (Chromium and its
/// driver), webhooks, backups, login listeners, with room to spare.
pub const FD_RESERVE: u64 = 256;

/// The derived `server.max_connections` never exceeds this: more clients
/// than that at once is not a farm's load but a flood.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("server.listen: {0}")]
    Io(#[from] io::Error),
}

/// The timeouts and caps of [`Listener`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}

/// `server.max_connections` when not configured, for a soft file limit of
/// `nofile`: what is left after [`FD_RESERVE`], at most
/// [`DEFAULT_MAX_CONNECTIONS`], at least one.
pub fn default_max_connections(nofile: u64) -> usize {
    let left = nofile.saturating_sub(FD_RESERVE);
    usize::try_from(left)
        .unwrap_or(usize::MAX)
        .clamp(1, DEFAULT_MAX_CONNECTIONS)
}

/// Raises the soft limit on open files to the hard limit (a process starts
/// with the soft one, often 1024); returns the limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut limit = nofile_rlimit()?;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct passed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// The soft limit on open files.
fn nofile_limit() -> io::Result<u64> {
    Ok(nofile_rlimit()?.rlim_cur)
}

fn nofile_rlimit() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// A bound listener with its limits and, when configured, its certificate.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<Arc<TlsCert>>,
    limits: Limits,
}

impl Listener {
    /// Reads the certificate (if configured) and settles the limits; warns
    /// when a non-loopback address is served without TLS.
    pub fn new(tcp: TcpListener, server: &ServerConfig) -> Result<Listener, ListenerError> {
        let tls = server.tls.as_ref().map(TlsCert::load).transpose()?;
        let addr = tcp.local_addr()?;
        if in_clear_beyond_this_host(addr, tls.is_some()) {
            tracing::warn!(
                %addr,
                "listening beyond loopback without TLS: client keys and the admin token cross \
                 the network in clear; set server.tls_cert_file and server.tls_key_file \
                 (`relogin-farm init --tls`) or put a TLS reverse proxy in front"
            );
        }
        let nofile = nofile_limit()?;
        let room = usize::try_from(nofile.saturating_sub(FD_RESERVE))
            .unwrap_or(usize::MAX)
            .max(1);
        let configured = server
            .max_connections_configured
            .then_some(server.max_connections);
        let max_connections = match configured {
            Some(n) if n > room => {
                tracing::warn!(
                    configured = n,
                    nofile,
                    "server.max_connections leaves fewer than {FD_RESERVE} of the open-file \
                     limit for the farm's own work; using {room}"
                );
                room
            }
            Some(n) => n,
            None => default_max_connections(nofile),
        };
        let limits = Limits {
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            max_connections,
            max_connections_per_ip: server.max_connections_per_ip.min(max_connections),
        };
        tracing::info!(
            nofile,
            max_connections,
            max_connections_per_ip = limits.max_connections_per_ip,
            tls = tls.is_some(),
            "connection limits"
        );
        Ok(Listener { tcp, tls, limits })
    }

    /// `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> io::Result<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Ok(format!("{scheme}://{}", self.tcp.local_addr()?))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Serves the farm's routes until `stop`, then lets the open
    /// connections finish their requests (idle ones close at once).
    pub async fn run(self, farm: Arc<Farm>, stop: impl Future<Output = ()>) {
        let Listener { tcp, tls, limits } = self;
        let router = crate::http::front::Router::new(farm.clone());
        // The certificate's resolver reads the current certificate at each
        // handshake: one configuration serves across reloads.
        let acceptor = tls
            .as_ref()
            .map(|cert| tokio_rustls::TlsAcceptor::from(cert.server_config()));
        let reloader = tls.map(|cert| tokio::spawn(reload_on_sighup(cert)));
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let per_ip = Arc::new(PerIp::new(limits.max_connections_per_ip));
        let graceful = GracefulShutdown::new();
        // Each connection watches a child of this token: a child has its
        // own waiter list, so the connections' tasks, which poll it on every
        // wake-up, never contend for one lock (a shared `watch` channel's
        // did, once per request).
        let drain = CancellationToken::new();
        tokio::pin!(stop);
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                _ = &mut stop => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = tcp.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        accept_error(e).await;
                        continue;
                    }
                },
                _ = &mut stop => break,
            };
            let Some(ip_slot) = per_ip.take(peer.ip()) else {
                farm.record_connection_closed(ConnectionClosed::PerIpLimit);
                tracing::debug!(%peer, "refused: server.max_connections_per_ip reached");
                continue;
            };
            let conn = Conn {
                farm: farm.clone(),
                limits,
                watcher: graceful.watcher(),
                draining: drain.child_token(),
                slots: (slot, ip_slot),
            };
            let service = router.service();
            tokio::spawn(conn.serve(stream, acceptor.clone(), service));
        }
        drop(tcp);
        if let Some(reloader) = reloader {
            reloader.abort();
        }
        drain.cancel();
        graceful.shutdown().await;
    }
}

/// Whether a listener on `addr` would carry bearer tokens in clear to other
/// machines: it is not loopback-only and has no TLS.
fn in_clear_beyond_this_host(addr: SocketAddr, tls: bool) -> bool {
    !tls && !addr.ip().is_loopback()
}

/// Accept errors: a connection reset before it was accepted is nothing; a
/// full descriptor table is logged and waited out (the cap should prevent
/// it, but another part of the process may have used them up).
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %e, "accept error");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn reload_on_sighup(cert: Arc<TlsCert>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install a SIGHUP handler: the certificate is not reloadable");
        return;
    };
    while hup.recv().await.is_some() {
        match cert.reload() {
            Ok(fingerprint) => {
                tracing::info!(%fingerprint, "TLS certificate reloaded (SIGHUP)")
            }
            Err(e) => tracing::error!(
                error = %e,
                fingerprint = %cert.fingerprint(),
                "TLS certificate not reloaded; the one in use is kept"
            ),
        }
    }
}

/// Connections open per IP address, each counted by an [`IpSlot`].
struct PerIp {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

struct IpSlot {
    map: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn new(limit: usize) -> Self {
        PerIp {
            limit,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        // An IPv4 client of a dual-stack socket is one address, not two.
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            map: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.map.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// One accepted connection and what it holds until it ends.
struct Conn {
    farm: Arc<Farm>,
    limits: Limits,
    watcher: Watcher,
    /// Cancelled when the listener drains (see `http`).
    draining: CancellationToken,
    /// Its place under `server.max_connections` and the per-IP cap.
    slots: (tokio::sync::OwnedSemaphorePermit, IpSlot),
}

impl Conn {
    async fn serve<S>(self, stream: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>, service: S)
    where
        S: hyper::service::Service<hyper::Request<Incoming>, Response = warp::reply::Response>
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        let Conn {
            farm,
            limits,
            watcher,
            draining,
            slots,
        } = self;
        let drain = (watcher, draining);
        let accepted = Instant::now();
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new(accepted));
        let held = Held::new(farm.clone(), slots);
        let closed = match tls {
            None => http(stream, held, &activity, service, drain, &limits).await,
            Some(acceptor) => {
                let deadline = accepted + limits.header_read_timeout;
                match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => http(stream, held, &activity, service, drain, &limits).await,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        None
                    }
                    Err(_) => Some(ConnectionClosed::HeaderTimeout),
                }
            }
        };
        if let Some(why) = closed {
            farm.record_connection_closed(why);
            tracing::debug!(reason = why.as_str(), "connection closed by the farm");
        }
    }
}

/// Serves HTTP/1 on `io` until the client closes, the watchdog closes,
/// or a graceful shutdown has let its last request finish; returns why
/// the farm closed it, if it did.
async fn http<IO, S>(
    io: IO,
    held: Held,
    activity: &Arc<Activity>,
    service: S,
    drain: (Watcher, CancellationToken),
    limits: &Limits,
) -> Option<ConnectionClosed>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<Incoming>, Response = warp::reply::Response>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let io = TokioIo::new(Tracked::new(io, activity.clone(), held));
    let service = Handled {
        inner: service,
        activity: activity.clone(),
    };
    // Upgrades: the admin page's remote browser is a WebSocket. An upgraded
    // connection leaves this function (and its watchdog) once handed over;
    // its session's own limits bound it (`http::remote`). It keeps its
    // slots: the byte stream holds them.
    // hyper-util's graceful watcher does not take an upgradeable
    // connection: the watcher only counts it, and `draining` starts its
    // graceful shutdown.
    let (_counted, draining) = drain;
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut signalled = false;
    loop {
        tokio::select! {
            // In this order on every wake-up: the connection's work first,
            // and no random draw.
            biased;
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return None;
            }
            _ = draining.cancelled(), if !signalled => {
                signalled = true;
                conn.as_mut().graceful_shutdown();
            }
            why = activity.expired(limits) => return Some(why),
        }
    }
}

/// What the watchdog of one connection knows: updated by [`Tracked`] (bytes
/// read and written) and [`Handled`] (requests being handled).
struct Activity {
    state: Mutex<State>,
}

/// What an open connection holds: its places under the caps, and its count
/// in the farm's gauge. The two are given back in this order.
struct Held {
    /// Given back before the connection's descriptor is closed: closing it
    /// wakes the client, which may connect again at once (and, woken, can
    /// run before this thread has dropped anything else): the host's new
    /// connection must find its place free.
    ip: IpSlot,
    open: Open,
}

/// A connection's place under `server.max_connections` and its count in the
/// gauge: given back once its descriptor is closed, so the descriptors kept
/// for the farm's own work stay free. (A connection over the cap waits in
/// the kernel's queue, so this order refuses nobody.)
struct Open {
    farm: Arc<Farm>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Held {
    fn new(farm: Arc<Farm>, slots: (tokio::sync::OwnedSemaphorePermit, IpSlot)) -> Self {
        farm.record_connection(1);
        let (permit, ip) = slots;
        Held {
            ip,
            open: Open {
                farm,
                _permit: permit,
            },
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.farm.record_connection(-1);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    /// Requests whose handler has not produced its response yet.
    handlers: usize,
    /// When a byte last moved either way (or a handler finished).
    last_io: Instant,
    /// When the request head being awaited began: the accept for the first
    /// one, its first byte for later ones; `None` between requests.
    head_since: Option<Instant>,
}

impl State {
    fn new(accepted: Instant) -> Self {
        State {
            handlers: 0,
            last_io: accepted,
            head_since: Some(accepted),
        }
    }

    fn read(&mut self, now: Instant) {
        self.last_io = now;
        if self.handlers == 0 && self.head_since.is_none() {
            self.head_since = Some(now);
        }
    }

    fn handler_started(&mut self) {
        self.handlers += 1;
        self.head_since = None;
    }

    fn handler_done(&mut self, now: Instant) {
        self.handlers -= 1;
        self.last_io = now;
    }

    /// When the connection is to be closed, and why; `None` while a handler
    /// runs (the farm is working on it; its own timeouts bound that).
    fn deadline(&self, limits: &Limits) -> Option<(Instant, ConnectionClosed)> {
        if self.handlers > 0 {
            return None;
        }
        let idle = (
            self.last_io + limits.idle_timeout,
            ConnectionClosed::IdleTimeout,
        );
        Some(match self.head_since {
            Some(since) => {
                let head = (
                    since + limits.header_read_timeout,
                    ConnectionClosed::HeaderTimeout,
                );
                if head.0 <= idle.0 {
                    head
                } else {
                    idle
                }
            }
            None => idle,
        })
    }
}

impl Activity {
    fn new(accepted: Instant) -> Self {
        Activity {
            state: Mutex::new(State::new(accepted)),
        }
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Resolves when the connection has overstayed a limit (see the
    /// module docs for why it polls instead of being woken).
    async fn expired(&self, limits: &Limits) -> ConnectionClosed {
        let unseen = limits.header_read_timeout.min(limits.idle_timeout);
        loop {
            let now = Instant::now();
            let known = self
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .deadline(limits);
            let wake = match known {
                Some((at, why)) if at <= now => return why,
                Some((at, _)) => at.min(now + unseen),
                None => now + unseen,
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// The connection's byte stream, reporting progress to its [`Activity`].
/// It holds the connection's places under the caps: an upgraded connection
/// (a WebSocket) is this stream too, and keeps them until it closes.
struct Tracked<IO> {
    // Fields drop in this order: the host's place before `io` closes, the
    // rest after (see [`Held`]).
    _ip: IpSlot,
    io: IO,
    activity: Arc<Activity>,
    _open: Open,
}

impl<IO> Tracked<IO> {
    fn new(io: IO, activity: Arc<Activity>, held: Held) -> Self {
        let Held { ip, open } = held;
        Tracked {
            _ip: ip,
            io,
            activity,
            _open: open,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.update(|s| s.read(Instant::now()));
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.update(|s| s.last_io = Instant::now());
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.update(|s| s.last_io = Instant::now());
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The routes as a hyper service that tells the [`Activity`] while a
/// handler runs.
struct Handled<S> {
    inner: S,
    activity: Arc<Activity>,
}

type Handling<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B> hyper::service::Service<hyper::Request<Incoming>> for Handled<S>
where
    S: hyper::service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Handling<S::Response, S::Error>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let handling = HandlerGuard::start(self.activity.clone());
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await;
            let upgraded =
                matches!(&response, Ok(r) if r.status() == hyper::StatusCode::SWITCHING_PROTOCOLS);
            drop(handling);
            if upgraded {
                // This future is polled by the connection's own task. Once
                // the 101 is written, hyper hands the upgraded stream over
                // on its next poll, and nothing else would wake the task
                // for it: wake it now, so that poll follows this one.
                std::future::poll_fn(|cx| {
                    cx.waker().wake_by_ref();
                    Poll::Ready(())
                })
                .await;
            }
            response
        })
    }
}

/// One running handler; dropped when its response is ready (or the
/// connection goes).
struct HandlerGuard(Arc<Activity>);

impl HandlerGuard {
    fn start(activity: Arc<Activity>) -> Self {
        activity.update(State::handler_started);
        HandlerGuard(activity)
    }
}

impl Drop for HandlerGuard {
    fn drop(&mut self) {
        self.0.update(|s| s.handler_done(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4,
            max_connections_per_ip: 2,
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_silent_or_half_sent_head_is_closed_at_the_header_timeout_from_the_accept() {
        let t0 = Instant::now();
        let mut s = State::new(t0);
        assert_eq!(
            s.deadline(&limits()),
            Some((t0 + secs(10), ConnectionClosed::HeaderTimeout))
        );
        // Trickling bytes does not move it.
        s.read(t0 + secs(9));
        assert_eq!(
            s.deadline(&limits()),
            Some((t0 + secs(10), ConnectionClosed::HeaderTimeout))
        );
    }

    #[test]
    fn a_handler_suspends_the_deadlines_and_then_idle_time_counts() {
        let t0 = Instant::now();
        let mut s = State::new(t0);
        s.read(t0 + secs(1));
        s.handler_started();
        s.read(t0 + secs(2)); // the body: not a new head
        assert_eq!(s.deadline(&limits()), None);
        s.handler_done(t0 + secs(500));
        assert_eq!(
            s.deadline(&limits()),
            Some((t0 + secs(560), ConnectionClosed::IdleTimeout))
        );
        // Writing the response body is progress.
        s.last_io = t0 + secs(530);
        assert_eq!(
            s.deadline(&limits()),
            Some((t0 + secs(590), ConnectionClosed::IdleTimeout))
        );
        // The next request's first byte starts its header timeout.
        s.read(t0 + secs(600));
        assert_eq!(
            s.deadline(&limits()),
            Some((t0 + secs(610), ConnectionClosed::HeaderTimeout))
        );
        // Whichever comes first: an idle timeout shorter than the header one.
        let short_idle = Limits {
            idle_timeout: secs(3),
            ..limits()
        };
        assert_eq!(
            s.deadline(&short_idle),
            Some((t0 + secs(603), ConnectionClosed::IdleTimeout))
        );
    }

    /// The watchdog is never woken by the connection, yet a deadline that
    /// appears while it sleeps (a head begun after a handler) is kept to the
    /// millisecond.
    #[tokio::test(start_paused = true)]
    async fn the_watchdog_keeps_deadlines_that_appear_while_it_sleeps() {
        let t0 = Instant::now();
        let activity = Arc::new(Activity::new(t0));
        let limits = limits();
        let watchdog = tokio::spawn({
            let activity = activity.clone();
            async move { (activity.expired(&limits).await, Instant::now()) }
        });
        // The first head arrives, its handler runs for 30 s.
        tokio::time::sleep(secs(1)).await;
        activity.update(|s| s.read(Instant::now()));
        activity.update(State::handler_started);
        tokio::time::sleep(secs(30)).await;
        activity.update(|s| s.handler_done(Instant::now()));
        // 3 s later the next head begins and never completes.
        tokio::time::sleep(secs(3)).await;
        let head = Instant::now();
        activity.update(|s| s.read(head));
        let (why, at) = watchdog.await.unwrap();
        assert_eq!(why, ConnectionClosed::HeaderTimeout);
        assert_eq!(at, head + secs(10));
    }

    /// A byte stream that, as it closes, looks at the places it was given.
    struct Closing {
        per_ip: Arc<PerIp>,
        permits: Arc<Semaphore>,
        seen: Arc<Mutex<Option<(bool, usize)>>>,
    }

    impl Drop for Closing {
        fn drop(&mut self) {
            let host_free = self.per_ip.take("127.0.0.2".parse().unwrap()).is_some();
            *self.seen.lock().unwrap() = Some((host_free, self.permits.available_permits()));
        }
    }

    #[tokio::test]
    async fn the_host_s_place_is_free_before_the_connection_closes_and_the_cap_s_after() {
        // A client at its per-IP cap that closes a connection and opens
        // another at once must not be refused: closing the descriptor wakes
        // it, and it may connect before this thread drops anything else.
        let dir = tempfile::tempdir().unwrap();
        let farm = crate::farm::test_farm(dir.path(), "");
        let per_ip = Arc::new(PerIp::new(1));
        let permits = Arc::new(Semaphore::new(1));
        let permit = permits.clone().acquire_owned().await.unwrap();
        let ip = per_ip.take("127.0.0.2".parse().unwrap()).unwrap();
        let held = Held::new(farm, (permit, ip));
        let seen = Arc::new(Mutex::new(None));
        let io = Closing {
            per_ip: per_ip.clone(),
            permits: permits.clone(),
            seen: seen.clone(),
        };
        drop(Tracked::new(
            io,
            Arc::new(Activity::new(Instant::now())),
            held,
        ));
        assert_eq!(
            *seen.lock().unwrap(),
            Some((true, 0)),
            "(host's place free, places under max_connections free) as the descriptor closed"
        );
        assert_eq!(permits.available_permits(), 1);
    }

    #[test]
    fn per_ip_slots_are_counted_and_given_back() {
        let map = Arc::new(PerIp::new(2));
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        let first = map.take(a).unwrap();
        let _second = map.take(mapped).unwrap();
        assert!(map.take(a).is_none(), "the mapped address is the same host");
        assert!(map.take("127.0.0.3".parse().unwrap()).is_some());
        drop(first);
        assert!(map.take(a).is_some());
    }

    #[test]
    fn the_derived_connection_cap_keeps_the_reserve() {
        assert_eq!(default_max_connections(1024), 768);
        assert_eq!(default_max_connections(1 << 20), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(default_max_connections(300), 44);
        assert_eq!(default_max_connections(100), 1);
    }

    #[test]
    fn plain_http_beyond_loopback_is_warned_about() {
        let warned = |addr: &str, tls| in_clear_beyond_this_host(addr.parse().unwrap(), tls);
        assert!(warned("0.0.0.0:8377", false));
        assert!(warned("192.168.1.5:8377", false));
        assert!(warned("[::]:8377", false));
        assert!(!warned("0.0.0.0:8377", true));
        assert!(!warned("127.0.0.1:8377", false));
        assert!(!warned("127.0.0.9:8377", false));
        assert!(!warned("[::1]:8377", false));
    }
}
