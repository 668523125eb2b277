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
use crate::domain::provider::{
    classify, default_rules, BodyFormat, PollAnswer, Rule, TokenAnswer, Verdict,
};
use crate::secret::Secret;

pub use crate::domain::provider::{parse_callback, Callback, CallbackError};

/// Time limit for any single request to a provider.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Idle connections to a provider are dropped after this, below the
/// shortest keep-alive timeout servers commonly use (5 s).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
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
    /// Network failure or timeout before the request left: worth retrying.
    #[error("could not reach the provider: {0}")]
    Transport(String),
    /// The request went out but its answer was lost (the connection was cut,
    /// or timed out, after it was sent): the provider may have handled the
    /// grant, so a refresh token sent may be spent.
    #[error("the provider's answer was lost: {0}")]
    AnswerLost(String),
}

impl OAuthError {
    /// A failure on the way to or from the provider, worth another try
    /// later; not a verdict on the grant.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            OAuthError::Transport(_) | OAuthError::AnswerLost(_) | OAuthError::Unavailable { .. }
        )
    }
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
    /// `None` for a device-flow provider without one.
    pub authorize_url: Option<Url>,
    pub token_url: Url,
    pub device_authorization_url: Option<Url>,
    /// The OIDC userinfo endpoint, when discovery named one.
    pub userinfo_url: Option<Url>,
    /// RFC 7009 token revocation, when discovery named one.
    pub revocation_url: Option<Url>,
}

/// A started device authorization (RFC 8628 §3.2): what the person needs,
/// and the device code the farm polls with.
#[derive(Debug)]
pub struct DeviceStart {
    pub device_code: Secret,
    pub user_code: String,
    pub verification_uri: String,
    /// The page with the code already in it (RFC 8628 §3.3.1), if given.
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    pub interval: Option<u64>,
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

    /// An access token's lifetime when neither the answer nor the token says.
    fn default_ttl(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.config().default_token_ttl)
            .expect("a configured duration is at most 365 days")
    }

    /// Builds an authorization-code + PKCE (S256) authorize URL with a fresh state.
    fn authorize(&self) -> EndpointFuture<'_, AuthorizeRequest>;

    /// Exchanges a login's code; `state` is the login's (a JSON exchange
    /// carries it).
    fn exchange_code<'a>(
        &'a self,
        code: &'a Secret,
        state: &'a Secret,
        pkce_verifier: &'a Secret,
    ) -> EndpointFuture<'a, Grant>;

    /// Sends one refresh grant.
    fn refresh<'a>(&'a self, refresh_token: &'a Secret) -> EndpointFuture<'a, Grant>;

    /// Starts a device authorization (`login = "device"`).
    fn device_authorize(&self) -> EndpointFuture<'_, DeviceStart>;

    /// Polls the token endpoint once with a device code: the answer as the
    /// device flow reads it, and the tokens when there are some.
    fn poll_device<'a>(
        &'a self,
        device_code: &'a Secret,
    ) -> Pin<Box<dyn Future<Output = (PollAnswer, Option<Grant>)> + Send + 'a>>;
    /// What the userinfo endpoint (or `identity.url`) answers to
    /// `access_token`: the claims an identity is read from.
    fn userinfo<'a>(&'a self, access_token: &'a Secret) -> EndpointFuture<'a, serde_json::Value>;

    /// Revokes a refresh token (RFC 7009). `Ok(false)`: the provider has
    /// no revocation endpoint.
    fn revoke<'a>(&'a self, _refresh_token: &'a Secret) -> EndpointFuture<'a, bool> {
        Box::pin(std::future::ready(Ok(false)))
    }
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
        state: &'a Secret,
        pkce_verifier: &'a Secret,
    ) -> EndpointFuture<'a, Grant> {
        Box::pin(Provider::exchange_code(self, code, state, pkce_verifier))
    }

    fn refresh<'a>(&'a self, refresh_token: &'a Secret) -> EndpointFuture<'a, Grant> {
        Box::pin(Provider::refresh(self, refresh_token))
    }

    fn device_authorize(&self) -> EndpointFuture<'_, DeviceStart> {
        Box::pin(Provider::device_authorize(self))
    }

    fn poll_device<'a>(
        &'a self,
        device_code: &'a Secret,
    ) -> Pin<Box<dyn Future<Output = (PollAnswer, Option<Grant>)> + Send + 'a>> {
        Box::pin(async move {
            let params = [
                ("grant_type", DEVICE_GRANT),
                ("device_code", device_code.expose()),
            ];
            match self.token_verdict(self.config.token_request, &params).await {
                Ok(Verdict::Tokens(tokens)) => (PollAnswer::Tokens, Some(tokens)),
                Ok(verdict) => (PollAnswer::of(&verdict), None),
                Err(_) => (PollAnswer::Unreadable, None),
            }
        })
    }

    fn userinfo<'a>(&'a self, access_token: &'a Secret) -> EndpointFuture<'a, serde_json::Value> {
        Box::pin(Provider::userinfo(self, access_token))
    }

    fn revoke<'a>(&'a self, refresh_token: &'a Secret) -> EndpointFuture<'a, bool> {
        Box::pin(Provider::revoke(self, refresh_token))
    }
}

