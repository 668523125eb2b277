//! The I/O edge: Chromium through Playwright, one persistent profile per
//! account, at most `max_concurrent` browsers at once, none when idle.

mod config;
mod doctor;
mod drive;
mod driver;
mod install;
mod navigation;
mod outcome;
mod profile;
mod run;
mod session;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use url::Url;

pub use config::{
    export_driver_env, running_as_root, BrowserConfig, Sandbox, CHROMIUM_FLAGS, DRIVER_VERSION,
};
pub use doctor::{doctor, Problem, INSTALL_COMMAND};
pub use install::{driver_cli_js_in, install_dir_of, install_driver, INSTALL_DIR};
pub use outcome::{FailedStep, FailureKind, LoginOutcome, PoolError, RunFailure};
pub use profile::{validate_profile_key, ProfileInfo, ProfileUse};

use crate::browser::script::{LoginScript, Vars};
pub(crate) use drive::first_line;
use driver::DriverHost;
pub(crate) use navigation::NavigationPolicy;
use profile::{ProfileGuard, ProfileLocks};
use run::Run;
use session::DriverSource;
pub(crate) use session::{answer_cdp_event, Session};

/// Which profile a scripted run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunProfile {
    /// The account's persistent one (relogins).
    Own,
    /// A fresh one, deleted after the run; the account's own profile is
    /// neither used nor locked (canary logins).
    Throwaway,
    /// A fresh one, deleted after the run, while the account's own profile
    /// is held as for a relogin (a script's proof: no cookie of the
    /// account's helps, so reaching the end proves the script logs in alone).
    Proof,
}

/// How the farm follows a login it learns the end of by itself (a device
/// login's poll), for a run that ends on it ([`RunEnd::Signal`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginProgress {
    /// How many times the farm has asked the provider whether the login is
    /// done (a device login's polls that were answered).
    pub checks: u64,
    /// `Some(Ok)`: done, the tokens are stored; `Some(Err(why))`: failed.
    pub end: Option<Result<(), String>>,
}

impl LoginProgress {
    /// Waits for the login's end (`Err` too when the farm stopped
    /// following it).
    pub async fn end_of(mut progress: watch::Receiver<LoginProgress>) -> Result<(), String> {
        let end = progress
            .wait_for(|p| p.end.is_some())
            .await
            .map(|p| p.end.clone());
        match end {
            Ok(Some(end)) => end,
            _ => Err("the farm stopped waiting for the login".into()),
        }
    }
}

/// What ends a run successfully.
#[derive(Debug, Clone)]
pub enum RunEnd {
    /// The browser is sent to this redirect URI; the caller redeems it.
    Redirect(Url),
    /// The farm's own signal (a device login: the code typed, the poll
    /// answered with tokens). The steps running out is not yet failure:
    /// the run then waits for [`SETTLE_CHECKS`] more checks.
    Signal(watch::Receiver<LoginProgress>),
}

/// After a signalled run's last step, how many more of the farm's checks
/// it waits for before it fails: a check already under way when the
/// last step approved the login may answer "pending"; the one after it
/// sees the approval.
pub const SETTLE_CHECKS: u64 = 2;

/// Runs browsers for the farm. Cheap to clone; all clones share the limits.
#[derive(Clone)]
pub struct BrowserPool {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: BrowserConfig,
    slots: Arc<Semaphore>,
    profiles: ProfileLocks,
    /// Set once by `shutdown`; every session watches it.
    stopping: watch::Sender<bool>,
    /// Number of browsers open right now; `shutdown` waits for 0.
    open: watch::Sender<usize>,
    /// The Playwright driver relogins share.
    driver: Arc<DriverHost>,
}

/// Counts an open browser for `shutdown` until dropped.
pub(crate) struct OpenGuard(Arc<Inner>);

/// A person's hold on a profile (open window or recording), released on drop.
pub(crate) struct PersonHold {
    _profile: ProfileGuard,
    _open: OpenGuard,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n -= 1);
    }
}

