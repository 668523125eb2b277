//! The OAuth 2.0 / OIDC edge: discovery, the authorize URL (PKCE S256 and
//! state), the code exchange and the refresh grant. All network I/O with
//! providers happens here.
//!
//! The farm talks to a provider through [`TokenEndpoint`], which
//! [`Provider`] implements over HTTP; unit tests of the refresh protocol
//! and the scheduler put a scripted endpoint in its place.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use oauth2::basic::BasicClient;
use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl, Scope, TokenUrl};
use serde::Deserialize;
use tokio::sync::RwLock;
use url::Url;

use crate::config::{Endpoints, ProviderConfig};
use crate::domain::provider::{classify, default_rules, TokenAnswer, Verdict};
use crate::secret::Secret;

pub use crate::domain::provider::{parse_callback, Callback, CallbackError};

/// Time limit for any single request to a provider.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest token-endpoint answer read; a token set is a few KiB.
const MAX_TOKEN_ANSWER_BYTES: usize = 1 << 20;
/// The longest wait a provider's `Retry-After` on its token endpoint is
/// honoured for: past it the farm tries again (the account's access token
/// may be running out meanwhile).
const MAX_TOKEN_RETRY_AFTER: chrono::Duration = chrono::Duration::hours(1);

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("provider {provider}: discovery at {url} failed: {reason}")]
    Discovery {
        provider: String,
        url: String,
        reason: String,
    },
    #[error("provider {provider}: {reason}")]
    Config { provider: String, reason: String },
    /// The provider refused the grant: the code or refresh token is dead
    /// (`invalid_grant`, or a provider's own code for it, such as
    /// `refresh_token_reused`).
    #[error("the provider rejected the grant ({code}){}", describe(.description))]
    Dead {
        code: String,
        description: Option<String>,
    },
    /// The provider answered but not with tokens, and the grant may still
    /// work later (429, 5xx, a challenge page, another OAuth error); not
    /// before `retry_at` when it said when.
    #[error("the provider answered {reason}")]
    Unavailable {
        reason: String,
        retry_at: Option<DateTime<Utc>>,
    },
    /// Network failure or timeout: worth retrying.
    #[error("could not reach the provider: {0}")]
    Transport(String),
}

fn describe(d: &Option<String>) -> String {
    d.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
}

impl OAuthError {
    /// When the provider said to try again, if it did.
    pub fn retry_at(&self) -> Option<DateTime<Utc>> {
        match self {
            OAuthError::Unavailable { retry_at, .. } => *retry_at,
            _ => None,
        }
    }
}

/// Endpoints after discovery.
#[derive(Clone, Debug)]
pub struct ResolvedEndpoints {
    /// The issuer, when known: checked against the `iss` redirect parameter.
    pub issuer: Option<String>,
    pub authorize_url: Url,
    pub token_url: Url,
    /// The OIDC userinfo endpoint, when discovery named one.
    pub userinfo_url: Option<Url>,
}

/// A freshly issued token set, as the provider sent it.
pub type Grant = crate::domain::provider::TokenSet;

/// A login in progress: what must come back on the redirect.
#[derive(Debug)]
pub struct AuthorizeRequest {
    pub url: Url,
    pub state: Secret,
    pub pkce_verifier: Secret,
    pub issuer: Option<String>,
}

/// A boxed future borrowing the endpoint (the trait is used as `dyn`).
pub type EndpointFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, OAuthError>> + Send + 'a>>;

/// What the farm needs from a provider: its configuration, the authorize
/// URL, the code exchange and the refresh grant. Errors keep the classes
/// the farm tells apart: [`OAuthError::Dead`] (the refresh token or code
/// is dead: the account needs a login) against everything else (transient:
/// back off, keep the refresh token).
pub trait TokenEndpoint: Send + Sync {
    fn config(&self) -> &ProviderConfig;

    /// Builds an authorization-code + PKCE (S256) authorize URL with a fresh state.
    fn authorize(&self) -> EndpointFuture<'_, AuthorizeRequest>;

    fn exchange_code<'a>(
        &'a self,
        code: &'a Secret,
        pkce_verifier: &'a Secret,
    ) -> EndpointFuture<'a, Grant>;

    /// Sends one refresh grant.
    fn refresh<'a>(&'a self, refresh_token: &'a Secret) -> EndpointFuture<'a, Grant>;

    /// What the userinfo endpoint (or `identity.url`) answers to
    /// `access_token`: the claims an identity is read from.
    fn userinfo<'a>(&'a self, access_token: &'a Secret) -> EndpointFuture<'a, serde_json::Value>;
}

