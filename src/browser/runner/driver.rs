//! The pool's shared Playwright driver (a node process): started on the
//! first relogin, shared by every relogin running at the same time (each
//! still launches its own Chromium through it), and stopped once no
//! session has used it for `driver_linger`. Starting a driver costs ~0.3 s
//! per relogin otherwise; lingering keeps a burst of relogins on one.
//!
//! A driver that dies, or that a launch through it fails on with a
//! connection-type error, is retired: the next launch starts a fresh one,
//! and the retired one is stopped once its last session is gone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use playwright_rs::Playwright;

use super::config::{start_driver_with_pid, BrowserConfig};

/// One started driver, shared through [`DriverLease`]s.
pub(crate) struct SharedDriver {
    pub(crate) playwright: Playwright,
    /// playwright-rs binds a connection to the runtime that started it.
    runtime: tokio::runtime::Id,
    /// The node process, when known (tests check it is gone).
    pid: Option<u32>,
    /// Sessions using it now; changed only under `DriverHost::state`.
    users: AtomicUsize,
}

#[derive(Default)]
struct State {
    current: Option<Arc<SharedDriver>>,
    /// Bumped on every acquire and retire: a linger timer only stops the
    /// driver if nothing happened since it was armed.
    epoch: u64,
    /// Set by `stop`: the pool is shutting down, no new driver starts.
    stopped: bool,
}

pub(crate) struct DriverHost {
    linger: Duration,
    state: Mutex<State>,
    /// Serializes starts, so concurrent first sessions share one driver.
    starting: tokio::sync::Mutex<()>,
    starts: AtomicUsize,
}

/// A session's use of the shared driver. Release it with
/// [`release`](Self::release) (async, after the context is closed);
/// dropped unreleased, it is released in the background.
pub(crate) struct DriverLease {
    host: Arc<DriverHost>,
    driver: Option<Arc<SharedDriver>>,
}

pub(crate) enum AcquireError {
    Stopped,
    Start(playwright_rs::Error),
}

impl DriverHost {
    pub(crate) fn new(linger: Duration) -> Arc<DriverHost> {
        Arc::new(DriverHost {
            linger,
            state: Mutex::new(State::default()),
            starting: tokio::sync::Mutex::const_new(()),
            starts: AtomicUsize::new(0),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drivers started so far.
    pub(crate) fn starts(&self) -> usize {
        self.starts.load(Ordering::Relaxed)
    }

    /// The running driver's process id (`None`: none running, or unknown).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.state().current.as_ref().and_then(|d| d.pid)
    }

    /// The running driver, or a fresh one.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        cfg: &BrowserConfig,
    ) -> Result<DriverLease, AcquireError> {
        let runtime = tokio::runtime::Handle::current().id();
        let _starting = self.starting.lock().await;
        let stale = {
            let mut state = self.state();
            if state.stopped {
                return Err(AcquireError::Stopped);
            }
            state.epoch += 1;
            match &state.current {
                Some(d) if d.runtime == runtime && d.alive() => {
                    d.users.fetch_add(1, Ordering::Relaxed);
                    return Ok(self.lease(d.clone()));
                }
                // Died (killed, out of memory): retired; stopped (reaped)
                // now if idle, else by its last session.
                Some(d) if !d.alive() => {
                    tracing::info!("playwright driver exited; starting a fresh one");
                    let idle = d.users.load(Ordering::Relaxed) == 0;
                    state.current.take().filter(|_| idle)
                }
                // Started on another runtime (tests): unusable from here.
                Some(_) => take_if_idle(&mut state),
                None => None,
            }
        };
        if let Some(stale) = stale {
            stop_driver(&stale).await;
        }
        let (playwright, pid) = start_driver_with_pid(cfg)
            .await
            .map_err(AcquireError::Start)?;
        self.starts.fetch_add(1, Ordering::Relaxed);
        let driver = Arc::new(SharedDriver {
            playwright,
            runtime,
            pid,
            users: AtomicUsize::new(1),
        });
        let stopped = {
            let mut state = self.state();
            if !state.stopped {
                state.epoch += 1;
                // A previous driver still in use (other runtime) is
                // retired: its last lease stops it.
                state.current = Some(driver.clone());
            }
            state.stopped
        };
        if stopped {
            stop_driver(&driver).await;
            return Err(AcquireError::Stopped);
        }
        Ok(self.lease(driver))
    }

    fn lease(self: &Arc<Self>, driver: Arc<SharedDriver>) -> DriverLease {
        DriverLease {
            host: self.clone(),
            driver: Some(driver),
        }
    }

    /// For `BrowserPool::shutdown`, once no session is open: stops the
    /// driver now and starts no other.
    pub(crate) async fn stop(&self) {
        let _starting = self.starting.lock().await;
        let driver = {
            let mut state = self.state();
            state.stopped = true;
            state.epoch += 1;
            take_if_idle(&mut state)
        };
        if let Some(driver) = driver {
            stop_driver(&driver).await;
        }
    }

    /// Drops one user of `driver`; returns the driver if it is to be
    /// stopped now by the caller, and arms the linger timer if it is to be
    /// stopped later.
    fn release_user(
        self: &Arc<Self>,
        driver: &Arc<SharedDriver>,
        retire: bool,
    ) -> Option<Arc<SharedDriver>> {
        let mut state = self.state();
        let left = driver.users.fetch_sub(1, Ordering::Relaxed) - 1;
        let is_current = state
            .current
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, driver));
        if retire && is_current {
            state.current = None;
            state.epoch += 1;
        }
        if left > 0 {
            return None;
        }
        if !is_current || retire || state.stopped || self.linger.is_zero() {
            if is_current {
                state.current = None;
            }
            return Some(driver.clone());
        }
        let epoch = state.epoch;
        drop(state);
        let host = self.clone();
        let linger = self.linger;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(linger).await;
                    host.expire(epoch).await;
                });
                None
            }
            // No runtime to wait in: stop it now.
            Err(_) => self.state().current.take(),
        }
    }

    /// The linger is over: stops the driver if nothing used it since.
    async fn expire(&self, epoch: u64) {
        let driver = {
            let mut state = self.state();
            if state.epoch != epoch {
                return;
            }
            take_if_idle(&mut state)
        };
        if let Some(driver) = driver {
            tracing::debug!("playwright driver idle for {:?}; stopping it", self.linger);
            stop_driver(&driver).await;
        }
    }
}