impl BrowserPool {
    pub fn new(cfg: BrowserConfig) -> BrowserPool {
        let slots = Arc::new(Semaphore::new(cfg.max_concurrent.max(1)));
        let driver = DriverHost::new(cfg.driver_linger);
        let profiles = ProfileLocks::new(&cfg.profiles_dir);
        BrowserPool {
            inner: Arc::new(Inner {
                driver,
                cfg,
                slots,
                profiles,
                stopping: watch::channel(false).0,
                open: watch::channel(0).0,
            }),
        }
    }

    pub fn config(&self) -> &BrowserConfig {
        &self.inner.cfg
    }

    /// Logs the account in by replaying `script` in its own profile, and returns
    /// the redirect (with the authorization code) for the caller to redeem.
    ///
    /// Waits for a free slot and for other relogins of the same profile;
    /// fails at once if a person has the profile open. `timeout` runs from
    /// the browser launch (queueing does not count). The browser is closed
    /// cleanly in every case, also if the caller stops waiting: the run
    /// goes on in its own task until it ends or times out.
    pub async fn run_login(
        &self,
        profile_key: &str,
        script: &LoginScript,
        vars: &Vars,
        redirect_uri: &Url,
        timeout: Duration,
    ) -> Result<LoginOutcome, RunFailure> {
        let end = RunEnd::Redirect(redirect_uri.clone());
        self.run(profile_key, script, vars, end, timeout, RunProfile::Own)
            .await
    }

