//! Runs resolved steps on a page until the redirect is captured.

use std::path::{Path, PathBuf};
use std::time::Duration;

use playwright_rs::{
    ClickOptions, FillOptions, GotoOptions, Page, PressOptions, WaitForOptions, WaitForState,
    WaitUntil,
};
use tokio::sync::watch;
use url::Url;

use super::navigation::NavigationPolicy;
use crate::browser::script::{Glob, ResolvedAction, ResolvedStep};
use crate::secret::Secret;

/// After a step fails, how long to wait for a redirect already on its way:
/// a `goto` straight into the redirect fails (nothing may listen there)
/// while the request event that proves success is still being delivered.
const CAPTURE_GRACE: Duration = Duration::from_millis(300);
/// After the last step, how long to wait for a script-driven redirect.
const END_GRACE: Duration = Duration::from_secs(2);
/// Extra time over a step's own timeout before we stop waiting for the
/// driver to report it (a guard against a wedged driver, not a timeout the
/// script controls).
const DRIVER_SLACK: Duration = Duration::from_secs(5);
const URL_POLL: Duration = Duration::from_millis(50);
/// The steps in which [`sleep_running`] counts time.
const TICK: Duration = Duration::from_secs(1);
/// A tick waking this much later than asked means the farm's process was
/// stopped meanwhile (SIGSTOP, a machine suspend), not that time passed for it.
const STALL: Duration = Duration::from_secs(1);

/// Sleeps `d` of the farm's own running time. A stretch the process spent
/// stopped counts as one tick: a timeout over the browser must not fire on
/// the wakeup, ahead of the browser's answer that arrived meanwhile and
/// waits in the pipe (the account would then go to `needs_human` for a
/// script that worked).
pub(crate) async fn sleep_running(d: Duration) {
    let mut left = d;
    while !left.is_zero() {
        let tick = left.min(TICK);
        let asked = tokio::time::Instant::now();
        tokio::time::sleep(tick).await;
        let took = asked.elapsed();
        left = left.saturating_sub(if took > tick + STALL { tick } else { took });
    }
}

/// How the steps ended.
pub(crate) enum DriveEnd {
    Captured(Url),
    /// A step failed; `reason` is not yet redacted.
    StepFailed {
        index: usize,
        reason: String,
    },
    /// All steps ran; `last` is the last one that acted (was not skipped).
    Ended {
        last: Option<usize>,
    },
    /// The farm's signal ended a run without a redirect (`Err`: why the
    /// login failed; not yet redacted).
    Signalled(Result<(), String>),
}

/// Executes steps, keeping track of what acted and of the one-time codes
/// it typed (so error text can be scrubbed of them).
pub(crate) struct Driver<'a> {
    pub(crate) page: &'a Page,
    pub(crate) captured: watch::Receiver<Option<Url>>,
    /// Where `screenshot` steps write.
    pub(crate) artifacts_dir: &'a Path,
    /// Where the page may go.
    pub(crate) policy: &'a NavigationPolicy,
    /// Selectors a secret or one-time code was typed into: every
    /// screenshot masks them.
    pub(crate) masked: Vec<String>,
    /// Values typed that contain a TOTP code: the account's secrets are
    /// redacted through `Vars`, but a derived code is not among them.
    pub(crate) typed_codes: Vec<Secret>,
    /// Indices of the steps that acted (were not skipped), in order.
    pub(crate) acted: Vec<usize>,
    /// The step whose action is under way (past its optional-step check):
    /// when the redirect interrupts it, it still counts as having acted.
    acting: Option<usize>,
}

enum Ran {
    Acted,
    Skipped,
}

impl<'a> Driver<'a> {
    pub(crate) fn new(
        page: &'a Page,
        captured: watch::Receiver<Option<Url>>,
        artifacts_dir: &'a Path,
        policy: &'a NavigationPolicy,
    ) -> Self {
        Driver {
            page,
            captured,
            artifacts_dir,
            policy,
            masked: Vec::new(),
            typed_codes: Vec::new(),
            acted: Vec::new(),
            acting: None,
        }
    }

