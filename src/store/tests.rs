use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration as StdDuration;

use chrono::Duration;

use super::*;
use crate::store::leases::{LeaseKey, LeaseLog, NewLease, Outcome, Report};

fn key() -> Secret {
    Secret::new("11".repeat(32))
}

fn open(dir: &Path) -> Store {
    Store::open(
        &dir.join("data/farm.db"),
        Cipher::from_text(&key()).unwrap(),
    )
    .unwrap()
}

fn tokens(now: DateTime<Utc>, access: &str, refresh: Option<&str>) -> Tokens {
    Tokens {
        access_token: Secret::new(access),
        token_type: "Bearer".into(),
        expires_at: now + Duration::minutes(5),
        issued_at: now,
        refresh_token: refresh.map(Secret::new),
    }
}

#[test]
fn tokens_are_encrypted_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path());
    let a = store.insert_account("demo", "alice", 3, now).unwrap();
    assert_eq!(
        store
            .save_tokens(a.id, &tokens(now, "ACCESS-XYZ", Some("REFRESH-XYZ")), now)
            .unwrap(),
        Some(1)
    );
    // no rotation: the old refresh token is kept
    assert_eq!(
        store
            .save_tokens(a.id, &tokens(now, "ACCESS-2", None), now)
            .unwrap(),
        Some(2)
    );
    drop(store);

    let raw = std::fs::read(dir.path().join("data/farm.db")).unwrap();
    let wal = std::fs::read(dir.path().join("data/farm.db-wal")).unwrap_or_default();
    for needle in [&b"ACCESS-"[..], b"REFRESH-"] {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle),
            "plaintext token in db"
        );
        assert!(
            !wal.windows(needle.len()).any(|w| w == needle),
            "plaintext token in wal"
        );
    }

    let store = open(dir.path());
    let accounts = store.load_accounts(now - Duration::days(1)).unwrap();
    assert_eq!(accounts.len(), 1);
    let t = accounts[0].tokens.as_ref().unwrap();
    assert_eq!(t.access_token.expose(), "ACCESS-2");
    assert_eq!(t.refresh_token.as_ref().unwrap().expose(), "REFRESH-XYZ");
    assert_eq!(accounts[0].generation, 2);
    assert_eq!(accounts[0].priority, 3);
    assert_eq!(accounts[0].auth, AuthState::Active);
}

#[test]
fn files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.insert_account("demo", "a", 0, Utc::now()).unwrap();
    let mode = |p: &str| {
        std::fs::metadata(dir.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("data"), 0o700);
    assert_eq!(mode("data/farm.db"), 0o600);
    assert_eq!(mode("data/farm.db-wal"), 0o600);
}

#[test]
fn wrong_key_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let other = Cipher::from_text(&Secret::new("22".repeat(32))).unwrap();
    let err = Store::open(&dir.path().join("data/farm.db"), other)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("does not match"), "{err}");
    assert!(
        !err.contains(&"22".repeat(8)),
        "key material in message: {err}"
    );
}

#[test]
fn duplicate_label_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .insert_account("demo", "alice", 0, Utc::now())
        .unwrap();
    assert!(matches!(
        store.insert_account("demo", "alice", 0, Utc::now()),
        Err(StoreError::DuplicateAccount { .. })
    ));
    store
        .insert_account("other", "alice", 0, Utc::now())
        .unwrap();
}

#[test]
fn refresh_started_marker_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path());
    let a = store.insert_account("demo", "alice", 0, now).unwrap();
    store
        .save_tokens(a.id, &tokens(now, "a", Some("r")), now)
        .unwrap();
    store.set_refresh_started(a.id, Some(now)).unwrap();
    drop(store);
    let store = open(dir.path());
    assert!(
        store.load_accounts(now).unwrap()[0].suspect,
        "interrupted refresh is retried at start"
    );
}

fn new_lease(key: LeaseKey, account_id: AccountId, issued_at: DateTime<Utc>) -> NewLease {
    NewLease {
        key,
        account_id,
        client_id: Some(7),
        session: None,
        generation: 1,
        issued_at,
        expires_at: issued_at + Duration::minutes(1),
    }
}

/// A store with one account (alice) and its lease log (and the directory
/// that holds them, removed on drop).
fn lease_bed() -> (tempfile::TempDir, DateTime<Utc>, Store, Account, LeaseLog) {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path());
    let alice = store.insert_account("demo", "alice", 0, now).unwrap();
    let log = LeaseLog::start(store.path()).unwrap();
    (dir, now, store, alice, log)
}

fn stored_lease_ids(store: &Store) -> Vec<i64> {
    let conn = store.conn();
    let mut stmt = conn.prepare("SELECT id FROM leases ORDER BY id").unwrap();
    let ids = stmt.query_map([], |r| r.get(0)).unwrap();
    ids.map(Result::unwrap).collect()
}

