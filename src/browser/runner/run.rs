//! One scripted relogin: launch, drive the steps, report, close.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use url::Url;

use super::drive::{self, DriveEnd, Driver};
use super::navigation::NavigationPolicy;
use super::{
    BrowserPool, FailedStep, FailureKind, LoginOutcome, LoginProgress, PoolError, RunEnd,
    RunFailure, RunProfile, Session, SETTLE_CHECKS,
};
use crate::browser::script::{ResolvedStep, Vars};

/// One scripted relogin, owned by its own task.
pub(super) struct Run {
    pub(super) pool: BrowserPool,
    pub(super) profile_key: String,
    pub(super) steps: Vec<ResolvedStep>,
    pub(super) vars: Vars,
    pub(super) end: RunEnd,
    pub(super) timeout: Duration,
    pub(super) profile: RunProfile,
}

impl Run {
    pub(super) async fn execute(self) -> Result<LoginOutcome, RunFailure> {
        let pool = &self.pool;
        pool.refuse_if_stopping()?;
        let (_profile, _slot) = match self.profile {
            RunProfile::Throwaway => (None, self.wait_for(pool.acquire_slot()).await??),
            RunProfile::Own | RunProfile::Proof => {
                let (profile, slot) = self
                    .wait_for(pool.acquire_for_relogin(&self.profile_key))
                    .await??;
                (Some(profile), slot)
            }
        };
        let _open = pool.count_open();
        let started = Instant::now();
        let headless = pool.config().headless;
        // A throwaway profile goes when its session closes.
        let session = match self.profile {
            RunProfile::Own => pool.launch_shared(&self.profile_key, headless).await?,
            RunProfile::Throwaway | RunProfile::Proof => {
                pool.launch_throwaway(headless, true).await?
            }
        };
        let result = self.drive(&session, started).await;
        session.close().await;
        log_result(&self.profile_key, &result);
        result
    }

    /// Waits for `future` unless the pool starts shutting down first.
    async fn wait_for<F: std::future::Future>(&self, future: F) -> Result<F::Output, PoolError> {
        let mut stopping = self.pool.stopping();
        tokio::select! {
            output = future => Ok(output),
            _ = stopping.wait_for(|s| *s) => Err(PoolError::ShuttingDown),
        }
    }

    async fn drive(&self, session: &Session, started: Instant) -> Result<LoginOutcome, RunFailure> {
        let (redirect_uri, signal) = match &self.end {
            RunEnd::Redirect(uri) => (Some(uri), None),
            RunEnd::Signal(progress) => (None, Some(progress.clone())),
        };
        let policy = NavigationPolicy::new(
            &self.pool.config().allowed_hosts,
            self.vars.run_urls().chain(redirect_uri),
        );
        session.restrict_navigation(policy.clone()).await?;
        let captured = match redirect_uri {
            Some(uri) => session.capture_redirect(uri).await?,
            // Nothing to capture: the farm's signal ends the run.
            None => watch::channel(None).1,
        };
        let artifacts = self.pool.artifacts_dir(&self.profile_key);
        let mut driver = Driver::new(&session.page, captured, &artifacts, &policy);
        let mut stopping = self.pool.stopping();
        let deadline = drive::sleep_running(self.timeout);
        tokio::pin!(deadline);
        let mut end = tokio::select! {
            end = driver.run(&self.steps) => Some(end),
            end = signalled(signal.clone()) => Some(DriveEnd::Signalled(end)),
            () = &mut deadline => None,
            _ = stopping.wait_for(|s| *s) => return Err(RunFailure::refused(PoolError::ShuttingDown)),
        };
        if let (Some(progress), Some(DriveEnd::Ended { .. } | DriveEnd::StepFailed { .. })) =
            (&signal, &end)
        {
            // The steps are done, or one failed after the login was
            // approved (a last `wait_for` of a page that says so): a few
            // more of the farm's checks tell.
            let settled = settle(progress.clone());
            tokio::select! {
                result = settled => {
                    // A failed step stays the failure unless the login is done.
                    if result.is_ok() || matches!(end, Some(DriveEnd::Ended { .. })) {
                        end = Some(DriveEnd::Signalled(result));
                    }
                }
                () = &mut deadline => end = None,
                _ = stopping.wait_for(|s| *s) => return Err(RunFailure::refused(PoolError::ShuttingDown)),
            }
        }
        let Some(end) = end else {
            let last = driver.acted.last().copied();
            let what = match redirect_uri {
                Some(_) => "redirect",
                None => "login",
            };
            let reason = format!("no {what} within {} s", self.timeout.as_secs());
            return Err(self
                .fail(&driver, FailureKind::TimedOut, last, reason, started)
                .await);
        };
        match end {
            DriveEnd::Signalled(Ok(())) => Ok(self.outcome(session, &driver, None, started).await),
            DriveEnd::Signalled(Err(reason)) => {
                let last = driver.acted.last().copied();
                Err(self
                    .fail(&driver, FailureKind::NotLoggedIn, last, reason, started)
                    .await)
            }
            DriveEnd::Captured(redirect_url) => Ok(self
                .outcome(session, &driver, Some(redirect_url), started)
                .await),
            DriveEnd::StepFailed { index, reason } => Err(self
                .fail(&driver, FailureKind::Step, Some(index), reason, started)
                .await),
            DriveEnd::Ended { last } => Err(self
                .fail(
                    &driver,
                    FailureKind::NoRedirect,
                    last,
                    String::new(),
                    started,
                )
                .await),
        }
    }

