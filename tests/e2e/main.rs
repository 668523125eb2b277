//! End-to-end tests of relogin-farm: the built `relogin-farm` binary,
//! started as a daemon, against the real OIDC provider in `tests/oidc`
//! (npm `oidc-provider`, with refresh-token rotation and reuse detection).
//!
//! Every test starts its own provider and farm on free loopback ports with
//! its own temp dir, so the tests run in parallel. Needs node and
//! `tests/oidc/node_modules`, and for the admin page `/usr/bin/chromium` and
//! `scripts/playwright/node_modules` (`scripts/setup` installs them all):
//! without them the tests fail, they never skip.

mod support;

mod admin_page;
mod api_auth;
mod backup;
mod bad_requests;
mod browser_engine;
mod cli_clients;
mod cli_login;
mod cooldown;
mod device_login;
mod events_sse;
mod hygiene;
mod identity;
mod init_setup;
mod leases;
mod listener;
mod login;
mod nights;
mod observability;
mod openapi;
mod presets;
mod provider_doctor;
mod provider_keys;
mod provider_quirks;
mod proxy;
mod quirk_emulator;
mod refresh;
mod relogin;
mod remote_browser;
mod restart;
mod rotation;
mod soak_tools;
mod tls;
mod webhooks;
