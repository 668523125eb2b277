//! `relogin-farm doctor`, the data half (the browser half is
//! [`crate::browser::doctor`]): can the store key open the database, is the
//! farm running on it, are the files private, are backups being taken? Each
//! problem comes with its fix. Reads only; safe while the farm runs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags};

use crate::browser::runner::Problem;
use crate::config::Config;
use crate::store::{backup, lock::StoreLock, stored_fingerprint, Cipher, StoreError};

pub mod providers;

/// What the data check found: facts worth showing, and problems.
#[derive(Debug, Default)]
pub struct DataReport {
    pub notes: Vec<String>,
    pub problems: Vec<Problem>,
}

impl DataReport {
    fn note(&mut self, text: String) {
        self.notes.push(text);
    }
    fn problem(&mut self, problem: String, fix: String) {
        self.problems.push(Problem { problem, fix });
    }
}

/// Checks the key, the database, the file modes and the backups of
/// `config`'s store, as of `now`.
pub fn check_data(config: &Config, now: DateTime<Utc>) -> DataReport {
    let mut report = DataReport::default();
    let db = &config.store.path;
    if !db.exists() {
        report.note(format!(
            "database: none yet at {} (the first start creates it, and the key with it)",
            db.display()
        ));
        return report;
    }
    check_modes(config, &mut report);
    let Some(cipher) = read_key(config, &mut report) else {
        return report;
    };
    match database_facts(db) {
        Ok((fingerprint, schema, accounts)) => {
            if fingerprint.as_deref() != Some(cipher.fingerprint()) {
                report.problem(
                    format!(
                        "the store key does not open {} (its key fingerprint is {}, the key given has {})",
                        db.display(),
                        fingerprint.as_deref().unwrap_or("missing"),
                        cipher.fingerprint()
                    ),
                    "use the key this database was created with (your copy of farm.key), or RELOGIN_FARM_KEY".into(),
                );
            } else if schema > crate::store::schema_version() {
                report.problem(
                    format!(
                        "{} was written by a newer relogin-farm (schema {schema}, this build knows {})",
                        db.display(),
                        crate::store::schema_version()
                    ),
                    "run the newer release, or restore the backup taken before its upgrade".into(),
                );
            } else {
                report.note(format!(
                    "database: {} ({accounts} accounts, schema {schema}), the store key matches",
                    db.display()
                ));
            }
        }
        Err(e) => report.problem(
            format!("{} cannot be read: {e}", db.display()),
            "restore the newest backup: relogin-farm restore <file in backup.dir>".into(),
        ),
    }
    match StoreLock::acquire(db) {
        Ok(_free) => report.note("farm: not running on this database".into()),
        Err(StoreError::InUse { holder, .. }) => {
            report.note(format!("farm: running on this database ({holder})"))
        }
        Err(e) => report.note(format!("farm: cannot tell whether it runs ({e})")),
    }
    check_backups(config, now, &mut report);
    report
}

fn read_key(config: &Config, report: &mut DataReport) -> Option<Cipher> {
    let key = match crate::server::configured_key(config) {
        Ok(key) => key,
        Err(e) => {
            report.problem(
                format!(
                    "the store key {} cannot be read: {e}; the farm will refuse to start",
                    config.store.key_file.display()
                ),
                "put back your copy of the key file this database was created with, or set RELOGIN_FARM_KEY".into(),
            );
            return None;
        }
    };
    match Cipher::from_text(&key) {
        Ok(cipher) => Some(cipher),
        Err(e) => {
            report.problem(
                format!("the store key is not valid: {e}"),
                "use the key this database was created with (base64 of 32 bytes)".into(),
            );
            None
        }
    }
}

/// The fingerprint recorded in the database, its schema and its accounts.
///
/// Opened read-write although nothing is written: a read-only connection to
/// a WAL database of a stopped farm would create `-wal`/`-shm` files it then
/// cannot remove; as the last connection, this one removes them on close.
fn database_facts(db: &Path) -> rusqlite::Result<(Option<String>, i64, i64)> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let schema: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let fingerprint = stored_fingerprint(&conn).ok().flatten();
    let accounts = conn.query_row("SELECT count(*) FROM accounts", [], |r| r.get(0))?;
    Ok((fingerprint, schema, accounts))
}

/// The data directory 0700, the database and the key 0600.
fn check_modes(config: &Config, report: &mut DataReport) {
    let db = &config.store.path;
    let mut wanted = vec![(db.as_path(), 0o600)];
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        wanted.push((dir, 0o700));
    }
    if config.store.key.is_none() {
        wanted.push((config.store.key_file.as_path(), 0o600));
    }
    for (path, mode) in wanted {
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let found = meta.permissions().mode() & 0o777;
        if found & !mode != 0 {
            report.problem(
                format!(
                    "{} is readable by others (mode {found:o}, expected {mode:o})",
                    path.display()
                ),
                format!("chmod {mode:o} {}", path.display()),
            );
        }
    }
}