/// Requests on two worker threads: every acknowledged lease is in the
/// database with its own values (multi-row inserts bind the right row), and
/// they went in groups (far fewer commits than leases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_leases_are_all_committed_in_groups() {
    let (_dir, now, store, a, log) = lease_bed();
    let (tasks, each) = (64, 50);
    let requests: Vec<_> = (0..tasks)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move {
                for _ in 0..each {
                    let key = log.allocate();
                    let lease = NewLease {
                        session: Some(format!("s{}", key.id)),
                        generation: key.id * 2,
                        ..new_lease(key, a.id, now)
                    };
                    log.record(lease).await.unwrap();
                }
            })
        })
        .collect();
    for r in requests {
        r.await.unwrap();
    }
    let leases = tasks * each;
    assert_eq!(stored_lease_ids(&store).len(), leases);
    let intact: i64 = store
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM leases WHERE session = 's' || id AND generation = id * 2
               AND client_id = 7 AND expires_at = issued_at + 60000 AND issued_at = ?1",
            [ms(now)],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        intact as usize, leases,
        "every row has its own lease's values"
    );
    let commits = log.commits() as usize;
    assert!(
        commits < leases / 4,
        "{commits} commits for {leases} leases: not grouped"
    );
}

/// A request cancelled while it leads a commit (its client went away)
/// hands the lead on: the waiting request's lease, and its own, are written.
#[tokio::test]
async fn a_cancelled_leader_hands_on_and_nothing_is_lost() {
    let (_dir, now, store, a, log) = lease_bed();
    let (k1, k2) = (log.allocate(), log.allocate());

    let mut first = Box::pin(log.record(new_lease(k1, a.id, now)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        first.as_mut().poll(&mut cx).is_pending(),
        "leads, paused before committing"
    );
    let second = tokio::spawn({
        let log = log.clone();
        async move { log.record(new_lease(k2, a.id, now)).await }
    });
    tokio::task::yield_now().await;
    assert!(!second.is_finished(), "waits for the leader");
    assert_eq!(stored_lease_ids(&store), Vec::<i64>::new());

    drop(first);
    tokio::time::timeout(std::time::Duration::from_secs(5), second)
        .await
        .expect("the lead was handed on")
        .unwrap()
        .unwrap();
    assert_eq!(stored_lease_ids(&store), [k1.id, k2.id]);
}

/// A lease whose request went away before anyone committed it is written
/// when the log closes.
#[tokio::test]
async fn queued_leases_are_written_when_the_log_closes() {
    let (_dir, now, store, a, log) = lease_bed();
    let key = log.allocate();
    let mut request = Box::pin(log.record(new_lease(key, a.id, now)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(request.as_mut().poll(&mut cx).is_pending());
    drop(request);
    assert_eq!(stored_lease_ids(&store), Vec::<i64>::new());
    drop(log);
    assert_eq!(stored_lease_ids(&store), [key.id]);
}

#[tokio::test]
async fn lease_log_commits_before_acknowledging_and_usage_counts() {
    let (_dir, now, store, a, log) = lease_bed();
    let mut waits = Vec::new();
    let mut keys = Vec::new();
    for _ in 0..50 {
        let log = log.clone();
        let key = log.allocate();
        keys.push(key);
        waits.push(tokio::spawn(async move {
            log.record(new_lease(key, a.id, now)).await
        }));
    }
    for w in waits {
        w.await.unwrap().unwrap();
    }
    let found = store.find_lease(keys[7]).unwrap().unwrap();
    assert_eq!(found.account_id, a.id);
    let forged = LeaseKey {
        tag: keys[7].tag ^ 1,
        ..keys[7]
    };
    assert!(
        store.find_lease(forged).unwrap().is_none(),
        "a wrong tag finds nothing"
    );
    assert_eq!(keys[7].to_string().parse::<LeaseKey>(), Ok(keys[7]));
    let report = Report {
        lease: keys[7],
        account_id: a.id,
        client_id: Some(7),
        outcome: Outcome::RateLimited,
        retry_after_s: Some(5),
        at: now,
        upstream: None,
    };
    assert!(store.record_report(&report).unwrap());
    log.tally().report_stored(&report);
    let usage = log.tally().usage(now);
    assert_eq!(usage.per_account[0].last_hour.leases, 50);
    assert_eq!(usage.per_account[0].last_day.rate_limited, 1);
    assert_eq!(usage.per_client[0].id, Some(7));
    assert_eq!(
        store.load_accounts(now - Duration::days(1)).unwrap()[0].uses,
        50
    );
}

/// Time windows over the lease log without an index on `issued_at`: the
/// binary search over lease ids, with gaps in the ids (leases allocated but
/// never written) and accounts interleaved.
#[tokio::test]
async fn lease_windows_are_found_by_id_and_prune_keeps_the_recent_ones() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path());
    let alice = store.insert_account("demo", "alice", 0, now).unwrap();
    let bob = store.insert_account("demo", "bob", 0, now).unwrap();
    let conn = || store.conn();
    assert_eq!(
        leases::first_id_since(&conn(), now).unwrap(),
        0,
        "no leases"
    );

    let log = LeaseLog::start(store.path()).unwrap();
    // One lease every 20 minutes over three days, oldest first; every third
    // id is skipped, and every fourth lease is bob's.
    let minutes: Vec<i64> = (0..216).map(|i| (215 - i) * 20).collect();
    let mut ids = Vec::new();
    for (i, ago) in minutes.iter().enumerate() {
        let key = log.allocate();
        if key.id % 3 == 0 {
            let _ = log.allocate();
        }
        let account_id = if i % 4 == 0 { bob.id } else { alice.id };
        let issued_at = now - Duration::minutes(*ago);
        log.record(NewLease {
            key,
            account_id,
            client_id: Some(1 + (i % 2) as i64),
            session: None,
            generation: 1,
            issued_at,
            expires_at: issued_at + Duration::minutes(1),
        })
        .await
        .unwrap();
        ids.push((key.id, issued_at, account_id));
    }
    let since = |d: Duration| ids.iter().filter(|(_, at, _)| *at >= now - d).count() as i64;

    // The boundary may fall in a gap: what matters is which side each lease is on.
    let first_of_day = leases::first_id_since(&conn(), now - Duration::days(1)).unwrap();
    for (id, at, _) in &ids {
        assert_eq!(
            *id >= first_of_day,
            *at >= now - Duration::days(1),
            "lease {id}"
        );
    }
    assert_eq!(
        leases::first_id_since(&conn(), now - Duration::days(9)).unwrap(),
        ids[0].0,
        "all leases are newer"
    );
    assert_eq!(
        leases::first_id_since(&conn(), now + Duration::minutes(1)).unwrap(),
        ids.last().unwrap().0 + 1,
        "no lease is that new"
    );

    // The counters added every lease as it was committed; moving the
    // windows to now takes off those older than an hour and a day.
    log.tally().advance(&conn(), now).unwrap();
    let usage = log.tally().usage(now);
    let from_sql = usage::Tally::load(&conn(), now).unwrap().usage(now);
    assert_eq!(
        format!("{:?}", (&usage.per_account, &usage.per_client)),
        format!("{:?}", (&from_sql.per_account, &from_sql.per_client)),
        "kept up as leases were written = counted afresh"
    );
    let total = |rows: &[leases::UsageRow], hour: bool| -> i64 {
        rows.iter()
            .map(|r| {
                if hour {
                    r.last_hour.leases
                } else {
                    r.last_day.leases
                }
            })
            .sum()
    };
    assert_eq!(total(&usage.per_account, true), since(Duration::hours(1)));
    assert_eq!(total(&usage.per_account, false), since(Duration::days(1)));
    assert_eq!(total(&usage.per_client, false), since(Duration::days(1)));
    let newest: LeaseKey = usage.recent[0].lease_id.parse().unwrap();
    assert_eq!(
        newest.id,
        ids.last().unwrap().0,
        "the newest lease comes first"
    );

    let bob_day = ids
        .iter()
        .filter(|(_, at, who)| *who == bob.id && *at >= now - Duration::days(1))
        .count() as i64;
    let used = store
        .lease_use_since(now - Duration::days(1), Some(bob.id))
        .unwrap();
    assert_eq!(used.get(&bob.id).map(|u| u.leases), Some(bob_day));
    assert_eq!(used.len(), 1, "only bob's were asked for");

    // At load: uses = the last day's leases; the last use comes from the
    // lease log when the row has none, from the row when it is later.
    let loaded = store.load_accounts(now - Duration::days(1)).unwrap();
    let last = |who| {
        ids.iter()
            .filter(|(_, _, w)| *w == who)
            .map(|(_, at, _)| ms(*at))
            .max()
    };
    assert_eq!(loaded[1].uses as i64, bob_day);
    assert_eq!(loaded[0].last_used_at.map(ms), last(alice.id));
    let later = now + Duration::minutes(5);
    store.store_last_used(&[(bob.id, later)]).unwrap();
    store
        .store_last_used(&[(bob.id, now - Duration::days(5))])
        .unwrap();
    let loaded = store.load_accounts(now - Duration::days(1)).unwrap();
    assert_eq!(
        loaded[1].last_used_at.map(ms),
        Some(ms(later)),
        "an older last use never replaces a newer one"
    );

    let removed = store.prune_leases(now - Duration::days(2)).unwrap();
    assert_eq!(removed as i64, ids.len() as i64 - since(Duration::days(2)));
    assert_eq!(
        total(&log.tally().usage(now).per_account, false),
        since(Duration::days(1)),
        "the last day is untouched"
    );
}

#[test]
fn secrets_are_encrypted_write_only_and_go_with_the_account() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path());
    let a = store.insert_account("demo", "alice", 0, now).unwrap();
    assert!(store
        .put_secret(a.id, "password", &Secret::new("PW-SECRET-1"), now)
        .unwrap());
    assert!(
        store
            .put_secret(a.id, "password", &Secret::new("PW-SECRET-2"), now)
            .unwrap(),
        "replaces"
    );
    assert!(
        !store
            .put_secret(999, "password", &Secret::new("x"), now)
            .unwrap(),
        "no such account"
    );
    assert_eq!(
        store
            .secret_names(a.id)
            .unwrap()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["password"]
    );
    assert_eq!(
        store.secrets(a.id).unwrap()["password"].expose(),
        "PW-SECRET-2"
    );
    let raw = std::fs::read(dir.path().join("data/farm.db-wal")).unwrap_or_default();
    assert!(
        !raw.windows(9).any(|w| w == b"PW-SECRET"),
        "plaintext secret on disk"
    );
    store
        .set_login_script(a.id, Some("provider = \"demo\""))
        .unwrap();
    assert_eq!(
        store.login_script(a.id).unwrap().as_deref(),
        Some("provider = \"demo\"")
    );
    store.delete_account(a.id).unwrap();
    assert!(store.secrets(a.id).unwrap().is_empty());
}

