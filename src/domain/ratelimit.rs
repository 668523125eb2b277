//! What an upstream's answer means for the account that sent it: whether the
//! proxy moves on to the next account, and until when a rate-limited account
//! rests. Headers come in as `(lowercase name, value)` pairs; `now` is given.

use chrono::{DateTime, Duration, TimeZone, Utc};

/// What the proxy does after an upstream answered `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Pass the answer to the client.
    Pass,
    /// The token was refused: report `unauthorized` (refresh) and move on.
    Unauthorized,
    /// Rate limited: cool the account down until `until` (`None`: nothing
    /// said when; the default cooldown applies) and move on.
    RateLimited { until: Option<DateTime<Utc>> },
    /// Busy or a transient limit (`x-should-retry: true`, 529): move on,
    /// the account stays in rotation.
    Busy,
}

impl Verdict {
    /// A short word for events and metrics.
    pub fn why(self, status: u16) -> String {
        match self {
            Verdict::Pass => format!("{status}"),
            Verdict::Unauthorized => format!("{status} unauthorized"),
            Verdict::RateLimited { .. } => format!("{status} rate limited"),
            Verdict::Busy => format!("{status} busy"),
        }
    }
}

/// The verdict on an answer with `status` and `headers`; statuses outside
/// `failover_on` always pass. `reset_headers` name the provider's reset
/// headers (epoch seconds, epoch ms, RFC 3339 or a delay), read after
/// `retry-after-ms` and `retry-after`.
pub fn verdict<'a>(
    status: u16,
    headers: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    failover_on: &[u16],
    reset_headers: &[String],
    now: DateTime<Utc>,
) -> Verdict {
    if !failover_on.contains(&status) {
        return Verdict::Pass;
    }
    let header = |name: &str| {
        headers
            .clone()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    match status {
        401 | 403 => Verdict::Unauthorized,
        429 if header("x-should-retry").is_some_and(|v| v.eq_ignore_ascii_case("true")) => {
            Verdict::Busy
        }
        429 => Verdict::RateLimited {
            until: reset_at(&header, reset_headers, now),
        },
        _ => Verdict::Busy,
    }
}

/// When the upstream said the limit resets: `retry-after-ms`, then
/// `retry-after` (seconds or HTTP date), then the first of `reset_headers`
/// present and readable.
fn reset_at<'a>(
    header: &impl Fn(&str) -> Option<&'a str>,
    reset_headers: &[String],
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    announced_retry(header, now).or_else(|| {
        reset_headers
            .iter()
            .find_map(|name| header(name).and_then(|v| reset_value(v, now)))
    })
}

/// When the answer says to retry: `retry-after-ms`, then `retry-after`
/// (seconds or HTTP date).
pub fn announced_retry<'a>(
    header: &impl Fn(&str) -> Option<&'a str>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(now + Duration::milliseconds(ms.min(1e13) as i64));
        }
    }
    header("retry-after").and_then(|v| retry_after(v, now))
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub fn retry_after(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(now + Duration::seconds(seconds.min(MAX_SECONDS) as i64));
    }
    httpdate::parse_http_date(value).ok().map(DateTime::from)
}

/// Ten years: longer is a typo, and chrono would overflow on the extreme.
const MAX_SECONDS: u64 = 10 * 365 * 86_400;

/// Epoch seconds since this are read as a time, smaller integers as a delay
/// in seconds (2001-09-09: no provider announces a reset before it).
const EPOCH_FLOOR: i64 = 1_000_000_000;

/// A reset header's value, its format detected: epoch seconds, epoch
/// milliseconds, RFC 3339, a delay in seconds (`"12"`, `"1.5"`) or a Go-style
/// duration (`"1m30s"`, `"250ms"`, as OpenAI's `x-ratelimit-reset-*`).
pub fn reset_value(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let value = value.trim();
    if let Ok(n) = value.parse::<i64>() {
        return if n >= EPOCH_FLOOR * 1000 {
            Utc.timestamp_millis_opt(n).single()
        } else if n >= EPOCH_FLOOR {
            Utc.timestamp_opt(n, 0).single()
        } else if n >= 0 {
            Some(now + Duration::seconds(n.min(MAX_SECONDS as i64)))
        } else {
            None
        };
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| now + Duration::milliseconds((secs.min(MAX_SECONDS as f64) * 1000.0) as i64));
    }
    go_duration(value).map(|d| now + d)
}

