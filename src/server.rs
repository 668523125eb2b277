//! Wiring: open the store, build the farm, run the HTTP server and the
//! background jobs until `shutdown`, then stop them in order.
//!
//! `run(config, listener, shutdown)` takes a bound listener so tests (and
//! socket activation) can bind port 0 and read the address first.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::farm::{Farm, FarmError};
use crate::listener::Listener;
use crate::scheduler;
use crate::secret::Secret;
use crate::store::{
    create_parent_dir, read_secret_file, write_secret_file, Cipher, Store, StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("store key: {0}")]
    Key(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Farm(#[from] FarmError),
    #[error(
        "no admin token: set server.admin_token_file in the config, or RELOGIN_FARM_ADMIN_TOKEN / \
         RELOGIN_FARM_ADMIN_TOKEN_FILE (`relogin-farm init` creates one)"
    )]
    NoAdminToken,
    #[error(transparent)]
    Listener(#[from] crate::listener::ListenerError),
    #[error(
        "the {0} stopped unexpectedly (see the log above); the farm shut down so that its \
         service manager restarts it (systemd: Restart=on-failure)"
    )]
    JobDied(&'static str),
}

/// Loads the store key: from the config/env if given, else from the key
/// file. A missing key file is created only when the database does not
/// exist yet — an existing database with a lost key must not silently get a
/// new one.
pub fn load_cipher(config: &Config) -> Result<Cipher, ServeError> {
    let (key_file, db) = (&config.store.key_file, &config.store.path);
    let key = match configured_key(config) {
        Ok(k) => k,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !db.exists() => {
            create_parent_dir(key_file).map_err(|e| ServeError::Key(e.to_string()))?;
            let key = Cipher::generate_key_text();
            write_secret_file(key_file, &key)
                .map_err(|e| ServeError::Key(format!("{}: {e}", key_file.display())))?;
            tracing::info!(path = %key_file.display(), "created a new store key; back it up with the database");
            key
        }
        Err(e) => {
            return Err(ServeError::Key(format!(
                "cannot read {}: {e} (the database {} exists, so its key is needed)",
                key_file.display(),
                db.display()
            )))
        }
    };
    Cipher::from_text(&key).map_err(|e| ServeError::Key(e.to_string()))
}

/// The configured store key: `RELOGIN_FARM_KEY` if set, else the key file's
/// content. Never creates one (only [`load_cipher`] does, for a new database).
pub fn configured_key(config: &Config) -> std::io::Result<Secret> {
    match &config.store.key {
        Some(key) => Ok(key.clone()),
        None => read_secret_file(&config.store.key_file),
    }
}

/// Puts the backup `from` in place of the configured database, after
/// checking that it is whole and was written with the configured store key.
/// Refused while a farm has the database open. Unlike starting the farm,
/// this never creates a key: a backup is only readable with its own.
/// Returns where the replaced database was moved (`None`: there was none).
pub fn restore_backup(
    config: &Config,
    from: &Path,
) -> Result<Option<std::path::PathBuf>, ServeError> {
    let db = &config.store.path;
    let key = configured_key(config).map_err(|e| {
        ServeError::Key(format!(
            "cannot read {}: {e} (a backup is readable only with the store key it was \
             written with: put that key file there or set RELOGIN_FARM_KEY)",
            config.store.key_file.display()
        ))
    })?;
    let cipher = Cipher::from_text(&key).map_err(|e| ServeError::Key(e.to_string()))?;
    create_parent_dir(db)?;
    let _running = crate::store::lock::StoreLock::acquire(db)?;
    Ok(crate::store::backup::restore(
        from,
        db,
        cipher.fingerprint(),
        chrono::Utc::now(),
    )?)
}

/// Opens the store and builds the farm.
pub fn open_farm(config: Config) -> Result<Arc<Farm>, ServeError> {
    let store = open_store(&config)?;
    Ok(Farm::new(config, store)?)
}

/// [`open_farm`] with the farm's clock and token endpoints given
/// ([`Farm::new_with`]): unit tests' paused clock and scripted providers.
#[cfg(test)]
pub(crate) fn open_farm_with(
    config: Config,
    clock: Arc<dyn crate::clock::Clock>,
    endpoint: impl Fn(&crate::config::ProviderConfig) -> Arc<dyn crate::oauth::TokenEndpoint>,
) -> Result<Arc<Farm>, ServeError> {
    let store = open_store(&config)?;
    Ok(Farm::new_with(config, store, clock, endpoint)?)
}

fn open_store(config: &Config) -> Result<Arc<Store>, ServeError> {
    if config.server.admin_token.is_none() {
        return Err(ServeError::NoAdminToken);
    }
    let cipher = load_cipher(config)?;
    let upgrade_backup = crate::store::UpgradeBackup {
        dir: &config.backup.dir,
        keep: config.backup.keep,
    };
    Ok(Arc::new(Store::open_with(
        &config.store.path,
        cipher,
        Some(upgrade_backup),
    )?))
}

/// Runs the farm on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = Listener::new(listener, &config.server)?;
    let farm = open_farm(config)?;
    serve(farm, listener, shutdown).await
}