/// Closing any descriptor of a file drops the process's POSIX locks on it.
/// If the store opened `farm.db` outside SQLite after its first connection,
/// another process opening the database would find it unlocked, checkpoint,
/// and delete the WAL under the running farm (acknowledged leases and rotated
/// refresh tokens lost). The second connection here is what used to do it.
#[test]
fn another_process_cannot_take_the_wal_from_a_running_store() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path());
    let _log = LeaseLog::start(store.path()).unwrap();
    let a = store.insert_account("demo", "alice", 0, now).unwrap();
    store
        .save_tokens(a.id, &tokens(now, "A", Some("R")), now)
        .unwrap();
    let wal = dir.path().join("data/farm.db-wal");
    assert!(wal.exists());
    let status = std::process::Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('select count(*) from accounts').fetchone(); c.close()"])
        .arg(store.path())
        .status()
        .expect("python3 (with its sqlite3 module) is needed for this test");
    assert!(status.success());
    assert!(
        wal.exists(),
        "another process deleted the running store's WAL: its locks were dropped"
    );
    store
        .save_tokens(a.id, &tokens(now, "A2", Some("R2")), now)
        .unwrap();
    drop(store);
    let reopened = open(dir.path());
    assert_eq!(
        reopened.load_accounts(now).unwrap()[0]
            .tokens
            .as_ref()
            .unwrap()
            .access_token
            .expose(),
        "A2"
    );
}

