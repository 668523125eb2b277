//! Leases after they close: a report on a released or expired lease, or on
//! the lease of an account that was removed, answers 409 `lease_closed` and
//! changes nothing; account ids are never handed out twice.

use std::thread;

use chrono::Utc;
use reqwest::Method;

use crate::support::{int_of, json, str_of, time_of, Api, Bed, Settings, Value, PROVIDER};

/// `POST /credential/report` of `outcome` on `lease`, which must be refused
/// as closed.
fn report_refused(client: &Api, lease: &Value, outcome: &str) {
    client
        .post(
            "/credential/report",
            json!({"lease_id": lease["lease_id"], "outcome": outcome, "retry_after_s": 3600}),
        )
        .expect_error(409, "lease_closed");
}

/// Reports of `outcome` counted over the last day, all accounts.
fn reports_counted(bed: &Bed, outcome: &str) -> i64 {
    let usage = bed.admin().get("/api/usage").ok();
    usage["per_account"]
        .as_array()
        .expect("per_account rows")
        .iter()
        .map(|row| row["last_day"][outcome].as_i64().unwrap())
        .sum()
}

#[test]
fn a_report_on_a_released_lease_or_a_removed_account_is_refused() {
    let bed = Bed::start(Settings::default());
    let ids = bed.logged_in(&["alice", "bob"]);
    let client = bed.client("worker");

    let released = client.lease(PROVIDER, None);
    client
        .delete(&format!(
            "/credential/lease/{}",
            str_of(&released, "lease_id")
        ))
        .expect(204);
    report_refused(&client, &released, "rate_limited");
    assert_eq!(
        bed.account(int_of(&released, "account_id"))["state"],
        "healthy",
        "a released lease cooled its account down"
    );

    // The newest account goes; the next one added gets a new id, and the
    // old account's lease stays bound to the old account.
    let newest = *ids.iter().max().unwrap();
    let orphan = loop {
        let lease = client.lease(PROVIDER, None);
        if int_of(&lease, "account_id") == newest {
            break lease;
        }
    };
    bed.admin()
        .delete(&format!("/api/accounts/{newest}"))
        .expect(204);
    let carl = bed.logged_in(&["carl"])[0];
    assert!(carl > newest, "account id {newest} was handed out again");
    report_refused(&client, &orphan, "rate_limited");
    let carl_now = bed.account(carl);
    assert_eq!(carl_now["state"], "healthy", "{carl_now}");
    assert_eq!(carl_now["leases_24h"], 0, "{carl_now}");

    assert_eq!(
        reports_counted(&bed, "rate_limited"),
        0,
        "a refused report was counted"
    );
    assert_eq!(
        bed.metric("relogin_farm_reports_total{outcome=\"rate_limited\"}"),
        0.0
    );
    // An open lease is still reported as before.
    let open = client.lease(PROVIDER, None);
    client.report(&open, "ok", None);
    assert_eq!(reports_counted(&bed, "ok"), 1);
}

#[test]
fn a_report_on_an_expired_lease_is_refused() {
    // Leases end with the token they carry: 4 s here.
    let bed = Bed::start(Settings::short_tokens());
    let id = bed.logged_in(&["dora"])[0];
    let client = bed.client("worker");
    let lease = client.lease(PROVIDER, None);
    let left = time_of(&lease, "lease_expires_at") - Utc::now();
    thread::sleep(
        (left + chrono::Duration::milliseconds(300))
            .to_std()
            .unwrap_or_default(),
    );

    report_refused(&client, &lease, "rate_limited");
    assert_ne!(bed.account(id)["state"], "cooling_down");
    assert_eq!(reports_counted(&bed, "rate_limited"), 0);
    // Releasing it changes nothing either, and is no error.
    let path = format!("/credential/lease/{}", str_of(&lease, "lease_id"));
    assert_eq!(client.send(Method::DELETE, &path, None).status, 204);
}

#[test]
fn the_store_reports_its_size_and_a_clean_stop_leaves_no_wal() {
    let mut bed = Bed::start(Settings::default());
    bed.logged_in(&["erin"]);
    let client = bed.client("worker");
    for _ in 0..200 {
        client.lease(PROVIDER, None);
    }
    assert!(bed.metric("relogin_farm_store_bytes{file=\"db\"}") > 0.0);
    bed.metric("relogin_farm_store_bytes{file=\"wal\"}");
    let status = bed.stop();
    assert!(status.success(), "{status}");
    let mut wal = bed.layout.db().into_os_string();
    wal.push("-wal");
    let left = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert_eq!(left, 0, "a clean stop left a WAL of {left} bytes");
}
