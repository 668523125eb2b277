//! A provider emulator with the quirks real providers have: a hyper 1
//! server on a free loopback port speaking OAuth 2.0 — authorization code
//! with PKCE S256 behind a plain HTML login form, the refresh grant,
//! introspection (RFC 7662), a userinfo endpoint (`GET /userinfo` with the
//! access token: `sub`, `email`, `preferred_username`, and GitHub's numeric
//! `id` and `login`), the device authorization grant (RFC 8628) and an OIDC
//! discovery document (`/.well-known/openid-configuration`)
//! — for two users, `alice` and `bob` (password `<user>-password`, as the
//! OIDC provider of `tests/oidc`).
//!
//! Its tokens are JWTs (HMAC-signed with a key of its own) carrying `sub`,
//! `email` and an OpenAI-style nested claim
//! (`{"https://api.openai.com/auth": {"chatgpt_account_id": …}}`); the
//! code exchange also returns an `id_token`.
//!
//! [`Quirks`] switch the bends on, when it starts or at any time through
//! [`QuirkProvider::set`] or `POST /control` (a JSON object of the fields to
//! change). It records every token-endpoint request ([`Seen`]) so tests can
//! check what the farm sent.
//!
//! Also compiled into `examples/quirk_provider.rs`, so it uses nothing of
//! the e2e harness.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The users it knows: name, password, stable subject, email, account id.
pub const USERS: [(&str, &str, &str, &str, &str); 2] = [
    (
        "alice",
        "alice-password",
        "sub-alice",
        "alice@example.test",
        "acct-alice",
    ),
    (
        "bob",
        "bob-password",
        "sub-bob",
        "bob@example.test",
        "acct-bob",
    ),
];

/// The claim under which the account id sits (OpenAI's shape).
pub const ACCOUNT_CLAIM: &str = "https://api.openai.com/auth";

/// The switchable bends. Counters (`rate_limit`, `challenge`) count down
/// with each token-endpoint request they answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Quirks {
    /// The token endpoint takes only JSON bodies; a form body gets 400.
    pub json_only: bool,
    /// After the login, show `code#state` on a page to paste instead of
    /// redirecting to the `redirect_uri`.
    pub paste_page: bool,
    /// Token answers leave `expires_in` out (the access token's `exp` says).
    pub omit_expires_in: bool,
    /// Access tokens are opaque strings, not JWTs (with `omit_expires_in`,
    /// nothing says their lifetime).
    pub opaque_access_tokens: bool,
    /// Refresh answers carry no `refresh_token`; the one presented stays
    /// valid (it does not rotate).
    pub omit_refresh_token: bool,
    /// Refresh tokens do not rotate: the same one comes back and stays valid.
    pub static_refresh_tokens: bool,
    /// A spent (rotated) refresh token presented again revokes the grant.
    pub reuse_detection: bool,
    /// The next this many token requests get 429.
    pub rate_limit: u32,
    /// `Retry-After` on those 429s (seconds or an HTTP date).
    pub retry_after: Option<String>,
    /// `Retry-After-Ms` on those 429s.
    pub retry_after_ms: Option<u64>,
    /// The next this many token requests get a Cloudflare-style 403 HTML
    /// challenge page.
    pub challenge: u32,
    /// Refresh grants get 401 `{"error": {"code": <this>}}` (such as
    /// `refresh_token_reused`) while set.
    pub dead: Option<String>,
    /// Token answers carry a `padding` field of this many bytes (for the
    /// farm's limit on what it reads).
    pub pad_bytes: usize,
    /// Access-token lifetime, seconds.
    pub access_ttl: u64,
    /// The device flow's polling interval and user-code lifetime, seconds.
    pub device_interval: u64,
    pub device_expires_in: u64,
    /// Token answers (after the grant is processed: a refresh token is
    /// already spent) wait this long, in milliseconds.
    pub token_delay_ms: u64,
    /// The token endpoint answers as GitHub's: form-encoded unless the
    /// request's `Accept` asks for JSON, and errors with HTTP 200.
    pub github_answers: bool,
    /// Device authorizations name this as their `verification_uri` (and
    /// send no `verification_uri_complete`) instead of the emulator's page.
    pub verification_uri: Option<String>,
}

