//! The proxy's series in `/metrics`: answers by provider and status,
//! failovers by reason, and the upstream's time to its status line.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];

#[derive(Default)]
pub struct ProxyMetrics {
    /// Answers sent to clients, by provider, then status (looked up by
    /// `&str`: no allocation per answer).
    answers: Mutex<BTreeMap<String, BTreeMap<u16, u64>>>,
    /// Moves to the next account, by reason (`429`, `401`, `529`, `connect`, `timeout`…).
    failovers: Mutex<BTreeMap<String, u64>>,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl ProxyMetrics {
    pub fn record_answer(&self, provider: &str, status: u16) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        let by_status = match answers.get_mut(provider) {
            Some(by_status) => by_status,
            None => answers.entry(provider.to_owned()).or_default(),
        };
        *by_status.entry(status).or_default() += 1;
    }

    pub fn record_failover(&self, reason: &str) {
        let mut failovers = self.failovers.lock().unwrap_or_else(|p| p.into_inner());
        *failovers.entry(reason.to_owned()).or_default() += 1;
    }

    /// Time from sending a request upstream to its status line.
    pub fn record_latency(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (bound, n) in BUCKETS.iter().zip(&self.latency_buckets) {
            if secs <= *bound {
                n.fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP relogin_farm_proxy_requests_total Answers of the proxy to its clients, by provider and status.\n\
             # TYPE relogin_farm_proxy_requests_total counter"
        );
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        for (provider, by_status) in answers.iter() {
            for (status, n) in by_status {
                let _ = writeln!(
                    out,
                    "relogin_farm_proxy_requests_total{{provider=\"{provider}\",status=\"{status}\"}} {n}"
                );
            }
        }
        drop(answers);
        let _ = writeln!(
            out,
            "# HELP relogin_farm_proxy_failovers_total Requests moved to the next account, by reason.\n\
             # TYPE relogin_farm_proxy_failovers_total counter"
        );
        for (reason, n) in self
            .failovers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "relogin_farm_proxy_failovers_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let name = "relogin_farm_proxy_upstream_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a request sent upstream to the upstream's status line.\n# TYPE {name} histogram"
        );
        for (bound, n) in BUCKETS.iter().zip(&self.latency_buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", n.load(Relaxed));
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {count}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = ProxyMetrics::default();
        m.record_latency(Duration::from_micros(500));
        m.record_latency(Duration::from_millis(40));
        m.record_latency(Duration::from_secs(500));
        m.record_answer("demo", 200);
        m.record_answer("demo", 200);
        m.record_failover("429");
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            "relogin_farm_proxy_upstream_seconds_bucket{le=\"0.001\"} 1",
            "relogin_farm_proxy_upstream_seconds_bucket{le=\"0.05\"} 2",
            "relogin_farm_proxy_upstream_seconds_bucket{le=\"120\"} 2",
            "relogin_farm_proxy_upstream_seconds_bucket{le=\"+Inf\"} 3",
            "relogin_farm_proxy_upstream_seconds_count 3",
            "relogin_farm_proxy_requests_total{provider=\"demo\",status=\"200\"} 2",
            "relogin_farm_proxy_failovers_total{reason=\"429\"} 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} not in\n{out}");
        }
    }
}