    pub(crate) async fn run(&mut self, steps: &[ResolvedStep]) -> DriveEnd {
        for step in steps {
            let mut captured = self.captured.clone();
            let result = tokio::select! {
                biased;
                url = wait_captured(&mut captured) => {
                    self.acted.extend(self.acting.take());
                    return DriveEnd::Captured(url);
                }
                result = self.run_step(step) => result,
            };
            match result {
                Ok(Ran::Acted) => self.acted.push(step.index),
                Ok(Ran::Skipped) => tracing::debug!(step = step.index, "optional step skipped"),
                // A step "fails" when its navigation ends at the blocked
                // redirect: that is the success we wait for.
                Err(reason) => match self.captured_within(CAPTURE_GRACE).await {
                    Some(url) => {
                        self.acted.extend(self.acting.take());
                        return DriveEnd::Captured(url);
                    }
                    None => {
                        return DriveEnd::StepFailed {
                            index: step.index,
                            reason,
                        }
                    }
                },
            }
            self.acting = None;
        }
        match self.captured_within(END_GRACE).await {
            Some(url) => DriveEnd::Captured(url),
            None => DriveEnd::Ended {
                last: self.acted.last().copied(),
            },
        }
    }

    async fn captured_within(&self, grace: Duration) -> Option<Url> {
        let mut captured = self.captured.clone();
        tokio::time::timeout(grace, wait_captured(&mut captured))
            .await
            .ok()
    }

    async fn run_step(&mut self, step: &ResolvedStep) -> Result<Ran, String> {
        let guard = step.timeout + DRIVER_SLACK;
        let ran = tokio::select! {
            biased;
            result = self.run_step_inner(step) => result,
            () = sleep_running(guard) => Err(format!(
                "no answer from the browser within {} ms",
                guard.as_millis()
            )),
        };
        // Whatever the step did, the page must still be a web page.
        self.keep_on_the_web().await?;
        ran
    }

    /// Fails (after leaving the page for `about:blank`, so no screenshot
    /// or page text shows it) when the page is not one the policy allows.
    async fn keep_on_the_web(&self) -> Result<(), String> {
        let Err(refusal) = self.policy.check_page(&self.page.url()) else {
            return Ok(());
        };
        let blank = GotoOptions::new().timeout(Duration::from_secs(5));
        if let Err(e) = self.page.goto("about:blank", blank).await {
            tracing::warn!(error = %first_line(&e.to_string()), "could not leave a refused page");
        }
        Err(format!("the page left the allowed web: {refusal}"))
    }

    async fn run_step_inner(&mut self, step: &ResolvedStep) -> Result<Ran, String> {
        if step.optional {
            if let Some(selector) = step.action.selector() {
                if !self.visible_once_loaded(selector, step.timeout).await? {
                    return Ok(Ran::Skipped);
                }
            }
        }
        self.acting = Some(step.index);
        self.perform(step).await
    }