impl Default for Quirks {
    fn default() -> Self {
        Quirks {
            json_only: false,
            paste_page: false,
            omit_expires_in: false,
            opaque_access_tokens: false,
            omit_refresh_token: false,
            static_refresh_tokens: false,
            reuse_detection: true,
            rate_limit: 0,
            retry_after: None,
            retry_after_ms: None,
            challenge: 0,
            dead: None,
            pad_bytes: 0,
            access_ttl: 3600,
            device_interval: 5,
            device_expires_in: 600,
            token_delay_ms: 0,
            github_answers: false,
            verification_uri: None,
        }
    }
}

/// One token-endpoint (or device-authorization, introspection) request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
    /// Names lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body's parameters, form or JSON (values as text).
    pub params: Vec<(String, String)>,
    /// What it answered.
    pub status: u16,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl Seen {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn grant_type(&self) -> Option<&str> {
        self.param("grant_type")
    }
}

/// A login form shown, waiting for its credentials.
struct Interaction {
    client_id: String,
    redirect_uri: String,
    state: String,
    challenge: String,
}

struct Code {
    user: usize,
    client_id: String,
    redirect_uri: String,
    challenge: String,
    used: bool,
}

struct Grant {
    user: usize,
    client_id: String,
    revoked: bool,
}

struct RefreshToken {
    grant: u64,
    spent: bool,
}

struct AccessToken {
    grant: u64,
    exp: u64,
}

struct Device {
    client_id: String,
    device_code: String,
    expires_at: u64,
    interval: u64,
    last_poll: Option<u64>,
    /// `Some(Ok(user))` approved, `Some(Err(()))` denied.
    decision: Option<Result<usize, ()>>,
    done: bool,
}

#[derive(Default)]
struct Db {
    interactions: HashMap<String, Interaction>,
    codes: HashMap<String, Code>,
    grants: HashMap<u64, Grant>,
    refresh_tokens: HashMap<String, RefreshToken>,
    access_tokens: HashMap<String, AccessToken>,
    /// By user code.
    devices: HashMap<String, Device>,
    next_grant: u64,
    refresh_grants: HashMap<String, u64>,
    revoked: u64,
}

struct State {
    url: String,
    key: [u8; 32],
    quirks: Mutex<Quirks>,
    db: Mutex<Db>,
    seen: Mutex<Vec<Seen>>,
}

/// A running emulator; stops when dropped.
pub struct QuirkProvider {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl QuirkProvider {
    /// Starts on a free loopback port with `quirks`.
    pub fn start(quirks: Quirks) -> QuirkProvider {
        QuirkProvider::start_on("127.0.0.1:0".parse().expect("an address"), quirks)
    }

