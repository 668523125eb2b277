//! One farm per database. Two daemons on one store would both refresh the
//! same accounts, and a provider that sees a refresh token replayed revokes
//! the whole grant (oidc-provider does): every account would need a new
//! login. So the store is held with a [`LockFile`] on `<db>.lock` for as
//! long as it is open, and whatever else must not run beside the daemon
//! (`relogin-farm restore`) takes the same lock.

use std::path::{Path, PathBuf};

use super::{Result, StoreError};
use crate::lockfile::{LockError, LockFile};

/// Held while the store is open; released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    _lock: LockFile,
}

/// `<db>.lock` beside the database.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

impl StoreLock {
    /// Takes the lock of the database at `db` (whose directory must exist),
    /// or fails at once with [`StoreError::InUse`] naming the holder.
    pub fn acquire(db: &Path) -> Result<StoreLock> {
        let path = lock_path(db);
        match LockFile::try_acquire(&path, "relogin-farm") {
            Ok(lock) => Ok(StoreLock { _lock: lock }),
            Err(LockError::Held { holder }) => Err(StoreError::InUse {
                db: db.to_path_buf(),
                holder,
            }),
            Err(LockError::Io(source)) => Err(StoreError::Io { path, source }),
        }
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
                && message.contains(&format!("process {} (relogin-farm)", std::process::id()))
                && message.contains("farm.db"),
            "{message}"
        );
        drop(first);
        StoreLock::acquire(&db).expect("free again once dropped");
    }
}
