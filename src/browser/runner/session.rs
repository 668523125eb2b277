//! One browser on one profile: a Chromium persistent context, launched
//! through a Playwright driver (node) and always closed cleanly.
//!
//! Relogins share the pool's driver ([`super::driver`]), which stops after
//! `driver_linger` without a session: an idle farm keeps no process
//! (idle Chromium ≈ 300 MB, a driver ≈ 120 MB) beyond the linger, and no
//! Chromium at all. A person's window and a recording get a driver of
//! their own, stopped with them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use playwright_rs::protocol::CDPSession;
use playwright_rs::{BrowserContext, BrowserContextOptions, Page, Playwright};
use serde_json::{json, Value};
use tokio::sync::watch;
use url::Url;

use super::config::{start_driver, BrowserConfig};
use super::driver::{is_connection_error, AcquireError, DriverHost, DriverLease};
use super::navigation::NavigationPolicy;
use super::PoolError;

/// Chromium startup bound (playwright's default is 3 minutes).
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// `context.close()` bound; past it the driver is shut down (a shared one
/// once its other sessions are done), which still closes the browser
/// (without a guarantee that cookies were flushed).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);
/// How much longer than `LAUNCH_TIMEOUT` the client waits for the driver.
const CLIENT_GRACE: Duration = Duration::from_secs(10);

pub(crate) struct Session {
    driver: SessionDriver,
    pub(crate) context: BrowserContext,
    pub(crate) page: Page,
    /// A throwaway profile (no cookies of the account's): removed once the
    /// browser is closed.
    throwaway: Option<tempfile::TempDir>,
}

/// Which driver a session runs on.
pub(crate) enum SessionDriver {
    /// Its own, stopped with the session (a person's window, a recording).
    Own(Box<Playwright>),
    /// The pool's shared one (relogins).
    Shared(DriverLease),
}

impl SessionDriver {
    fn playwright(&self) -> &Playwright {
        match self {
            SessionDriver::Own(playwright) => playwright,
            SessionDriver::Shared(lease) => lease.playwright(),
        }
    }

    /// Resolves if the driver process exits (never for one of its own,
    /// whose end the session's own calls see).
    async fn died(&self) {
        match self {
            SessionDriver::Own(_) => std::future::pending().await,
            SessionDriver::Shared(lease) => lease.died().await,
        }
    }

    /// After the context is closed (or given up on: `broken`).
    async fn release(self, broken: bool) {
        match self {
            SessionDriver::Own(playwright) => shutdown_driver(&playwright).await,
            SessionDriver::Shared(lease) => lease.release(broken).await,
        }
    }
}

/// Where a session gets its driver.
pub(crate) enum DriverSource<'a> {
    Own,
    Shared(&'a Arc<DriverHost>),
}