    pub fn start_on(addr: SocketAddr, quirks: Quirks) -> QuirkProvider {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime for the provider emulator");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .expect("bind the provider emulator");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let state = Arc::new(State {
            url: url.clone(),
            key: rand::random(),
            quirks: Mutex::new(quirks),
            db: Mutex::default(),
            seen: Mutex::default(),
        });
        let shared = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        QuirkProvider {
            url,
            state,
            runtime: Some(runtime),
        }
    }

    pub fn authorize_url(&self) -> String {
        format!("{}/authorize", self.url)
    }
    pub fn token_url(&self) -> String {
        format!("{}/token", self.url)
    }
    pub fn device_authorization_url(&self) -> String {
        format!("{}/device/code", self.url)
    }
    pub fn userinfo_url(&self) -> String {
        format!("{}/userinfo", self.url)
    }

    /// Signs `user` in as a browser would: opens `authorize_url` (the
    /// farm's, or a test's), submits the login form with the user's
    /// password. Returns the status and the redirect's `Location` (the
    /// redirect URL with `code` and `state`), or the page (the paste page,
    /// or the form again with an error).
    pub fn sign_in(authorize_url: &str, user: &str) -> (u16, String) {
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .expect("an HTTP client");
        let form = http
            .get(authorize_url)
            .send()
            .and_then(|r| r.text())
            .expect("the login form");
        let marker = "name=\"interaction\" value=\"";
        let start = form
            .find(marker)
            .unwrap_or_else(|| panic!("no login form: {form}"))
            + marker.len();
        let interaction = &form[start..][..form[start..].find('"').expect("a closing quote")];
        let login = url::Url::parse(authorize_url)
            .and_then(|u| u.join("/login"))
            .expect("a URL");
        let resp = http
            .post(login)
            .form(&[
                ("interaction", interaction),
                ("username", user),
                ("password", &format!("{user}-password")),
            ])
            .send()
            .expect("submit the login form");
        let status = resp.status().as_u16();
        match resp.headers().get("location") {
            Some(l) => (status, l.to_str().expect("an ASCII location").to_string()),
            None => (status, resp.text().unwrap_or_default()),
        }
    }

    /// Changes the quirks (the next request sees the change).
    pub fn set(&self, change: impl FnOnce(&mut Quirks)) {
        change(&mut self.state.quirks.lock().unwrap());
    }

    pub fn quirks(&self) -> Quirks {
        self.state.quirks.lock().unwrap().clone()
    }

    /// Every token-endpoint, device, introspection and userinfo request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Refresh grants answered with tokens, for `user`.
    pub fn refresh_grants(&self, user: &str) -> u64 {
        let db = self.state.db.lock().unwrap();
        db.refresh_grants.get(user).copied().unwrap_or(0)
    }

    /// Grants revoked by reuse detection.
    pub fn grants_revoked(&self) -> u64 {
        self.state.db.lock().unwrap().revoked
    }

    /// RFC 7662 introspection of `token`, as `POST /introspect` answers.
    pub fn introspect(&self, token: &str) -> Value {
        introspect(&self.state, token)
    }

    /// Blocks the calling thread for ever (the example's main).
    #[allow(dead_code)] // examples/quirk_provider.rs
    pub fn serve_forever(self) -> ! {
        loop {
            std::thread::park();
        }
    }
}

