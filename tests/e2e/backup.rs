//! Backups and restore through the real binary, and one farm per store:
//! a second farm on the same database is refused, a backup taken while the
//! farm serves holds its accounts and tokens, and `relogin-farm restore`
//! puts it back (refused while the farm runs) with the replaced database
//! kept aside; `relogin-farm doctor` reports on all of it.

use std::path::{Path, PathBuf};
use std::process::Output;

use std::os::unix::fs::PermissionsExt;

use crate::support::bed::BrowserSettings;
use crate::support::farm::FarmProcess;
use crate::support::{
    int_of, json, mode_of, secs, str_of, time_of, wait_for, Bed, Settings, Value, PROVIDER,
};

fn backups_dir(bed: &Bed) -> PathBuf {
    bed.layout.data_dir().join("backups")
}

/// Names of the backup files on disk, sorted.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn events_of_kind(bed: &Bed, kind: &str) -> Vec<Value> {
    let events = bed.events_since(0);
    events.into_iter().filter(|e| e["kind"] == kind).collect()
}

pub(crate) fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_second_farm_on_the_same_store_is_refused_and_the_first_keeps_serving() {
    let bed = Bed::start(Settings::default());
    let id = bed.logged_in(&["hana"])[0];
    let failure = match FarmProcess::start(&bed.layout, Some(&bed.store_key), &Settings::default())
    {
        Ok(_) => panic!("a second farm started on the same store"),
        Err(f) => f,
    };
    let status = failure
        .status
        .unwrap_or_else(|| panic!("the second farm hung instead of refusing:\n{}", failure.log));
    assert!(!status.success(), "exit status {status}");
    assert!(
        failure.log.contains("farm.db is in use by process")
            && failure.log.contains("stop it first"),
        "no clear refusal:\n{}",
        failure.log
    );
    assert_eq!(bed.account(id)["state"], "healthy");
    bed.client("worker").lease(PROVIDER, None);
}

#[test]
fn a_backup_restored_after_a_stop_brings_back_accounts_and_tokens() {
    let mut bed = Bed::start(Settings::default());
    let alice = bed.logged_in(&["alice"])[0];
    let worker = bed.client("worker");
    let before = worker.lease(PROVIDER, None);

    let taken = bed.admin().post("/api/backups", json!({})).expect(201);
    let file = str_of(&taken, "file").to_string();
    let path = backups_dir(&bed).join(&file);
    assert_eq!(
        std::fs::metadata(&path).map(|m| m.len()).ok(),
        Some(int_of(&taken, "bytes") as u64),
        "{taken}"
    );
    assert!((chrono::Utc::now() - time_of(&taken, "created_at")).num_seconds() < 60);
    assert_eq!(mode_of(&backups_dir(&bed)), 0o700);
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(files_in(&backups_dir(&bed)), std::slice::from_ref(&file));
    let listed = bed.admin().get("/api/backups").ok();
    assert_eq!(listed, json!([taken]));
    let created = events_of_kind(&bed, "backup_created");
    assert!(
        created.len() == 1 && str_of(&created[0], "detail").contains(&file),
        "{created:?}"
    );
    assert_eq!(bed.metric("relogin_farm_backups_total{result=\"ok\"}"), 1.0);
    assert_eq!(
        bed.metric("relogin_farm_last_backup_timestamp_seconds"),
        time_of(&taken, "created_at").timestamp() as f64
    );
    // The CLI asks the running farm too.
    let out = bed.run_cli(&["backup", "--farm", bed.url()], "");
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).starts_with("backup taken: farm-"),
        "{}",
        output_text(&out)
    );
    assert_eq!(files_in(&backups_dir(&bed)).len(), 2);

    // Added after the backup: gone once it is restored.
    let bob = bed.add_account("bob", 0);

    let restore = |bed: &Bed| bed.run_cli(&["restore", path.to_str().unwrap()], "");
    let out = restore(&bed);
    assert!(!out.status.success(), "restored under a running farm");
    assert!(
        output_text(&out).contains("in use by process"),
        "{}",
        output_text(&out)
    );
    assert_eq!(bed.account(bob)["label"], "bob");

    let last_seen = int_of(bed.events_since(0).last().expect("events"), "id");
    assert!(bed.stop().success());
    let out = restore(&bed);
    assert!(out.status.success(), "{}", output_text(&out));
    let printed = output_text(&out);
    let kept = printed
        .lines()
        .find_map(|l| l.strip_prefix("the database it replaced is kept at "))
        .unwrap_or_else(|| panic!("where the old database went is not said:\n{printed}"));
    assert!(Path::new(kept).is_file(), "{printed}");
    assert_eq!(mode_of(&bed.layout.db()), 0o600);

    bed.start_farm();
    // An event stream resuming from the last id it saw gets the restore
    // (its id is past every id of the replaced database), and what follows.
    let resumed = bed.events_since(last_seen);
    assert_eq!(resumed[0]["kind"], "backup_restored", "{resumed:?}");
    assert_eq!(int_of(&resumed[0], "id"), last_seen + 1, "{resumed:?}");
    assert!(str_of(&resumed[0], "detail").contains(&file), "{resumed:?}");
    let accounts = bed.admin().get("/api/accounts").ok();
    let ids: Vec<i64> = accounts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| int_of(a, "id"))
        .collect();
    assert_eq!(ids, [alice], "{accounts}");
    // The same token as before the backup, then a refresh with the refresh
    // token of that moment: the provider accepts it (nothing rotated it since).
    let after = bed.client("worker-2").lease(PROVIDER, None);
    assert_eq!(after["access_token"], before["access_token"]);
    let refreshed = bed
        .admin()
        .post(&format!("/api/accounts/{alice}/refresh"), json!({}))
        .ok();
    assert_eq!(refreshed["state"], "healthy", "{refreshed}");
    assert_ne!(
        bed.client("worker-3").lease(PROVIDER, None)["access_token"],
        before["access_token"]
    );
}