/// How [`supervise`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The shutdown signal came.
    Requested,
    /// This job panicked (or was cancelled) before any shutdown.
    Died(&'static str),
}

/// A long-running job of the farm: its name (for the log) and its task,
/// `None` once it has ended.
pub type Job = (&'static str, Option<tokio::task::JoinHandle<()>>);

/// Waits for `shutdown` while watching the farm's long-running jobs. A job
/// that returns is done (a disabled cron job returns at once); one that
/// panics ends the wait: a farm whose scheduler is dead would go on serving
/// tokens until they all expire, so it had better stop and be restarted.
pub async fn supervise(jobs: &mut [Job], shutdown: impl Future<Output = ()>) -> Ended {
    tokio::pin!(shutdown);
    loop {
        let running: Vec<_> = jobs
            .iter_mut()
            .enumerate()
            .filter_map(|(i, (_, task))| {
                task.as_mut().map(|t| Box::pin(async move { (i, t.await) }))
            })
            .collect();
        if running.is_empty() {
            shutdown.as_mut().await;
            return Ended::Requested;
        }
        let ((i, result), _, _) = tokio::select! {
            _ = shutdown.as_mut() => return Ended::Requested,
            ended = futures_util::future::select_all(running) => ended,
        };
        jobs[i].1 = None;
        if let Err(e) = result {
            let job = jobs[i].0;
            tracing::error!(job, error = %e, "a background job stopped unexpectedly");
            return Ended::Died(job);
        }
    }
}

/// Serves an opened farm until `shutdown`, or until one of its jobs dies
/// ([`ServeError::JobDied`]); either way it stops in order.
pub async fn serve(
    farm: Arc<Farm>,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    farm.start_webhooks(&stop_rx);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, accounts = farm.account_count(), "relogin-farm listening");
    }
    let mut http_stop = stop_rx.clone();
    let mut jobs: [Job; 7] = [
        (
            "refresh scheduler",
            Some(tokio::spawn(scheduler::run_refresh_scheduler(
                farm.clone(),
                stop_rx.clone(),
            ))),
        ),
        (
            "sweep",
            Some(tokio::spawn(scheduler::run_sweep(
                farm.clone(),
                stop_rx.clone(),
            ))),
        ),
        (
            "backup job",
            Some(tokio::spawn(scheduler::run_backups(
                farm.clone(),
                stop_rx.clone(),
            ))),
        ),
        (
            "usage poller",
            Some(tokio::spawn(scheduler::run_usage_polls(
                farm.clone(),
                stop_rx.clone(),
            ))),
        ),
        (
            "canary logins",
            Some(tokio::spawn(scheduler::run_canaries(
                farm.clone(),
                stop_rx.clone(),
            ))),
        ),
        (
            "digest",
            Some(tokio::spawn(scheduler::run_digests(
                farm.clone(),
                stop_rx.clone(),
            ))),
        ),
        (
            "HTTP server",
            Some(tokio::spawn(listener.run(farm.clone(), async move {
                crate::shutdown::wait_shutdown(&mut http_stop).await
            }))),
        ),
    ];
    let ended = supervise(&mut jobs, shutdown).await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    farm.stop_logins_and_browsers().await;
    // In-flight refreshes finish (their tokens must be persisted); the HTTP
    // server drains; nothing waits forever.
    let _ = tokio::time::timeout(Duration::from_secs(25), async {
        for task in jobs.into_iter().filter_map(|(_, task)| task) {
            let _ = task.await;
        }
    })
    .await;
    farm.finish_shutdown();
    tracing::info!("stopped");
    match ended {
        Ended::Requested => Ok(()),
        Ended::Died(job) => Err(ServeError::JobDied(job)),
    }
}

#[cfg(test)]
mod supervise_tests {
    use super::*;

    fn pending_job() -> Option<tokio::task::JoinHandle<()>> {
        Some(tokio::spawn(std::future::pending()))
    }

    #[tokio::test]
    async fn a_panicking_job_ends_the_wait_and_is_named() {
        let mut jobs: [Job; 3] = [
            ("disabled job", Some(tokio::spawn(async {}))),
            ("scheduler", pending_job()),
            (
                "sweep",
                Some(tokio::spawn(async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    panic!("a bug");
                })),
            ),
        ];
        let ended = supervise(&mut jobs, std::future::pending()).await;
        assert_eq!(ended, Ended::Died("sweep"));
        // What ended is not awaited again; what runs is left to the caller.
        let left: Vec<_> = jobs
            .iter()
            .filter(|(_, t)| t.is_some())
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(left, ["scheduler"]);
    }

    #[tokio::test]
    async fn the_shutdown_signal_ends_the_wait_with_jobs_running_or_done() {
        let mut jobs: [Job; 2] = [
            ("done", Some(tokio::spawn(async {}))),
            ("scheduler", pending_job()),
        ];
        let ended = supervise(&mut jobs, tokio::time::sleep(Duration::from_millis(30))).await;
        assert_eq!(ended, Ended::Requested);
        let mut none: [Job; 0] = [];
        assert_eq!(supervise(&mut none, async {}).await, Ended::Requested);
    }
}