impl Drop for QuirkProvider {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_token(prefix: &str) -> String {
    let bytes: [u8; 18] = rand::random();
    format!("{prefix}-{}", b64(&bytes))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn respond(status: u16, headers: &[(&str, &str)], body: String) -> Response<Body> {
    let mut b = Response::builder().status(status);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
        .expect("a valid response")
}

fn json_answer(status: u16, body: Value) -> Response<Body> {
    respond(
        status,
        &[
            ("content-type", "application/json"),
            ("cache-control", "no-store"),
        ],
        body.to_string(),
    )
}

fn oauth_error(status: u16, code: &str, description: &str) -> Response<Body> {
    json_answer(
        status,
        json!({"error": code, "error_description": description}),
    )
}

fn html(status: u16, body: String) -> Response<Body> {
    respond(
        status,
        &[("content-type", "text/html; charset=utf-8")],
        body,
    )
}

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn query_params(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn get<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A body's parameters: JSON object (values as text) or form.
fn body_params(content_type: Option<&str>, body: &[u8]) -> Vec<(String, String)> {
    if content_type.is_some_and(|c| c.starts_with("application/json")) {
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
            return Vec::new();
        };
        return map
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect();
    }
    url::form_urlencoded::parse(body).into_owned().collect()
}

async fn answer(state: &State, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = query_params(req.uri().query());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let header = |name: &str| get(&headers, name).map(str::to_owned);
    let content_type = header("content-type");
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let params = body_params(content_type.as_deref(), &body);
    let at = std::time::Instant::now();
    let resp = match (method.as_str(), path.as_str()) {
        ("GET", "/authorize") => authorize(state, &query),
        ("POST", "/login") => login(state, &params),
        ("POST", "/token") => {
            let resp = token(state, content_type.as_deref(), &headers, &params);
            let (delay, github) = {
                let q = state.quirks.lock().unwrap();
                (q.token_delay_ms, q.github_answers)
            };
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            if github {
                let accepts_json = header("accept").is_some_and(|a| a.contains("application/json"));
                github_style(resp, accepts_json).await
            } else {
                resp
            }
        }
        ("POST", "/introspect") => json_answer(
            200,
            introspect(state, get(&params, "token").unwrap_or_default()),
        ),
        ("POST", "/device/code") => device_authorization(state, &params),
        ("GET", "/userinfo") => userinfo(state, header("authorization").as_deref()),
        ("GET", "/device") => device_page(get(&query, "user_code").unwrap_or_default(), None),
        ("POST", "/device") => device_decide(state, &params),
        ("GET", "/.well-known/openid-configuration") => json_answer(
            200,
            json!({
                "issuer": state.url,
                "authorization_endpoint": format!("{}/authorize", state.url),
                "token_endpoint": format!("{}/token", state.url),
                "userinfo_endpoint": format!("{}/userinfo", state.url),
                "device_authorization_endpoint": format!("{}/device/code", state.url),
                "introspection_endpoint": format!("{}/introspect", state.url),
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
            }),
        ),
        ("GET", "/control") => json_answer(200, json!(state.quirks.lock().unwrap().clone())),
        ("POST", "/control") => control(state, &body),
        _ => oauth_error(404, "not_found", "no such endpoint"),
    };
    if ["/token", "/introspect", "/device/code", "/userinfo"].contains(&path.as_str()) {
        state.seen.lock().unwrap().push(Seen {
            path,
            user_agent: header("user-agent"),
            content_type,
            headers,
            params,
            status: resp.status().as_u16(),
            at,
        });
    }
    resp
}

/// A token answer as GitHub sends it: an error with HTTP 200, and the body
/// form-encoded unless JSON was asked for.
async fn github_style(resp: Response<Body>, accepts_json: bool) -> Response<Body> {
    let body = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&body) else {
        return respond(200, &[], String::from_utf8_lossy(&body).into_owned());
    };
    if accepts_json {
        return json_answer(200, Value::Object(map));
    }
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in map {
        match v {
            Value::String(s) => form.append_pair(&k, &s),
            other => form.append_pair(&k, &other.to_string()),
        };
    }
    respond(
        200,
        &[("content-type", "application/x-www-form-urlencoded")],
        form.finish(),
    )
}

fn control(state: &State, body: &[u8]) -> Response<Body> {
    let Ok(Value::Object(change)) = serde_json::from_slice::<Value>(body) else {
        return oauth_error(400, "invalid_request", "a JSON object of quirks");
    };
    let mut quirks = state.quirks.lock().unwrap();
    let mut merged = json!(*quirks);
    for (k, v) in change {
        merged[k] = v;
    }
    match serde_json::from_value(merged) {
        Ok(q) => {
            *quirks = q;
            json_answer(200, json!(*quirks))
        }
        Err(e) => oauth_error(400, "invalid_request", &e.to_string()),
    }
}

fn login_form(action: &str, hidden: &[(&str, &str)], error: Option<&str>, extra: &str) -> String {
    let hidden: String = hidden
        .iter()
        .map(|(n, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                esc(n),
                esc(v)
            )
        })
        .collect();
    let error = error
        .map(|e| format!("<p id=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    format!(
        "<!DOCTYPE html><html><head><title>Sign in</title></head><body><h1>Sign in</h1>{error}\
         <form method=\"post\" action=\"{action}\">{hidden}{extra}\
         <label>Username <input id=\"username\" name=\"username\" autocomplete=\"username\"></label>\
         <label>Password <input id=\"password\" name=\"password\" type=\"password\"></label>\
         <button id=\"submit\" type=\"submit\" name=\"action\" value=\"allow\">Sign in</button>\
         </form></body></html>"
    )
}

fn authorize(state: &State, q: &[(String, String)]) -> Response<Body> {
    let (Some(client_id), Some(redirect_uri), Some(st), Some(challenge)) = (
        get(q, "client_id"),
        get(q, "redirect_uri"),
        get(q, "state"),
        get(q, "code_challenge"),
    ) else {
        return html(
            400,
            "<p id=\"error\">client_id, redirect_uri, state and code_challenge are required</p>"
                .into(),
        );
    };
    if get(q, "response_type") != Some("code") || get(q, "code_challenge_method") != Some("S256") {
        return html(
            400,
            "<p id=\"error\">response_type=code with PKCE S256 only</p>".into(),
        );
    }
    let id = random_token("int");
    state.db.lock().unwrap().interactions.insert(
        id.clone(),
        Interaction {
            client_id: client_id.into(),
            redirect_uri: redirect_uri.into(),
            state: st.into(),
            challenge: challenge.into(),
        },
    );
    html(200, login_form("/login", &[("interaction", &id)], None, ""))
}

fn user_by_login(params: &[(String, String)]) -> Option<usize> {
    let (user, password) = (get(params, "username")?, get(params, "password")?);
    USERS
        .iter()
        .position(|(u, p, ..)| *u == user && *p == password)
}

fn login(state: &State, params: &[(String, String)]) -> Response<Body> {
    let id = get(params, "interaction").unwrap_or_default();
    let mut db = state.db.lock().unwrap();
    if !db.interactions.contains_key(id) {
        return html(
            400,
            "<p id=\"error\">this login expired; start again</p>".into(),
        );
    }
    let Some(user) = user_by_login(params) else {
        return html(
            200,
            login_form(
                "/login",
                &[("interaction", id)],
                Some("wrong username or password"),
                "",
            ),
        );
    };
    let i = db.interactions.remove(id).expect("checked above");
    let code = random_token("code");
    db.codes.insert(
        code.clone(),
        Code {
            user,
            client_id: i.client_id,
            redirect_uri: i.redirect_uri.clone(),
            challenge: i.challenge,
            used: false,
        },
    );
    if state.quirks.lock().unwrap().paste_page {
        let shown = format!("{code}#{}", i.state);
        return html(
            200,
            format!(
                "<!DOCTYPE html><html><body><p>Paste this code into the application:</p>\
                 <code id=\"code\">{}</code></body></html>",
                esc(&shown)
            ),
        );
    }
    let mut location = url::Url::parse(&i.redirect_uri).expect("a redirect URI");
    location
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &i.state);
    respond(302, &[("location", location.as_str())], String::new())
}

