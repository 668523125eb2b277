//! The CLI's one HTTP client for the farm's API: base URL, TLS trust,
//! bearer auth, typed answers, and the farm's `{"error", "detail"}` turned
//! into one message.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::FarmArgs;
use relogin_farm::config::{Config, ServerConfig};
use relogin_farm::secret::Secret;

/// What a request carries.
pub enum Payload<'a, B: Serialize> {
    None,
    Json(&'a B),
    /// A login script (`PUT /api/accounts/{id}/script` takes TOML).
    Toml(&'a str),
}

/// A request without a JSON body (the type parameter is only a placeholder).
pub const NO_BODY: Payload<'static, ()> = Payload::None;

pub struct FarmClient {
    /// Without a trailing `/`.
    base: String,
    token: Secret,
    http: reqwest::Client,
}

impl FarmClient {
    /// The admin API of the farm `config` describes (or `--farm`), with the
    /// configured admin token.
    pub fn admin(config: &Config, args: &FarmArgs) -> Result<Self> {
        let token = config.server.admin_token.clone().context(
            "no admin token: set server.admin_token_file or RELOGIN_FARM_ADMIN_TOKEN to talk to the farm",
        )?;
        let base = match &args.farm {
            Some(url) => url.clone(),
            None => default_farm_url(&config.server),
        };
        Self::new(&base, token, Some(&config.server))
    }

    /// The farm at `base` with `token` as the bearer token; besides the
    /// usual roots it trusts the certificate in `RELOGIN_FARM_CA_FILE` or,
    /// without it, the farm's own `server.tls_cert_file` (a self-signed one
    /// is its own root).
    pub fn new(base: &str, token: Secret, server: Option<&ServerConfig>) -> Result<Self> {
        let ca_file = std::env::var_os("RELOGIN_FARM_CA_FILE")
            .map(|f| ("RELOGIN_FARM_CA_FILE", PathBuf::from(f)))
            .or_else(|| {
                server
                    .and_then(|s| s.tls.as_ref())
                    .map(|t| ("server.tls_cert_file", t.cert_file.clone()))
            });
        let mut builder = reqwest::Client::builder();
        if let Some((source, path)) = ca_file {
            let pem = std::fs::read(&path)
                .with_context(|| format!("{source}: cannot read {}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{source}: {} is not a PEM certificate", path.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(FarmClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: builder.build()?,
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        parse(path, &self.send(Method::GET, path, NO_BODY).await?)
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        parse(
            path,
            &self.send(Method::POST, path, Payload::Json(body)).await?,
        )
    }

    /// A POST without a body.
    /// The farm's base URL (no trailing slash).
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        parse(path, &self.send(Method::POST, path, NO_BODY).await?)
    }

    /// Sends the request; a non-2xx answer is an error with the farm's
    /// reason. Returns the answer's body.
    pub async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Payload<'_, B>,
    ) -> Result<bytes::Bytes> {
        tracing::debug!(%method, path, farm = %self.base, "calling the farm");
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose());
        req = match body {
            Payload::None => req,
            Payload::Json(b) => req.json(b),
            Payload::Toml(text) => req
                .header("content-type", "application/toml")
                .body(text.to_owned()),
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the farm at {} (is it running?)", self.base))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("reading the farm's answer to {path}"))?;
        if !status.is_success() {
            bail!("{}", error_message(status, &body));
        }
        Ok(body)
    }
}

/// A failed call as one line: `404 not_found: account 7 not found`.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    use relogin_farm::http::error::Body;
    match serde_json::from_slice::<Body>(body) {
        Ok(e) if e.detail.is_empty() => format!("{} {}", status.as_u16(), e.error),
        Ok(e) => format!("{} {}: {}", status.as_u16(), e.error, e.detail),
        // Something else answered (a proxy, another server on that port).
        Err(_) => format!(
            "{} {}: not an answer of the farm (is the farm's URL right?)",
            status.as_u16(),
            status.canonical_reason().unwrap_or("error")
        ),
    }
}

fn parse<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .with_context(|| format!("the farm's answer to {path} is not what this CLI expects"))
}

/// The farm's URL from `server.listen`: `https` when it serves TLS, and a
/// loopback address for a wildcard one.
fn default_farm_url(server: &ServerConfig) -> String {
    let mut addr = server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = if server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}")
}

/// A time as the API writes it (RFC 3339, UTC, as many fraction digits as
/// it needs), so that listings print what the farm sent.
pub fn when(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_farms_error_becomes_status_code_and_detail() {
        let body = br#"{"error":"not_found","detail":"client 999 not found"}"#;
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, body),
            "404 not_found: client 999 not found"
        );
        let escaped =
            br#"{"error":"bad_request","detail":"label \"x\" is taken","retry_after_s":3}"#;
        assert_eq!(
            error_message(StatusCode::BAD_REQUEST, escaped),
            "400 bad_request: label \"x\" is taken"
        );
        assert_eq!(
            error_message(
                StatusCode::UNAUTHORIZED,
                br#"{"error":"unauthorized","detail":""}"#
            ),
            "401 unauthorized"
        );
    }

    #[test]
    fn an_answer_that_is_not_the_farms_says_so() {
        for body in [
            &b"<html>bad gateway</html>"[..],
            b"",
            br#"{"message":"no"}"#,
        ] {
            assert_eq!(
                error_message(StatusCode::BAD_GATEWAY, body),
                "502 Bad Gateway: not an answer of the farm (is the farm's URL right?)"
            );
        }
    }

    #[test]
    fn an_unexpected_answer_names_the_path() {
        let err = parse::<relogin_farm::farm::AccountView>("/api/accounts/1", b"[]").unwrap_err();
        assert!(
            format!("{err:#}").starts_with("the farm's answer to /api/accounts/1 is not what"),
            "{err:#}"
        );
    }

    #[test]
    fn times_print_as_the_api_wrote_them() {
        for nanos in [0, 120_000_000, 123_456_000, 123_456_789] {
            let at = DateTime::from_timestamp(1_795_000_000, nanos).unwrap();
            let wire = serde_json::to_value(at).unwrap();
            assert_eq!(when(&at), wire.as_str().unwrap());
        }
    }

    #[test]
    fn the_default_url_is_loopback_for_a_wildcard_listen_and_https_with_tls() {
        let mut server = ServerConfig {
            listen: "0.0.0.0:8377".parse().unwrap(),
            ..Default::default()
        };
        assert_eq!(default_farm_url(&server), "http://127.0.0.1:8377");
        server.listen = "[::]:9000".parse().unwrap();
        server.tls = Some(relogin_farm::config::TlsFiles {
            cert_file: "c".into(),
            key_file: "k".into(),
        });
        assert_eq!(default_farm_url(&server), "https://[::1]:9000");
    }
}