#[test]
fn a_second_store_on_the_same_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    let second = Store::open(
        &dir.path().join("data/farm.db"),
        Cipher::from_text(&key()).unwrap(),
    );
    assert!(
        matches!(second, Err(StoreError::InUse { .. })),
        "{:?}",
        second.err()
    );
    drop(first);
    drop(open(dir.path()));
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_backup_is_a_private_verified_snapshot_and_the_oldest_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path());
    let a = store.insert_account("demo", "alice", 0, now).unwrap();
    store
        .save_tokens(a.id, &tokens(now, "ACCESS-1", Some("REFRESH-1")), now)
        .unwrap();
    let backups = dir.path().join("data/backups");

    let first = store.backup(&backups, 2, now).unwrap();
    assert_eq!(first.file, backup::file_name(now));
    assert_eq!(mode_of(&backups), 0o700);
    assert_eq!(mode_of(&backups.join(&first.file)), 0o600);
    assert_eq!(
        std::fs::metadata(backups.join(&first.file)).unwrap().len(),
        first.bytes
    );
    // Checking it left nothing beside it; the running store kept its WAL
    // (the backup's connection did not drop this process's locks).
    let names: Vec<String> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, std::slice::from_ref(&first.file));
    assert!(dir.path().join("data/farm.db-wal").exists());
    backup::verify(&backups.join(&first.file), store.fingerprint()).unwrap();
    let other = Cipher::from_text(&Secret::new("22".repeat(32))).unwrap();
    let e = backup::verify(&backups.join(&first.file), other.fingerprint()).unwrap_err();
    assert!(e.to_string().contains("another store key"), "{e}");

    // Written after the first backup: only in the later ones.
    store
        .save_tokens(a.id, &tokens(now, "ACCESS-2", Some("REFRESH-2")), now)
        .unwrap();
    let second = store
        .backup(&backups, 2, now + Duration::seconds(1))
        .unwrap();
    let third = store
        .backup(&backups, 2, now + Duration::seconds(2))
        .unwrap();
    let listed: Vec<String> = backup::list(&backups)
        .unwrap()
        .into_iter()
        .map(|b| b.file)
        .collect();
    assert_eq!(listed, [second.file.clone(), third.file.clone()]);

    // Restored into another farm's place, the first backup holds alice
    // with the tokens of that moment, readable with the same key.
    let elsewhere = tempfile::tempdir().unwrap();
    let db = elsewhere.path().join("data/farm.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::copy(backups.join(&second.file), &db).unwrap();
    let restored = Store::open(&db, Cipher::from_text(&key()).unwrap()).unwrap();
    let accounts = restored.load_accounts(now).unwrap();
    assert_eq!(accounts.len(), 1);
    let t = accounts[0].tokens.as_ref().unwrap();
    assert_eq!(
        (
            t.access_token.expose(),
            t.refresh_token.as_ref().unwrap().expose()
        ),
        ("ACCESS-2", "REFRESH-2")
    );
}