fn sign(state: &State, claims: Value) -> String {
    let head = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64(claims.to_string().as_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(&state.key).expect("any key length");
    mac.update(format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", b64(&mac.finalize().into_bytes()))
}

/// Issues an access token (and an id_token when `id_token`) for the grant,
/// plus `refresh_token` if given.
fn issue(
    state: &State,
    db: &mut Db,
    grant_id: u64,
    refresh_token: Option<String>,
    id_token: bool,
) -> Response<Body> {
    let quirks = state.quirks.lock().unwrap().clone();
    let grant = &db.grants[&grant_id];
    let (_, _, sub, email, account) = USERS[grant.user];
    let now = now_s();
    let exp = now + quirks.access_ttl;
    let access = if quirks.opaque_access_tokens {
        random_token("at")
    } else {
        sign(
            state,
            json!({
                "iss": state.url, "sub": sub, "email": email, "aud": grant.client_id,
                "iat": now, "exp": exp, "jti": random_token("jti"),
                ACCOUNT_CLAIM: {"chatgpt_account_id": account},
            }),
        )
    };
    let mut answer =
        json!({"access_token": access, "token_type": "Bearer", "scope": "openid offline_access"});
    if !quirks.omit_expires_in {
        answer["expires_in"] = json!(quirks.access_ttl);
    }
    if let Some(rt) = refresh_token {
        answer["refresh_token"] = json!(rt);
    }
    if quirks.pad_bytes > 0 {
        answer["padding"] = json!("x".repeat(quirks.pad_bytes));
    }
    if id_token {
        answer["id_token"] = json!(sign(
            state,
            json!({
                "iss": state.url, "sub": sub, "email": email, "aud": grant.client_id,
                "iat": now, "exp": exp, ACCOUNT_CLAIM: {"chatgpt_account_id": account},
            })
        ));
    }
    db.access_tokens.insert(
        access,
        AccessToken {
            grant: grant_id,
            exp,
        },
    );
    json_answer(200, answer)
}

fn new_grant(db: &mut Db, user: usize, client_id: &str) -> (u64, String) {
    db.next_grant += 1;
    let id = db.next_grant;
    db.grants.insert(
        id,
        Grant {
            user,
            client_id: client_id.into(),
            revoked: false,
        },
    );
    let rt = random_token("rt");
    db.refresh_tokens.insert(
        rt.clone(),
        RefreshToken {
            grant: id,
            spent: false,
        },
    );
    (id, rt)
}

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

fn token(
    state: &State,
    content_type: Option<&str>,
    headers: &[(String, String)],
    params: &[(String, String)],
) -> Response<Body> {
    {
        let mut q = state.quirks.lock().unwrap();
        let is_json = content_type.is_some_and(|c| c.starts_with("application/json"));
        if q.json_only && !is_json {
            return oauth_error(400, "invalid_request", "the body must be JSON");
        }
        if q.challenge > 0 {
            q.challenge -= 1;
            return respond(
                403,
                &[
                    ("content-type", "text/html; charset=UTF-8"),
                    ("server", "cloudflare"),
                    ("cf-mitigated", "challenge"),
                ],
                "<!DOCTYPE html><html><head><title>Just a moment...</title></head>\
                 <body><noscript>Enable JavaScript and cookies to continue</noscript></body></html>"
                    .into(),
            );
        }
        if q.rate_limit > 0 {
            q.rate_limit -= 1;
            let ms = q.retry_after_ms.map(|ms| ms.to_string());
            let mut h = vec![("content-type", "application/json")];
            if let Some(v) = &q.retry_after {
                h.push(("retry-after", v));
            }
            if let Some(v) = &ms {
                h.push(("retry-after-ms", v));
            }
            return respond(
                429,
                &h,
                json!({"error": {"message": "Too many requests", "type": "rate_limit_exceeded"}})
                    .to_string(),
            );
        }
    }
    // The client authenticates in the body or with HTTP Basic.
    let client_id = get(params, "client_id").map(str::to_owned).or_else(|| {
        let basic = get(headers, "authorization")?.strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        Some(text.split(':').next()?.to_owned())
    });
    let Some(client_id) = client_id else {
        return oauth_error(401, "invalid_client", "no client_id");
    };
    match get(params, "grant_type") {
        Some("authorization_code") => code_grant(state, &client_id, params),
        Some("refresh_token") => refresh_grant(state, &client_id, params),
        Some(DEVICE_GRANT) => device_grant(state, &client_id, params),
        _ => oauth_error(400, "unsupported_grant_type", "not a grant type I know"),
    }
}

fn code_grant(state: &State, client_id: &str, params: &[(String, String)]) -> Response<Body> {
    let mut db = state.db.lock().unwrap();
    let code = get(params, "code").unwrap_or_default();
    let Some(c) = db.codes.get_mut(code) else {
        return oauth_error(400, "invalid_grant", "unknown code");
    };
    if c.used {
        return oauth_error(400, "invalid_grant", "code already used");
    }
    c.used = true;
    if c.client_id != client_id || Some(c.redirect_uri.as_str()) != get(params, "redirect_uri") {
        return oauth_error(400, "invalid_grant", "client or redirect_uri mismatch");
    }
    let verifier = get(params, "code_verifier").unwrap_or_default();
    if b64(&Sha256::digest(verifier.as_bytes())) != c.challenge {
        return oauth_error(400, "invalid_grant", "PKCE verification failed");
    }
    let user = c.user;
    let (grant, rt) = new_grant(&mut db, user, client_id);
    issue(state, &mut db, grant, Some(rt), true)
}

fn refresh_grant(state: &State, client_id: &str, params: &[(String, String)]) -> Response<Body> {
    let quirks = state.quirks.lock().unwrap().clone();
    if let Some(code) = &quirks.dead {
        return json_answer(
            401,
            json!({"error": {"code": code, "message": "Your refresh token can no longer be used.", "type": "invalid_request_error"}}),
        );
    }
    let mut db = state.db.lock().unwrap();
    let presented = get(params, "refresh_token").unwrap_or_default().to_owned();
    let Some(rt) = db.refresh_tokens.get(&presented) else {
        return oauth_error(400, "invalid_grant", "unknown refresh token");
    };
    let (grant_id, spent) = (rt.grant, rt.spent);
    let grant = &db.grants[&grant_id];
    if grant.revoked || grant.client_id != client_id {
        return oauth_error(400, "invalid_grant", "grant revoked");
    }
    if spent {
        if quirks.reuse_detection {
            db.grants.get_mut(&grant_id).expect("exists").revoked = true;
            db.revoked += 1;
        }
        return oauth_error(400, "invalid_grant", "refresh token already used");
    }
    let user = USERS[grant.user].0;
    *db.refresh_grants.entry(user.into()).or_default() += 1;
    let keep = quirks.static_refresh_tokens || quirks.omit_refresh_token;
    let next = if keep {
        presented.clone()
    } else {
        db.refresh_tokens.get_mut(&presented).expect("exists").spent = true;
        let rt = random_token("rt");
        db.refresh_tokens.insert(
            rt.clone(),
            RefreshToken {
                grant: grant_id,
                spent: false,
            },
        );
        rt
    };
    let sent = (!quirks.omit_refresh_token).then_some(next);
    issue(state, &mut db, grant_id, sent, false)
}

fn device_authorization(state: &State, params: &[(String, String)]) -> Response<Body> {
    let Some(client_id) = get(params, "client_id") else {
        return oauth_error(401, "invalid_client", "no client_id");
    };
    let q = state.quirks.lock().unwrap().clone();
    let letters: [u8; 8] = rand::random();
    let user_code: String = letters
        .iter()
        .enumerate()
        .flat_map(|(i, b)| {
            let c = char::from(b'B' + b % 24);
            (i == 4).then_some('-').into_iter().chain([c])
        })
        .collect();
    let device_code = random_token("dc");
    state.db.lock().unwrap().devices.insert(
        user_code.clone(),
        Device {
            client_id: client_id.into(),
            device_code: device_code.clone(),
            expires_at: now_s() + q.device_expires_in,
            interval: q.device_interval,
            last_poll: None,
            decision: None,
            done: false,
        },
    );
    let page = format!("{}/device", state.url);
    let (verification_uri, complete) = match &q.verification_uri {
        Some(given) => (given.clone(), None),
        None => (page.clone(), Some(format!("{page}?user_code={user_code}"))),
    };
    json_answer(
        200,
        json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": verification_uri,
            "verification_uri_complete": complete,
            "expires_in": q.device_expires_in,
            "interval": q.device_interval,
        }),
    )
}

