//! The rotating proxy: `ANY /proxy/<provider>/<path>` forwards to
//! `<proxy.upstream>/<path>` with the next account's token, so a client that
//! only takes a base URL and a key (an SDK, an agent CLI) gets the farm's
//! failover without knowing about it.
//!
//! One request, in order:
//!
//! 1. The client authenticates with its farm key, as `Authorization: Bearer`
//!    or `x-api-key`; without a valid one it gets a 401 and nothing is sent
//!    upstream. A WebSocket upgrade is refused (501).
//! 2. The body is read in full, up to `proxy.max_body` (else 413), so that
//!    it can be sent again, byte for byte, to another account.
//! 3. Each attempt is a lease through [`Farm::proxy_lease`] (rotation,
//!    sticky session from `x-relogin-session` or `proxy.session_header`,
//!    the lease log, the per-client limits `/credential/next` enforces), and
//!    ends in a report of what the upstream did ([`Farm::record_attempt`] on
//!    a failover, [`Farm::note_attempt`] when the relayed body ends).
//! 4. The request goes upstream without the client's credential, cookies or
//!    hop-by-hop headers, with the account's token in `proxy.auth_header`.
//! 5. Before the first byte of an answer reaches the client, an upstream
//!    status in `proxy.failover_on` moves the request to the next account
//!    it has not tried yet ([`domain::ratelimit::verdict`]): 401 → `unauthorized` (the
//!    single-flight refresh); 429 → a cooldown until the announced reset;
//!    a 429 with `x-should-retry: true` and a 529 → no cooldown. A connection
//!    error or `first_byte_timeout` moves on too. After `max_attempts`, or
//!    when only tried accounts that are still usable remain, the last
//!    upstream answer goes to the client as it came (or the 502/504 of the
//!    last error); when no account can serve, the 503 of `/credential/next`
//!    (with `Retry-After`).
//! 6. The answer streams to the client chunk by chunk ([`relay::Relay`]); a
//!    client that goes away drops the upstream request; a break after the
//!    first byte reaches the client as a cut body, never as a retry.
//!
//! Every answer carries `x-relogin-account` and `x-relogin-lease` once an
//! account was leased. The last rate-limit headers of each account are kept
//! as its quota (shown in the account view).
//!
//! [`domain::ratelimit::verdict`]: crate::domain::ratelimit::verdict

pub mod headers;
pub mod metrics;
pub mod relay;
pub mod state;
pub mod usage;

pub use state::{Proxies, Quota, UsageReport};

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::{Reply, Response};

use crate::config::ProxyConfig;
use crate::domain::ratelimit::{self, Verdict};
use crate::domain::AccountId;
use crate::events::EventKind;
use crate::farm::{Farm, FarmError, Issued, Principal};
use crate::store::leases::{BodyEnd, Outcome, Upstream};

/// Why the proxy answers itself instead of with the upstream's answer
/// (rendered in `http::error`).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("a valid client key is required")]
    Unauthorized,
    #[error("provider {0:?} has no [provider.proxy] section")]
    NotProxied(String),
    #[error("the request body is larger than proxy.max_body ({0} bytes)")]
    TooLarge(usize),
    #[error("the request body could not be read: {0}")]
    Body(String),
    #[error("WebSocket upgrades are not proxied; use plain HTTP or SSE")]
    WebSocket,
    #[error("the upstream could not be reached: {0}")]
    Unreachable(String),
    #[error("the upstream did not answer within proxy.first_byte_timeout ({0} s)")]
    Timeout(u64),
    #[error(transparent)]
    Farm(#[from] FarmError),
}

/// A client's request as the router hands it over.
pub struct Incoming {
    pub provider: String,
    /// The path after `/proxy/<provider>/`.
    pub path: String,
    /// The raw query string (`""`: none).
    pub query: String,
    pub method: Method,
    pub headers: HeaderMap,
}

/// Bodies up to this much over `max_body` are read (and dropped) before the
/// 413, so the client finishes sending and reads the answer instead of a
/// reset connection.
const MAX_DRAINED: usize = 1024 * 1024;

/// The account and lease that served (or last tried) a request.
struct Served {
    account: AccountId,
    lease: Option<HeaderValue>,
}

/// Serves one proxied request; every outcome is a response. The proxy's
/// own refusals are rendered by `render` (the router passes `http::error`'s
/// renderer: errors become HTTP there only, and the proxy need not import
/// the HTTP layer that routes to it).
pub async fn handle<S, B, E>(
    farm: Arc<Farm>,
    who: Principal,
    req: Incoming,
    body: S,
    render: impl FnOnce(ProxyError) -> Response,
) -> Response
where
    S: Stream<Item = Result<B, E>> + Send + Unpin,
    B: Buf,
    E: std::fmt::Display,
{
    let mut served = None;
    let mut resp = match forward(&farm, who, &req, body, &mut served).await {
        Ok(resp) => resp,
        Err(e) => render(e),
    };
    if let Some(s) = served {
        let h = resp.headers_mut();
        h.insert("x-relogin-account", HeaderValue::from(s.account));
        if let Some(v) = s.lease {
            h.insert("x-relogin-lease", v);
        }
    }
    if farm.proxies().upstreams.contains_key(&req.provider) {
        farm.proxies()
            .metrics
            .record_answer(&req.provider, resp.status().as_u16());
    }
    resp
}