impl Session {
    pub(crate) async fn launch(
        cfg: &BrowserConfig,
        profile_dir: &Path,
        headless: bool,
        source: DriverSource<'_>,
    ) -> Result<Session, PoolError> {
        super::profile::disable_password_manager(profile_dir).map_err(|e| {
            PoolError::Io(format!("{}: {e}", profile_dir.join("Default").display()))
        })?;
        // A shared driver may have died since its last session: one retry
        // on a fresh driver.
        let attempts = match source {
            DriverSource::Own => 1,
            DriverSource::Shared(_) => 2,
        };
        for attempt in 1..=attempts {
            let driver = match source {
                DriverSource::Own => SessionDriver::Own(Box::new(
                    start_driver(cfg).await.map_err(|e| launch_error(&e))?,
                )),
                DriverSource::Shared(host) => match host.acquire(cfg).await {
                    Ok(lease) => SessionDriver::Shared(lease),
                    Err(AcquireError::Stopped) => return Err(PoolError::ShuttingDown),
                    Err(AcquireError::Start(e)) => return Err(launch_error(&e)),
                },
            };
            match Session::launch_on(driver, cfg, profile_dir, headless).await {
                Ok(session) => return Ok(session),
                Err(e) if attempt < attempts && is_connection_error(&e) => {
                    tracing::info!(
                        error = %super::drive::first_line(&e.to_string()),
                        "playwright driver unusable; retrying on a fresh one"
                    );
                }
                Err(e) => return Err(launch_error(&e)),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Launches Chromium through `driver`; on failure the driver is
    /// released (retired if the failure was the driver's).
    async fn launch_on(
        driver: SessionDriver,
        cfg: &BrowserConfig,
        profile_dir: &Path,
        headless: bool,
    ) -> playwright_rs::Result<Session> {
        let options = BrowserContextOptions::builder()
            .executable_path(BrowserConfig::absolute(&cfg.chromium).display().to_string())
            .headless(headless)
            .chromium_sandbox(cfg.sandbox)
            .args(cfg.chromium_args())
            .timeout(LAUNCH_TIMEOUT.as_millis() as f64)
            .build();
        // Client-side bounds too: a driver that died mid-call never answers.
        let launch = driver
            .playwright()
            .chromium()
            .launch_persistent_context_with_options(profile_dir.display().to_string(), options);
        let launched = tokio::select! {
            launched = tokio::time::timeout(LAUNCH_TIMEOUT + CLIENT_GRACE, launch) => launched,
            () = driver.died() => Ok(Err(playwright_rs::Error::TransportError(
                "the playwright driver exited during the browser launch".into(),
            ))),
        };
        let context = match launched {
            Ok(Ok(context)) => context,
            Ok(Err(e)) => {
                driver.release(is_connection_error(&e)).await;
                return Err(e);
            }
            Err(_) => {
                driver.release(true).await;
                return Err(playwright_rs::Error::Timeout(format!(
                    "the driver did not answer the browser launch within {} s",
                    (LAUNCH_TIMEOUT + CLIENT_GRACE).as_secs()
                )));
            }
        };
        let page = match first_page(&context).await {
            Ok(page) => page,
            Err(e) => {
                Session::close_parts(driver, &context).await;
                return Err(e);
            }
        };
        Ok(Session {
            driver,
            context,
            page,
            throwaway: None,
        })
    }

    /// Closes the context cleanly (this is when Chromium writes cookies to
    /// disk), then releases the driver (stops it, if the session's own).
    /// Never fails: there is nothing a caller could do about a failed
    /// close, and it is logged.
    pub(crate) async fn close(self) {
        Session::close_parts(self.driver, &self.context).await;
        if let Some(dir) = self.throwaway {
            let path = dir.path().to_path_buf();
            if let Err(e) = tokio::task::spawn_blocking(move || dir.close()).await {
                tracing::warn!(error = %e, dir = %path.display(), "throwaway profile not removed");
            }
        }
    }

    /// Makes this session's profile directory a throwaway one.
    pub(crate) fn with_throwaway(mut self, dir: tempfile::TempDir) -> Session {
        self.throwaway = Some(dir);
        self
    }

    async fn close_parts(driver: SessionDriver, context: &BrowserContext) {
        // A browser that went away by itself (a person closed its last
        // window, or it was killed) has nothing left to close; asking the
        // driver to close it anyway can wait out CLOSE_TIMEOUT.
        if context.is_closed() {
            driver.release(false).await;
            return;
        }
        // A close that fails or hangs leaves the browser to the driver: it
        // is retired, and stopping it (once its other sessions are done)
        // takes the browser down.
        let broken = match tokio::time::timeout(CLOSE_TIMEOUT, context.close()).await {
            Ok(Ok(())) => false,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "browser context did not close cleanly");
                true
            }
            Err(_) => {
                tracing::warn!("browser context close timed out; its driver is stopped to take the browser down");
                true
            }
        };
        driver.release(broken).await;
    }

    /// Becomes `true` once the browser goes away by itself (a person closed
    /// the last window). Register it right after launch: a close before
    /// registration is only caught by the `is_closed` check.
    pub(crate) async fn closed_by_user(&self) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        let tx = Arc::new(tx);
        let on_close = tx.clone();
        let _ = self
            .context
            .on_close(move || {
                on_close.send_replace(true);
                async { Ok(()) }
            })
            .await;
        if self.context.is_closed() {
            tx.send_replace(true);
        }
        rx
    }

