//! Backups of the database, and restoring one.
//!
//! A backup is a consistent snapshot taken with `VACUUM INTO` on a
//! connection of its own (in WAL mode that is a read transaction: the farm
//! keeps refreshing and leasing meanwhile). It is written as a hidden
//! `.partial` file (0600, in a 0700 directory), checked (`integrity_check`,
//! and the store-key fingerprint must be the farm's), synced, and only then
//! renamed to `farm-<UTC time>.db` — so a file with that name is always a
//! whole, readable backup. The oldest ones beyond `backup.keep` are removed.
//!
//! Tokens stay encrypted in a backup: it is useless without the store key,
//! which is *not* in it (back the key up separately).

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Utc};
use rusqlite::{Connection, OpenFlags};

use super::{Result, StoreError};

/// One backup file.
#[derive(Clone, Debug, PartialEq)]
pub struct BackupFile {
    /// The file name (in the backup directory).
    pub file: String,
    pub bytes: u64,
    /// When it was taken (from its name).
    pub created_at: DateTime<Utc>,
}

const PREFIX: &str = "farm-";
const SUFFIX: &str = ".db";
const PARTIAL: &str = ".partial";
/// Sorts as text in time order; milliseconds, so a backup asked for by hand
/// in the same second as a scheduled one still gets a name of its own.
const STAMP: &str = "%Y%m%dT%H%M%S%.3fZ";

/// `farm-20261128T033000.000Z.db`.
pub fn file_name(at: DateTime<Utc>) -> String {
    format!("{PREFIX}{}{SUFFIX}", at.format(STAMP))
}

/// The time in a backup's name; `None` for any other file.
pub fn parse_file_name(name: &str) -> Option<DateTime<Utc>> {
    let stamp = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    NaiveDateTime::parse_from_str(stamp, STAMP)
        .ok()
        .map(|t| t.and_utc())
}

/// The backups to delete so that the newest `keep` remain (names of other
/// files are ignored).
pub fn to_prune(names: &[String], keep: usize) -> Vec<String> {
    let mut backups: Vec<(DateTime<Utc>, &String)> = names
        .iter()
        .filter_map(|n| parse_file_name(n).map(|at| (at, n)))
        .collect();
    backups.sort();
    let excess = backups.len().saturating_sub(keep);
    backups[..excess]
        .iter()
        .map(|(_, n)| (*n).clone())
        .collect()
}

/// Takes a backup of the database at `db` into `dir`, then removes the
/// oldest beyond `keep`. `fingerprint` is the store key's: a snapshot that
/// does not carry it is refused (it would not be this farm's data).
///
/// Callers run one backup at a time (a stale `.partial` left by a crash is
/// removed here).
pub fn create(
    db: &Path,
    dir: &Path,
    keep: usize,
    fingerprint: &str,
    now: DateTime<Utc>,
) -> Result<BackupFile> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    let name = file_name(now);
    let partial = dir.join(format!(".{name}{PARTIAL}"));
    remove_partials(dir);
    // SQLite writes into an existing empty file, which keeps this one's mode.
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io(&partial))?;
    let written = snapshot(db, &partial).and_then(|()| verify(&partial, fingerprint));
    if let Err(e) = written {
        let _ = fs::remove_file(&partial);
        return Err(e);
    }
    let target = dir.join(&name);
    fs::File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(io(&partial))?;
    fs::rename(&partial, &target).map_err(io(&target))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    let bytes = fs::metadata(&target).map_err(io(&target))?.len();
    prune(dir, keep)?;
    Ok(BackupFile {
        created_at: parse_file_name(&name).unwrap_or(now),
        file: name,
        bytes,
    })
}

/// The backups in `dir`, oldest first (none when it does not exist).
pub fn list(dir: &Path) -> Result<Vec<BackupFile>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut found: Vec<BackupFile> = entries
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name().into_string().ok()?;
            let created_at = parse_file_name(&file)?;
            let bytes = entry.metadata().ok()?.len();
            Some(BackupFile {
                file,
                bytes,
                created_at,
            })
        })
        .collect();
    found.sort_by_key(|b| b.created_at);
    Ok(found)
}

/// Puts the backup `from` in place of the database `db`, whose farm must be
/// stopped (the caller holds its [`super::lock::StoreLock`]). The current
/// database and its WAL files are not deleted but moved aside to
/// `<db>.before-restore-<time>[-wal|-shm]`; the returned path is that of
/// the moved database (`None` when there was none).
///
/// The restored database gets a `backup_restored` event whose id is past
/// every event id of the database it replaces: event ids are the resume
/// points of the event stream (`Last-Event-ID`), and a client that had seen
/// the replaced database's later events must not skip the new ones.
pub fn restore(
    from: &Path,
    db: &Path,
    fingerprint: &str,
    now: DateTime<Utc>,
) -> Result<Option<PathBuf>> {
    verify(from, fingerprint)?;
    // A newer release's backup would be refused at start, after the current
    // database was moved aside: refuse it now, with nothing moved.
    let found = super::schema::version(&open_immutable(from)?)?;
    let known = super::schema::latest();
    if found > known {
        return Err(StoreError::BadBackup {
            path: from.to_path_buf(),
            reason: format!(
                "it was written by a newer relogin-farm (schema {found}; this build knows {known})"
            ),
        });
    }
    let with_suffix = |p: &Path, suffix: &str| {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    // Copied in full first: a failure here leaves the current database as it was.
    let incoming = with_suffix(db, PARTIAL);
    let _ = fs::remove_file(&incoming);
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&incoming)
        .map_err(io(&incoming))?;
    let mut input = fs::File::open(from).map_err(io(from))?;
    std::io::copy(&mut input, &mut out).map_err(io(&incoming))?;
    out.sync_all().map_err(io(&incoming))?;
    drop(out);
    // The replaced database may be damaged (that may be why it is being
    // replaced): then its ids are unknown, and the restore matters more.
    let seen = match db.exists() {
        true => Connection::open(db)
            .map_err(StoreError::from)
            .and_then(|conn| last_event_id(&conn))
            .unwrap_or(0),
        false => 0,
    };
    mark_restored(&incoming, seen, from, now)?;

    let aside = with_suffix(db, &format!(".before-restore-{}", now.format(STAMP)));
    let mut moved = None;
    for suffix in ["", "-wal", "-shm"] {
        let current = with_suffix(db, suffix);
        if current.exists() {
            let to = with_suffix(&aside, suffix);
            fs::rename(&current, &to).map_err(io(&current))?;
            if suffix.is_empty() {
                moved = Some(to);
            }
        }
    }
    fs::rename(&incoming, db).map_err(io(db))?;
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = fs::File::open(parent).and_then(|d| d.sync_all());
    }
    Ok(moved)
}

