//! Secrets stay secret: no token, key or password in a debug log, and the
//! data files are private to the farm's user.

use std::path::Path;

use relogin_farm::secret::Secret;
use relogin_farm::store::{Cipher, Store};

use crate::support::{int_of, json, mode_of, secs, str_of, time_of, Bed, Settings, PROVIDER};

/// Every access and refresh token the farm holds now, read from its store
/// with the store key (the farm must be stopped).
fn stored_tokens(bed: &Bed) -> Vec<String> {
    let cipher =
        Cipher::from_text(&Secret::new(bed.store_key.clone())).expect("the store key parses");
    let store = Store::open(&bed.layout.db(), cipher).expect("open the farm's store");
    let accounts = store
        .load_accounts(chrono::Utc::now())
        .expect("load the accounts");
    let tokens = accounts.iter().filter_map(|a| a.tokens.as_ref());
    tokens
        .flat_map(|t| [Some(&t.access_token), t.refresh_token.as_ref()])
        .flatten()
        .map(|s| s.expose().to_string())
        .collect()
}

#[test]
fn a_debug_log_contains_no_secret() {
    let mut bed = Bed::start(Settings {
        log_level: "debug",
        rust_log: Some("debug"),
        ..Settings::default()
    });
    let alice = bed.add_account("alice", 0);
    bed.login_by_loopback(alice, "alice");
    let bob = bed.logged_in(&["bob"])[0];
    let (_, key) = bed.new_client("worker");
    let mut secrets = vec![bed.admin_token.clone(), key.clone(), bed.store_key.clone()];
    let lease = |bed: &Bed| bed.api(Some(&key)).lease(PROVIDER, None);
    let mut leased = vec![lease(&bed), lease(&bed)];
    bed.api(Some("rfk_not-a-key"))
        .next(PROVIDER, None)
        .expect_error(401, "unauthorized");
    assert!(bed.stop().success());
    secrets.extend(stored_tokens(&bed));

    // Refreshes of both kinds, after a restart.
    bed.start_farm();
    bed.admin()
        .post(&format!("/api/accounts/{alice}/refresh"), json!({}))
        .ok();
    let bob_lease = leased
        .iter()
        .find(|l| l["account_id"] == bob)
        .expect("bob served a lease")
        .clone();
    let generation = int_of(&bed.account(bob), "generation");
    // A report on a token issued moments ago is coalesced (no grant):
    // report once bob's token is past that grace (5 s).
    let issued = time_of(&bed.account(bob), "last_refresh_at");
    let grace_over = issued + chrono::Duration::milliseconds(5500) - chrono::Utc::now();
    std::thread::sleep(grace_over.to_std().unwrap_or_default());
    bed.api(Some(&key)).report(&bob_lease, "unauthorized", None);
    bed.wait_account("bob's refresh after the report", bob, secs(10), |a| {
        a["generation"].as_i64() > Some(generation)
    });
    leased.extend([lease(&bed), lease(&bed)]);
    assert!(bed.stop().success());
    secrets.extend(stored_tokens(&bed));
    secrets.extend(leased.iter().map(|l| str_of(l, "access_token").to_string()));

    let log = bed.farm_log();
    assert!(
        log.contains("DEBUG"),
        "the capture has no debug lines:\n{log}"
    );
    assert!(
        secrets.len() >= 3 + 8,
        "too few secrets collected: {}",
        secrets.len()
    );
    for secret in &secrets {
        let n = secret.len().min(16);
        for piece in [secret.as_str(), &secret[..n], &secret[secret.len() - n..]] {
            assert!(
                !log.contains(piece),
                "the farm's log shows a secret ({piece:?}, part of a {}-char secret)",
                secret.len()
            );
        }
    }
}

fn assert_private(data_dir: &Path) {
    assert_eq!(mode_of(data_dir), 0o700, "{}", data_dir.display());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(data_dir).expect("read the data dir") {
        let path = entry.expect("a dir entry").path();
        assert_eq!(
            mode_of(&path),
            0o600,
            "{} is mode {:o}",
            path.display(),
            mode_of(&path)
        );
        names.push(
            path.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
    }
    for expected in ["farm.db", "farm.key"] {
        assert!(
            names.iter().any(|n| n == expected),
            "no {expected} in the data dir: {names:?}"
        );
    }
}

#[test]
fn data_files_are_0600_in_a_0700_dir() {
    let mut bed = Bed::start(Settings {
        key_in_env: false,
        ..Settings::default()
    });
    let id = bed.logged_in(&["uma"])[0];
    bed.admin().lease(PROVIDER, None);
    assert_private(&bed.layout.data_dir());

    // The key file the farm created is the one it uses after a restart.
    bed.restart();
    assert_eq!(bed.account(id)["state"], "healthy");
    bed.provider.assert_active(
        str_of(&bed.admin().lease(PROVIDER, None), "access_token"),
        "uma",
    );
    assert_private(&bed.layout.data_dir());
}
