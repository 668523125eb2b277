//! Profile directories and who is using them.
//!
//! Chromium refuses a second launch on a profile in use (`SingletonLock`),
//! and a person fixing a profile by hand must not have the farm launch it
//! under them, so every launch holds the profile's lock first: an in-process
//! lock (relogins queue on it) and a [`LockFile`] in `<profiles>/.locks/`,
//! because `relogin-farm browser open` and the daemon are two processes.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use super::PoolError;
use crate::lockfile::{LockError, LockFile};

/// Who has a profile open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileUse {
    /// A scripted relogin by the farm.
    Relogin,
    /// A person, through `relogin-farm browser open`.
    Person,
    /// A person recording a login script.
    Recorder,
    /// A person driving the remote browser of the admin page.
    AdminPage,
}

impl fmt::Display for ProfileUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProfileUse::Relogin => "a relogin by the farm",
            ProfileUse::Person => "a person (browser open)",
            ProfileUse::Recorder => "a person recording a login script",
            ProfileUse::AdminPage => "a person (admin page)",
        })
    }
}

/// What `relogin-farm browser list` and `GET /api/accounts/{id}/browser`
/// show about a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileInfo {
    pub present: bool,
    /// Bytes on disk (files only).
    pub bytes: u64,
    pub in_use: Option<ProfileUse>,
}

/// A profile key becomes a directory name: keep it to characters that cannot
/// escape `profiles_dir` or surprise a shell.
pub fn validate_profile_key(key: &str) -> Result<(), PoolError> {
    let ok = (1..=128).contains(&key.len())
        && !key.starts_with('.')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(PoolError::BadProfileKey(key.to_string()))
    }
}

/// Creates `dir` (and missing parents) with mode 0700: profiles hold session
/// cookies, screenshots show account pages.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Preferences (paths into `Default/Preferences`) that keep Chromium's
/// password manager off in a profile: no "Save password?" bubble over a
/// person's recording or rescue, and no typed password kept in the
/// profile's `Login Data`. Chromium has no command-line switch for it; it
/// reads them from the profile.
pub(crate) const PASSWORD_MANAGER_OFF: [&[&str]; 2] = [
    &["credentials_enable_service"],
    &["profile", "password_manager_enabled"],
];

/// Sets [`PASSWORD_MANAGER_OFF`] to `false` in the profile's
/// `Default/Preferences` before a launch, keeping everything else Chromium
/// stored there (a file that is not a JSON object is replaced: Chromium
/// would reset it anyway). The file is 0600, its directory 0700, like the
/// rest of the profile.
pub(crate) fn disable_password_manager(profile_dir: &Path) -> std::io::Result<()> {
    use serde_json::{json, Value};
    let dir = profile_dir.join("Default");
    create_private_dir(&dir)?;
    let path = dir.join("Preferences");
    let mut prefs = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let mut changed = false;
    for pref in PASSWORD_MANAGER_OFF {
        let (last, parents) = pref.split_last().expect("a path has a name");
        let mut table = &mut prefs;
        for name in parents {
            if !table[*name].is_object() {
                table[*name] = json!({});
            }
            table = &mut table[*name];
        }
        if table[*last] != Value::Bool(false) {
            table[*last] = Value::Bool(false);
            changed = true;
        }
    }
    match changed {
        true => crate::store::write_private_file(&path, prefs.to_string().as_bytes()),
        false => Ok(()),
    }
}

/// Sum of file sizes under `dir` (0 if absent); symlinks are not followed.
pub(crate) fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => disk_usage(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// One lock per profile key, created on first use.
pub(crate) struct ProfileLocks {
    entries: Mutex<HashMap<String, Arc<ProfileEntry>>>,
    /// `<profiles_dir>/.locks` (no profile key starts with a dot).
    files_dir: PathBuf,
}

#[derive(Default)]
struct ProfileEntry {
    lock: Arc<AsyncMutex<()>>,
    user: Mutex<Option<ProfileUse>>,
}

/// Held while a browser runs on the profile; releases it on drop.
pub(crate) struct ProfileGuard {
    entry: Arc<ProfileEntry>,
    _lock: OwnedMutexGuard<()>,
    _file: LockFile,
    path: PathBuf,
}

impl ProfileGuard {
    /// Deletes the lock file while holding it: only when the account goes
    /// away, so no lock file outlives its account. The lock file's usual
    /// rule (never deleted) guards a profile in use; this one is being
    /// removed, and a process that opened the old file meanwhile can only
    /// lock a profile that no longer exists.
    pub(crate) fn remove_lock_file(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "lock file not removed");
            }
        }
    }
}