#[test]
fn restore_checks_the_backup_and_moves_the_current_database_aside() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let backups = dir.path().join("backups");
    let store = open(dir.path());
    store.insert_account("demo", "alice", 0, now).unwrap();
    let taken = store.backup(&backups, 5, now).unwrap();
    store.insert_account("demo", "bob", 0, now).unwrap();
    let fingerprint = store.fingerprint().to_owned();
    drop(store);
    let db = dir.path().join("data/farm.db");

    // Not a database, not this farm's, or a newer release's: refused,
    // nothing moved.
    let newer = dir.path().join("newer.db");
    std::fs::copy(backups.join(&taken.file), &newer).unwrap();
    Connection::open(&newer)
        .unwrap()
        .pragma_update(None, "user_version", schema::latest() + 1)
        .unwrap();
    let e = backup::restore(&newer, &db, &fingerprint, now).unwrap_err();
    assert!(
        e.to_string().contains("written by a newer relogin-farm"),
        "{e}"
    );
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"not a database at all, just some text").unwrap();
    let wrong = Cipher::from_text(&Secret::new("22".repeat(32))).unwrap();
    for (from, fp) in [
        (junk.as_path(), fingerprint.as_str()),
        (&backups.join(&taken.file), wrong.fingerprint()),
        (&dir.path().join("missing.db"), fingerprint.as_str()),
    ] {
        let e = backup::restore(from, &db, fp, now).unwrap_err();
        assert!(matches!(e, StoreError::BadBackup { .. }), "{e}");
        assert_eq!(open(dir.path()).load_accounts(now).unwrap().len(), 2);
    }

    let seen = {
        let store = open(dir.path());
        for n in 0..5 {
            store
                .insert_event(now, "account_added", None, &format!("e{n}"), None)
                .unwrap();
        }
        store.latest_event_id().unwrap()
    };
    let aside = backup::restore(&backups.join(&taken.file), &db, &fingerprint, now)
        .unwrap()
        .expect("the current database was moved aside");
    // The restore is the next event after every one the replaced database
    // gave out, so a stream resuming from those ids misses nothing new.
    let restored = open(dir.path());
    let last = restored.events_since(seen, 10).unwrap();
    assert_eq!(last.len(), 1, "{last:?}");
    assert_eq!(
        (last[0].0, last[0].2.as_str()),
        (seen + 1, "backup_restored")
    );
    assert!(last[0].4.contains(&taken.file), "{last:?}");
    drop(restored);
    assert!(
        !dir.path().join("data/farm.db.partial-wal").exists()
            && !dir.path().join("data/farm.db.partial").exists()
    );
    assert!(aside.to_string_lossy().ends_with(&format!(
        "farm.db.before-restore-{}",
        &taken.file[5..taken.file.len() - 3]
    )));
    assert_eq!(mode_of(&db), 0o600);
    let labels = |s: &Store| -> Vec<String> {
        s.load_accounts(now)
            .unwrap()
            .into_iter()
            .map(|a| a.label)
            .collect()
    };
    assert_eq!(labels(&open(dir.path())), ["alice"]);
    // The database it replaced is whole, beside it.
    std::fs::rename(&aside, dir.path().join("old.db")).unwrap();
    let old = Store::open(
        &dir.path().join("old.db"),
        Cipher::from_text(&key()).unwrap(),
    )
    .unwrap();
    assert_eq!(labels(&old), ["alice", "bob"]);
}

/// A database as the previous release left it: one migration short, with
/// an account in it.
fn previous_release_db(path: &Path) {
    let conn = open_connection(path, true).unwrap();
    schema::migrate_to(&conn, schema::latest() - 1).unwrap();
    check_fingerprint(&conn, &Cipher::from_text(&key()).unwrap()).unwrap();
    conn.execute(
        "INSERT INTO accounts (provider, label, priority, enabled, auth_state, generation, created_at)
         VALUES ('demo', 'old-timer', 0, 1, 'pending_login', 0, 0)",
        [],
    )
    .unwrap();
}

fn version_of(path: &Path) -> i64 {
    let conn =
        Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    schema::version(&conn).unwrap()
}

#[test]
fn an_older_schema_is_backed_up_before_it_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data/farm.db");
    let backups = dir.path().join("data/backups");
    previous_release_db(&db);
    let upgrade = UpgradeBackup {
        dir: &backups,
        keep: 3,
    };
    let cipher = || Cipher::from_text(&key()).unwrap();

    let store = Store::open_with(&db, cipher(), Some(upgrade)).unwrap();
    assert_eq!(
        store.load_accounts(Utc::now()).unwrap()[0].label,
        "old-timer"
    );
    let taken = backup::list(&backups).unwrap();
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert_eq!(
        version_of(&backups.join(&taken[0].file)),
        schema::latest() - 1,
        "the backup is the database as the old release left it"
    );
    drop(store);
    assert_eq!(version_of(&db), schema::latest());

    // Already current: no backup on the next start.
    drop(Store::open_with(&db, cipher(), Some(upgrade)).unwrap());
    assert_eq!(backup::list(&backups).unwrap().len(), 1);

    // No backup possible: no upgrade either.
    let elsewhere = tempfile::tempdir().unwrap();
    let old = elsewhere.path().join("farm.db");
    previous_release_db(&old);
    let not_a_dir = elsewhere.path().join("backups");
    std::fs::write(&not_a_dir, "a file where the backup dir should be").unwrap();
    let refused = Store::open_with(
        &old,
        cipher(),
        Some(UpgradeBackup {
            dir: &not_a_dir,
            keep: 3,
        }),
    );
    let e = refused.err().expect("upgraded without a backup");
    assert!(
        matches!(e, StoreError::UpgradeBackup { .. })
            && e.to_string().contains("nothing was changed"),
        "{e}"
    );
    assert_eq!(version_of(&old), schema::latest() - 1);
}

#[test]
fn restore_onto_a_new_machine_needs_no_current_database() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path());
    store.insert_account("demo", "alice", 0, now).unwrap();
    let taken = store.backup(&dir.path().join("backups"), 1, now).unwrap();
    let fingerprint = store.fingerprint().to_owned();
    drop(store);

    let fresh = tempfile::tempdir().unwrap();
    let db = fresh.path().join("farm.db");
    let moved = backup::restore(
        &dir.path().join("backups").join(&taken.file),
        &db,
        &fingerprint,
        now,
    )
    .unwrap();
    assert_eq!(moved, None);
    let restored = Store::open(&db, Cipher::from_text(&key()).unwrap()).unwrap();
    assert_eq!(restored.load_accounts(now).unwrap()[0].label, "alice");
}