    /// Runs a login script as [`run_login`](Self::run_login) does, ending
    /// as `end` says (a device login ends on the farm's signal, not at a
    /// redirect), in the account's own profile or (a canary login) in a
    /// fresh throwaway one:
    /// no cookies, so a live session cannot hide a broken password or TOTP
    /// step; deleted after the run, the account's own profile neither used
    /// nor locked. Failure screenshots go where the account's relogins put
    /// theirs either way.
    pub async fn run(
        &self,
        profile_key: &str,
        script: &LoginScript,
        vars: &Vars,
        end: RunEnd,
        timeout: Duration,
        profile: RunProfile,
    ) -> Result<LoginOutcome, RunFailure> {
        validate_profile_key(profile_key)?;
        let steps = script
            .expand(vars)
            .map_err(|e| RunFailure::bare(FailureKind::Script(e)))?;
        let run = Run {
            pool: self.clone(),
            profile_key: profile_key.to_string(),
            steps,
            vars: vars.clone(),
            end,
            timeout,
            profile,
        };
        match tokio::spawn(run.execute()).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime itself is going away.
            Err(_) => Err(RunFailure::refused(PoolError::ShuttingDown)),
        }
    }

    /// Opens the profile in a visible window for a person (to fix something
    /// by hand) and returns once they close it, or at `shutdown`. Cookies
    /// are kept: the browser closes itself, or is closed, cleanly.
    pub async fn open_headed(
        &self,
        profile_key: &str,
        start_url: Option<&Url>,
    ) -> Result<(), PoolError> {
        let _hold = self.hold_for_person(profile_key, ProfileUse::Person, false)?;
        let session = self.launch(profile_key, false).await?;
        let mut closed = session.closed_by_user().await;
        if let Some(url) = start_url {
            if let Err(e) = session.page.goto(url.as_str(), None).await {
                tracing::info!(error = %drive::first_line(&e.to_string()), "start page did not load");
            }
        }
        let mut stopping = self.inner.stopping.subscribe();
        tokio::select! {
            _ = closed.wait_for(|c| *c) => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
        session.close().await;
        Ok(())
    }

    /// Deletes the profile (its cookies and everything else). Refused while
    /// a browser has it open.
    pub async fn reset(&self, profile_key: &str) -> Result<(), PoolError> {
        validate_profile_key(profile_key)?;
        let _guard = self
            .inner
            .profiles
            .try_acquire(profile_key, ProfileUse::Relogin)?;
        remove_dir_if_present(&self.profile_dir(profile_key)).await
    }

    /// Everything the farm keeps for a profile key, for an account that is
    /// being removed: the profile, its screenshots and its lock file (taken
    /// first: refused while a browser has the profile open).
    pub async fn remove_all(&self, profile_key: &str) -> Result<(), PoolError> {
        validate_profile_key(profile_key)?;
        let guard = self
            .inner
            .profiles
            .try_acquire(profile_key, ProfileUse::Relogin)?;
        remove_dir_if_present(&self.profile_dir(profile_key)).await?;
        remove_dir_if_present(&self.artifacts_dir(profile_key)).await?;
        guard.remove_lock_file();
        Ok(())
    }

    /// Whether the profile exists, its size on disk, and who uses it now.
    pub async fn profile_info(&self, profile_key: &str) -> Result<ProfileInfo, PoolError> {
        validate_profile_key(profile_key)?;
        let dir = self.profile_dir(profile_key);
        let present = tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir());
        let bytes = tokio::task::spawn_blocking(move || profile::disk_usage(&dir))
            .await
            .unwrap_or(0);
        Ok(ProfileInfo {
            present,
            bytes,
            in_use: self.inner.profiles.current_use(profile_key),
        })
    }

    /// Closes every open browser cleanly (so their cookies reach disk),
    /// then stops the shared driver, and refuses new runs. For SIGTERM.
    /// Returns once no browser and no driver is left.
    pub async fn shutdown(&self) {
        self.inner.stopping.send_replace(true);
        self.inner.slots.close();
        let mut open = self.inner.open.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
        self.inner.driver.stop().await;
    }

    /// Refused if a person has the profile (in this process): a relogin
    /// checks this before it starts a login, so it never replaces the
    /// pending login of the person's session.
    pub fn refuse_if_person(&self, profile_key: &str) -> Result<(), PoolError> {
        match self.inner.profiles.current_use(profile_key) {
            Some(by @ (ProfileUse::Person | ProfileUse::Recorder | ProfileUse::AdminPage)) => {
                Err(PoolError::ProfileBusy {
                    profile: profile_key.to_string(),
                    by,
                })
            }
            _ => Ok(()),
        }
    }

    /// How many browsers are open right now.
    pub fn open_browsers(&self) -> usize {
        *self.inner.open.borrow()
    }

    /// How many times the shared relogin driver was started.
    pub fn driver_starts(&self) -> usize {
        self.inner.driver.starts()
    }

    /// The process id of the shared relogin driver while it runs (in use,
    /// or lingering); `None` when none runs (or /proc cannot tell).
    pub fn driver_pid(&self) -> Option<u32> {
        self.inner.driver.pid()
    }

    pub(crate) fn profile_dir(&self, profile_key: &str) -> PathBuf {
        profile::profile_dir(&self.inner.cfg.profiles_dir, profile_key)
    }

    pub(crate) fn artifacts_dir(&self, profile_key: &str) -> PathBuf {
        self.inner.cfg.artifacts_dir.join(profile_key)
    }

    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.inner.stopping.subscribe()
    }

    pub(crate) fn refuse_if_stopping(&self) -> Result<(), PoolError> {
        match *self.inner.stopping.borrow() {
            true => Err(PoolError::ShuttingDown),
            false => Ok(()),
        }
    }

    /// For a person: no queueing, no slot (a window may stay open for an
    /// hour and must not hold up relogins, nor wait behind them).
    pub(crate) fn hold_for_person(
        &self,
        profile_key: &str,
        usage: ProfileUse,
        headless: bool,
    ) -> Result<PersonHold, PoolError> {
        validate_profile_key(profile_key)?;
        if !headless {
            require_display()?;
        }
        self.refuse_if_stopping()?;
        let profile = self.inner.profiles.try_acquire(profile_key, usage)?;
        Ok(PersonHold {
            _profile: profile,
            _open: self.count_open(),
        })
    }

    /// One of the `max_concurrent` slots, now or never (a person is told
    /// to try again rather than kept waiting behind relogins).
    pub(crate) fn try_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, PoolError> {
        self.refuse_if_stopping()?;
        self.inner
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|e| match e {
                tokio::sync::TryAcquireError::Closed => PoolError::ShuttingDown,
                tokio::sync::TryAcquireError::NoPermits => {
                    PoolError::NoSlot(self.inner.cfg.max_concurrent)
                }
            })
    }

    pub(crate) fn count_open(&self) -> OpenGuard {
        self.inner.open.send_modify(|n| *n += 1);
        OpenGuard(self.inner.clone())
    }

    /// Creates the profile dir (0700) and starts a browser on it, with a
    /// driver of its own (for a person: a window, a recording).
    pub(crate) async fn launch(
        &self,
        profile_key: &str,
        headless: bool,
    ) -> Result<Session, PoolError> {
        self.launch_on(profile_key, headless, DriverSource::Own)
            .await
    }

    /// As [`launch`](Self::launch), through the shared driver (relogins).
    pub(crate) async fn launch_shared(
        &self,
        profile_key: &str,
        headless: bool,
    ) -> Result<Session, PoolError> {
        self.launch_on(
            profile_key,
            headless,
            DriverSource::Shared(&self.inner.driver),
        )
        .await
    }

    /// Starts a browser on a new, empty profile (no cookies, no session of
    /// the account's), removed when the session closes: a recording that
    /// must see every login step, a proof that a script logs in alone.
    pub(crate) async fn launch_throwaway(
        &self,
        headless: bool,
        shared: bool,
    ) -> Result<Session, PoolError> {
        let parent = &self.inner.cfg.profiles_dir;
        let io = |e: std::io::Error| PoolError::Io(format!("{}: {e}", parent.display()));
        profile::create_private_dir(parent).map_err(io)?;
        // A leading dot: no profile key can name it (see validate_profile_key).
        let dir = tempfile::Builder::new()
            .prefix(".throwaway-")
            .tempdir_in(parent)
            .map_err(io)?;
        let source = match shared {
            true => DriverSource::Shared(&self.inner.driver),
            false => DriverSource::Own,
        };
        let session = Session::launch(&self.inner.cfg, dir.path(), headless, source).await?;
        Ok(session.with_throwaway(dir))
    }

    async fn launch_on(
        &self,
        profile_key: &str,
        headless: bool,
        source: DriverSource<'_>,
    ) -> Result<Session, PoolError> {
        self.launch_in(&self.profile_dir(profile_key), headless, source)
            .await
    }

    /// Starts a browser on the profile directory `dir` (created 0700).
    async fn launch_in(
        &self,
        dir: &std::path::Path,
        headless: bool,
        source: DriverSource<'_>,
    ) -> Result<Session, PoolError> {
        profile::create_private_dir(dir)
            .map_err(|e| PoolError::Io(format!("{}: {e}", dir.display())))?;
        Session::launch(&self.inner.cfg, dir, headless, source).await
    }
}