    /// Installs the redirect capture: the first navigation request to
    /// `redirect_uri`, whether or not anything listens there.
    ///
    /// On the main page the request is also stopped before it leaves the
    /// browser (CDP `Fetch`, which, unlike Playwright's `route()`, pauses
    /// redirect hops): the farm may itself listen on the redirect URI, and
    /// an authorization code delivered twice gets redeemed twice, which
    /// makes the provider revoke the whole grant. `on_request` (which fires
    /// for redirect hops too) covers any other page, without blocking.
    pub(crate) async fn capture_redirect(
        &self,
        redirect_uri: &Url,
    ) -> Result<watch::Receiver<Option<Url>>, PoolError> {
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        self.block_redirect_on_main_page(redirect_uri, tx.clone())
            .await
            .map_err(|e| launch_error(&e))?;
        let redirect_uri = redirect_uri.clone();
        self.context
            .on_request(move |request| {
                if request.is_navigation_request() {
                    if let Some(url) = redirect_target(request.url(), &redirect_uri) {
                        record_capture(&tx, url);
                    }
                }
                async { Ok(()) }
            })
            .await
            .map_err(|e| launch_error(&e))?;
        Ok(rx)
    }

    async fn block_redirect_on_main_page(
        &self,
        redirect_uri: &Url,
        tx: Arc<watch::Sender<Option<Url>>>,
    ) -> playwright_rs::Result<()> {
        let cdp = self.context.new_cdp_session(&self.page).await?;
        let sender = cdp.clone();
        let target = redirect_uri.clone();
        cdp.on("Fetch.requestPaused", move |event: Value| {
            let hit = event["request"]["url"]
                .as_str()
                .and_then(|u| redirect_target(u, &target));
            let id = event["requestId"].clone();
            let (method, params) = match hit {
                Some(url) => {
                    record_capture(&tx, url);
                    (
                        "Fetch.failRequest",
                        json!({ "requestId": id, "errorReason": "Aborted" }),
                    )
                }
                // The pattern is a prefix: `/callback2` lands here too.
                None => ("Fetch.continueRequest", json!({ "requestId": id })),
            };
            let sender = sender.clone();
            async move { answer_cdp_event(&sender, method, params).await }
        });
        let pattern = format!("{}*", cdp_pattern_escape(&without_query(redirect_uri)));
        let patterns =
            json!({ "patterns": [{ "urlPattern": pattern, "requestStage": "Request" }] });
        cdp.send("Fetch.enable", Some(patterns)).await.map(drop)
    }
}

impl Session {
    /// Aborts every request `policy` refuses, on every page of the context
    /// (pop-ups included). Route handlers see neither redirect hops nor
    /// `file:` loads: the driver checks the page URL after each step too.
    pub(crate) async fn restrict_navigation(
        &self,
        policy: NavigationPolicy,
    ) -> Result<(), PoolError> {
        let policy = Arc::new(policy);
        self.context
            .route("**/*", move |route| {
                let policy = policy.clone();
                async move {
                    let request = route.request();
                    let is_page = request.is_navigation_request();
                    match policy.check_request(request.url(), is_page) {
                        Ok(()) => route.continue_(None).await,
                        Err(refusal) => {
                            tracing::info!(%refusal, "browser request blocked");
                            route.abort(Some("blockedbyclient")).await
                        }
                    }
                }
            })
            .await
            .map_err(|e| launch_error(&e))
    }
}