fn device_page(user_code: &str, error: Option<&str>) -> Response<Body> {
    let field = format!(
        "<label>Code <input id=\"user_code\" name=\"user_code\" value=\"{}\"></label>",
        esc(user_code)
    );
    let mut page = login_form("/device", &[], error, &field);
    page = page.replace(
        "</form>",
        "<button id=\"deny\" type=\"submit\" name=\"action\" value=\"deny\">Deny</button></form>",
    );
    html(200, page)
}

fn device_decide(state: &State, params: &[(String, String)]) -> Response<Body> {
    let user_code = get(params, "user_code").unwrap_or_default().trim();
    let user = user_by_login(params);
    let mut db = state.db.lock().unwrap();
    let Some(device) = db.devices.get_mut(user_code) else {
        return device_page(user_code, Some("unknown code"));
    };
    if now_s() >= device.expires_at {
        return device_page(user_code, Some("this code has expired"));
    }
    if get(params, "action") == Some("deny") {
        device.decision = Some(Err(()));
        return html(200, "<p id=\"done\">Access denied.</p>".into());
    }
    let Some(user) = user else {
        return device_page(user_code, Some("wrong username or password"));
    };
    device.decision = Some(Ok(user));
    html(
        200,
        "<p id=\"done\">Device connected. You can close this page.</p>".into(),
    )
}

