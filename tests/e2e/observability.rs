//! What an operator looks at: `/healthz`, `/metrics`, `/api/usage`.

use std::collections::BTreeMap;

use crate::support::{int_of, json, prometheus_samples, str_of, Bed, Settings, Value, PROVIDER};

#[test]
fn healthz_is_public_and_metrics_are_prometheus_text() {
    let bed = Bed::start(Settings::default());
    for api in [bed.api(None), bed.api(Some("wrong"))] {
        let health = api.get("/healthz").ok();
        assert_eq!(health["status"], "ok", "{health}");
    }

    let id = bed.logged_in(&["val"])[0];
    bed.add_account("wil", 0);
    let client = bed.client("worker");
    bed.api(None)
        .get("/metrics")
        .expect_error(401, "unauthorized");
    client.get("/metrics").expect_error(403, "forbidden");

    let leases: Vec<Value> = (0..3).map(|_| client.lease(PROVIDER, None)).collect();
    client.report(&leases[0], "rate_limited", Some(30));
    client
        .next(PROVIDER, None)
        .expect_error(503, "no_account_available");
    bed.admin()
        .post(&format!("/api/accounts/{id}/refresh"), json!({}))
        .ok();

    let resp = bed.admin().get("/metrics");
    assert_eq!(resp.status, 200, "{}", resp.text);
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "content-type {content_type:?}"
    );
    let samples: BTreeMap<String, f64> = prometheus_samples(&resp.text).into_iter().collect();
    let expect = [
        ("relogin_farm_leases_total", 3.0),
        // one after the other: nothing to group them with
        ("relogin_farm_lease_commits_total", 3.0),
        ("relogin_farm_no_account_available_total", 1.0),
        ("relogin_farm_refreshes_total{result=\"ok\"}", 1.0),
        ("relogin_farm_refreshes_total{result=\"failed\"}", 0.0),
        ("relogin_farm_reports_total{outcome=\"rate_limited\"}", 1.0),
        ("relogin_farm_reports_total{outcome=\"ok\"}", 0.0),
        (
            "relogin_farm_accounts{provider=\"demo\",state=\"cooling_down\"}",
            1.0,
        ),
        (
            "relogin_farm_accounts{provider=\"demo\",state=\"pending_login\"}",
            1.0,
        ),
    ];
    for (series, value) in expect {
        assert_eq!(
            samples.get(series),
            Some(&value),
            "{series} in:\n{}",
            resp.text
        );
    }
    // No backup in this farm's life (the daily one is hours away).
    assert_eq!(
        samples.get("relogin_farm_last_backup_timestamp_seconds"),
        Some(&0.0)
    );
    // The scheduler is alive (how few rounds it takes is a unit test's job).
    let rounds = samples["relogin_farm_scheduler_rounds_total"];
    assert!(rounds >= 1.0, "{}", resp.text);
    assert!(
        resp.text
            .contains("# TYPE relogin_farm_leases_total counter"),
        "{}",
        resp.text
    );
    assert!(bed.api(None).get("/healthz").ok()["status"] == "ok");
}

/// The usage row with `id` (`null`: the admin token) in `rows`.
fn row(rows: &Value, id: Value) -> &Value {
    let found = rows
        .as_array()
        .and_then(|all| all.iter().find(|r| r["id"] == id));
    found.unwrap_or_else(|| panic!("no usage row {id} in {rows}"))
}

#[test]
fn usage_counts_leases_per_account_and_per_client() {
    let bed = Bed::start(Settings::default());
    let ids = bed.logged_in(&["xia", "yul"]);
    let (one_id, one_key) = bed.new_client("one");
    let (two_id, two_key) = bed.new_client("two");
    let (one, two, admin) = (
        bed.api(Some(&one_key)),
        bed.api(Some(&two_key)),
        bed.admin(),
    );

    let mut by_account: BTreeMap<i64, i64> = BTreeMap::new();
    let mut take = |api: &crate::support::Api, n: usize| -> Vec<Value> {
        let leases: Vec<Value> = (0..n).map(|_| api.lease(PROVIDER, None)).collect();
        for l in &leases {
            *by_account.entry(int_of(l, "account_id")).or_default() += 1;
        }
        leases
    };
    let of_one = take(&one, 3);
    let of_two = take(&two, 2);
    take(&admin, 1);
    one.report(&of_one[0], "ok", None);
    one.report(&of_one[1], "error", None);
    two.report(&of_two[0], "ok", None);

    let usage = admin.get("/api/usage").ok();
    for (id, leases, ok, error) in [
        (json!(one_id), 3, 1, 1),
        (json!(two_id), 2, 1, 0),
        (Value::Null, 1, 0, 0),
    ] {
        let r = row(&usage["per_client"], id.clone());
        for window in ["last_hour", "last_day"] {
            let counts = &r[window];
            assert_eq!(counts["leases"], leases, "client {id} {window}: {r}");
            assert_eq!(counts["ok"], ok, "client {id} {window}: {r}");
            assert_eq!(counts["error"], error, "client {id} {window}: {r}");
        }
    }
    assert_eq!(
        by_account.keys().copied().collect::<Vec<_>>(),
        ids,
        "round-robin used both accounts"
    );
    for (id, leases) in &by_account {
        let r = row(&usage["per_account"], json!(id));
        assert_eq!(r["last_day"]["leases"], *leases, "account {id}: {r}");
        assert_eq!(r["last_hour"]["leases"], *leases, "account {id}: {r}");
        assert_eq!(bed.account(*id)["leases_24h"], *leases);
    }
    let recent = usage["recent"].as_array().expect("recent leases");
    assert_eq!(recent.len(), 6, "{usage}");
    for lease in of_one.iter().chain(&of_two) {
        assert!(
            recent.iter().any(|r| r["lease_id"] == lease["lease_id"]),
            "{} missing",
            str_of(lease, "lease_id")
        );
    }
}
