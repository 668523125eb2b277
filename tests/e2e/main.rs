//! End-to-end tests of relogin-farm: the built `relogin-farm` binary,
//! started as a daemon, against the real OIDC provider in `tests/oidc`
//! (npm `oidc-provider`, with refresh-token rotation and reuse detection).
//!
//! Every test starts its own provider and farm on free loopback ports with
//! its own temp dir, so the tests run in parallel. Needs node and
//! `tests/oidc/node_modules` (`scripts/setup` installs both): without them
//! the tests fail, they never skip.

mod support;

mod api_auth;
mod bad_requests;
mod cooldown;
mod hygiene;
mod login;
mod observability;
mod refresh;
mod restart;
mod rotation;