async fn forward<S, B, E>(
    farm: &Arc<Farm>,
    who: Principal,
    req: &Incoming,
    body: S,
    served: &mut Option<Served>,
) -> Result<Response, ProxyError>
where
    S: Stream<Item = Result<B, E>> + Send + Unpin,
    B: Buf,
    E: std::fmt::Display,
{
    let up = match farm.proxies().upstreams.get(&req.provider) {
        Some(up) => up,
        None => {
            farm.provider(&req.provider)?;
            return Err(ProxyError::NotProxied(req.provider.clone()));
        }
    };
    let cfg = &up.config;
    let wants_upgrade = req
        .headers
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if wants_upgrade {
        return Err(ProxyError::WebSocket);
    }
    let body = read_body(&req.headers, body, cfg.max_body).await?;
    let session = headers::session(&req.headers, cfg).map(str::to_owned);
    let sent_headers = headers::upstream_request(&req.headers, cfg);
    let mut url = up.base.clone();
    url.set_path(&format!("{}/{}", up.base_path, req.path));
    url.set_query((!req.query.is_empty()).then_some(req.query.as_str()));
    let method = reqwest::Method::from_bytes(req.method.as_str().as_bytes())
        .map_err(|e| ProxyError::Body(e.to_string()))?;

    // The account the previous attempt left, and why; the accounts tried.
    let mut left: Option<(AccountId, String)> = None;
    let mut tried: Vec<AccountId> = Vec::with_capacity(cfg.max_attempts);
    // The last failed attempt: an upstream answer that moved on while its
    // account stays usable (529, a retryable 429), or an error.
    let mut held: Option<reqwest::Response> = None;
    let mut failure: Option<ProxyError> = None;
    for attempt in 1..=cfg.max_attempts {
        let leased = farm.proxy_lease(&req.provider, session.as_deref(), who, &tried);
        let lease = match leased {
            Ok(lease) => lease,
            Err(e) => {
                if let Some((from, why)) = left.take() {
                    failed_over(farm, from, None, &why);
                }
                // Only accounts this request already tried could serve:
                // their last answer (or error) is the client's. Otherwise
                // nothing can serve: the farm's 503.
                let only_tried = matches!(e, FarmError::NoAccountAvailable { .. });
                return match (only_tried, held, failure) {
                    (true, Some(resp), _) => Ok(relay(resp, cfg, None)),
                    (true, None, Some(f)) => Err(f),
                    _ => Err(e.into()),
                };
            }
        };
        let account = lease.answer.account_id;
        if let Some((from, why)) = left.take() {
            failed_over(farm, from, Some(account), &why);
        }
        tried.push(account);
        held = None;
        failure = None;
        *served = Some(Served {
            account,
            lease: HeaderValue::from_str(&lease.answer.lease_id).ok(),
        });
        let mut request = reqwest::Request::new(method.clone(), url.clone());
        *request.headers_mut() = sent_headers.clone();
        if let Some((name, value)) = headers::credential(cfg, lease.answer.access_token.expose()) {
            request.headers_mut().append(name, value);
        }
        *request.body_mut() = Some(body.clone().into());
        let started = Instant::now();
        let answer = tokio::time::timeout(cfg.first_byte_timeout, up.http.execute(request)).await;
        let latency = started.elapsed();
        let unrelayed = |status: u16| Upstream {
            status,
            bytes: 0,
            latency_ms: millis(latency),
            body_end: BodyEnd::NotRelayed,
        };
        let resp = match answer {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                record(farm, &lease, who, Outcome::Error, None, unrelayed(0)).await;
                let why = if e.is_connect() { "connect" } else { "request" };
                let error = ProxyError::Unreachable(describe(&e));
                tracing::warn!(account, error = %error, "proxy: upstream request failed");
                failure = Some(error);
                left = Some((account, why.to_owned()));
                continue;
            }
            Err(_) => {
                record(farm, &lease, who, Outcome::Error, None, unrelayed(0)).await;
                failure = Some(ProxyError::Timeout(cfg.first_byte_timeout.as_secs()));
                left = Some((account, "timeout".to_owned()));
                continue;
            }
        };
        farm.proxies().metrics.record_latency(latency);
        let now = farm.clock().now();
        farm.proxies()
            .note_quota(account, resp.headers(), &cfg.quota_headers, now);
        let status = resp.status().as_u16();
        // The headers only matter to a status that fails over: an answer
        // relayed as it came is not read twice.
        let verdict = if cfg.failover_on.contains(&status) {
            let pairs: Vec<(&str, &str)> = resp
                .headers()
                .iter()
                .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
                .collect();
            ratelimit::verdict(
                status,
                pairs.iter().copied(),
                &cfg.failover_on,
                &cfg.reset_headers,
                now,
            )
        } else {
            Verdict::Pass
        };
        match verdict {
            Verdict::Pass => {
                let outcome = if status >= 500 {
                    Outcome::Error
                } else {
                    Outcome::Ok
                };
                // Recorded when the body has ended (or the client left):
                // the answer is not delayed by it.
                let farm = farm.clone();
                let latency_ms = millis(latency);
                let finish: relay::Finish = Box::new(move |bytes, body_end| {
                    let upstream = Upstream {
                        status,
                        bytes,
                        latency_ms,
                        body_end,
                    };
                    let outcome = match body_end {
                        BodyEnd::UpstreamBroke => Outcome::Error,
                        _ => outcome,
                    };
                    farm.note_attempt(&lease, who, outcome, upstream);
                });
                return Ok(relay(resp, cfg, Some(finish)));
            }
            Verdict::Unauthorized => {
                record(
                    farm,
                    &lease,
                    who,
                    Outcome::Unauthorized,
                    None,
                    unrelayed(status),
                )
                .await;
            }
            Verdict::RateLimited { until } => {
                let seconds = until.map(|u| ratelimit::seconds_until(u, now));
                record(
                    farm,
                    &lease,
                    who,
                    Outcome::RateLimited,
                    seconds,
                    unrelayed(status),
                )
                .await;
            }
            Verdict::Busy => {
                record(farm, &lease, who, Outcome::Error, None, unrelayed(status)).await;
            }
        }
        // An answer relayed after this is already recorded (as not relayed:
        // the attempt itself failed).
        if attempt == cfg.max_attempts {
            return Ok(relay(resp, cfg, None));
        }
        if verdict == Verdict::Busy {
            held = Some(resp);
        }
        left = Some((account, verdict.why(status)));
    }
    if let Some((from, why)) = left {
        failed_over(farm, from, None, &why);
    }
    Err(failure.unwrap_or_else(|| ProxyError::Unreachable("no attempt was made".into())))
}
/// Reads the whole body (it is replayed on failover), at most `limit` bytes.
async fn read_body<S, B, E>(
    headers: &HeaderMap,
    mut body: S,
    limit: usize,
) -> Result<Bytes, ProxyError>
where
    S: Stream<Item = Result<B, E>> + Send + Unpin,
    B: Buf,
    E: std::fmt::Display,
{
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit.saturating_add(MAX_DRAINED)) {
        return Err(ProxyError::TooLarge(limit));
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    let mut seen = 0usize;
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| ProxyError::Body(e.to_string()))?;
        seen = seen.saturating_add(chunk.remaining());
        if seen > limit {
            if seen > limit.saturating_add(MAX_DRAINED) {
                break;
            }
            chunk.advance(chunk.remaining());
            continue;
        }
        buf.put(chunk);
    }
    if seen > limit {
        return Err(ProxyError::TooLarge(limit));
    }
    Ok(buf.freeze())
}

