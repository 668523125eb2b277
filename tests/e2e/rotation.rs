//! Each rotation strategy, set in `farm.toml`, over accounts logged in at
//! the real provider.

use crate::support::{int_of, json, str_of, Api, Bed, Settings, PROVIDER};

fn bed_with(strategy: &'static str) -> Bed {
    Bed::start(Settings {
        strategy,
        ..Settings::default()
    })
}

/// The accounts that serve the next `n` leases.
fn served(api: &Api, n: usize, session: Option<&str>) -> Vec<i64> {
    (0..n)
        .map(|_| int_of(&api.lease(PROVIDER, session), "account_id"))
        .collect()
}

fn set(bed: &Bed, id: i64, patch: serde_json::Value) {
    bed.admin()
        .patch(&format!("/api/accounts/{id}"), patch)
        .ok();
}

#[test]
fn round_robin_cycles_through_the_usable_accounts() {
    let bed = bed_with("round-robin");
    let ids = bed.logged_in(&["ann", "ben", "cat"]);
    let admin = bed.admin();

    let leases: Vec<_> = (0..3).map(|_| admin.lease(PROVIDER, None)).collect();
    let mut first_round: Vec<i64> = leases.iter().map(|l| int_of(l, "account_id")).collect();
    for lease in &leases {
        bed.provider
            .assert_active(str_of(lease, "access_token"), str_of(lease, "label"));
    }
    let next_rounds = served(&admin, 6, None);
    assert_eq!(
        next_rounds[..3],
        first_round[..],
        "the second round differs: {first_round:?} then {next_rounds:?}"
    );
    assert_eq!(
        next_rounds[3..],
        first_round[..],
        "the third round differs: {first_round:?} then {next_rounds:?}"
    );
    first_round.sort();
    assert_eq!(
        first_round, ids,
        "one round does not serve every account once"
    );

    // A disabled account is skipped; the others alternate.
    set(&bed, ids[1], json!({"enabled": false}));
    assert_eq!(bed.account(ids[1])["state"], "disabled");
    let rest = served(&admin, 4, None);
    assert!(
        !rest.contains(&ids[1]),
        "a disabled account served: {rest:?}"
    );
    assert!(
        rest.windows(2).all(|w| w[0] != w[1]),
        "not alternating: {rest:?}"
    );
}

#[test]
fn least_used_prefers_the_accounts_with_fewest_leases() {
    let bed = bed_with("least-used");
    let ids = bed.logged_in(&["dan", "eve", "fay"]);
    let admin = bed.admin();

    // Only the first account serves for a while...
    set(&bed, ids[1], json!({"enabled": false}));
    set(&bed, ids[2], json!({"enabled": false}));
    assert_eq!(served(&admin, 3, None), vec![ids[0]; 3]);
    set(&bed, ids[1], json!({"enabled": true}));
    set(&bed, ids[2], json!({"enabled": true}));

    // ...then the two others catch up before it serves again.
    let next = served(&admin, 6, None);
    for id in &ids[1..] {
        assert_eq!(
            next.iter().filter(|n| *n == id).count(),
            3,
            "{next:?} (accounts {ids:?})"
        );
    }
    let usage: Vec<i64> = ids
        .iter()
        .map(|id| int_of(&bed.account(*id), "leases_24h"))
        .collect();
    assert_eq!(usage, vec![3, 3, 3]);
}

#[test]
fn fill_first_uses_the_lowest_priority_number_first() {
    let bed = bed_with("fill-first");
    let low = bed.logged_in_with_priority("gil", 5);
    let first = bed.logged_in_with_priority("hal", 1);
    let second = bed.logged_in_with_priority("ida", 3);
    let admin = bed.admin();

    assert_eq!(served(&admin, 4, None), vec![first; 4]);
    // The first one is rate limited: the next priority fills.
    let lease = admin.lease(PROVIDER, None);
    admin.report(&lease, "rate_limited", Some(600));
    assert_eq!(served(&admin, 3, None), vec![second; 3]);
    set(&bed, second, json!({"enabled": false}));
    assert_eq!(served(&admin, 2, None), vec![low; 2]);
    // Priorities can change at run time.
    set(&bed, second, json!({"enabled": true}));
    set(&bed, low, json!({"priority": 2}));
    assert_eq!(served(&admin, 2, None), vec![low; 2]);
}

#[test]
fn sticky_keeps_a_session_on_its_account() {
    let bed = bed_with("sticky");
    let ids = bed.logged_in(&["jon", "kim", "lea"]);
    let client = bed.client("sessions");

    let one = served(&client, 4, Some("session-one"));
    assert!(
        one.iter().all(|id| *id == one[0]),
        "session-one moved: {one:?}"
    );
    let two = served(&client, 4, Some("session-two"));
    assert!(
        two.iter().all(|id| *id == two[0]),
        "session-two moved: {two:?}"
    );
    // Requests between them do not move them.
    let mut anonymous = served(&client, 3, None);
    anonymous.sort();
    assert_eq!(
        anonymous, ids,
        "without a session key every account takes its turn"
    );
    assert_eq!(served(&client, 2, Some("session-one")), vec![one[0]; 2]);

    // When its account cannot serve, the session moves on, and stays there.
    let lease = client.lease(PROVIDER, Some("session-one"));
    client.report(&lease, "rate_limited", Some(600));
    let moved = served(&client, 3, Some("session-one"));
    assert_ne!(
        moved[0], one[0],
        "session-one still served by its cooling account"
    );
    assert!(
        moved.iter().all(|id| *id == moved[0]),
        "session-one did not stay on its new account: {moved:?}"
    );
    if two[0] != one[0] {
        assert_eq!(
            served(&client, 2, Some("session-two")),
            vec![two[0]; 2],
            "session-two moved"
        );
    }
}
