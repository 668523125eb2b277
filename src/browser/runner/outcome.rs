//! What a browser run returns: [`LoginOutcome`] or [`RunFailure`], and
//! [`PoolError`] for profile management.
//!
//! Every text here may end up in `last_error`, a log line or an API
//! response, so it is built from selectors, URLs and redacted browser
//! messages only, never from a typed value.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use url::Url;

use super::profile::ProfileUse;
use crate::browser::script::ScriptError;

/// A successful login: the browser was sent to the redirect URI, or the
/// farm saw the login done (a device login's poll).
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    /// The full redirect (`?code=…&state=…&iss=…`): the caller redeems it.
    /// `None` for a run that ended on the farm's signal (the tokens are
    /// already stored).
    pub redirect_url: Option<Url>,
    /// Latest expiry among the provider host's cookies, read from the
    /// context before it closed: when a full scripted login is next needed.
    /// `None` if the provider only set session cookies.
    pub session_cookie_expires: Option<DateTime<Utc>>,
    /// From the browser launch to the captured redirect.
    pub elapsed: Duration,
    /// Indices of the steps that ran (the rest were optional and skipped, or
    /// not reached): `[0]` means a live session went straight through.
    pub steps_acted: Vec<usize>,
    /// The script lines of those steps.
    pub lines_acted: Vec<usize>,
}

/// Refusals that happen before any browser starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("invalid profile key {0:?}: use 1-128 letters, digits, `_`, `-`, `.` (not starting with `.`)")]
    BadProfileKey(String),
    #[error("profile {profile} is in use by {by}")]
    ProfileBusy { profile: String, by: ProfileUse },
    /// Another process (`relogin-farm browser open`, or the daemon when
    /// that is the other one) has the profile.
    #[error("profile {profile} is in use by {holder}")]
    ProfileHeldElsewhere { profile: String, holder: String },
    #[error("the browser pool is shutting down")]
    ShuttingDown,
    #[error("all {0} browsers of the pool (browser.max_concurrent) are in use; try again shortly")]
    NoSlot(usize),
    #[error("no display for a headed browser (DISPLAY and WAYLAND_DISPLAY unset): run it on a desktop, or record with --headless")]
    NoDisplay,
    #[error("{0}")]
    Io(String),
    #[error("could not start the browser: {0} (run `relogin-farm doctor`)")]
    Launch(String),
}

/// Why a run failed, for the recovery ladder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailureKind {
    /// Refused or could not launch: transient, retry later.
    #[error("{0}")]
    Pool(PoolError),
    /// The script needs a variable or secret the account does not have.
    #[error("{0}")]
    Script(ScriptError),
    /// A step failed or timed out.
    #[error("a step failed")]
    Step,
    /// The steps ran out without the browser reaching the redirect URI.
    #[error("the script ended without reaching the redirect URI")]
    NoRedirect,
    /// The whole run took longer than its timeout.
    #[error("the run timed out")]
    TimedOut,
    /// A run that ends on the farm's signal (a device login): the login
    /// failed, or the steps ran out and it was still not done.
    #[error("the device login did not complete")]
    NotLoggedIn,
}

/// The step a failure is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedStep {
    /// 0-based index in the script.
    pub index: usize,
    /// Line of its `[[step]]` in the script file.
    pub line: usize,
    /// e.g. `click #submit` (no values).
    pub action: String,
}

/// A failed run, with what a person needs to fix it.
#[derive(Debug, Clone)]
pub struct RunFailure {
    pub kind: FailureKind,
    /// The failing step; for `NoRedirect`/`TimedOut`, the last step that ran.
    pub step: Option<FailedStep>,
    pub page_url: Option<String>,
    /// The browser's error, or what the page said (e.g. "Invalid username
    /// or password"); secrets are redacted.
    pub reason: String,
    /// Full-page screenshot at the moment of failure.
    pub screenshot: Option<PathBuf>,
    pub elapsed: Duration,
}

impl RunFailure {
    pub(crate) fn refused(error: PoolError) -> Self {
        RunFailure::bare(FailureKind::Pool(error))
    }

    pub(crate) fn bare(kind: FailureKind) -> Self {
        RunFailure {
            kind,
            step: None,
            page_url: None,
            reason: String::new(),
            screenshot: None,
            elapsed: Duration::ZERO,
        }
    }

    /// Whether the account should go to `needs_human`: the script or the
    /// account is wrong, as opposed to a busy profile or a shutdown.
    pub fn needs_human(&self) -> bool {
        !matches!(self.kind, FailureKind::Pool(_))
    }
}

/// e.g. `step 3 (line 8, click #submit) failed on http://…: timed out after
/// 800 ms waiting for #submit (screenshot: …)`.
impl fmt::Display for RunFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.step) {
            (FailureKind::Step, Some(step)) => write!(f, "{step} failed")?,
            (kind, Some(step)) => write!(f, "{kind} (last step run: {step})")?,
            (kind, None) => write!(f, "{kind}")?,
        }
        if let Some(url) = &self.page_url {
            write!(f, " on {url}")?;
        }
        if !self.reason.is_empty() {
            write!(f, ": {}", self.reason)?;
        }
        if let Some(path) = &self.screenshot {
            write!(f, " (screenshot: {})", path.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for RunFailure {}

impl fmt::Display for FailedStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "step {} (line {}, {})",
            self.index + 1,
            self.line,
            self.action
        )
    }
}

impl From<PoolError> for RunFailure {
    fn from(error: PoolError) -> Self {
        RunFailure::refused(error)
    }
}
