//! `proxy.usage_url`: a provider's usage endpoint (one that reports the
//! account's quota without spending it), polled on `proxy.usage_schedule`
//! with each enabled account's token, sent as the proxy sends it
//! (`auth_header`/`auth_scheme` and the extra `headers`), each poll within
//! `proxy.usage_timeout`. The last good JSON answer is kept per account and
//! shown as `quota.usage`; a failure is logged (status or error, never the
//! token or the answer) and changes nothing about the account.

use futures_util::StreamExt;
use warp::http::HeaderMap;

use super::headers;
use super::state::UsageReport;
use crate::farm::Farm;

/// The largest usage answer kept; a longer one is dropped as a failure.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Polls `provider`'s usage endpoint once for each of its enabled accounts
/// that has an access token, one after the other (the endpoint is the
/// provider's, and a poll is never urgent).
pub async fn poll(farm: &Farm, provider: &str) {
    let Some(up) = farm.proxies().upstreams.get(provider) else {
        return;
    };
    let Some(url) = &up.config.usage_url else {
        return;
    };
    let sent = headers::upstream_request(&HeaderMap::new(), &up.config);
    for (account, token) in farm.usage_tokens(provider) {
        let mut request = up
            .http
            .get(url.as_str())
            .headers(sent.clone())
            .header("accept", "application/json")
            .timeout(up.config.usage_timeout);
        if let Some((name, value)) = headers::credential(&up.config, token.expose()) {
            request = request.header(name, value);
        }
        match fetch(request).await {
            Ok(answer) => {
                let at = farm.clock().now();
                farm.proxies()
                    .note_usage(account, UsageReport { at, answer });
            }
            Err(why) => {
                tracing::warn!(provider, account, error = %why, "proxy: usage poll failed");
            }
        }
    }
}

/// The endpoint's JSON answer, or why there is none (no URL, token or body
/// in the text).
async fn fetch(request: reqwest::RequestBuilder) -> Result<serde_json::Value, String> {
    let resp = request.send().await.map_err(|e| super::describe(&e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("status {}", status.as_u16()));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| super::describe(&e))?;
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("answer is not JSON: {e}"))
}