#[test]
fn a_backup_that_is_not_this_farms_is_refused_and_nothing_moves() {
    let mut bed = Bed::start(Settings::default());
    bed.logged_in(&["ivy"]);
    assert!(bed.stop().success());
    let junk = bed.layout.root.join("junk.db");
    std::fs::write(&junk, "this is not a database").unwrap();
    let before = std::fs::read(bed.layout.db()).unwrap();
    let out = bed.run_cli(&["restore", junk.to_str().unwrap()], "");
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("is not a usable backup"),
        "{}",
        output_text(&out)
    );
    assert_eq!(std::fs::read(bed.layout.db()).unwrap(), before);
    assert!(!files_in(&bed.layout.data_dir())
        .iter()
        .any(|f| f.contains("before-restore")));
}

/// `relogin-farm doctor` beside a running farm: the data checks (key,
/// database, who runs it, backups) and the browser's, exit status 0; then
/// with a database readable by others: the problem, its fix, status 1.
#[test]
fn doctor_reports_the_running_farm_and_what_to_fix() {
    let bed = Bed::start(Settings::default().with_browser(BrowserSettings::default()));
    bed.logged_in(&["kim"]);
    let out = bed.run_cli(&["doctor"], "");
    let said = output_text(&out);
    assert!(out.status.success(), "{said}");
    for expected in [
        "(1 accounts, schema",
        "the store key matches",
        "farm: running on this database (process",
        "backups: none yet",
        "browser: node /usr/bin/node",
        "no problems found",
    ] {
        assert!(said.contains(expected), "{expected:?} in:\n{said}");
    }
    let db = bed.layout.db();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = bed.run_cli(&["doctor"], "");
    let said = output_text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!("fix: chmod 600 {}", db.display())),
        "{said}"
    );
}

#[test]
fn scheduled_backups_keep_the_newest_and_are_announced() {
    let bed = Bed::start(
        Settings::default().with_toml("\n[backup]\nschedule = \"* * * * * *\"\nkeep = 2\n"),
    );
    bed.logged_in(&["jun"]);
    let dir = backups_dir(&bed);
    let created = wait_for("three scheduled backups", secs(20), || {
        let created = events_of_kind(&bed, "backup_created");
        if created.len() >= 3 {
            Ok(created)
        } else {
            Err(format!("{created:?}"))
        }
    });
    // Between a backup's rename and its pruning there are three files for a
    // moment; without pruning they would only grow.
    let on_disk = wait_for("two backups on disk", secs(10), || {
        let on_disk = files_in(&dir);
        match on_disk.len() {
            2 => Ok(on_disk),
            _ => Err(format!("{on_disk:?} after {} backups", created.len())),
        }
    });
    let listed = bed.admin().get("/api/backups").ok();
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| str_of(b, "file"))
        .collect();
    let mut newest_first = on_disk.clone();
    newest_first.reverse();
    // A backup may land between the two reads; then both moved by one.
    assert!(
        listed == newest_first || listed[1] == newest_first[0],
        "{listed:?} vs {on_disk:?}"
    );
    assert!(bed.metric("relogin_farm_backups_total{result=\"ok\"}") >= 3.0);
    assert!(events_of_kind(&bed, "backup_failed").is_empty());
}