#[test]
fn account_ids_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path());
    store.insert_account("demo", "alice", 0, now).unwrap();
    let bob = store.insert_account("demo", "bob", 0, now).unwrap();
    assert!(store.delete_account(bob.id).unwrap());
    let carl = store.insert_account("demo", "carl", 0, now).unwrap();
    assert!(carl.id > bob.id, "bob's id {} was reused", bob.id);
    assert!(store.delete_account(carl.id).unwrap());
    drop(store);
    let store = open(dir.path());
    let dora = store.insert_account("demo", "dora", 0, now).unwrap();
    assert!(
        dora.id > carl.id,
        "carl's id {} was reused after a restart",
        carl.id
    );
}

/// A database of the release before ids were never reused: the newest
/// account was removed (its leases, reports and events stay), and one of the
/// others has a secret. The upgrade keeps every account with its secrets and
/// hands out ids past every one ever seen.
#[tokio::test]
async fn the_upgrade_keeps_accounts_and_secrets_and_never_reuses_an_old_id() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data/farm.db");
    let now = Utc::now();
    let cipher = || Cipher::from_text(&key()).unwrap();
    {
        let conn = open_connection(&db, true).unwrap();
        schema::migrate_to(&conn, 5).unwrap();
        check_fingerprint(&conn, &cipher()).unwrap();
        conn.execute_batch(
            "INSERT INTO accounts (id, provider, label, auth_state, created_at) VALUES
                (1, 'demo', 'alice', 'pending_login', 0), (2, 'demo', 'bob', 'pending_login', 0);
             INSERT INTO leases (id, tag, account_id, generation, issued_at, expires_at) VALUES (1, 1, 5, 1, 0, 1);
             INSERT INTO reports (lease, account_id, outcome, at) VALUES (1, 6, 'ok', 0);
             INSERT INTO events (at, kind, account_id, detail) VALUES (0, 'account_removed', 7, '');",
        )
        .unwrap();
        let sealed = cipher().seal(&Secret::new("hunter2"), &aad(1, "secret:password"));
        conn.execute(
            "INSERT INTO secrets (account_id, name, value, updated_at) VALUES (1, 'password', ?1, 0)",
            [sealed],
        )
        .unwrap();
    }
    let store = Store::open(&db, cipher()).unwrap();
    assert_eq!(schema::version(&store.conn()).unwrap(), schema::latest());
    let labels: Vec<_> = store
        .load_accounts(now)
        .unwrap()
        .into_iter()
        .map(|a| (a.id, a.label))
        .collect();
    assert_eq!(labels, [(1, "alice".to_string()), (2, "bob".to_string())]);
    assert_eq!(
        store.secrets(1).unwrap()["password"].expose(),
        "hunter2",
        "the secret survived the table copy"
    );
    let next = store.insert_account("demo", "carl", 0, now).unwrap();
    assert_eq!(
        next.id, 8,
        "past every account id in accounts, leases, reports and events"
    );
    assert!(store.delete_account(1).unwrap());
    assert!(
        store.secrets(1).unwrap().is_empty(),
        "secrets still go with their account"
    );
}

/// A report names a lease that is still open; on a released or expired
/// lease, or one of an account that is gone (or newer than the lease), it
/// is not stored.
#[tokio::test]
async fn a_report_on_a_closed_lease_is_not_stored() {
    let (_dir, now, store, alice, log) = lease_bed();
    let lease = |log: &LeaseLog| {
        let key = log.allocate();
        (key, new_lease(key, alice.id, now))
    };
    let report = |key, at| Report {
        lease: key,
        account_id: alice.id,
        client_id: Some(7),
        outcome: Outcome::RateLimited,
        retry_after_s: None,
        at,
        upstream: None,
    };
    let (open_key, open_lease) = lease(&log);
    let (released_key, released_lease) = lease(&log);
    log.record(open_lease).await.unwrap();
    log.record(released_lease).await.unwrap();
    assert!(store.release_lease(released_key, now).unwrap());

    assert!(
        !store.record_report(&report(released_key, now)).unwrap(),
        "released"
    );
    let expired = now + Duration::minutes(1); // leases here live a minute
    assert!(
        !store.record_report(&report(open_key, expired)).unwrap(),
        "expired"
    );
    let forged = LeaseKey {
        tag: open_key.tag ^ 1,
        ..open_key
    };
    assert!(
        !store.record_report(&report(forged, now)).unwrap(),
        "wrong tag"
    );
    assert!(store.record_report(&report(open_key, now)).unwrap(), "open");
    assert!(store.delete_account(alice.id).unwrap());
    assert!(
        !store.record_report(&report(open_key, now)).unwrap(),
        "the account was removed"
    );
    let stored: i64 = store
        .conn()
        .query_row("SELECT COUNT(*) FROM reports", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, 1);
}

/// Admin reads come from the counters: they neither wait for the store's
/// connection (held here as `save_tokens` would hold it) nor read the log.
#[tokio::test]
async fn usage_reads_do_not_wait_for_the_store() {
    let (_dir, now, store, alice, log) = lease_bed();
    let key = log.allocate();
    log.record(new_lease(key, alice.id, now)).await.unwrap();
    let held = store.conn();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = log.clone();
    std::thread::spawn(move || {
        let usage = reader.tally().usage(now);
        let _ = tx.send((usage, reader.tally().leases_24h(alice.id)));
    });
    let (usage, leases) = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the admin read waited for the store's lock");
    drop(held);
    assert_eq!(leases, 1);
    assert_eq!(usage.per_account[0].last_hour.leases, 1);
    assert_eq!(usage.recent[0].lease_id, key.to_string());
}

