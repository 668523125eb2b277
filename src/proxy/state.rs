//! The proxy's state, kept on the farm (one per farm): each proxied
//! provider's upstream and pooled client, each account's last quota
//! headers, and the proxy's counters. It knows nothing of the farm, so the
//! farm can own it while `proxy/mod.rs` goes through the farm.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use warp::http::{HeaderMap, HeaderName, HeaderValue};

use super::metrics::ProxyMetrics;
use crate::config::{Config, ProxyConfig};
use crate::domain::ratelimit;
use crate::domain::AccountId;

/// What the farm knows of an account's quota: the last rate-limit headers
/// its upstream sent, the windows they describe, and the last answer of
/// `proxy.usage_url`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Quota {
    /// When the headers came (`None`: no proxied answer carried any yet).
    pub at: Option<DateTime<Utc>>,
    pub headers: BTreeMap<String, String>,
    /// The earliest reset among them.
    pub resets_at: Option<DateTime<Utc>>,
    /// Utilization and reset per rate-limit window, read from `headers`.
    #[serde(default)]
    pub windows: Vec<ratelimit::QuotaWindow>,
    /// The last successful answer of `proxy.usage_url` for this account.
    #[serde(default)]
    pub usage: Option<UsageReport>,
}

/// One answer of the provider's usage endpoint, as it came.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UsageReport {
    pub at: DateTime<Utc>,
    /// The endpoint's JSON answer.
    pub answer: serde_json::Value,
}

/// The rate-limit headers of an account's last answer that carried any.
struct QuotaHeaders {
    at: DateTime<Utc>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl QuotaHeaders {
    /// What the headers say, as of when they came.
    fn read(&self) -> Quota {
        let kept: Vec<(String, String)> = self
            .headers
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        Quota {
            at: Some(self.at),
            resets_at: ratelimit::quota_resets_at(&kept, self.at),
            windows: ratelimit::quota_windows(&kept, self.at),
            headers: kept.into_iter().collect(),
            usage: None,
        }
    }
}

/// One proxied provider: its settings and its pooled HTTP client.
pub(super) struct Upstream {
    pub(super) config: ProxyConfig,
    /// `upstream`: a request's URL is this with its path and query set,
    /// so the scheme and host are not parsed again for each request.
    pub(super) base: url::Url,
    /// `upstream`'s path without its trailing `/`.
    pub(super) base_path: String,
    pub(super) http: reqwest::Client,
}

/// The proxy's state, one per farm.
#[derive(Default)]
pub struct Proxies {
    pub(super) upstreams: HashMap<String, Upstream>,
    /// Each account's last rate-limit headers as they came, with their
    /// time: read (windows, resets) only when the account is viewed, not on
    /// every proxied answer.
    quota: Mutex<HashMap<AccountId, QuotaHeaders>>,
    usage: Mutex<HashMap<AccountId, UsageReport>>,
    pub metrics: ProxyMetrics,
}

impl Proxies {
    pub fn new(config: &Config) -> Result<Proxies, String> {
        let mut upstreams = HashMap::new();
        for p in &config.providers {
            let Some(proxy) = &p.proxy else { continue };
            let http = reqwest::Client::builder()
                .connect_timeout(proxy.connect_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .tcp_nodelay(true)
                .build()
                .map_err(|e| format!("provider {}: proxy HTTP client: {e}", p.name))?;
            upstreams.insert(
                p.name.clone(),
                Upstream {
                    base: proxy.upstream.clone(),
                    base_path: proxy.upstream.path().trim_end_matches('/').to_owned(),
                    config: proxy.clone(),
                    http,
                },
            );
        }
        Ok(Proxies {
            upstreams,
            ..Proxies::default()
        })
    }

    /// The account's quota, if the upstream ever sent rate-limit headers or
    /// its usage endpoint answered.
    pub fn quota(&self, account: AccountId) -> Option<Quota> {
        let headers = lock(&self.quota).get(&account).map(QuotaHeaders::read);
        let usage = lock(&self.usage).get(&account).cloned();
        match (headers, usage) {
            (None, None) => None,
            (headers, usage) => Some(Quota {
                usage,
                ..headers.unwrap_or_default()
            }),
        }
    }

    /// The proxied providers with a `usage_url` and its schedule.
    pub fn usage_polls(&self) -> Vec<(String, Option<cron::Schedule>)> {
        self.upstreams
            .iter()
            .filter(|(_, up)| up.config.usage_url.is_some())
            .map(|(name, up)| (name.clone(), up.config.usage_schedule.clone()))
            .collect()
    }

    /// Keeps `report` as the account's last usage report.
    pub(super) fn note_usage(&self, account: AccountId, report: UsageReport) {
        lock(&self.usage).insert(account, report);
    }

    pub(super) fn note_quota(
        &self,
        account: AccountId,
        headers: &HeaderMap,
        prefixes: &[String],
        now: DateTime<Utc>,
    ) {
        // Header names are lower case already (`http` keeps them so).
        let mut kept = headers
            .iter()
            .filter(|(name, _)| ratelimit::is_quota_header(name.as_str(), prefixes))
            .peekable();
        if kept.peek().is_none() {
            return;
        }
        // The account's entry is written over in place: no allocation per
        // answer once the account has one.
        let mut quota = lock(&self.quota);
        let entry = quota.entry(account).or_insert_with(|| QuotaHeaders {
            at: now,
            headers: Vec::new(),
        });
        entry.at = now;
        entry.headers.clear();
        entry
            .headers
            .extend(kept.map(|(n, v)| (n.clone(), v.clone())));
    }
}

/// Quotas are plain records: a panic elsewhere leaves them usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