/// `1h2m3.5s`, `250ms`, `6m0s`: units h, m, s, ms, each with a number.
fn go_duration(text: &str) -> Option<Duration> {
    let mut total_ms = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1000.0,
            "ms" => 1.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total_ms += number * scale;
    }
    (total_ms <= MAX_SECONDS as f64 * 1000.0).then(|| Duration::milliseconds(total_ms as i64))
}

/// Whole seconds from `now` until `until`, rounded up (a cooldown never
/// ends before the announced reset); 0 when it has passed.
pub fn seconds_until(until: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    let ms = (until - now).num_milliseconds();
    if ms <= 0 {
        0
    } else {
        (ms as u64).div_ceil(1000)
    }
}

/// Whether a header named `name` is worth keeping as the account's quota:
/// it starts with one of `prefixes`, whatever the case.
pub fn is_quota_header(name: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| {
        name.len() >= p.len() && name.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    })
}

/// The earliest reset among the quota headers whose name ends in `reset`
/// (`…-reset`, `…-reset-requests`…), for the account view.
pub fn quota_resets_at(headers: &[(String, String)], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    headers
        .iter()
        .filter(|(name, _)| name.contains("reset"))
        .filter_map(|(_, v)| reset_value(v, now))
        .min()
}

/// One rate-limit window of an account, read from its quota headers: how
/// much of it is used and when it resets. The families understood:
///
/// * Anthropic subscription limits: `anthropic-ratelimit-unified-<w>-utilization`
///   (a fraction) and `…-<w>-reset` (epoch seconds), `<w>` = `5h`, `7d`…;
/// * Anthropic API limits: `anthropic-ratelimit-<kind>-limit`, `-remaining`,
///   `-reset` (RFC 3339), `<kind>` = `requests`, `tokens`, `input-tokens`…;
/// * OpenAI: `x-ratelimit-limit-<kind>`, `x-ratelimit-remaining-<kind>`,
///   `x-ratelimit-reset-<kind>` (a duration such as `6m0s`);
/// * Codex: `x-codex-<w>-used-percent`, `x-codex-<w>-window-minutes`,
///   `x-codex-<w>-reset-at` (epoch) or `-reset-after-seconds`, `<w>` =
///   `primary`, `secondary`.
#[derive(
    Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct QuotaWindow {
    /// The window as the headers name it: `unified 5h`, `requests`,
    /// `codex primary`.
    pub name: String,
    /// Share used, 0 to 1 (above 1 when over): the utilization given, or
    /// `1 - remaining / limit`.
    pub used: Option<f64>,
    pub remaining: Option<u64>,
    pub limit: Option<u64>,
    /// Length of a rolling window, when the headers say.
    pub window_minutes: Option<u64>,
    pub resets_at: Option<DateTime<Utc>>,
}

