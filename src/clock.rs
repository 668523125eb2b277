//! The farm's clock: where "now" comes from.
//!
//! The farm reads the wall time through [`Clock::now`] and waits with
//! [`Clock::sleep`], which is tokio's timer. Production uses
//! [`SystemClock`]. Unit tests use `TestClock`, whose wall time follows
//! tokio's (paused) `Instant`, so `tokio::time::pause()`/`advance()` move
//! the farm's "now" and fire its sleeps together, and `TestClock::jump`
//! moves the wall time alone — a machine waking from suspend, whose
//! monotonic clock did not advance.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The source of the wall time the farm decides with (token expiry,
/// backoff, cooldowns, leases), and of its sleeps.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;

    /// Sleeps on tokio's timer: a paused test runtime drives it.
    fn sleep(&self, duration: Duration) -> tokio::time::Sleep {
        tokio::time::sleep(duration)
    }
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock for tests under `tokio::time::pause()`: the wall time is
/// `base + (tokio's Instant::now() - start) + jumps`.
#[cfg(test)]
pub(crate) struct TestClock {
    base: DateTime<Utc>,
    start: tokio::time::Instant,
    jumped: std::sync::Mutex<chrono::Duration>,
}

#[cfg(test)]
impl TestClock {
    /// Starts at the current wall time (store timestamps stay plausible).
    pub(crate) fn new() -> std::sync::Arc<TestClock> {
        std::sync::Arc::new(TestClock {
            base: Utc::now(),
            start: tokio::time::Instant::now(),
            jumped: std::sync::Mutex::new(chrono::Duration::zero()),
        })
    }

    /// Moves the wall time forward without moving tokio's clock: no sleep
    /// fires until tokio's time reaches its deadline.
    pub(crate) fn jump(&self, by: chrono::Duration) {
        *self.jumped.lock().unwrap() += by;
    }
}

#[cfg(test)]
impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now() - self.start;
        self.base + crate::farm::chrono_dur(elapsed) + *self.jumped.lock().unwrap()
    }
}

#[cfg(test)]
mod tests {
    /// The farm, the scheduler, the proxy, events and webhooks read "now"
    /// from the farm's clock only: a stray `Utc::now()` would put the
    /// system's time into a decision (or a stamp) a paused-time test
    /// believes it controls. Test modules may use it.
    #[test]
    fn the_farm_and_the_scheduler_read_no_other_clock() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![
            root.join("scheduler.rs"),
            root.join("events.rs"),
            root.join("webhooks.rs"),
        ];
        for dir in ["farm", "proxy"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("\n#[cfg(test)]\nmod tests").next().unwrap();
            for (n, line) in code.lines().enumerate() {
                assert!(
                    !line.contains("Utc::now()") || line.trim_start().starts_with("//"),
                    "{}:{}: reads the system clock; use the farm's `clock`",
                    path.display(),
                    n + 1
                );
            }
        }
    }
}