/// A flood of leases grows the WAL; once writes stop, the checkpoint
/// thread empties it, and closing the log leaves none either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_emptied_when_quiet_and_at_close() {
    let (_dir, now, store, alice, log) = lease_bed();
    let wal = || store.file_sizes().1;
    for _ in 0..2000 {
        let key = log.allocate();
        log.record(new_lease(key, alice.id, now)).await.unwrap();
    }
    assert!(wal() > 0, "the leases went to the WAL");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
    while wal() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(wal(), 0, "the WAL was not emptied once writes stopped");

    let key = log.allocate();
    log.record(new_lease(key, alice.id, now)).await.unwrap();
    assert!(wal() > 0);
    drop(log);
    assert_eq!(wal(), 0, "closing the lease log left a WAL");
    let limit: i64 = store
        .conn()
        .query_row("PRAGMA journal_size_limit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(limit, WAL_SIZE_LIMIT);
}

/// The farm's own reports (the proxy's attempts) go through the lease log:
/// committed with the leases, counted as they are, and read back with what
/// the upstream did after a restart.
#[tokio::test]
async fn the_farms_own_reports_are_group_committed_with_what_the_upstream_did() {
    let (_dir, now, store, alice, log) = lease_bed();
    let key = log.allocate();
    log.record(new_lease(key, alice.id, now)).await.unwrap();
    let upstream = leases::Upstream {
        status: 200,
        bytes: 2048,
        latency_ms: 7,
        body_end: leases::BodyEnd::ClientGone,
    };
    let commits = log.commits();
    log.record_report(Report {
        lease: key,
        account_id: alice.id,
        client_id: Some(3),
        outcome: Outcome::Ok,
        retry_after_s: None,
        at: now,
        upstream: Some(upstream),
    })
    .await
    .unwrap();
    assert_eq!(
        log.commits(),
        commits + 1,
        "the report is a commit of the log"
    );
    let live = log.tally().usage(now);
    let reloaded = usage::Tally::load(&store.conn(), now).unwrap().usage(now);
    for usage in [&live, &reloaded] {
        assert_eq!(usage.recent[0].upstream, Some(upstream));
        assert_eq!(usage.recent[0].outcome.as_deref(), Some("ok"));
        assert_eq!(usage.per_account[0].last_hour.ok, 1);
    }

    // A queued report waits for the next commit, and goes with it.
    log.queue_report(Report {
        lease: key,
        account_id: alice.id,
        client_id: Some(3),
        outcome: Outcome::Error,
        retry_after_s: None,
        at: now,
        upstream: Some(leases::Upstream {
            body_end: leases::BodyEnd::UpstreamBroke,
            ..upstream
        }),
    });
    assert_eq!(log.tally().usage(now).per_account[0].last_hour.error, 0);
    log.record(new_lease(log.allocate(), alice.id, now))
        .await
        .unwrap();
    assert_eq!(log.tally().usage(now).per_account[0].last_hour.error, 1);
}

/// Rows queued without a waiter (the proxy's leases and reports) are
/// committed by the log itself within `QUEUED_FLUSH_AFTER`, together: one
/// commit for many, leases before the reports on them.
#[tokio::test(start_paused = true)]
async fn queued_rows_are_committed_together_by_the_log_itself() {
    let (_dir, now, store, alice, log) = lease_bed();
    let commits = log.commits();
    let mut keys = Vec::new();
    for _ in 0..50 {
        let key = log.allocate();
        log.queue_lease(new_lease(key, alice.id, now));
        keys.push(key.id);
    }
    log.queue_report(Report {
        lease: LeaseKey {
            id: keys[0],
            tag: 0,
        },
        account_id: alice.id,
        client_id: Some(7),
        outcome: Outcome::Ok,
        retry_after_s: None,
        at: now,
        upstream: None,
    });
    assert!(stored_lease_ids(&store).is_empty(), "queued, not written");
    let started = tokio::time::Instant::now();
    wait_paused(|| log.commits() > commits).await;
    assert!(started.elapsed() <= leases::QUEUED_FLUSH_AFTER + StdDuration::from_millis(2));
    assert_eq!(log.commits(), commits + 1, "one commit for all of them");
    assert_eq!(stored_lease_ids(&store), keys);
    assert_eq!(log.tally().usage(now).per_account[0].last_hour.ok, 1);
}

/// A queued lease is not stored until a commit; `flush` brings that commit
/// (a client looking up the lease of a proxied answer it has just read).
#[tokio::test(start_paused = true)]
async fn a_flush_commits_what_was_queued_before_it() {
    let (_dir, now, store, alice, log) = lease_bed();
    let key = log.allocate();
    assert!(log.allocated(key));
    assert!(!log.allocated(LeaseKey {
        id: key.id + 1,
        tag: 0
    }));
    log.queue_lease(new_lease(key, alice.id, now));
    assert!(
        store.find_lease(key).unwrap().is_none(),
        "queued, not written"
    );
    log.flush().await.unwrap();
    assert_eq!(store.find_lease(key).unwrap().map(|l| l.key), Some(key));
}

/// Polls `done` on paused time, a millisecond at a time, for at most a second.
async fn wait_paused(mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(StdDuration::from_millis(1)).await;
    }
    panic!("not done within a second of paused time");
}

fn who(value: &str) -> Identity {
    Identity {
        value: value.into(),
        display: Some(format!("{value}@example.test")),
    }
}

