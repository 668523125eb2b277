//! Rate-limit reports: cooldowns, and the 503 with `Retry-After` once every
//! account cools down.

use std::thread;
use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};

use crate::support::{int_of, time_of, Api, Bed, Settings, Value, PROVIDER};

/// How long the account is still cooling down, after checking its state.
fn cooling_for(bed: &Bed, id: i64) -> ChronoDuration {
    let account = bed.account(id);
    assert_eq!(account["state"], "cooling_down", "{account}");
    time_of(&account, "cooldown_until") - Utc::now()
}

/// Asserts the 503 of `GET /credential/next`; returns its Retry-After,
/// which must be the body's `retry_after_s` too.
fn retry_after(client: &Api) -> i64 {
    let resp = client.next(PROVIDER, None);
    let body = resp.expect_error(503, "no_account_available");
    let header = resp
        .header("retry-after")
        .unwrap_or_else(|| panic!("a 503 without Retry-After: {body}"));
    let seconds: i64 = header
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is not delay-seconds: {header:?}"));
    assert_eq!(
        body["retry_after_s"], seconds,
        "Retry-After {seconds} but the body says {body}"
    );
    seconds
}

/// A lease from `client` and its account id.
fn lease(client: &Api) -> (Value, i64) {
    let lease = client.lease(PROVIDER, None);
    let id = int_of(&lease, "account_id");
    (lease, id)
}

#[test]
fn rate_limited_accounts_cool_down_then_503_with_retry_after() {
    let bed = Bed::start(Settings::default());
    let ids = bed.logged_in(&["mia", "ned"]);
    let client = bed.client("worker");

    // Outcomes other than rate_limited do not cool an account down.
    let (ok, ok_id) = lease(&client);
    client.report(&ok, "ok", None);
    client.report(&ok, "error", None);
    assert_eq!(bed.account(ok_id)["state"], "healthy");

    let (first, first_id) = lease(&client);
    client.report(&first, "rate_limited", Some(3));
    let left = cooling_for(&bed, first_id);
    assert!(
        left > ChronoDuration::seconds(2) && left <= ChronoDuration::seconds(3),
        "cooldown of {left}"
    );
    let (second, second_id) = lease(&client);
    assert_ne!(second_id, first_id, "a cooling account served");
    assert!(ids.contains(&second_id));
    client.report(&second, "rate_limited", Some(2));
    cooling_for(&bed, second_id);

    // Both cool: 503 until the earlier cooldown (the second's) ends.
    let wait = retry_after(&client);
    assert!(
        (1..=2).contains(&wait),
        "Retry-After {wait}, expected the 2 s cooldown left"
    );
    assert!(bed.metric("relogin_farm_no_account_available_total") >= 1.0);
    thread::sleep(Duration::from_secs(wait as u64));
    let (_, then_id) = lease(&client);
    assert_eq!(
        then_id, second_id,
        "after Retry-After the account whose cooldown ended serves"
    );
}

#[test]
fn cooldowns_default_and_are_capped_by_max_cooldown() {
    let bed = Bed::start(Settings {
        default_cooldown: "10s",
        max_cooldown: "30s",
        ..Settings::default()
    });
    bed.logged_in(&["ola", "pia"]);
    let admin = bed.admin();

    let (huge, huge_id) = lease(&admin);
    admin.report(&huge, "rate_limited", Some(1_000_000_000_000));
    let capped = cooling_for(&bed, huge_id);
    assert!(
        capped > ChronoDuration::seconds(28) && capped <= ChronoDuration::seconds(30),
        "cooldown of {capped}"
    );

    let (unsaid, unsaid_id) = lease(&admin);
    admin.report(&unsaid, "rate_limited", None);
    let default = cooling_for(&bed, unsaid_id);
    assert!(
        default > ChronoDuration::seconds(8) && default <= ChronoDuration::seconds(10),
        "cooldown of {default}"
    );

    let wait = retry_after(&admin);
    assert!(
        (9..=10).contains(&wait),
        "Retry-After {wait}, expected the 10 s default cooldown left"
    );
}