fn device_grant(state: &State, client_id: &str, params: &[(String, String)]) -> Response<Body> {
    let mut db = state.db.lock().unwrap();
    let code = get(params, "device_code").unwrap_or_default();
    let Some(device) = db
        .devices
        .values_mut()
        .find(|d| d.device_code == code && d.client_id == client_id)
    else {
        return oauth_error(400, "invalid_grant", "unknown device code");
    };
    let now = now_s();
    if device.done {
        return oauth_error(400, "invalid_grant", "device code already used");
    }
    if now >= device.expires_at {
        return oauth_error(400, "expired_token", "the user code expired");
    }
    let too_soon = device
        .last_poll
        .is_some_and(|last| now < last + device.interval);
    device.last_poll = Some(now);
    match device.decision {
        Some(Err(())) => oauth_error(400, "access_denied", "the user denied the request"),
        Some(Ok(user)) => {
            device.done = true;
            let (grant, rt) = new_grant(&mut db, user, client_id);
            issue(state, &mut db, grant, Some(rt), true)
        }
        None if too_soon => {
            device.interval += 5;
            oauth_error(400, "slow_down", "polling too fast")
        }
        None => oauth_error(400, "authorization_pending", "waiting for the user"),
    }
}

/// The user of a live access token presented as `Bearer`, or 401.
fn userinfo(state: &State, authorization: Option<&str>) -> Response<Body> {
    let token = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default();
    let db = state.db.lock().unwrap();
    let user = db
        .access_tokens
        .get(token)
        .filter(|at| now_s() < at.exp)
        .and_then(|at| db.grants.get(&at.grant))
        .filter(|g| !g.revoked)
        .map(|g| g.user);
    let Some(user) = user else {
        return respond(
            401,
            &[("www-authenticate", "Bearer error=\"invalid_token\"")],
            String::new(),
        );
    };
    let (name, _, sub, email, _) = USERS[user];
    json_answer(
        200,
        json!({"sub": sub, "email": email, "preferred_username": name,
            "id": 1000 + user, "login": name}),
    )
}

fn introspect(state: &State, token: &str) -> Value {
    let db = state.db.lock().unwrap();
    let now = now_s();
    let live = |grant: u64| db.grants.get(&grant).filter(|g| !g.revoked);
    if let Some(at) = db.access_tokens.get(token) {
        if let Some(g) = live(at.grant).filter(|_| now < at.exp) {
            let (user, _, sub, ..) = USERS[g.user];
            return json!({"active": true, "token_type": "access_token", "sub": sub,
                "username": user, "client_id": g.client_id, "exp": at.exp});
        }
    }
    if let Some(rt) = db.refresh_tokens.get(token).filter(|rt| !rt.spent) {
        if let Some(g) = live(rt.grant) {
            let (user, _, sub, ..) = USERS[g.user];
            return json!({"active": true, "token_type": "refresh_token", "sub": sub,
                "username": user, "client_id": g.client_id});
        }
    }
    json!({"active": false})
}