/// The highest event id ever given out (rows may have been pruned since).
fn last_event_id(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),
                    COALESCE((SELECT MAX(id) FROM events), 0))",
        [],
        |r| r.get(0),
    )?)
}

/// Records the restore in the restored file itself, with an event id past
/// `seen`. Rollback-journal mode while doing so, so that nothing is left in
/// a `-wal` file beside it when it is renamed into place.
fn mark_restored(file: &Path, seen: i64, from: &Path, now: DateTime<Utc>) -> Result<()> {
    let conn = Connection::open(file)?;
    conn.pragma_update(None, "journal_mode", "DELETE")?;
    let id = last_event_id(&conn)?.max(seen) + 1;
    let name = from.file_name().map_or_else(
        || from.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    conn.execute(
        "INSERT INTO events (id, at, kind, account_id, detail) VALUES (?1, ?2, 'backup_restored', NULL, ?3)",
        rusqlite::params![id, now.timestamp_millis(), format!("database restored from {name}")],
    )?;
    conn.close().map_err(|(_, e)| e)?;
    Ok(())
}

fn snapshot(db: &Path, into: &Path) -> Result<()> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let into = into.to_str().ok_or_else(|| StoreError::Io {
        path: into.to_path_buf(),
        source: std::io::Error::other("the backup path is not UTF-8"),
    })?;
    conn.execute("VACUUM INTO ?1", [into])?;
    Ok(())
}

/// A readable database of this farm: SQLite's integrity check passes and it
/// was written with the store key whose fingerprint is `fingerprint`.
pub fn verify(file: &Path, fingerprint: &str) -> Result<()> {
    let invalid = |reason: String| StoreError::BadBackup {
        path: file.to_path_buf(),
        reason,
    };
    if !file.is_file() {
        return Err(invalid("no such file".into()));
    }
    let conn = open_immutable(file)?;
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| invalid(format!("not a readable database ({e})")))?;
    if check != "ok" {
        return Err(invalid(format!("integrity check failed: {check}")));
    }
    let stored = super::stored_fingerprint(&conn)
        .map_err(|e| invalid(format!("not a relogin-farm database ({e})")))?;
    match stored {
        Some(f) if f == fingerprint => Ok(()),
        Some(f) => Err(invalid(format!(
            "it was written with another store key (fingerprint {f}, this farm's is {fingerprint})"
        ))),
        None => Err(invalid("it has no store-key fingerprint".into())),
    }
}

/// Read-only and immutable: reading a backup must not create `-wal`/`-shm`
/// files beside it (or change it).
fn open_immutable(file: &Path) -> Result<Connection> {
    let path = file.to_str().ok_or_else(|| StoreError::BadBackup {
        path: file.to_path_buf(),
        reason: "the path is not UTF-8".into(),
    })?;
    let uri = format!(
        "file:{}?immutable=1",
        path.replace('%', "%25")
            .replace('?', "%3f")
            .replace('#', "%23")
    );
    Ok(Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )?)
}

/// The error of an I/O call on `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { path, source }
}

/// Our own unfinished backups (a crash mid-backup), nothing else.
fn remove_partials(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!(".{PREFIX}")) && name.ends_with(PARTIAL) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn prune(dir: &Path, keep: usize) -> Result<()> {
    let names: Vec<String> = list(dir)?.into_iter().map(|b| b.file).collect();
    for name in to_prune(&names, keep) {
        let path = dir.join(&name);
        fs::remove_file(&path).map_err(io(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn names_sort_in_time_order_and_parse_back() {
        let a = at("2026-11-28T03:30:00.000Z");
        let b = at("2026-11-28T03:30:00.250Z");
        let c = at("2027-01-02T00:00:00Z");
        assert_eq!(file_name(a), "farm-20261128T033000.000Z.db");
        assert!(file_name(a) < file_name(b) && file_name(b) < file_name(c));
        for t in [a, b, c] {
            assert_eq!(parse_file_name(&file_name(t)), Some(t));
        }
        for other in [
            "farm.db",
            "farm-20261128T033000.000Z.db.partial",
            ".farm-20261128T033000.000Z.db.partial",
            "farm-yesterday.db",
            "notes.txt",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn pruning_keeps_the_newest_and_ignores_other_files() {
        let names: Vec<String> = [
            "farm-20261128T033000.000Z.db",
            "notes.txt",
            "farm-20261126T033000.000Z.db",
            "farm-20261127T033000.000Z.db",
            ".farm-20261129T033000.000Z.db.partial",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            to_prune(&names, 2),
            vec!["farm-20261126T033000.000Z.db".to_owned()]
        );
        assert_eq!(to_prune(&names, 1).len(), 2);
        assert!(to_prune(&names, 3).is_empty());
        assert!(to_prune(&names, 10).is_empty());
    }
}
