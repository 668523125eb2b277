//! The browser engine on its own (no farm): headless Debian Chromium through
//! playwright-rs against the real test OIDC provider. Missing chromium, node
//! or the driver fails loudly with the install command.

pub mod support;

mod hardening;
mod login;
mod pool;
mod recorder;
