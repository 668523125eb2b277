//! The shutdown signal every background job waits on: `server::serve`
//! holds the sender, and each job (scheduler, sweep, backups, webhooks,
//! the HTTP server) a receiver.

use tokio::sync::watch;

/// A shutdown signal that every job can wait on.
pub type Shutdown = watch::Receiver<bool>;

pub async fn wait_shutdown(shutdown: &mut Shutdown) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}