/// The upstream's answer as the client's: status and headers (less
/// hop-by-hop and cookies), the body streamed through; `finish` is told how
/// it ended.
fn relay(
    mut resp: reqwest::Response,
    cfg: &ProxyConfig,
    finish: Option<relay::Finish>,
) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = std::mem::take(resp.headers_mut());
    headers::clean_response(&mut headers);
    let body = relay::Relay::new(resp, cfg.idle_timeout, finish);
    let mut out = warp::reply::stream(body).into_response();
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// Records an attempt (see [`Farm::record_attempt`]); a failure to record
/// is logged, the request goes on.
async fn record(
    farm: &Farm,
    lease: &Issued,
    who: Principal,
    outcome: Outcome,
    retry_after_s: Option<u64>,
    upstream: Upstream,
) {
    if let Err(e) = farm
        .record_attempt(lease, who, outcome, retry_after_s, upstream)
        .await
    {
        tracing::warn!(error = %e, "proxy: could not record the attempt's outcome");
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Records a move from account `from` to `to` (`None`: no account could take
/// over).
fn failed_over(farm: &Farm, from: AccountId, to: Option<AccountId>, why: &str) {
    let reason = why.split(' ').next().unwrap_or(why);
    farm.proxies().metrics.record_failover(reason);
    let to = to.map_or_else(|| "none".to_owned(), |id| format!("account {id}"));
    farm.emit(
        EventKind::ProxyFailover,
        Some(from),
        format!("account {from} → {to}: {why}"),
    );
}

/// A connection error in words, without the URL (which may carry a query).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "connection failed".to_owned()
    } else if e.is_timeout() {
        "timed out".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}
