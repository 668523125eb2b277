//! The real OIDC provider (`tests/oidc/provider.mjs`) and its test-control
//! API (`/__test/*`), plus token introspection as a resource server would
//! do it.

use std::path::Path;
use std::sync::OnceLock;

use reqwest::blocking::Client;
use serde_json::Value;

use super::process::{clean_command, Daemon, StartFailure};
use super::{free_port, oidc_dir};

/// The client the farm is configured with (public, PKCE).
pub const CLIENT_ID: &str = "daemon-web";

pub struct Provider {
    _daemon: Daemon,
    pub issuer: String,
    /// The farm's loopback redirect URI, on a port of its own.
    pub redirect_uri: String,
    /// Built on first use: a blocking client cannot be built inside an
    /// async test (the browser engine's tests start the provider too).
    http: OnceLock<Client>,
}

impl Provider {
    /// Starts a provider on a free port whose access tokens live
    /// `access_ttl` seconds; its stderr goes to `log`.
    pub fn start(log: &Path, access_ttl: u32) -> Provider {
        let redirect_uri = format!("http://127.0.0.1:{}/callback", free_port());
        Provider::start_with_redirect(log, access_ttl, redirect_uri)
    }

    /// [`Provider::start`] with the redirect URI its client allows.
    pub fn start_with_redirect(log: &Path, access_ttl: u32, redirect_uri: String) -> Provider {
        let oidc = oidc_dir();
        let spawn = || {
            let mut cmd = clean_command("node");
            cmd.arg(oidc.join("provider.mjs"))
                .args([
                    "--port",
                    "0",
                    "--access-ttl",
                    &access_ttl.to_string(),
                    "--redirect-uri",
                    &redirect_uri,
                ])
                .current_dir(&oidc);
            Daemon::spawn("provider", cmd, log, "READY ")
        };
        let failed = |f: StartFailure| -> ! {
            panic!(
                "the OIDC provider did not start ({:?}):\n{}",
                f.status, f.log
            )
        };
        let (daemon, issuer) = match spawn() {
            Ok(started) => started,
            // A start that hangs gets one more try; what the hung process
            // was doing goes to the test's output. (The one cause found, a
            // node deadlock exporting the signing key, is avoided in
            // provider.mjs.)
            Err(hung) if hung.status.is_none() => {
                eprintln!(
                    "the OIDC provider hung at start; starting another:\n{}",
                    hung.log
                );
                spawn().unwrap_or_else(|f| failed(f))
            }
            Err(f) => failed(f),
        };
        Provider {
            _daemon: daemon,
            issuer,
            redirect_uri,
            http: OnceLock::new(),
        }
    }

    fn http(&self) -> &Client {
        self.http.get_or_init(|| {
            // No idle connections: node closes them after its keep-alive
            // timeout (5 s), and a request sent on one as it closes fails.
            Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client")
        })
    }

    fn test_api(&self, method: reqwest::Method, path: &str) -> Value {
        let url = format!("{}/__test/{path}", self.issuer);
        let resp = self
            .http()
            .request(method, &url)
            .send()
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = resp.status();
        let body: Value = resp
            .json()
            .unwrap_or_else(|e| panic!("{url}: not JSON: {e}"));
        assert!(status.is_success(), "{url}: {status} {body}");
        body
    }

    /// `/__test/stats`: `refresh_grants`, `code_grants`, `refresh_failures`
    /// (each by user), `grants_revoked`.
    pub fn stats(&self) -> Value {
        self.test_api(reqwest::Method::GET, "stats")
    }

    /// Successful `refresh_token` grants for `user`.
    pub fn refresh_grants(&self, user: &str) -> u64 {
        self.stats()["refresh_grants"][user].as_u64().unwrap_or(0)
    }

    /// Successful `authorization_code` grants for `user`.
    pub fn code_grants(&self, user: &str) -> u64 {
        self.stats()["code_grants"][user].as_u64().unwrap_or(0)
    }

    /// Revokes every grant of `user` (the refresh token dies); returns how many.
    pub fn revoke(&self, user: &str) -> u64 {
        self.test_api(reqwest::Method::POST, &format!("revoke/{user}"))["revoked"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Ends every browser session at the provider: the next authorize shows
    /// the login form again. Returns how many ended.
    pub fn end_sessions(&self) -> u64 {
        self.test_api(reqwest::Method::POST, "end-sessions")["ended"]
            .as_u64()
            .unwrap_or(0)
    }

    /// The base32 TOTP seed of a `totp-*` user (what their authenticator app holds).
    pub fn totp_seed(&self, user: &str) -> String {
        let answer = self.test_api(reqwest::Method::GET, &format!("users/{user}"));
        answer["totp_seed"]
            .as_str()
            .unwrap_or_else(|| panic!("{user} has no TOTP seed: {answer}"))
            .to_string()
    }

    /// The next `count` token requests fail with `status`.
    pub fn token_fail(&self, count: u32, status: u16) {
        self.test_api(
            reqwest::Method::POST,
            &format!("token-fail?count={count}&status={status}"),
        );
    }

    /// Every token request waits `ms` before the provider handles it.
    pub fn token_delay(&self, ms: u64) {
        self.test_api(reqwest::Method::POST, &format!("token-delay?ms={ms}"));
    }

    /// RFC 7662 introspection of `token`, as a resource server would ask.
    pub fn introspect(&self, token: &str) -> Value {
        let url = format!("{}/token/introspection", self.issuer);
        let resp = self
            .http()
            .post(&url)
            .basic_auth("introspector", Some("introspector-secret"))
            .form(&[("token", token)])
            .send()
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        resp.json().expect("introspection answers JSON")
    }

    /// Asserts that `token` is a live access token of `user`.
    pub fn assert_active(&self, token: &str, user: &str) {
        let info = self.introspect(token);
        assert_eq!(
            info["active"], true,
            "the provider says the token of {user} is not active: {info}"
        );
        assert_eq!(
            info["sub"], user,
            "the token belongs to someone else: {info}"
        );
        assert_eq!(info["client_id"], CLIENT_ID, "{info}");
    }
}