    /// The step's action, with the step's timeout as Playwright's auto-wait.
    async fn perform(&mut self, step: &ResolvedStep) -> Result<Ran, String> {
        let ms = step.timeout.as_millis() as f64;
        let page = self.page;
        let result = match &step.action {
            ResolvedAction::Goto { url } => {
                let url = url.render();
                self.policy
                    .check_page(url.expose())
                    .map_err(|refusal| format!("goto refused: {refusal}"))?;
                let options = GotoOptions::new()
                    .timeout(step.timeout)
                    .wait_until(WaitUntil::Load);
                page.goto(url.expose(), options).await.map(drop)
            }
            ResolvedAction::Fill { selector, value } => {
                let rendered = value.render();
                if value.has_totp() {
                    self.typed_codes.push(rendered.clone());
                }
                // Before typing: a fill that fails half-way may have typed.
                if value.is_confidential() && !self.masked.contains(selector) {
                    self.masked.push(selector.clone());
                }
                let options = FillOptions::builder().timeout(ms).build();
                page.locator(selector)
                    .fill(rendered.expose(), options)
                    .await
            }
            ResolvedAction::Click { selector } => {
                page.locator(selector)
                    .click(ClickOptions::builder().timeout(ms).build())
                    .await
            }
            ResolvedAction::Press { selector, key } => {
                let options = PressOptions::builder().timeout(ms).build();
                page.locator(selector).press(key, options).await
            }
            ResolvedAction::WaitFor { selector } => {
                let options = WaitForOptions::builder()
                    .state(WaitForState::Visible)
                    .timeout(ms)
                    .build();
                page.locator(selector).wait_for(options).await
            }
            ResolvedAction::WaitForUrl { glob } => {
                return self.wait_for_url(glob, step.timeout).await
            }
            ResolvedAction::Screenshot { name } => {
                let path = artifact_path(self.artifacts_dir, name);
                return self.save_screenshot(&path).await.map(|_| Ran::Acted);
            }
        };
        result
            .map(|()| Ran::Acted)
            .map_err(|e| describe_error(&e, step))
    }

    /// The optional-step rule: wait for the current page to finish loading
    /// (a click that submitted a form has already waited for the new page
    /// to commit), then look once. No auto-wait: a page a live session
    /// skips must not cost the step's whole timeout.
    async fn visible_once_loaded(&self, selector: &str, timeout: Duration) -> Result<bool, String> {
        let loaded = self.page.wait_for_load_state(Some(WaitUntil::Load));
        match tokio::time::timeout(timeout, loaded).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(first_line(&e.to_string())),
            Err(_) => {
                return Err(format!(
                    "page did not finish loading within {} ms",
                    timeout.as_millis()
                ))
            }
        }
        // `first()`: visibility of an ambiguous selector is still a yes; the
        // action itself then reports the ambiguity (strict mode).
        self.page
            .locator(selector)
            .first()
            .is_visible()
            .await
            .map_err(|e| first_line(&e.to_string()))
    }

    async fn wait_for_url(&self, glob: &Glob, timeout: Duration) -> Result<Ran, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if glob.matches(&self.page.url()) {
                return Ok(Ran::Acted);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "URL did not match {glob} within {} ms (it is {})",
                    timeout.as_millis(),
                    self.page.url()
                ));
            }
            tokio::time::sleep(URL_POLL).await;
        }
    }
}

async fn wait_captured(captured: &mut watch::Receiver<Option<Url>>) -> Url {
    let url = captured
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|url| url.clone());
    match url {
        Some(url) => url,
        // The session (and its sender) is gone: never resolves.
        None => std::future::pending().await,
    }
}

/// `<dir>/<UTC time>-<name>.png`.
pub(crate) fn artifact_path(dir: &Path, name: &str) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    dir.join(format!("{stamp}-{name}.png"))
}

/// The colour of the boxes over the fields a secret was typed into.
pub(crate) const MASK_COLOR: &str = "#000000";

