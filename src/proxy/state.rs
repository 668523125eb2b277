//! The proxy's state, kept on the farm (one per farm): each proxied
//! provider's upstream and pooled client, each account's last quota
//! headers, and the proxy's counters. It knows nothing of the farm, so the
//! farm can own it while `proxy/mod.rs` goes through the farm.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use warp::http::HeaderMap;

use super::metrics::ProxyMetrics;
use crate::config::{Config, ProxyConfig};
use crate::domain::ratelimit;
use crate::domain::AccountId;

/// The last rate-limit headers an account's upstream sent.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Quota {
    pub at: DateTime<Utc>,
    pub headers: BTreeMap<String, String>,
    /// The earliest reset among them.
    pub resets_at: Option<DateTime<Utc>>,
}

/// One proxied provider: its settings and its pooled HTTP client.
pub(super) struct Upstream {
    pub(super) config: ProxyConfig,
    /// `upstream` without its trailing `/`.
    pub(super) base: String,
    pub(super) http: reqwest::Client,
}

/// The proxy's state, one per farm.
#[derive(Default)]
pub struct Proxies {
    pub(super) upstreams: HashMap<String, Upstream>,
    quota: Mutex<HashMap<AccountId, Quota>>,
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
                    base: proxy.upstream.as_str().trim_end_matches('/').to_owned(),
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

    /// The account's last quota headers, if the upstream ever sent any.
    pub fn quota(&self, account: AccountId) -> Option<Quota> {
        self.quota
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&account)
            .cloned()
    }

    pub(super) fn note_quota(&self, account: AccountId, headers: &HeaderMap, prefixes: &[String]) {
        let pairs = headers
            .iter()
            .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)));
        let kept = ratelimit::quota_headers(pairs, prefixes);
        if kept.is_empty() {
            return;
        }
        let now = Utc::now();
        let quota = Quota {
            at: now,
            resets_at: ratelimit::quota_resets_at(&kept, now),
            headers: kept.into_iter().collect(),
        };
        self.quota
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(account, quota);
    }
}