#[test]
fn a_login_as_someone_else_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path());
    let a = store.insert_account("demo", "alice", 0, now).unwrap();
    let saved = store
        .save_login_tokens(
            a.id,
            &tokens(now, "A1", Some("R1")),
            Some(who("alice")),
            now,
        )
        .unwrap();
    assert_eq!(
        saved,
        LoginSave::Saved {
            generation: 1,
            identity: Some(who("alice"))
        }
    );
    // Bob's login on alice's account: refused, and the disk is as it was.
    let refused = store
        .save_login_tokens(a.id, &tokens(now, "B1", Some("RB")), Some(who("bob")), now)
        .unwrap();
    assert_eq!(
        refused,
        LoginSave::Refused {
            got: Some(who("bob")),
            expected: who("alice")
        }
    );
    let loaded = store.load_accounts(now).unwrap().remove(0);
    let t = loaded.tokens.as_ref().unwrap();
    assert_eq!(
        (
            t.access_token.expose(),
            t.refresh_token.as_ref().unwrap().expose()
        ),
        ("A1", "R1")
    );
    assert_eq!(
        (loaded.generation, loaded.identity),
        (1, Some(who("alice")))
    );
    // Alice again: stored, the pin unchanged.
    let again = store
        .save_login_tokens(
            a.id,
            &tokens(now, "A2", Some("R2")),
            Some(who("alice")),
            now,
        )
        .unwrap();
    assert!(matches!(again, LoginSave::Saved { generation: 2, .. }));
}

#[test]
fn an_identity_belongs_to_one_account_of_a_provider() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path());
    let first = store.insert_account("demo", "one", 0, now).unwrap();
    let second = store.insert_account("demo", "two", 0, now).unwrap();
    let other_provider = store.insert_account("other", "one", 0, now).unwrap();
    store
        .save_login_tokens(
            first.id,
            &tokens(now, "A1", Some("R1")),
            Some(who("alice")),
            now,
        )
        .unwrap();
    let taken = store
        .save_login_tokens(
            second.id,
            &tokens(now, "A2", Some("R2")),
            Some(who("alice")),
            now,
        )
        .unwrap();
    assert_eq!(
        taken,
        LoginSave::Taken {
            identity: who("alice"),
            account: first.id,
            label: "one".into()
        }
    );
    let loaded = store.load_accounts(now).unwrap();
    assert!(loaded[1].tokens.is_none() && loaded[1].identity.is_none());
    // The same user at another provider is another identity.
    let elsewhere = store
        .save_login_tokens(
            other_provider.id,
            &tokens(now, "A3", None),
            Some(who("alice")),
            now,
        )
        .unwrap();
    assert!(matches!(elsewhere, LoginSave::Saved { .. }));
    // The index holds even against a write that skips the check.
    let conn = store.conn();
    let dup = conn.execute(
        "UPDATE accounts SET identity = 'alice' WHERE id = ?1",
        [second.id],
    );
    assert!(dup.is_err());
}

#[test]
fn the_lease_id_ends_are_two_seeks_not_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let conn = store.conn();
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", leases::LEASE_ID_ENDS))
        .unwrap()
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert!(
        plan.iter().all(|step| !step.starts_with("SCAN leases")),
        "{plan:?}"
    );
    assert_eq!(
        plan.iter().filter(|s| *s == "SEARCH leases").count(),
        2,
        "{plan:?}"
    );
}

/// Tokens are saved while another connection (the lease log's) commits
/// all the time: a read-then-write transaction must not fail to upgrade a
/// read snapshot that went stale ("database is locked"), which would lose a
/// rotated refresh token.
#[test]
fn tokens_are_saved_while_the_lease_log_commits() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path());
    let a = store.insert_account("demo", "alice", 0, now).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let path = dir.path().join("data/farm.db");
        let stop = stop.clone();
        std::thread::spawn(move || {
            let conn = open_connection(&path, false).unwrap();
            let mut id = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                id += 1;
                // Errors are not this test's subject (a busy machine can
                // make this writer wait past its own busy timeout).
                let _ = conn.execute(
                    "INSERT INTO leases (id, tag, account_id, client_id, session, generation, issued_at, expires_at)
                     VALUES (?1, 0, ?2, NULL, NULL, 1, 0, 0)",
                    params![id, a.id],
                );
                // A gap between commits, as the lease log leaves: the
                // other writer's BEGIN IMMEDIATE gets its turn.
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
            id
        })
    };
    for i in 0..300 {
        let access = format!("ACCESS-{i}");
        let refresh = format!("REFRESH-{i}");
        store
            .save_tokens(a.id, &tokens(now, &access, Some(&refresh)), now)
            .unwrap_or_else(|e| panic!("save {i}: {e}"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
    let accounts = store.load_accounts(now - Duration::days(1)).unwrap();
    let t = accounts[0].tokens.as_ref().unwrap();
    assert_eq!(t.refresh_token.as_ref().unwrap().expose(), "REFRESH-299");
}

#[test]
fn a_wiped_profile_forgets_its_session_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let now = Utc::now();
    let id = store.insert_account("demo", "alice", 0, now).unwrap().id;
    store
        .record_browser_run(id, now, "ok", Some(now + Duration::days(7)))
        .unwrap();
    store.forget_browser_session(id).unwrap();
    let (at, outcome, session) = store.browser_run(id).unwrap().unwrap();
    assert_eq!(
        (at.is_some(), outcome.as_deref(), session),
        (true, Some("ok"), None)
    );
}