impl Driver<'_> {
    /// Full-page screenshot to `path` (0600, its directory created 0700),
    /// with every field a secret was typed into painted over. None of a
    /// page the policy refuses (a `file:` page would show the host's files).
    pub(crate) async fn save_screenshot(&self, path: &Path) -> Result<(), String> {
        let page = self.page;
        if let Err(refusal) = self.policy.check_page(&page.url()) {
            return Err(format!("not taken: {refusal}"));
        }
        if let Some(dir) = path.parent() {
            super::profile::create_private_dir(dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let masks = self.masked.iter().map(|s| page.locator(s)).collect();
        let options = playwright_rs::ScreenshotOptions::builder()
            .full_page(true)
            .mask(masks)
            .mask_color(MASK_COLOR)
            .build();
        let png =
            match tokio::time::timeout(Duration::from_secs(10), page.screenshot(options)).await {
                Ok(Ok(png)) => png,
                Ok(Err(e)) => return Err(first_line(&e.to_string())),
                Err(_) => return Err("screenshot timed out".into()),
            };
        crate::store::write_private_file(path, &png).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// A browser error in the words of the script: timeouts name what was
/// waited for, anything else is the error's first line.
fn describe_error(error: &playwright_rs::Error, step: &ResolvedStep) -> String {
    match (error, step.action.selector()) {
        (playwright_rs::Error::Timeout(_), Some(selector)) => format!(
            "timed out after {} ms waiting for {selector}",
            step.timeout.as_millis()
        ),
        (playwright_rs::Error::Timeout(_), None) => {
            format!("timed out after {} ms", step.timeout.as_millis())
        }
        _ => first_line(&error.to_string()),
    }
}

/// The first meaningful line of a Playwright error. Drops the call log and
/// the driver's JS stack: the call log quotes typed values
/// (`fill("…")`), and neither helps a person fixing a script.
pub(crate) fn first_line(text: &str) -> String {
    let head = text.split("Call log:").next().unwrap_or(text);
    let line = head
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown error");
    let line = line.strip_prefix("Protocol error: ").unwrap_or(line);
    const MAX: usize = 300;
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

/// What the page says about the failure (an alert, `#error`…), so
/// `last_error` reads "Invalid username or password" rather than just
/// "script ended". Empty if nothing like that is visible.
pub(crate) async fn page_message(page: &Page) -> String {
    const JS: &str = r#"(() => {
        for (const sel of ['[role=alert]', '#error', '.error', '.alert', '.error-message', '[aria-live=assertive]']) {
            for (const el of document.querySelectorAll(sel)) {
                const text = (el.innerText || '').trim();
                if (text && el.getClientRects().length) return text.slice(0, 200);
            }
        }
        return '';
    })()"#;
    let text = page.evaluate::<(), String>(JS, None);
    match tokio::time::timeout(Duration::from_secs(2), text).await {
        Ok(Ok(text)) => text.lines().map(str::trim).collect::<Vec<_>>().join(" "),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sleep_running_counts_a_stopped_stretch_as_one_tick() {
        let sleeper = tokio::spawn(sleep_running(Duration::from_secs(5)));
        tokio::task::yield_now().await;
        // The process is stopped for 30 s: every timer is due on the wakeup.
        tokio::time::advance(Duration::from_secs(30)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !sleeper.is_finished(),
            "a stop of 30 s used up a 5 s timeout"
        );
        let resumed = tokio::time::Instant::now();
        sleeper.await.unwrap();
        let rest = resumed.elapsed();
        assert!(
            (Duration::from_secs(3)..=Duration::from_secs(4)).contains(&rest),
            "after the stop, {rest:?} more instead of 4 s less the tick the stop counted as"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_running_sleeps_its_time_when_the_process_runs() {
        let asked = tokio::time::Instant::now();
        sleep_running(Duration::from_millis(2500)).await;
        assert_eq!(asked.elapsed(), Duration::from_millis(2500));
    }

    #[test]
    fn first_line_drops_call_log_and_stack() {
        let e = "Timeout: Timeout 15000ms exceeded.\nCall log:\n  - fill(\"hunter2\")\n";
        assert_eq!(first_line(e), "Timeout: Timeout 15000ms exceeded.");
        let e = "Protocol error: net::ERR_CONNECTION_REFUSED at http://x/ \n Error: net::ERR\n    at _FrameSession._navigate (/x/coreBundle.js:1:1)";
        assert_eq!(first_line(e), "net::ERR_CONNECTION_REFUSED at http://x/");
        assert_eq!(first_line(&"x".repeat(400)).chars().count(), 301);
    }
}