    async fn outcome(
        &self,
        session: &Session,
        driver: &Driver<'_>,
        redirect_url: Option<Url>,
        started: Instant,
    ) -> LoginOutcome {
        let elapsed = started.elapsed();
        let session_cookie_expires = self.provider_cookie_expiry(session).await;
        let steps_acted = driver.acted.clone();
        let lines_acted = steps_acted.iter().map(|&i| self.steps[i].line).collect();
        LoginOutcome {
            lines_acted,
            redirect_url,
            session_cookie_expires,
            elapsed,
            steps_acted,
        }
    }

    /// Builds the failure report: screenshot, page URL, what the page says,
    /// all scrubbed of secrets.
    async fn fail(
        &self,
        driver: &Driver<'_>,
        kind: FailureKind,
        step: Option<usize>,
        reason: String,
        started: Instant,
    ) -> RunFailure {
        let page = driver.page;
        let path = drive::artifact_path(driver.artifacts_dir, "failure");
        let screenshot = match driver.save_screenshot(&path).await {
            Ok(()) => Some(path),
            Err(e) => {
                tracing::warn!(error = %e, "failure screenshot not saved");
                None
            }
        };
        // A refused page's text is no more for `last_error` than its pixels.
        let said = match driver.policy.check_page(&page.url()) {
            Ok(()) => drive::page_message(page).await,
            Err(_) => String::new(),
        };
        let reason = match (reason.is_empty(), said.is_empty()) {
            (_, true) => reason,
            (true, false) => format!("the page says: {said}"),
            (false, false) => format!("{reason} (the page says: {said})"),
        };
        let redact = |text: &str| self.vars.redact(text, &driver.typed_codes);
        RunFailure {
            kind,
            step: step.map(|i| self.failed_step(i)),
            page_url: Some(redact(&page.url())),
            reason: redact(&reason),
            screenshot,
            elapsed: started.elapsed(),
        }
    }

    fn failed_step(&self, index: usize) -> FailedStep {
        let step = &self.steps[index];
        FailedStep {
            index,
            line: step.line,
            action: step.action.to_string(),
        }
    }

    /// Latest expiry among the cookies the provider's host gets, or `None`
    /// for session-only cookies (or no authorize URL to know the host by).
    async fn provider_cookie_expiry(&self, session: &Session) -> Option<DateTime<Utc>> {
        let provider = self.vars.provider_page()?;
        let origin = provider.origin().ascii_serialization();
        let cookies = match session.context.cookies(Some(&[origin.as_str()])).await {
            Ok(cookies) => cookies,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the provider's cookies");
                return None;
            }
        };
        cookies
            .iter()
            .filter(|c| c.expires > 0.0)
            .filter_map(|c| DateTime::from_timestamp(c.expires as i64, 0))
            .max()
    }
}

/// The end of a signalled run's login; never, for a run without a signal.
async fn signalled(progress: Option<watch::Receiver<LoginProgress>>) -> Result<(), String> {
    match progress {
        Some(progress) => LoginProgress::end_of(progress).await,
        None => std::future::pending().await,
    }
}

/// After the steps: the login's end, or `Err` once [`SETTLE_CHECKS`] more
/// checks passed without one.
async fn settle(mut progress: watch::Receiver<LoginProgress>) -> Result<(), String> {
    let checks = progress.borrow().checks;
    let seen = progress
        .wait_for(|p| p.end.is_some() || p.checks >= checks + SETTLE_CHECKS)
        .await
        .map(|p| p.end.clone());
    match seen {
        Ok(Some(end)) => end,
        Ok(None) => Err(format!(
            "the script ran to its end, and {SETTLE_CHECKS} more polls of the provider \
             found the login not approved"
        )),
        Err(_) => Err("the farm stopped waiting for the login".into()),
    }
}

/// One line per run for the operator; the caller records the transition.
fn log_result(profile_key: &str, result: &Result<LoginOutcome, RunFailure>) {
    match result {
        Ok(o) => tracing::info!(
            profile = profile_key,
            elapsed_ms = o.elapsed.as_millis() as u64,
            steps = ?o.steps_acted,
            "browser relogin reached the redirect"
        ),
        Err(f) => tracing::warn!(profile = profile_key, failure = %f, "browser relogin failed"),
    }
}