impl TokenEndpoint for Provider {
    fn config(&self) -> &ProviderConfig {
        &self.config
    }

    fn authorize(&self) -> EndpointFuture<'_, AuthorizeRequest> {
        Box::pin(Provider::authorize(self))
    }

    fn exchange_code<'a>(
        &'a self,
        code: &'a Secret,
        pkce_verifier: &'a Secret,
    ) -> EndpointFuture<'a, Grant> {
        Box::pin(Provider::exchange_code(self, code, pkce_verifier))
    }

    fn refresh<'a>(&'a self, refresh_token: &'a Secret) -> EndpointFuture<'a, Grant> {
        Box::pin(Provider::refresh(self, refresh_token))
    }

    fn userinfo<'a>(&'a self, access_token: &'a Secret) -> EndpointFuture<'a, serde_json::Value> {
        Box::pin(Provider::userinfo(self, access_token))
    }
}

/// One configured provider and its HTTP client.
pub struct Provider {
    pub config: ProviderConfig,
    http: reqwest::Client,
    resolved: RwLock<Option<Arc<ResolvedEndpoints>>>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: Url,
    token_endpoint: Url,
    userinfo_endpoint: Option<Url>,
}

/// An oauth2 client with the authorize and token endpoints set (the only
/// ones the farm uses).
type ProviderClient = oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    oauth2::basic::BasicTokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

impl Provider {
    pub fn new(config: ProviderConfig) -> Self {
        let http = reqwest::Client::builder()
            // Following redirects from a token endpoint is an SSRF risk (oauth2's advice).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("a rustls reqwest client always builds");
        Provider {
            config,
            http,
            resolved: RwLock::new(None),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The endpoints, discovering them on first use. A failed discovery is
    /// retried on the next call (the provider may just be down at boot).
    pub async fn endpoints(&self) -> Result<Arc<ResolvedEndpoints>, OAuthError> {
        if let Some(r) = self.resolved.read().await.clone() {
            return Ok(r);
        }
        let resolved = Arc::new(self.resolve().await?);
        *self.resolved.write().await = Some(resolved.clone());
        Ok(resolved)
    }

    async fn resolve(&self) -> Result<ResolvedEndpoints, OAuthError> {
        match &self.config.endpoints {
            Endpoints::Manual {
                authorize_url,
                token_url,
                ..
            } => Ok(ResolvedEndpoints {
                issuer: None,
                authorize_url: authorize_url.clone(),
                token_url: token_url.clone(),
                userinfo_url: None,
            }),
            Endpoints::Discovery { issuer } => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.as_str().trim_end_matches('/')
                );
                let fail = |reason: String| OAuthError::Discovery {
                    provider: self.name().into(),
                    url: url.clone(),
                    reason,
                };
                let resp = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                if !resp.status().is_success() {
                    return Err(fail(format!("HTTP {}", resp.status())));
                }
                let doc: Discovery = resp.json().await.map_err(|e| fail(e.to_string()))?;
                if doc.issuer.trim_end_matches('/') != issuer.as_str().trim_end_matches('/') {
                    return Err(fail(format!(
                        "the document names issuer {:?}, not the configured one",
                        doc.issuer
                    )));
                }
                Ok(ResolvedEndpoints {
                    issuer: Some(doc.issuer),
                    authorize_url: doc.authorization_endpoint,
                    token_url: doc.token_endpoint,
                    userinfo_url: doc.userinfo_endpoint,
                })
            }
        }
    }

    fn client(&self, ep: &ResolvedEndpoints) -> Result<ProviderClient, OAuthError> {
        let bad = |what: &str, e: oauth2::url::ParseError| OAuthError::Config {
            provider: self.name().into(),
            reason: format!("{what}: {e}"),
        };
        let client = BasicClient::new(ClientId::new(self.config.client_id.clone()))
            .set_auth_uri(
                AuthUrl::new(ep.authorize_url.to_string()).map_err(|e| bad("authorize_url", e))?,
            )
            .set_token_uri(
                TokenUrl::new(ep.token_url.to_string()).map_err(|e| bad("token_url", e))?,
            )
            .set_redirect_uri(
                RedirectUrl::new(self.config.redirect_uri.to_string())
                    .map_err(|e| bad("redirect_uri", e))?,
            );
        Ok(client)
    }