/// The windows the quota headers describe (names lowercase, as HTTP keeps them), sorted by name; headers of no known family are left
/// out (they stay in the raw list). Relative resets count from `now`, the
/// time the headers came.
pub fn quota_windows(headers: &[(String, String)], now: DateTime<Utc>) -> Vec<QuotaWindow> {
    let mut windows: std::collections::BTreeMap<String, QuotaWindow> = Default::default();
    let number = |v: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= 0.0)
    };
    let count = |v: &str| number(v).map(|n| n as u64);
    for (name, value) in headers {
        let Some((window, field)) = window_field(name) else {
            continue;
        };
        let w = windows
            .entry(window.clone())
            .or_insert_with(|| QuotaWindow {
                name: window,
                ..QuotaWindow::default()
            });
        match field {
            Field::Utilization => w.used = number(value),
            Field::UsedPercent => w.used = number(value).map(|p| p / 100.0),
            Field::Remaining => w.remaining = count(value),
            Field::Limit => w.limit = count(value),
            Field::WindowMinutes => w.window_minutes = count(value),
            Field::Reset => w.resets_at = reset_value(value, now),
        }
    }
    windows
        .into_values()
        .filter_map(|mut w| {
            if w.used.is_none() {
                if let (Some(r), Some(l)) = (w.remaining, w.limit) {
                    w.used = (l > 0).then(|| (l - r.min(l)) as f64 / l as f64);
                }
            }
            let known = w.used.is_some() || w.remaining.is_some() || w.resets_at.is_some();
            known.then_some(w)
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Field {
    Utilization,
    UsedPercent,
    Remaining,
    Limit,
    WindowMinutes,
    Reset,
}

/// Which window a quota header belongs to, and what it says of it.
fn window_field(name: &str) -> Option<(String, Field)> {
    if let Some(rest) = name.strip_prefix("anthropic-ratelimit-unified-") {
        let (window, field) = split_suffix(
            rest,
            &[
                ("-utilization", Field::Utilization),
                ("-reset", Field::Reset),
            ],
        )?;
        return Some((format!("unified {window}"), field));
    }
    if let Some(rest) = name.strip_prefix("anthropic-ratelimit-") {
        let (kind, field) = split_suffix(
            rest,
            &[
                ("-limit", Field::Limit),
                ("-remaining", Field::Remaining),
                ("-reset", Field::Reset),
            ],
        )?;
        return Some((kind.to_owned(), field));
    }
    if let Some(rest) = name.strip_prefix("x-ratelimit-") {
        for (prefix, field) in [
            ("limit-", Field::Limit),
            ("remaining-", Field::Remaining),
            ("reset-", Field::Reset),
        ] {
            if let Some(kind) = rest.strip_prefix(prefix).filter(|k| !k.is_empty()) {
                return Some((kind.to_owned(), field));
            }
        }
        return None;
    }
    let rest = name.strip_prefix("x-codex-")?;
    let (window, field) = split_suffix(
        rest,
        &[
            ("-used-percent", Field::UsedPercent),
            ("-window-minutes", Field::WindowMinutes),
            ("-reset-at", Field::Reset),
            ("-reset-after-seconds", Field::Reset),
        ],
    )?;
    Some((format!("codex {window}"), field))
}

/// `name` less the first of `suffixes` it ends with (a non-empty rest).
fn split_suffix<'n>(name: &'n str, suffixes: &[(&str, Field)]) -> Option<(&'n str, Field)> {
    suffixes.iter().find_map(|&(suffix, field)| {
        let rest = name.strip_suffix(suffix).filter(|r| !r.is_empty())?;
        Some((rest, field))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap()
    }

    fn judge(status: u16, headers: &[(&str, &str)]) -> Verdict {
        let resets = vec!["anthropic-ratelimit-unified-reset".to_string()];
        verdict(
            status,
            headers.iter().copied(),
            &[401, 429, 529],
            &resets,
            now(),
        )
    }

    #[test]
    fn statuses_outside_failover_on_pass() {
        assert_eq!(judge(200, &[]), Verdict::Pass);
        assert_eq!(judge(500, &[]), Verdict::Pass);
        assert_eq!(judge(400, &[("retry-after", "3")]), Verdict::Pass);
    }

    #[test]
    fn unauthorized_and_busy() {
        assert_eq!(judge(401, &[]), Verdict::Unauthorized);
        assert_eq!(judge(529, &[("retry-after", "3")]), Verdict::Busy);
        assert_eq!(
            judge(429, &[("X-Should-Retry", "true"), ("retry-after", "9")]),
            Verdict::Busy,
            "a 429 that says retry moves on without cooling"
        );
        assert_eq!(
            judge(429, &[("x-should-retry", "false")]),
            Verdict::RateLimited { until: None }
        );
    }

    #[test]
    fn rate_limit_reset_sources_in_order() {
        let at = |s: i64| Some(now() + Duration::seconds(s));
        assert_eq!(
            judge(429, &[("retry-after", "7")]),
            Verdict::RateLimited { until: at(7) }
        );
        assert_eq!(
            judge(429, &[("retry-after-ms", "1500"), ("retry-after", "7")]),
            Verdict::RateLimited {
                until: Some(now() + Duration::milliseconds(1500))
            }
        );
        assert_eq!(
            judge(429, &[("retry-after", "Fri, 01 May 2026 12:00:30 GMT")]),
            Verdict::RateLimited { until: at(30) }
        );
        let epoch = (now() + Duration::seconds(42)).timestamp().to_string();
        assert_eq!(
            judge(429, &[("anthropic-ratelimit-unified-reset", &epoch)]),
            Verdict::RateLimited { until: at(42) }
        );
        // An unreadable retry-after falls through to the reset header.
        assert_eq!(
            judge(
                429,
                &[
                    ("retry-after", "soon"),
                    ("anthropic-ratelimit-unified-reset", &epoch)
                ]
            ),
            Verdict::RateLimited { until: at(42) }
        );
        // Headers not in reset_headers are not read.
        assert_eq!(
            judge(429, &[("x-ratelimit-reset", &epoch)]),
            Verdict::RateLimited { until: None }
        );
    }

    #[test]
    fn reset_value_formats_are_detected() {
        let n = now();
        let in_s = |s: i64| Some(n + Duration::seconds(s));
        assert_eq!(reset_value(&(n.timestamp() + 5).to_string(), n), in_s(5));
        assert_eq!(
            reset_value(&(n.timestamp_millis() + 5_000).to_string(), n),
            in_s(5)
        );
        assert_eq!(reset_value("2026-05-01T12:01:00Z", n), in_s(60));
        assert_eq!(reset_value("2026-05-01T14:01:00+02:00", n), in_s(60));
        assert_eq!(reset_value("12", n), in_s(12));
        assert_eq!(
            reset_value("1.5", n),
            Some(n + Duration::milliseconds(1500))
        );
        assert_eq!(reset_value("6m0s", n), in_s(360));
        assert_eq!(reset_value("1h2m3s", n), in_s(3723));
        assert_eq!(
            reset_value("250ms", n),
            Some(n + Duration::milliseconds(250))
        );
        for bad in ["", "-3", "soon", "5x", "m", "1e400"] {
            assert_eq!(reset_value(bad, n), None, "{bad:?}");
        }
        // Absurd delays are capped, not overflowed.
        assert!(reset_value("999999999", n).is_some());
    }

    #[test]
    fn seconds_until_rounds_up() {
        let n = now();
        assert_eq!(seconds_until(n + Duration::milliseconds(1), n), 1);
        assert_eq!(seconds_until(n + Duration::seconds(3), n), 3);
        assert_eq!(seconds_until(n + Duration::milliseconds(3001), n), 4);
        assert_eq!(seconds_until(n - Duration::seconds(3), n), 0);
    }

    #[test]
    fn quota_headers_by_prefix() {
        let prefixes = vec!["anthropic-ratelimit-".to_string(), "x-codex-".to_string()];
        let epoch = (now().timestamp() + 90).to_string();
        let kept: Vec<(String, String)> = [
            ("Anthropic-Ratelimit-Unified-Reset", epoch.as_str()),
            ("anthropic-ratelimit-unified-status", "allowed"),
            ("x-codex-primary-used-percent", "12"),
            ("content-type", "application/json"),
            ("x-ratelimit-remaining", "3"),
        ]
        .into_iter()
        .filter(|(n, _)| is_quota_header(n, &prefixes))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
        .collect();
        assert_eq!(
            kept.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            [
                "anthropic-ratelimit-unified-reset",
                "anthropic-ratelimit-unified-status",
                "x-codex-primary-used-percent"
            ]
        );
        assert_eq!(
            quota_resets_at(&kept, now()),
            Some(now() + Duration::seconds(90))
        );
    }

    fn window(name: &str) -> QuotaWindow {
        QuotaWindow {
            name: name.into(),
            ..QuotaWindow::default()
        }
    }

    fn windows_of(headers: &[(&str, &str)]) -> Vec<QuotaWindow> {
        let owned: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        quota_windows(&owned, now())
    }

    #[test]
    fn anthropic_unified_windows_give_utilization_and_reset() {
        let reset_5h = (now().timestamp() + 3600).to_string();
        let reset_7d = (now().timestamp() + 86_400).to_string();
        let got = windows_of(&[
            ("anthropic-ratelimit-unified-status", "allowed"),
            ("anthropic-ratelimit-unified-reset", &reset_5h),
            ("anthropic-ratelimit-unified-5h-utilization", "0.25"),
            ("anthropic-ratelimit-unified-5h-reset", &reset_5h),
            ("anthropic-ratelimit-unified-5h-status", "allowed"),
            ("anthropic-ratelimit-unified-7d-utilization", "0.9"),
            ("anthropic-ratelimit-unified-7d-reset", &reset_7d),
            (
                "anthropic-ratelimit-unified-representative-claim",
                "five_hour",
            ),
        ]);
        assert_eq!(
            got,
            [
                QuotaWindow {
                    used: Some(0.25),
                    resets_at: Some(now() + Duration::hours(1)),
                    ..window("unified 5h")
                },
                QuotaWindow {
                    used: Some(0.9),
                    resets_at: Some(now() + Duration::days(1)),
                    ..window("unified 7d")
                },
            ]
        );
    }

    #[test]
    fn remaining_and_limit_give_the_share_used() {
        let got = windows_of(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "40"),
            ("anthropic-ratelimit-requests-reset", "2026-05-01T12:00:30Z"),
            ("x-ratelimit-limit-tokens", "1000"),
            ("x-ratelimit-remaining-tokens", "250"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        assert_eq!(
            got,
            [
                QuotaWindow {
                    used: Some(0.2),
                    remaining: Some(40),
                    limit: Some(50),
                    resets_at: Some(now() + Duration::seconds(30)),
                    ..window("requests")
                },
                QuotaWindow {
                    used: Some(0.75),
                    remaining: Some(250),
                    limit: Some(1000),
                    resets_at: Some(now() + Duration::minutes(6)),
                    ..window("tokens")
                },
            ]
        );
        // A zero limit says nothing of the share; more remaining than the
        // limit is nothing used.
        let got = windows_of(&[
            ("x-ratelimit-limit-requests", "0"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-limit-tokens", "10"),
            ("x-ratelimit-remaining-tokens", "12"),
        ]);
        assert_eq!((got[0].used, got[1].used), (None, Some(0.0)));
    }

    #[test]
    fn codex_windows_in_percent_with_their_length() {
        let got = windows_of(&[
            ("x-codex-primary-used-percent", "65.5"),
            ("x-codex-primary-window-minutes", "300"),
            ("x-codex-primary-reset-after-seconds", "120"),
            ("x-codex-secondary-used-percent", "12"),
            ("x-codex-secondary-window-minutes", "10080"),
            (
                "x-codex-secondary-reset-at",
                &(now().timestamp_millis() + 60_000).to_string(),
            ),
            ("x-codex-plan-type", "team"),
            ("x-codex-credits-has-credits", "false"),
        ]);
        assert_eq!(
            got,
            [
                QuotaWindow {
                    used: Some(0.655),
                    window_minutes: Some(300),
                    resets_at: Some(now() + Duration::minutes(2)),
                    ..window("codex primary")
                },
                QuotaWindow {
                    used: Some(0.12),
                    window_minutes: Some(10080),
                    resets_at: Some(now() + Duration::minutes(1)),
                    ..window("codex secondary")
                },
            ]
        );
    }

    #[test]
    fn unreadable_or_unknown_headers_make_no_window() {
        let got = windows_of(&[
            ("anthropic-ratelimit-unified-5h-utilization", "lots"),
            ("x-ratelimit-remaining", "3"),
            ("x-ratelimit-limit-", "3"),
            ("x-codex-primary-used-percent", "-4"),
            ("x-codex-primary-window-minutes", "300"),
            ("x-custom-thing", "1"),
        ]);
        assert_eq!(got, []);
    }
}
