//! Advisory locks between processes: `flock(2)` on a small file (through
//! [`std::fs::File::try_lock`]) that also names its holder, so whoever is
//! refused can say by whom.
//!
//! The kernel drops the lock when its holder exits, however it exits, so a
//! `kill -9` never leaves a stale lock. The file is not deleted while what
//! it guards exists (deleting a lock file races with the next taker); a
//! browser profile's goes with its account. Locks conflict between separate
//! opens even within one process, which is what lets tests play two
//! processes.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Held until dropped.
#[derive(Debug)]
pub struct LockFile {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone holds it: `holder` is e.g. `process 1234 (a relogin by the farm)`.
    #[error("held by {holder}")]
    Held { holder: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl LockFile {
    /// Takes the lock at `path` (created 0600 if missing; its directory must
    /// exist) without waiting, recording this process and `purpose` in it.
    pub fn try_acquire(path: &Path, purpose: &str) -> Result<LockFile, LockError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    holder: describe_holder(&text),
                });
            }
            Err(TryLockError::Error(e)) => return Err(e.into()),
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{} {purpose}", std::process::id())?;
        Ok(LockFile { _file: file })
    }
}

/// `1234 a relogin by the farm` → `process 1234 (a relogin by the farm)`.
fn describe_holder(text: &str) -> String {
    let text = text.trim();
    let (pid, purpose) = text.split_once(' ').unwrap_or((text, ""));
    match (pid.parse::<u32>(), purpose.trim()) {
        (Ok(pid), "") => format!("process {pid}"),
        (Ok(pid), purpose) => format!("process {pid} ({purpose})"),
        (Err(_), _) => "another process".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_with_the_holder_named_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = LockFile::try_acquire(&path, "the first").unwrap();
        match LockFile::try_acquire(&path, "the second") {
            Err(LockError::Held { holder }) => assert_eq!(
                holder,
                format!("process {} (the first)", std::process::id())
            ),
            other => panic!("{other:?}"),
        }
        drop(first);
        drop(LockFile::try_acquire(&path, "the second").expect("free once dropped"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn holders_are_described_from_what_they_wrote() {
        assert_eq!(describe_holder("42\n"), "process 42");
        assert_eq!(
            describe_holder("42 serving the farm\n"),
            "process 42 (serving the farm)"
        );
        assert_eq!(describe_holder(""), "another process");
        assert_eq!(describe_holder("garbage here"), "another process");
    }
}
