//! Backups through the farm: one at a time, whoever asks (the schedule, the
//! admin API, `relogin-farm backup`), each announced as an event and counted
//! in the metrics. The file work is in [`crate::store::backup`].

use super::{Farm, FarmError, Result};
use crate::events::EventKind;
use crate::store::backup::{self, BackupFile};
use crate::store::StoreError;

impl Farm {
    /// Takes a backup now (waiting for one already running to finish first)
    /// and prunes the oldest beyond `backup.keep`.
    pub async fn backup_now(&self) -> Result<BackupFile> {
        let _one_at_a_time = self.backup_running.lock().await;
        let store = self.store.clone();
        let (dir, keep) = (self.config.backup.dir.clone(), self.config.backup.keep);
        let now = self.clock.now();
        let taken = tokio::task::spawn_blocking(move || store.backup(&dir, keep, now))
            .await
            .unwrap_or_else(|panic| {
                Err(StoreError::Io {
                    path: self.config.backup.dir.clone(),
                    source: std::io::Error::other(format!("the backup task failed: {panic}")),
                })
            });
        self.metrics
            .record_backup(taken.as_ref().ok().map(|b| b.created_at));
        match taken {
            Ok(b) => {
                tracing::info!(file = %b.file, bytes = b.bytes, "backup taken");
                self.emit(
                    EventKind::BackupCreated,
                    None,
                    format!("backup {} taken ({} bytes)", b.file, b.bytes),
                );
                Ok(b)
            }
            Err(e) => {
                tracing::error!(error = %e, "backup failed");
                self.emit(EventKind::BackupFailed, None, format!("backup failed: {e}"));
                Err(FarmError::Backup(e))
            }
        }
    }

    /// The backups in `backup.dir`, newest first.
    pub fn backups(&self) -> Result<Vec<BackupFile>> {
        let mut found = backup::list(&self.config.backup.dir).map_err(FarmError::Backup)?;
        found.reverse();
        Ok(found)
    }
}