impl SharedDriver {
    /// False once the node process has exited (it stays a zombie until
    /// `shutdown` reaps it). True when its pid is unknown.
    fn alive(&self) -> bool {
        self.pid.is_none_or(process_alive)
    }
}

/// A running (not zombie) process.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn take_if_idle(state: &mut State) -> Option<Arc<SharedDriver>> {
    match &state.current {
        Some(d) if d.users.load(Ordering::Relaxed) == 0 => state.current.take(),
        _ => None,
    }
}

impl DriverLease {
    pub(crate) fn playwright(&self) -> &Playwright {
        &self
            .driver
            .as_ref()
            .expect("held until released")
            .playwright
    }

    /// Resolves once the driver process has exited: playwright-rs never
    /// answers a call that was in flight then.
    pub(crate) async fn died(&self) {
        let driver = self.driver.as_ref().expect("held until released");
        while driver.alive() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Done with the driver (the context is closed). `retire`: the driver
    /// is broken (a connection error, a close that hung); no new session
    /// gets it, and it stops once its last session is gone.
    pub(crate) async fn release(mut self, retire: bool) {
        let driver = self.driver.take().expect("released once");
        if let Some(stop) = self.host.release_user(&driver, retire) {
            drop(driver);
            stop_driver(&stop).await;
        }
    }
}

impl Drop for DriverLease {
    fn drop(&mut self) {
        let Some(driver) = self.driver.take() else {
            return;
        };
        if let Some(stop) = self.host.release_user(&driver, false) {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move { stop_driver(&stop).await });
                }
                // playwright-rs's own Drop stops it (blocking).
                Err(_) => drop(stop),
            }
        }
    }
}

async fn stop_driver(driver: &SharedDriver) {
    if let Err(e) = driver.playwright.shutdown().await {
        tracing::warn!(error = %e, "playwright driver did not shut down cleanly");
    }
}

/// Whether `error` means the driver itself is gone or unreachable (rather
/// than Chromium or the profile being at fault).
pub(crate) fn is_connection_error(error: &playwright_rs::Error) -> bool {
    use playwright_rs::Error as E;
    match error {
        E::ChannelClosed | E::TransportError(_) | E::ConnectionFailed(_) | E::Io(_) => true,
        E::Context(_, inner) => is_connection_error(inner),
        _ => false,
    }
}