/// Answers a CDP event from its handler. The page may be closing while the
/// answer is on its way (a run that reached the redirect closes its
/// context at once): nothing is wrong then, and an error returned from the
/// handler would be logged by playwright-rs as a warning carrying the
/// driver's stack trace after every successful relogin.
pub(crate) async fn answer_cdp_event(
    cdp: &CDPSession,
    method: &'static str,
    params: Value,
) -> playwright_rs::Result<()> {
    if let Err(e) = cdp.send(method, Some(params)).await {
        tracing::debug!(
            method,
            error = %super::drive::first_line(&e.to_string()),
            "CDP event not answered: the page is closing"
        );
    }
    Ok(())
}

/// Keeps the first captured redirect.
fn record_capture(tx: &watch::Sender<Option<Url>>, url: Url) {
    tx.send_if_modified(|slot| slot.is_none() && slot.replace(url).is_none());
}

fn without_query(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// CDP URL patterns treat `*` and `?` as wildcards and `\` as escape.
fn cdp_pattern_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            matches!(c, '*' | '?' | '\\')
                .then_some('\\')
                .into_iter()
                .chain([c])
        })
        .collect()
}

/// `Some(url)` if `candidate` is a request to `redirect_uri`: same scheme,
/// host, port and path (the OAuth exact-match rule), any query.
pub(crate) fn redirect_target(candidate: &str, redirect_uri: &Url) -> Option<Url> {
    let url = Url::parse(candidate).ok()?;
    let same = url.scheme() == redirect_uri.scheme()
        && url.host_str() == redirect_uri.host_str()
        && url.port_or_known_default() == redirect_uri.port_or_known_default()
        && url.path() == redirect_uri.path();
    same.then_some(url)
}

/// A persistent context opens with one page; use it rather than a second
/// window. playwright-rs may learn of that page a moment after the launch
/// returns, so give it that moment before opening another.
async fn first_page(context: &BrowserContext) -> playwright_rs::Result<Page> {
    for _ in 0..15 {
        if let Some(page) = context.pages().into_iter().next() {
            return Ok(page);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    context.new_page().await
}

async fn shutdown_driver(playwright: &Playwright) {
    if let Err(e) = playwright.shutdown().await {
        tracing::warn!(error = %e, "playwright driver did not shut down cleanly");
    }
}

/// The first line of a launch error, with the well-known causes spelled out.
fn launch_error(error: &playwright_rs::Error) -> PoolError {
    let text = error.to_string();
    if text.contains("SingletonLock") || text.contains("ProcessSingleton") {
        return PoolError::Launch(
            "the profile directory is locked by another Chromium process (SingletonLock)".into(),
        );
    }
    PoolError::Launch(super::drive::first_line(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_matching_is_exact_on_origin_and_path() {
        let uri = Url::parse("http://127.0.0.1:8765/callback").unwrap();
        let hit = redirect_target("http://127.0.0.1:8765/callback?code=a&state=b", &uri).unwrap();
        assert_eq!(hit.query(), Some("code=a&state=b"));
        for miss in [
            "http://127.0.0.1:87651/callback?code=a",
            "http://127.0.0.1:8765/callbackx?code=a",
            "http://127.0.0.1:8765/callback/x",
            "https://127.0.0.1:8765/callback",
            "http://localhost:8765/callback",
            "http://127.0.0.1:9/auth?redirect_uri=http%3A%2F%2F127.0.0.1%3A8765%2Fcallback",
        ] {
            assert!(redirect_target(miss, &uri).is_none(), "{miss}");
        }
    }

    #[test]
    fn fetch_pattern_is_the_escaped_uri_without_query() {
        let uri = Url::parse("http://127.0.0.1:8765/cb?x=1*").unwrap();
        assert_eq!(
            cdp_pattern_escape(&without_query(&uri)),
            "http://127.0.0.1:8765/cb"
        );
        assert_eq!(cdp_pattern_escape("a*b?c\\"), "a\\*b\\?c\\\\");
    }
}