impl Drop for ProfileGuard {
    fn drop(&mut self) {
        *self.entry.user.lock().expect("poisoned") = None;
    }
}

impl ProfileLocks {
    pub(crate) fn new(profiles_dir: &Path) -> Self {
        ProfileLocks {
            entries: Mutex::default(),
            files_dir: profiles_dir.join(".locks"),
        }
    }

    fn entry(&self, key: &str) -> Arc<ProfileEntry> {
        let mut entries = self.entries.lock().expect("poisoned");
        entries.entry(key.to_string()).or_default().clone()
    }

    pub(crate) fn current_use(&self, key: &str) -> Option<ProfileUse> {
        *self.entry(key).user.lock().expect("poisoned")
    }

    /// Relogins wait for each other (one browser per profile) but never
    /// for a person, who may keep a window open for an hour: that fails at
    /// once, and the scheduler retries later. A person cannot slip in ahead
    /// of a queued relogin: tokio's mutex hands a released lock to the
    /// oldest waiter, so `try_acquire` fails while relogins queue.
    pub(crate) async fn acquire_for_relogin(&self, key: &str) -> Result<ProfileGuard, PoolError> {
        let entry = self.entry(key);
        self.refuse_if_person(key, &entry)?;
        let lock = entry.lock.clone().lock_owned().await;
        self.claim(key, entry, lock, ProfileUse::Relogin)
    }

    /// For a person (open, record) and for `reset`: never waits.
    pub(crate) fn try_acquire(
        &self,
        key: &str,
        usage: ProfileUse,
    ) -> Result<ProfileGuard, PoolError> {
        let entry = self.entry(key);
        match entry.lock.clone().try_lock_owned() {
            Ok(lock) => self.claim(key, entry, lock, usage),
            Err(_) => Err(PoolError::ProfileBusy {
                profile: key.to_string(),
                by: entry
                    .user
                    .lock()
                    .expect("poisoned")
                    .unwrap_or(ProfileUse::Relogin),
            }),
        }
    }

    fn refuse_if_person(&self, key: &str, entry: &ProfileEntry) -> Result<(), PoolError> {
        match *entry.user.lock().expect("poisoned") {
            Some(by @ (ProfileUse::Person | ProfileUse::Recorder | ProfileUse::AdminPage)) => {
                Err(PoolError::ProfileBusy {
                    profile: key.to_string(),
                    by,
                })
            }
            _ => Ok(()),
        }
    }

    /// With this process's lock held, takes the one between processes.
    fn claim(
        &self,
        key: &str,
        entry: Arc<ProfileEntry>,
        lock: OwnedMutexGuard<()>,
        usage: ProfileUse,
    ) -> Result<ProfileGuard, PoolError> {
        let io = |e: std::io::Error| PoolError::Io(format!("{}: {e}", self.files_dir.display()));
        create_private_dir(&self.files_dir).map_err(io)?;
        let path = self.files_dir.join(format!("{key}.lock"));
        let file = match LockFile::try_acquire(&path, &usage.to_string()) {
            Ok(file) => file,
            Err(LockError::Held { holder }) => {
                return Err(PoolError::ProfileHeldElsewhere {
                    profile: key.to_string(),
                    holder,
                })
            }
            Err(LockError::Io(e)) => return Err(io(e)),
        };
        *entry.user.lock().expect("poisoned") = Some(usage);
        Ok(ProfileGuard {
            entry,
            _lock: lock,
            _file: file,
            path,
        })
    }
}