    /// Builds an authorization-code + PKCE (S256) authorize URL with a fresh state.
    pub async fn authorize(&self) -> Result<AuthorizeRequest, OAuthError> {
        let ep = self.endpoints().await?;
        let client = self.client(&ep)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(self.config.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge);
        for (k, v) in &self.config.extra_authorize_params {
            req = req.add_extra_param(k.clone(), v.clone());
        }
        let (url, state) = req.url();
        Ok(AuthorizeRequest {
            url,
            state: Secret::new(state.secret().clone()),
            pkce_verifier: Secret::new(verifier.secret().clone()),
            issuer: ep.issuer.clone(),
        })
    }

    pub async fn exchange_code(
        &self,
        code: &Secret,
        pkce_verifier: &Secret,
    ) -> Result<Grant, OAuthError> {
        self.token_request(&[
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
            ("redirect_uri", self.config.redirect_uri.as_str()),
            ("code_verifier", pkce_verifier.expose()),
        ])
        .await
    }

    pub async fn refresh(&self, refresh_token: &Secret) -> Result<Grant, OAuthError> {
        self.token_request(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
        ])
        .await
    }

    /// GETs the userinfo endpoint (`identity.url`, else discovery's) with
    /// `access_token`; the answer must be a JSON object, at most
    /// `MAX_TOKEN_ANSWER_BYTES`.
    pub async fn userinfo(&self, access_token: &Secret) -> Result<serde_json::Value, OAuthError> {
        let configured = self.config.identity.as_ref().and_then(|i| i.url.clone());
        let url = match configured {
            Some(url) => url,
            None => self
                .endpoints()
                .await?
                .userinfo_url
                .clone()
                .ok_or_else(|| OAuthError::Config {
                    provider: self.name().into(),
                    reason: "no userinfo endpoint in the discovery document: set identity.url"
                        .into(),
                })?,
        };
        let transport = |e: reqwest::Error| OAuthError::Transport(error_chain(&e));
        let mut resp = self
            .http
            .get(url)
            .bearer_auth(access_token.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let unavailable = |reason: String| OAuthError::Unavailable {
            reason,
            retry_at: None,
        };
        if !status.is_success() {
            return Err(unavailable(format!(
                "HTTP {status} from the userinfo endpoint"
            )));
        }
        let Some(body) = read_capped(&mut resp).await? else {
            return Err(unavailable(format!(
                "a userinfo answer over {MAX_TOKEN_ANSWER_BYTES} bytes"
            )));
        };
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v) if v.is_object() => Ok(v),
            _ => Err(unavailable(
                "a userinfo answer that is not a JSON object".into(),
            )),
        }
    }

    /// POSTs `params` (form-encoded, RFC 6749 §4.1.3/§6) to the token
    /// endpoint, authenticating the client as RFC 6749 §2.3.1 says (HTTP
    /// Basic with a secret, `client_id` in the body without), and
    /// classifies the answer (`domain::provider`).
    async fn token_request(&self, params: &[(&str, &str)]) -> Result<Grant, OAuthError> {
        let ep = self.endpoints().await?;
        let mut form: Vec<(&str, &str)> = params.to_vec();
        let mut req = self
            .http
            .post(ep.token_url.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        match &self.config.client_secret {
            Some(secret) => {
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                req = req.basic_auth(enc(&self.config.client_id), Some(enc(secret.expose())));
            }
            None => form.push(("client_id", &self.config.client_id)),
        }
        // The messages of transport errors carry no token: reqwest's errors
        // name the URL (no secrets in it for a token endpoint).
        let transport = |e: reqwest::Error| OAuthError::Transport(error_chain(&e));
        let mut resp = req.form(&form).send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let Some(body) = read_capped(&mut resp).await? else {
            return Err(OAuthError::Unavailable {
                reason: format!("HTTP {status} with an answer over {MAX_TOKEN_ANSWER_BYTES} bytes"),
                retry_at: None,
            });
        };
        let answer = TokenAnswer {
            status,
            headers: &headers,
            body: &body,
        };
        // The time only places a `Retry-After`; the farm waits by its own clock.
        match classify(&answer, &default_rules(), Utc::now(), MAX_TOKEN_RETRY_AFTER) {
            Verdict::Tokens(tokens) => Ok(tokens),
            Verdict::Dead { code, description } => Err(OAuthError::Dead { code, description }),
            Verdict::Transient {
                reason, retry_at, ..
            } => Err(OAuthError::Unavailable { reason, retry_at }),
        }
    }
}

/// An answer's body, or `None` past `MAX_TOKEN_ANSWER_BYTES` (not read
/// further).
async fn read_capped(resp: &mut reqwest::Response) -> Result<Option<Vec<u8>>, OAuthError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| OAuthError::Transport(error_chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_TOKEN_ANSWER_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
