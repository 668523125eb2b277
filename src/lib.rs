//! relogin-farm keeps many OAuth accounts per provider logged in, unattended,
//! and hands their fresh access tokens to clients with leases.
//!
//! # Module map
//!
//! - [`doctor`]: `relogin-farm doctor`'s checks of the data (key, database,
//!   file modes, backups).
//! - [`domain`]: the rules, with no I/O — account states, which account
//!   serves next ([`domain::rotation`]), when to refresh and how long to back
//!   off ([`domain::timing`]).
//! - [`clock`]: the farm's wall clock ([`clock::SystemClock`]; a paused
//!   tokio clock in unit tests).
//! - [`config`]: defaults → TOML → `RELOGIN_FARM_*` env → CLI flags.
//! - [`secret`]: [`secret::Secret`], a string that prints as `***`.
//! - [`store`]: SQLite (WAL), encrypted tokens, hashed client keys, the
//!   group-commit lease log, the one-farm-per-database lock, backups.
//! - [`oauth`]: the provider edge — discovery, PKCE authorize URL, code
//!   exchange, refresh grant.
//! - [`farm`]: the service every caller goes through — accounts, logins,
//!   single-flight refresh, leases, reports, client keys.
//! - [`events`]: the event bus — every state change, stored and broadcast
//!   (SSE, webhooks).
//! - [`browser`]: the browser relogin engine — login scripts (pure), the
//!   Playwright/Chromium runner with one persistent profile per account,
//!   the recorder.
//! - [`scheduler`]: the refresh scheduler and the cron jobs (sweep, backups).
//! - [`http`]: the warp route table, thin handlers, the one error renderer.
//! - [`loopback`]: the redirect listener of a pending login, finishing it
//!   through a callback the farm hands in.
//! - [`shutdown`]: the signal every background job waits on.
//! - [`server`]: wiring; `server::run(config, listener, shutdown)`.
//! - [`listener`]: the HTTP(S) accept loop: connection caps, header and
//!   idle timeouts, TLS with reload on SIGHUP.
//! - [`lockfile`]: `flock` locks between processes that name their holder
//!   (one farm per database, one browser per profile).
//! - [`metrics`]: counters for `/metrics`.
//! - [`rfc3339`]: the hot path's timestamp formatter (chrono's output, faster).
//! - [`webhooks`]: signed, retried, non-blocking event delivery.

pub mod browser;
pub mod clock;
pub mod config;
pub mod doctor;
pub mod domain;
pub mod events;
pub mod farm;
pub mod http;
pub mod listener;
pub mod lockfile;
pub mod loopback;
pub mod metrics;
pub mod names;
pub mod oauth;
pub mod proxy;
pub mod rfc3339;
pub mod scheduler;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod webhooks;
