//! The browser engine: logs an account back in with a real browser when its
//! refresh token is dead, in the account's own persistent profile,
//! by replaying the login script the person recorded once.
//!
//! - [`script`]: the login-script format (pure: parse, validate, expand).
//! - [`runner`]: Playwright (playwright-rs + the npm-pinned driver in
//!   `scripts/playwright`) driving Debian's Chromium; [`BrowserPool`] runs
//!   relogins with at most `max_concurrent` browsers and none when idle.
//! - [`recorder`]: turns a person's login into a script and secrets.
//! - [`remote`]: the admin page's remote browser (frames out, input in).
//!
//! The caller owns the OAuth side: it builds the PKCE authorize URL, passes
//! it in [`Vars`], and redeems the code in [`LoginOutcome::redirect_url`].
//! The browser's own request to the redirect URI is stopped before it leaves
//! the browser, so the code is delivered exactly once.

pub mod recorder;
pub mod remote;
pub mod runner;
pub mod script;

pub use runner::{doctor, BrowserConfig, BrowserPool, LoginOutcome, RunFailure};
pub use script::{LoginScript, ScriptError, Vars};