async fn remove_dir_if_present(dir: &std::path::Path) -> Result<(), PoolError> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PoolError::Io(format!("removing {}: {e}", dir.display()))),
    }
}

fn require_display() -> Result<(), PoolError> {
    if has_display() {
        Ok(())
    } else {
        Err(PoolError::NoDisplay)
    }
}

/// Whether a browser window can open here (`DISPLAY` or `WAYLAND_DISPLAY`).
pub fn has_display() -> bool {
    let has = |v: &str| std::env::var_os(v).is_some_and(|x| !x.is_empty());
    has("DISPLAY") || has("WAYLAND_DISPLAY")
}

impl BrowserPool {
    /// Waits for a slot only (a canary uses no account profile).
    pub(crate) async fn acquire_slot(
        &self,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, PoolError> {
        self.inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PoolError::ShuttingDown)
    }

    /// Waits for the profile (other relogins of it finish first) and a slot.
    pub(crate) async fn acquire_for_relogin(
        &self,
        profile_key: &str,
    ) -> Result<(ProfileGuard, tokio::sync::OwnedSemaphorePermit), PoolError> {
        let profile = self.inner.profiles.acquire_for_relogin(profile_key).await?;
        let slot = self
            .inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PoolError::ShuttingDown)?;
        Ok((profile, slot))
    }
}
