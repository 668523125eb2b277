//! RFC 3339 timestamps for the hot path's JSON (`/credential/next`), written
//! without `core::fmt`.
//!
//! The output is byte for byte what chrono's own `Serialize` writes for a
//! `DateTime<Utc>` (`2026-11-28T19:31:35.123Z`: `Z`, and 0, 3, 6 or 9
//! fractional digits, as few as the value needs), so every endpoint shows a
//! given instant the same way; only the formatting machinery is skipped.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serializer;

/// Longest output: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const MAX_LEN: usize = 30;

/// `serialize_with` for a `DateTime<Utc>` field.
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; MAX_LEN];
    match write(at, &mut buf) {
        Some(len) => s.serialize_str(std::str::from_utf8(&buf[..len]).expect("ASCII digits")),
        // Years outside 0..=9999 and leap seconds: chrono's own formatting.
        None => serde::Serialize::serialize(at, s),
    }
}

/// Writes `at` into `buf`; returns the length, or `None` when it is not a
/// four-digit year or is a leap second.
fn write(at: &DateTime<Utc>, buf: &mut [u8; MAX_LEN]) -> Option<usize> {
    let year = u32::try_from(at.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = at.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    put(&mut buf[0..4], year);
    buf[4] = b'-';
    put(&mut buf[5..7], at.month());
    buf[7] = b'-';
    put(&mut buf[8..10], at.day());
    buf[10] = b'T';
    put(&mut buf[11..13], at.hour());
    buf[13] = b':';
    put(&mut buf[14..16], at.minute());
    buf[16] = b':';
    put(&mut buf[17..19], at.second());
    let mut len = 19;
    let (digits, value) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (3, n / 1_000_000),
        n if n % 1_000 == 0 => (6, n / 1_000),
        n => (9, n),
    };
    if digits > 0 {
        buf[len] = b'.';
        put(&mut buf[len + 1..len + 1 + digits], value);
        len += 1 + digits;
    }
    buf[len] = b'Z';
    Some(len + 1)
}

/// Writes `value` as decimal digits filling `out`, zero-padded on the left.
fn put(out: &mut [u8], mut value: u32) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone};

    use super::*;

    #[derive(serde::Serialize)]
    struct Fast(#[serde(serialize_with = "serialize")] DateTime<Utc>);

    fn both(at: DateTime<Utc>) -> (String, String) {
        (
            serde_json::to_string(&Fast(at)).unwrap(),
            serde_json::to_string(&at).unwrap(),
        )
    }

    #[test]
    fn writes_what_chrono_writes() {
        let base = Utc.with_ymd_and_hms(2026, 11, 28, 19, 31, 35).unwrap();
        let mut cases = vec![
            base,
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(2000, 2, 29, 9, 5, 7).unwrap(),
        ];
        for nanos in [
            1,
            7,
            999,
            1_000,
            120_000,
            999_999,
            1_000_000,
            5_000_000,
            123_456_789,
            999_999_999,
        ] {
            cases.push(base + chrono::Duration::nanoseconds(nanos));
        }
        // A spread of instants over two centuries, with every precision.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs = (x % (200 * 365 * 86_400)) as i64 + 946_684_800 - 100 * 365 * 86_400;
            let nanos = match x % 4 {
                0 => 0,
                1 => (x % 1000) as u32 * 1_000_000,
                2 => (x % 1_000_000) as u32 * 1_000,
                _ => (x % 1_000_000_000) as u32,
            };
            cases.push(Utc.timestamp_opt(secs, nanos).unwrap());
        }
        for at in cases {
            let (fast, chrono) = both(at);
            assert_eq!(fast, chrono, "{at:?}");
        }
    }

    #[test]
    fn years_beyond_four_digits_and_leap_seconds_fall_back_to_chrono() {
        let far = Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap();
        let before = Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap();
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        for at in [far, before, leap] {
            let mut buf = [0; MAX_LEN];
            assert_eq!(write(&at, &mut buf), None, "{at:?}");
            let (fast, chrono) = both(at);
            assert_eq!(fast, chrono);
        }
    }
}
