//! Per-client request rates: a token bucket per client key.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};

/// `count` requests per `per`, written `"600/min"` (units `s`, `min`, `h`).
/// A client may spend one period's worth at once, then the bucket refills
/// evenly over the period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

/// Largest accepted count: far above any real client, and small enough
/// that the bucket arithmetic stays exact.
const MAX_COUNT: u32 = 1_000_000_000;

const UNITS: [(&str, i64); 3] = [("s", 1), ("min", 60), ("h", 3600)];

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = || format!("expected <count>/<s|min|h> such as \"600/min\", found {s:?}");
        let (count, unit) = s.split_once('/').ok_or_else(expected)?;
        let count: u32 = count.trim().parse().map_err(|_| expected())?;
        if !(1..=MAX_COUNT).contains(&count) {
            return Err(format!("the count must be 1 to {MAX_COUNT}, found {count}"));
        }
        let unit = unit.trim();
        let seconds = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, secs)| *secs)
            .ok_or_else(expected)?;
        Ok(Rate {
            count,
            per: Duration::seconds(seconds),
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = UNITS
            .iter()
            .find(|(_, secs)| Duration::seconds(*secs) == self.per)
            .map_or("s", |(name, _)| name);
        write!(f, "{}/{unit}", self.count)
    }
}

/// One client's bucket: how many requests it may make now, as of `at`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at: DateTime<Utc>,
}

impl Bucket {
    /// A client not seen before may spend a whole period's worth.
    pub fn full(rate: Rate, now: DateTime<Utc>) -> Self {
        Bucket {
            tokens: f64::from(rate.count),
            at: now,
        }
    }

    /// Takes one request from the bucket; when it is empty, the wait until
    /// the next one is allowed (nothing is taken).
    pub fn take(&mut self, rate: Rate, now: DateTime<Utc>) -> Result<(), Duration> {
        let count = f64::from(rate.count);
        let per_ms = rate.per.num_milliseconds().max(1) as f64;
        // A clock that went back refills nothing.
        let elapsed_ms = (now - self.at).num_milliseconds().max(0) as f64;
        self.tokens = (self.tokens + elapsed_ms * count / per_ms).min(count);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = ((1.0 - self.tokens) * per_ms / count).ceil() as i64;
            Err(Duration::milliseconds(wait_ms.max(1)))
        }
    }
}

/// A wait as the whole seconds of a `Retry-After` header: rounded up, at
/// least 1 (a client told 0 would retry at once).
pub fn retry_after_secs(wait: Duration) -> i64 {
    let ms = wait.num_milliseconds().max(0);
    ((ms + 999) / 1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> Rate {
        s.parse().unwrap()
    }

    #[test]
    fn rates_parse_and_print() {
        assert_eq!(
            rate("600/min"),
            Rate {
                count: 600,
                per: Duration::minutes(1)
            }
        );
        assert_eq!(rate("10/s").per, Duration::seconds(1));
        assert_eq!(rate("36000/h").per, Duration::hours(1));
        for s in ["600/min", "10/s", "1/h"] {
            assert_eq!(rate(s).to_string(), s);
        }
        for bad in [
            "600",
            "600/day",
            "0/s",
            "-1/s",
            "x/min",
            "/min",
            "1000000001/s",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad} parsed");
        }
        assert_eq!(
            "600/day".parse::<Rate>().unwrap_err(),
            "expected <count>/<s|min|h> such as \"600/min\", found \"600/day\""
        );
    }

    #[test]
    fn a_full_bucket_allows_one_period_then_refills_evenly() {
        let t0 = Utc::now();
        let r = rate("60/min");
        let mut b = Bucket::full(r, t0);
        for _ in 0..60 {
            assert_eq!(b.take(r, t0), Ok(()));
        }
        assert_eq!(b.take(r, t0), Err(Duration::seconds(1)), "one per second");
        assert_eq!(
            b.take(r, t0 + Duration::milliseconds(400)),
            Err(Duration::milliseconds(600))
        );
        assert_eq!(b.take(r, t0 + Duration::seconds(1)), Ok(()));
        assert!(b.take(r, t0 + Duration::seconds(1)).is_err());
        // Idle for an hour: back to one period's worth, not more.
        let later = t0 + Duration::hours(1);
        for _ in 0..60 {
            assert_eq!(b.take(r, later), Ok(()));
        }
        assert!(b.take(r, later).is_err());
    }

    #[test]
    fn a_clock_going_back_refills_nothing() {
        let t0 = Utc::now();
        let r = rate("1/s");
        let mut b = Bucket::full(r, t0);
        assert_eq!(b.take(r, t0), Ok(()));
        assert!(b.take(r, t0 - Duration::hours(1)).is_err());
        assert!(b.take(r, t0 + Duration::milliseconds(500)).is_err());
        assert_eq!(b.take(r, t0 + Duration::seconds(1)), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::milliseconds(1)), 1);
        assert_eq!(retry_after_secs(Duration::zero()), 1);
        assert_eq!(retry_after_secs(Duration::milliseconds(1000)), 1);
        assert_eq!(retry_after_secs(Duration::milliseconds(1001)), 2);
    }
}