/// A scheduled backup more than two periods old is a problem; none at all
/// is only a note (a new farm takes its first at the first scheduled time).
fn check_backups(config: &Config, now: DateTime<Utc>, report: &mut DataReport) {
    let b = &config.backup;
    let found = match backup::list(&b.dir) {
        Ok(found) => found,
        Err(e) => {
            report.problem(
                format!("the backups in {} cannot be listed: {e}", b.dir.display()),
                "make backup.dir a directory the farm's user can write".into(),
            );
            return;
        }
    };
    let newest = found.last();
    let Some(schedule) = &b.schedule else {
        report.note(format!(
            "backups: scheduled backups are off (backup.schedule = \"\"); {} in {}",
            found.len(),
            b.dir.display()
        ));
        return;
    };
    let Some(newest) = newest else {
        report.note(format!(
            "backups: none yet in {} (scheduled \"{}\"; `relogin-farm backup` takes one now)",
            b.dir.display(),
            schedule.source()
        ));
        return;
    };
    let age = now - newest.created_at;
    let mut upcoming = schedule.after(&now);
    let period = match (upcoming.next(), upcoming.next()) {
        (Some(a), Some(b)) => b - a,
        _ => chrono::Duration::days(1),
    };
    if age > period * 2 {
        report.problem(
            format!(
                "the newest backup, {}, is {} h old although backups are scheduled \"{}\"",
                newest.file,
                age.num_hours(),
                schedule.source()
            ),
            "look for backup_failed events (GET /api/events) or errors in the farm's log; `relogin-farm backup` takes one now".into(),
        );
    } else {
        report.note(format!(
            "backups: {} in {}, the newest {} ({} min ago)",
            found.len(),
            b.dir.display(),
            newest.file,
            age.num_minutes()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::store::Store;

    const KEY: &str = "MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE="; // base64 of 32 × '1'

    fn config(dir: &Path, key: &str) -> Config {
        let toml = format!(
            "[store]\npath = {:?}\n",
            dir.join("data/farm.db").display().to_string()
        );
        let env = [("RELOGIN_FARM_KEY".to_owned(), key.to_owned())];
        Config::from_toml_str(&toml, env, &Default::default()).unwrap()
    }

    fn texts(r: &DataReport) -> String {
        let problems = r
            .problems
            .iter()
            .map(|p| format!("PROBLEM {} / FIX {}", p.problem, p.fix));
        r.notes
            .iter()
            .cloned()
            .chain(problems)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_new_farm_has_nothing_to_check_yet() {
        let dir = tempfile::tempdir().unwrap();
        let r = check_data(&config(dir.path(), KEY), Utc::now());
        assert!(r.problems.is_empty(), "{}", texts(&r));
        assert!(texts(&r).starts_with("database: none yet"), "{}", texts(&r));
    }

    #[test]
    fn key_lock_modes_and_backups_are_reported_with_their_fixes() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), KEY);
        let now = Utc::now();
        let cipher = Cipher::from_text(&Secret::new(KEY)).unwrap();
        let store = Store::open(&cfg.store.path, cipher).unwrap();
        store.insert_account("demo", "alice", 0, now).unwrap();

        // Running, healthy, no backup yet.
        let r = check_data(&cfg, now);
        let said = texts(&r);
        assert!(r.problems.is_empty(), "{said}");
        assert!(said.contains("(1 accounts, schema"), "{said}");
        assert!(said.contains("the store key matches"), "{said}");
        assert!(
            said.contains(&format!(
                "running on this database (process {} (relogin-farm))",
                std::process::id()
            )),
            "{said}"
        );
        assert!(said.contains("backups: none yet"), "{said}");

        // A fresh backup is fine; three days later it is a problem (daily schedule).
        let taken = store.backup(&cfg.backup.dir, 7, now).unwrap();
        drop(store);
        let said = texts(&check_data(&cfg, now + chrono::Duration::minutes(5)));
        assert!(
            said.contains(&format!("the newest {} (5 min ago)", taken.file)),
            "{said}"
        );
        assert!(said.contains("not running on this database"), "{said}");
        let r = check_data(&cfg, now + chrono::Duration::days(3));
        assert_eq!(r.problems.len(), 1, "{}", texts(&r));
        assert!(
            r.problems[0].problem.contains("is 72 h old"),
            "{}",
            texts(&r)
        );

        // Another key: the farm would refuse to start.
        let other = config(dir.path(), "MjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjI=");
        let r = check_data(&other, now);
        assert_eq!(r.problems.len(), 1, "{}", texts(&r));
        assert!(
            r.problems[0].problem.contains("does not open"),
            "{}",
            texts(&r)
        );

        // Readable by others: the fix is the chmod.
        std::fs::set_permissions(&cfg.store.path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let r = check_data(&cfg, now);
        assert_eq!(
            r.problems
                .iter()
                .map(|p| p.fix.as_str())
                .collect::<Vec<_>>(),
            [format!("chmod 600 {}", cfg.store.path.display())],
            "{}",
            texts(&r)
        );
        // Reading left nothing beside the database of the stopped farm.
        assert!(!dir.path().join("data/farm.db-wal").exists());
    }
}