/// RFC 8628 §3.4's grant type.
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

#[derive(Deserialize)]
struct DeviceAnswer {
    device_code: String,
    user_code: String,
    // GitHub and Google's older endpoint say `verification_url`.
    #[serde(alias = "verification_url")]
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: u64,
    interval: Option<u64>,
}

/// One configured provider and its HTTP client.
pub struct Provider {
    pub config: ProviderConfig,
    http: reqwest::Client,
    /// The provider's own `token_errors`, then the built-in rules.
    rules: Vec<Rule>,
    resolved: RwLock<Option<Arc<ResolvedEndpoints>>>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: Option<Url>,
    token_endpoint: Url,
    device_authorization_endpoint: Option<Url>,
    userinfo_endpoint: Option<Url>,
    revocation_endpoint: Option<Url>,
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
        let mut http = reqwest::Client::builder()
            // Following redirects from a token endpoint is an SSRF risk (oauth2's advice).
            .redirect(reqwest::redirect::Policy::none())
            // Token requests are minutes apart: a kept connection is
            // mostly one the server is closing (node's keep-alive is 5 s),
            // and a request sent on it as it closes fails.
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        if let Some(proxy) = &config.egress_proxy {
            // The configuration checked it is an http(s) URL with a host,
            // which is all reqwest asks of a proxy.
            http = http
                .proxy(reqwest::Proxy::all(proxy.expose()).expect("egress_proxy is a checked URL"));
        }
        let http = http.build().expect("a rustls reqwest client always builds");
        let mut rules = config.token_errors.clone();
        rules.extend(default_rules());
        Provider {
            config,
            http,
            rules,
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
                authorize_url: Some(authorize_url.clone()),
                token_url: token_url.clone(),
                device_authorization_url: None,
                userinfo_url: None,
                revocation_url: None,
            }),
            Endpoints::Device {
                device_authorization_url,
                token_url,
            } => Ok(ResolvedEndpoints {
                issuer: None,
                authorize_url: None,
                token_url: token_url.clone(),
                device_authorization_url: Some(device_authorization_url.clone()),
                userinfo_url: None,
                revocation_url: None,
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
                    device_authorization_url: doc.device_authorization_endpoint,
                    userinfo_url: doc.userinfo_endpoint,
                    revocation_url: doc.revocation_endpoint,
                })
            }
        }
    }

    fn client(&self, ep: &ResolvedEndpoints) -> Result<ProviderClient, OAuthError> {
        let bad = |what: &str, e: oauth2::url::ParseError| OAuthError::Config {
            provider: self.name().into(),
            reason: format!("{what}: {e}"),
        };
        let authorize_url = ep
            .authorize_url
            .as_ref()
            .ok_or_else(|| OAuthError::Config {
                provider: self.name().into(),
                reason: "no authorize URL (a device-flow provider logs in with login = \"device\")"
                    .into(),
            })?;
        let client = BasicClient::new(ClientId::new(self.config.client_id.clone()))
            .set_auth_uri(
                AuthUrl::new(authorize_url.to_string()).map_err(|e| bad("authorize_url", e))?,
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

    /// Whether the provider answers (`doctor`): discovery when configured,
    /// then a GET of the token endpoint, through this provider's own client
    /// (its `egress_proxy`). Any HTTP answer counts: a token endpoint asked
    /// with GET usually refuses, but it is there. Returns the status.
    pub async fn probe(&self) -> Result<(Url, u16), OAuthError> {
        let ep = self.endpoints().await?;
        let resp = self
            .http
            .get(ep.token_url.clone())
            .send()
            .await
            .map_err(|e| OAuthError::Transport(error_chain(&e)))?;
        Ok((ep.token_url.clone(), resp.status().as_u16()))
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
        state: &Secret,
        pkce_verifier: &Secret,
    ) -> Result<Grant, OAuthError> {
        let format = self.config.token_request;
        let mut params = vec![
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
            ("redirect_uri", self.config.redirect_uri.as_str()),
            ("code_verifier", pkce_verifier.expose()),
        ];
        // JSON token endpoints take the login's state with the code.
        if format == BodyFormat::Json {
            params.push(("state", state.expose()));
        }
        self.token_request(format, &params).await
    }

    pub async fn refresh(&self, refresh_token: &Secret) -> Result<Grant, OAuthError> {
        let scope = self.config.scopes.join(" ");
        let mut params = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
        ];
        if self.config.refresh_scope && !scope.is_empty() {
            params.push(("scope", &scope));
        }
        let format = self
            .config
            .refresh_request
            .unwrap_or(self.config.token_request);
        self.token_request(format, &params).await
    }

    /// POSTs `params` and the provider's `token_params` to the token
    /// endpoint (form-encoded as RFC 6749 §4.1.3/§6 says, or as a JSON
    /// object), with its `token_headers`, authenticating the client as
    /// RFC 6749 §2.3.1 says (HTTP Basic with a secret, `client_id` in the
    /// body without), and classifies the answer (`domain::provider`).
    async fn token_request(
        &self,
        format: BodyFormat,
        params: &[(&str, &str)],
    ) -> Result<Grant, OAuthError> {
        match self.token_verdict(format, params).await? {
            Verdict::Tokens(tokens) => Ok(tokens),
            Verdict::Dead { code, description } => Err(OAuthError::Dead { code, description }),
            Verdict::Transient {
                reason, retry_at, ..
            } => Err(OAuthError::Unavailable { reason, retry_at }),
        }
    }

    /// Starts a device authorization at the provider's endpoint (RFC 8628
    /// §3.1: `client_id` and `scope`, form-encoded).
    pub async fn device_authorize(&self) -> Result<DeviceStart, OAuthError> {
        let ep = self.endpoints().await?;
        let Some(url) = ep.device_authorization_url.clone() else {
            return Err(OAuthError::Config {
                provider: self.name().into(),
                reason: "no device authorization endpoint (device_authorization_url, or the issuer's discovery document)".into(),
            });
        };
        let scope = self.config.scopes.join(" ");
        let mut form = vec![("client_id", self.config.client_id.as_str())];
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let mut req = self
            .http
            .post(url)
            .header(reqwest::header::ACCEPT, "application/json");
        for (name, value) in &self.config.token_headers {
            req = req.header(name, value);
        }
        let resp = req
            .form(&form)
            .send()
            .await
            .map_err(|e| OAuthError::Transport(error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(OAuthError::Unavailable {
                reason: format!("HTTP {status} from the device authorization endpoint"),
                retry_at: None,
            });
        }
        let answer: DeviceAnswer = resp.json().await.map_err(|e| OAuthError::Unavailable {
            reason: format!("an unreadable device authorization answer: {e}"),
            retry_at: None,
        })?;
        Ok(DeviceStart {
            device_code: Secret::new(answer.device_code),
            user_code: answer.user_code,
            verification_uri: answer.verification_uri,
            verification_uri_complete: answer.verification_uri_complete,
            expires_in: answer.expires_in,
            interval: answer.interval,
        })
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

    /// Revokes a refresh token at the discovered revocation endpoint (RFC
    /// 7009 §2.1: form-encoded `token` and `token_type_hint`, the client
    /// authenticated as at the token endpoint). `Ok(false)`: none known.
    pub async fn revoke(&self, refresh_token: &Secret) -> Result<bool, OAuthError> {
        let ep = self.endpoints().await?;
        let Some(url) = ep.revocation_url.clone() else {
            return Ok(false);
        };
        let mut form = vec![
            ("token", refresh_token.expose()),
            ("token_type_hint", "refresh_token"),
        ];
        let req = self.authenticate(self.http.post(url), &mut form);
        let resp = req
            .form(&form)
            .send()
            .await
            .map_err(|e| OAuthError::Transport(error_chain(&e)))?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            s => Err(OAuthError::Unavailable {
                reason: format!("HTTP {s} from the revocation endpoint"),
                retry_at: None,
            }),
        }
    }

    /// Authenticates the client as RFC 6749 §2.3.1 says: HTTP Basic
    /// (both parts form-encoded) with a secret, `client_id` in the body
    /// without.
    fn authenticate<'f>(
        &'f self,
        req: reqwest::RequestBuilder,
        form: &mut Vec<(&'f str, &'f str)>,
    ) -> reqwest::RequestBuilder {
        match &self.config.client_secret {
            Some(secret) => {
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                req.basic_auth(enc(&self.config.client_id), Some(enc(secret.expose())))
            }
            None => {
                form.push(("client_id", &self.config.client_id));
                req
            }
        }
    }

    /// Sends one token request and classifies its answer.
    async fn token_verdict(
        &self,
        format: BodyFormat,
        params: &[(&str, &str)],
    ) -> Result<Verdict, OAuthError> {
        let ep = self.endpoints().await?;
        let mut form: Vec<(&str, &str)> = params.to_vec();
        form.extend(
            self.config
                .token_params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let mut req = self
            .http
            .post(ep.token_url.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        for (name, value) in &self.config.token_headers {
            req = req.header(name, value);
        }
        req = self.authenticate(req, &mut form);
        // The messages of transport errors carry no token: reqwest's errors
        // name the URL (no secrets in it for a token endpoint).
        // Only a failed connect proves the grant never reached the provider.
        let transport = |e: reqwest::Error| {
            if e.is_connect() {
                OAuthError::Transport(error_chain(&e))
            } else {
                OAuthError::AnswerLost(error_chain(&e))
            }
        };
        let req = match format {
            BodyFormat::Form => req.form(&form),
            BodyFormat::Json => {
                let object: serde_json::Map<String, serde_json::Value> = form
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
                    .collect();
                req.json(&object)
            }
        };
        let mut resp = req.send().await.map_err(transport)?;
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
        Ok(classify(
            &answer,
            &self.rules,
            Utc::now(),
            MAX_TOKEN_RETRY_AFTER,
        ))
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
