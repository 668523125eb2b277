//! The farm's part in an orderly shutdown (`server::serve`): what it stops
//! before the jobs drain, and what it writes after.

use super::Farm;

impl Farm {
    /// Stops the loopback login listeners and closes the browsers (cookies
    /// reach a profile only on a clean close).
    pub async fn stop_logins_and_browsers(&self) {
        self.stop_listeners();
        if let Some(pool) = &self.browser {
            pool.shutdown().await;
        }
    }

    /// The last writes once the jobs are done: the accounts' last use, and
    /// the WAL truncated so that however the process ends now, none is
    /// left behind.
    pub fn finish_shutdown(&self) {
        if let Err(e) = self.save_last_used() {
            tracing::error!(error = %e, "storing accounts' last use failed");
        }
        if let Err(e) = self.store.truncate_wal() {
            tracing::warn!(error = %e, "truncating the WAL at shutdown failed");
        }
    }
}