/// `<profiles_dir>/<key>`.
pub(crate) fn profile_dir(profiles_dir: &Path, key: &str) -> PathBuf {
    profiles_dir.join(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_keys() {
        for ok in ["alice", "acct-42", "a.b_c"] {
            assert!(validate_profile_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(validate_profile_key(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn person_blocks_relogin_and_relogins_queue() {
        let dir = tempfile::tempdir().unwrap();
        let locks = ProfileLocks::new(dir.path());
        let person = locks.try_acquire("a", ProfileUse::Person).unwrap();
        assert!(matches!(
            locks.acquire_for_relogin("a").await,
            Err(PoolError::ProfileBusy {
                by: ProfileUse::Person,
                ..
            })
        ));
        drop(person);
        let first = locks.acquire_for_relogin("a").await.unwrap();
        assert_eq!(locks.current_use("a"), Some(ProfileUse::Relogin));
        assert!(locks.try_acquire("a", ProfileUse::Person).is_err());
        let waiting = tokio::spawn({
            let locks = Arc::new(locks);
            let l2 = locks.clone();
            async move { l2.acquire_for_relogin("a").await.map(|_| ()) }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(first);
        waiting.await.unwrap().unwrap();
    }

    /// Two pools on one profiles dir stand for the daemon and a
    /// `relogin-farm browser open` process.
    #[tokio::test]
    async fn a_profile_held_by_another_process_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (daemon, cli) = (ProfileLocks::new(dir.path()), ProfileLocks::new(dir.path()));
        let person = cli.try_acquire("7", ProfileUse::Person).unwrap();
        let expected = format!("process {} (a person (browser open))", std::process::id());
        for refused in [
            daemon.acquire_for_relogin("7").await.map(drop),
            daemon.try_acquire("7", ProfileUse::Relogin).map(drop), // reset
        ] {
            match refused {
                Err(PoolError::ProfileHeldElsewhere { profile, holder }) => {
                    assert_eq!(
                        (profile.as_str(), holder.as_str()),
                        ("7", expected.as_str())
                    )
                }
                other => panic!("{:?}", other.err()),
            }
        }
        assert_eq!(daemon.current_use("7"), None, "a refusal claims nothing");
        // Another profile is free, and this one is once the person is done.
        drop(daemon.acquire_for_relogin("8").await.unwrap());
        drop(person);
        let relogin = daemon.acquire_for_relogin("7").await.unwrap();
        assert!(matches!(
            cli.try_acquire("7", ProfileUse::Person),
            Err(PoolError::ProfileHeldElsewhere { .. })
        ));
        drop(relogin);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(".locks"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn the_password_manager_is_turned_off_in_the_preferences_chromium_keeps() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let prefs_file = tmp.path().join("Default").join("Preferences");
        let read = || -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(&prefs_file).unwrap()).unwrap()
        };
        // A new profile gets the file; a used one keeps what Chromium wrote.
        disable_password_manager(tmp.path()).unwrap();
        assert_eq!(read()["credentials_enable_service"], false);
        let kept = r#"{"profile":{"name":"x","password_manager_enabled":true},"credentials_enable_service":true,"intl":{"a":1}}"#;
        std::fs::write(&prefs_file, kept).unwrap();
        disable_password_manager(tmp.path()).unwrap();
        let prefs = read();
        assert_eq!(prefs["credentials_enable_service"], false, "{prefs}");
        assert_eq!(
            prefs["profile"]["password_manager_enabled"], false,
            "{prefs}"
        );
        assert_eq!(prefs["profile"]["name"], "x", "{prefs}");
        assert_eq!(prefs["intl"]["a"], 1, "{prefs}");
        let mode = std::fs::metadata(&prefs_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A file that is not a JSON object is replaced.
        std::fs::write(&prefs_file, "[1").unwrap();
        disable_password_manager(tmp.path()).unwrap();
        assert_eq!(read()["profile"]["password_manager_enabled"], false);
    }

    #[test]
    fn private_dirs_and_usage() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p/q");
        create_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::write(dir.join("f"), [0u8; 100]).unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/g"), [0u8; 23]).unwrap();
        assert_eq!(disk_usage(tmp.path()), 123);
        assert_eq!(disk_usage(&tmp.path().join("absent")), 0);
    }
}
