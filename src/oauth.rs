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

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope, TokenResponse, TokenUrl,
};
use serde::Deserialize;
use tokio::sync::RwLock;
use url::Url;

use crate::config::{Endpoints, ProviderConfig};
use crate::secret::Secret;

/// Assumed lifetime of an access token whose response has no `expires_in`.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Time limit for any single request to a provider.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

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
    /// The provider refused the grant: the code or refresh token is dead.
    #[error("the provider rejected the grant (invalid_grant){}", describe(.0))]
    InvalidGrant(Option<String>),
    /// The provider answered with another OAuth error.
    #[error("the provider answered {code}{}", describe(.description))]
    Provider {
        code: String,
        description: Option<String>,
    },
    /// Network failure, timeout, 5xx or an unreadable answer: worth retrying.
    #[error("could not reach the provider: {0}")]
    Transport(String),
}

fn describe(d: &Option<String>) -> String {
    d.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
}

impl OAuthError {
    /// True when retrying later may succeed with the same refresh token.
    pub fn is_transient(&self) -> bool {
        match self {
            OAuthError::Transport(_) | OAuthError::Discovery { .. } => true,
            OAuthError::Provider { code, .. } => {
                code == "temporarily_unavailable" || code == "server_error"
            }
            OAuthError::InvalidGrant(_) | OAuthError::Config { .. } => false,
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
}

/// A freshly issued token set, as the provider sent it.
#[derive(Debug)]
pub struct Grant {
    pub access_token: Secret,
    pub token_type: String,
    pub expires_in: Duration,
    pub refresh_token: Option<Secret>,
}

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
/// the farm tells apart: [`OAuthError::InvalidGrant`] (the refresh token or
/// code is dead: the account needs a login) against everything else
/// (transient: back off, keep the refresh token).
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
                })
            }
        }
    }

    fn client(&self, ep: &ResolvedEndpoints) -> Result<ProviderClient, OAuthError> {
        let bad = |what: &str, e: oauth2::url::ParseError| OAuthError::Config {
            provider: self.name().into(),
            reason: format!("{what}: {e}"),
        };
        let mut client = BasicClient::new(ClientId::new(self.config.client_id.clone()))
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
        if let Some(secret) = &self.config.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose().to_string()));
        }
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
        let ep = self.endpoints().await?;
        let resp = self
            .client(&ep)?
            .exchange_code(AuthorizationCode::new(code.expose().to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.expose().to_string()))
            .request_async(&self.http)
            .await;
        grant_from(resp)
    }

    pub async fn refresh(&self, refresh_token: &Secret) -> Result<Grant, OAuthError> {
        let ep = self.endpoints().await?;
        let token = RefreshToken::new(refresh_token.expose().to_string());
        let resp = self
            .client(&ep)?
            .exchange_refresh_token(&token)
            .request_async(&self.http)
            .await;
        grant_from(resp)
    }
}

type TokenResult<RE> = Result<
    oauth2::basic::BasicTokenResponse,
    RequestTokenError<RE, oauth2::basic::BasicErrorResponse>,
>;

fn grant_from<RE: std::error::Error + 'static>(resp: TokenResult<RE>) -> Result<Grant, OAuthError> {
    match resp {
        Ok(t) => Ok(Grant {
            access_token: Secret::new(t.access_token().secret().clone()),
            token_type: token_type_name(t.token_type()),
            expires_in: t.expires_in().unwrap_or(DEFAULT_TOKEN_LIFETIME),
            refresh_token: t.refresh_token().map(|r| Secret::new(r.secret().clone())),
        }),
        Err(RequestTokenError::ServerResponse(e)) => Err(match e.error() {
            BasicErrorResponseType::InvalidGrant => {
                OAuthError::InvalidGrant(e.error_description().cloned())
            }
            other => OAuthError::Provider {
                code: other.to_string(),
                description: e.error_description().cloned(),
            },
        }),
        // The messages of these variants carry no token: reqwest's errors
        // name the URL (no secrets in it for a token endpoint), and a parse
        // error's body is dropped here on purpose.
        Err(RequestTokenError::Request(e)) => Err(OAuthError::Transport(error_chain(&e))),
        Err(RequestTokenError::Parse(e, _body)) => Err(OAuthError::Transport(format!(
            "unreadable token response: {}",
            e.inner()
        ))),
        Err(RequestTokenError::Other(m)) => Err(OAuthError::Transport(m)),
    }
}

fn token_type_name(t: &oauth2::basic::BasicTokenType) -> String {
    match t {
        oauth2::basic::BasicTokenType::Bearer => "Bearer".into(),
        oauth2::basic::BasicTokenType::Mac => "MAC".into(),
        oauth2::basic::BasicTokenType::Extension(s) => s.clone(),
    }
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

/// What the provider sent back to the redirect URI.
#[derive(Debug)]
pub struct Callback {
    pub code: Secret,
    pub state: Secret,
    pub iss: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CallbackError {
    #[error("the provider refused the login: {0}")]
    Refused(String),
    #[error("the redirect URL has no {0} parameter")]
    Missing(&'static str),
    #[error("not a URL: {0}")]
    NotAUrl(String),
}

/// Parses the query of a redirect (`?code=&state=&iss=`, or `?error=`).
pub fn parse_callback(url: &Url) -> Result<Callback, CallbackError> {
    let mut code = None;
    let mut state = None;
    let mut iss = None;
    let mut error = None;
    let mut error_description = None;
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "code" => code = Some(Secret::new(v.into_owned())),
            "state" => state = Some(Secret::new(v.into_owned())),
            "iss" => iss = Some(v.into_owned()),
            "error" => error = Some(v.into_owned()),
            "error_description" => error_description = Some(v.into_owned()),
            _ => {}
        }
    }
    if let Some(e) = error {
        return Err(CallbackError::Refused(match error_description {
            Some(d) => format!("{e} ({d})"),
            None => e,
        }));
    }
    Ok(Callback {
        code: code.ok_or(CallbackError::Missing("code"))?,
        state: state.ok_or(CallbackError::Missing("state"))?,
        iss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_parsing() {
        let u = Url::parse("http://127.0.0.1:1/callback?code=abc&state=xyz&iss=http%3A%2F%2Fi")
            .unwrap();
        let c = parse_callback(&u).unwrap();
        assert_eq!(
            (c.code.expose(), c.state.expose(), c.iss.as_deref()),
            ("abc", "xyz", Some("http://i"))
        );
        let u = Url::parse("http://x/cb?error=access_denied&state=s").unwrap();
        assert_eq!(
            parse_callback(&u).unwrap_err(),
            CallbackError::Refused("access_denied".into())
        );
        let u = Url::parse("http://x/cb?state=s").unwrap();
        assert_eq!(
            parse_callback(&u).unwrap_err(),
            CallbackError::Missing("code")
        );
    }

    #[test]
    fn transient_classification() {
        assert!(OAuthError::Transport("x".into()).is_transient());
        assert!(!OAuthError::InvalidGrant(None).is_transient());
        assert!(OAuthError::Provider {
            code: "temporarily_unavailable".into(),
            description: None
        }
        .is_transient());
        assert!(!OAuthError::Provider {
            code: "invalid_client".into(),
            description: None
        }
        .is_transient());
    }
}
