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
}

/// Loads the store key: from the config/env if given, else from the key
/// file. A missing key file is created only when the database does not
/// exist yet — an existing database with a lost key must not silently get a
/// new one.
pub fn load_cipher(config: &Config) -> Result<Cipher, ServeError> {
    let key = match &config.store.key {
        Some(k) => k.clone(),
        None => load_or_create_key_file(&config.store.key_file, &config.store.path)?,
    };
    Cipher::from_text(&key).map_err(|e| ServeError::Key(e.to_string()))
}

fn load_or_create_key_file(key_file: &Path, db: &Path) -> Result<Secret, ServeError> {
    match read_secret_file(key_file) {
        Ok(k) => Ok(k),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !db.exists() => {
            create_parent_dir(key_file).map_err(|e| ServeError::Key(e.to_string()))?;
            let key = Cipher::generate_key_text();
            write_secret_file(key_file, &key)
                .map_err(|e| ServeError::Key(format!("{}: {e}", key_file.display())))?;
            tracing::info!(path = %key_file.display(), "created a new store key; back it up with the database");
            Ok(key)
        }
        Err(e) => Err(ServeError::Key(format!(
            "cannot read {}: {e} (the database {} exists, so its key is needed)",
            key_file.display(),
            db.display()
        ))),
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
    let key = match &config.store.key {
        Some(k) => k.clone(),
        None => read_secret_file(&config.store.key_file).map_err(|e| {
            ServeError::Key(format!(
                "cannot read {}: {e} (a backup is readable only with the store key it was \
                 written with: put that key file there or set RELOGIN_FARM_KEY)",
                config.store.key_file.display()
            ))
        })?,
    };
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
    if config.server.admin_token.is_none() {
        return Err(ServeError::NoAdminToken);
    }
    let cipher = load_cipher(&config)?;
    let upgrade_backup = crate::store::UpgradeBackup {
        dir: &config.backup.dir,
        keep: config.backup.keep,
    };
    let store = Arc::new(Store::open_with(
        &config.store.path,
        cipher,
        Some(upgrade_backup),
    )?);
    Ok(Farm::new(config, store)?)
}

/// Runs the farm on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let farm = open_farm(config)?;
    serve(farm, listener, shutdown).await;
    Ok(())
}

/// Serves an opened farm until `shutdown`.
pub async fn serve(
    farm: Arc<Farm>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let jobs = [
        tokio::spawn(scheduler::run_refresh_scheduler(
            farm.clone(),
            stop_rx.clone(),
        )),
        tokio::spawn(scheduler::run_sweep(farm.clone(), stop_rx.clone())),
        tokio::spawn(scheduler::run_backups(farm.clone(), stop_rx.clone())),
    ];
    crate::webhooks::spawn_all(&farm, &stop_rx);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, accounts = farm.account_count(), "relogin-farm listening");
    }
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(
        warp::serve(crate::http::routes(farm.clone()))
            .incoming(listener)
            .graceful(async move { scheduler::wait_shutdown(&mut http_stop).await })
            .run(),
    );
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    farm.stop_listeners();
    if let Some(pool) = &farm.browser {
        // Cookies reach the profile only on a clean close.
        pool.shutdown().await;
    }
    // In-flight refreshes finish (their tokens must be persisted); the HTTP
    // server drains; nothing waits forever.
    let _ = tokio::time::timeout(Duration::from_secs(25), async {
        for job in jobs {
            let _ = job.await;
        }
        let _ = http.await;
    })
    .await;
    if let Err(e) = farm.store_last_used() {
        tracing::error!(error = %e, "storing accounts' last use failed");
    }
    tracing::info!("stopped");
}
