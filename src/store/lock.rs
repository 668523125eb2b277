//! One farm per database. Two daemons on one store would both refresh the
//! same accounts, and a provider that sees a refresh token replayed revokes
//! the whole grant (oidc-provider does): every account would need a new
//! login. So the store is held with an advisory lock on `<db>.lock` for as
//! long as it is open, and whatever else must not run beside the daemon
//! (`relogin-farm restore`) takes the same lock.
//!
//! The lock is `flock(2)` (through [`std::fs::File::try_lock`]): the kernel
//! drops it when the process exits, however it exits, so a `kill -9` never
//! leaves a stale lock behind. The file itself is never deleted (deleting a
//! lock file races with the next taker); it holds the holder's pid, for the
//! message the next one prints.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Result, StoreError};

/// Held while the store is open; released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// `<db>.lock` beside the database.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

impl StoreLock {
    /// Takes the lock of the database at `db` (whose directory must exist),
    /// or fails at once with [`StoreError::InUse`] naming the holder's pid.
    pub fn acquire(db: &Path) -> Result<StoreLock> {
        let path = lock_path(db);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(StoreError::InUse {
                    db: db.to_path_buf(),
                    holder: match holder.parse::<u32>() {
                        Ok(pid) => format!("process {pid}"),
                        Err(_) => "another process".to_owned(),
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(StoreLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("farm.db");
        let first = StoreLock::acquire(&db).unwrap();
        let e = StoreLock::acquire(&db).unwrap_err();
        let message = e.to_string();
        assert!(
            matches!(e, StoreError::InUse { .. })
                && message.contains(&format!("process {}", std::process::id()))
                && message.contains("farm.db"),
            "{message}"
        );
        drop(first);
        StoreLock::acquire(&db).expect("free again once dropped");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(lock_path(&db)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
