//! The HTTP API (warp). [`routes`] is the one route table; handlers in
//! [`handlers`] are thin: parse, call the [`Farm`], render. Errors become
//! responses in [`error`] only.

pub mod admin;
pub mod error;
pub mod handlers;
pub mod loopback;
pub mod openapi;
pub mod sse;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use crate::farm::{Farm, Principal};
use error::ApiError;

/// Largest accepted request body.
pub const MAX_BODY: u64 = 64 * 1024;

/// What a route requires of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No credentials (health check).
    Public,
    /// A client key or the admin token.
    Client,
    /// The admin token.
    Admin,
}

/// One row of the route table: the single source of the router's
/// method/path checks (see `endpoint`), the OpenAPI document and the
/// README's route list.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub method: &'static str,
    /// OpenAPI path template (`{id}` parameters).
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
    /// `components/schemas` name of the JSON request body, if any.
    pub request: Option<&'static str>,
    /// Success status and the schema name of its body (`None`: no body).
    pub ok: (u16, Option<&'static str>),
}

const fn route(
    method: &'static str,
    path: &'static str,
    access: Access,
    summary: &'static str,
    request: Option<&'static str>,
    ok: (u16, Option<&'static str>),
) -> Route {
    Route {
        method,
        path,
        access,
        summary,
        request,
        ok,
    }
}

/// The rotating proxy's path; one row per method it forwards.
pub const PROXY_PATH: &str = "/proxy/{provider}/{path}";

const fn proxy_route(method: &'static str) -> Route {
    route(
        method,
        PROXY_PATH,
        Access::Client,
        "Forward to the provider's upstream with the next account's token (failover inside the request); \
         the client key may also come as x-api-key",
        None,
        (200, None),
    )
}

use Access::{Admin, Client, Public};
pub const ROUTES: &[Route] = &[
    route(
        "GET",
        "/healthz",
        Public,
        "Liveness check",
        None,
        (200, Some("Health")),
    ),
    route(
        "GET",
        "/metrics",
        Admin,
        "Prometheus metrics (text format)",
        None,
        (200, Some("Metrics")),
    ),
    route(
        "GET",
        "/credential/next",
        Client,
        "Lease the next usable account's token",
        None,
        (200, Some("CredentialLease")),
    ),
    route(
        "POST",
        "/credential/report",
        Client,
        "Report how a leased token fared",
        Some("Report"),
        (200, Some("Recorded")),
    ),
    route(
        "DELETE",
        "/credential/lease/{lease_id}",
        Client,
        "Release a lease",
        None,
        (204, None),
    ),
    route(
        "GET",
        "/api/providers",
        Admin,
        "List configured providers",
        None,
        (200, Some("ProviderList")),
    ),
    route(
        "GET",
        "/api/accounts",
        Admin,
        "List accounts",
        None,
        (200, Some("AccountList")),
    ),
    route(
        "POST",
        "/api/accounts",
        Admin,
        "Add an account (pending login)",
        Some("NewAccount"),
        (201, Some("Account")),
    ),
    route(
        "GET",
        "/api/accounts/{id}",
        Admin,
        "Get one account",
        None,
        (200, Some("Account")),
    ),
    route(
        "PATCH",
        "/api/accounts/{id}",
        Admin,
        "Change label, priority or enabled",
        Some("AccountPatch"),
        (200, Some("Account")),
    ),
    route(
        "DELETE",
        "/api/accounts/{id}",
        Admin,
        "Remove an account for good",
        None,
        (204, None),
    ),
    route(
        "POST",
        "/api/accounts/{id}/login",
        Admin,
        "Start a login: returns the authorize URL",
        None,
        (200, Some("LoginStarted")),
    ),
    route(
        "POST",
        "/api/accounts/{id}/login/complete",
        Admin,
        "Finish a login with the pasted redirect URL",
        Some("LoginComplete"),
        (200, Some("Account")),
    ),
    route(
        "POST",
        "/api/accounts/{id}/refresh",
        Admin,
        "Refresh now (waits for the single-flight result)",
        None,
        (200, Some("Account")),
    ),
    route(
        "PUT",
        "/api/accounts/{id}/script",
        Admin,
        "Attach a login script (the body is the TOML text)",
        Some("ScriptText"),
        (200, Some("ScriptAttached")),
    ),
    route(
        "GET",
        "/api/accounts/{id}/script",
        Admin,
        "The account's login script (TOML)",
        None,
        (200, Some("ScriptText")),
    ),
    route(
        "DELETE",
        "/api/accounts/{id}/script",
        Admin,
        "Detach the account's login script",
        None,
        (204, None),
    ),
    route(
        "GET",
        "/api/accounts/{id}/secrets",
        Admin,
        "Names of the account's secrets (values are write-only)",
        None,
        (200, Some("SecretList")),
    ),
    route(
        "PUT",
        "/api/accounts/{id}/secrets/{name}",
        Admin,
        "Set a secret (write-only)",
        Some("SecretValue"),
        (204, None),
    ),
    route(
        "DELETE",
        "/api/accounts/{id}/secrets/{name}",
        Admin,
        "Delete a secret",
        None,
        (204, None),
    ),
    route(
        "POST",
        "/api/accounts/{id}/relogin",
        Admin,
        "Log in with the farm's browser now; returns the outcome",
        None,
        (200, Some("ReloginDone")),
    ),
    route(
        "GET",
        "/api/accounts/{id}/browser",
        Admin,
        "The account's browser profile and last browser run",
        None,
        (200, Some("BrowserInfo")),
    ),
    route(
        "DELETE",
        "/api/accounts/{id}/browser",
        Admin,
        "Wipe the account's browser profile",
        None,
        (204, None),
    ),
    route(
        "GET",
        "/api/accounts/{id}/screenshot",
        Admin,
        "The screenshot of the last failed browser relogin",
        None,
        (200, Some("Png")),
    ),
    route(
        "GET",
        "/api/usage",
        Admin,
        "Leases and outcomes per account and client",
        None,
        (200, Some("Usage")),
    ),
    route(
        "GET",
        "/api/events",
        Admin,
        "Event stream (SSE, Last-Event-ID resume) or JSON with ?since=ID",
        None,
        (200, Some("EventList")),
    ),
    route(
        "GET",
        "/api/webhooks",
        Admin,
        "Webhook delivery status",
        None,
        (200, Some("WebhookList")),
    ),
    route(
        "GET",
        "/api/backups",
        Admin,
        "Backups of the database, newest first",
        None,
        (200, Some("BackupList")),
    ),
    route(
        "POST",
        "/api/backups",
        Admin,
        "Take a backup now (waits for it; prunes beyond backup.keep)",
        None,
        (201, Some("Backup")),
    ),
    route(
        "GET",
        "/api/clients",
        Admin,
        "List client keys",
        None,
        (200, Some("ClientList")),
    ),
    route(
        "POST",
        "/api/clients",
        Admin,
        "Create a client key (shown once)",
        Some("NewClient"),
        (201, Some("ClientCreated")),
    ),
    route(
        "DELETE",
        "/api/clients/{id}",
        Admin,
        "Revoke a client key",
        None,
        (204, None),
    ),
    proxy_route("GET"),
    proxy_route("POST"),
    proxy_route("PUT"),
    proxy_route("PATCH"),
    proxy_route("DELETE"),
    route(
        "GET",
        "/api/openapi.json",
        Public,
        "This document",
        None,
        (200, Some("OpenApi")),
    ),
];

/// The method filter of a route in [`ROUTES`]. Building the router through
/// this makes it panic at startup (and in every test) if a route is not in
/// the table, and [`routes`] checks that every table row was built: the
/// router and the document cannot drift apart.
fn endpoint(
    method: &'static str,
    path: &'static str,
    built: &std::cell::RefCell<Vec<(&'static str, &'static str)>>,
) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    assert!(
        ROUTES.iter().any(|r| r.method == method && r.path == path),
        "route {method} {path} is not in http::ROUTES"
    );
    built.borrow_mut().push((method, path));
    let m: warp::http::Method = method.parse().expect("route methods are valid");
    warp::method()
        .and_then(move |got: warp::http::Method| {
            let ok = got == m;
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(warp::reject::custom(WrongMethod))
                }
            }
        })
        .untuple_one()
}

/// Rejection for a path that exists with another method (→ 405).
#[derive(Debug)]
pub struct WrongMethod;
impl warp::reject::Reject for WrongMethod {}

/// The caller's `Authorization` header, checked by [`Caller::require`]
/// inside the handler (so a bad token is a 401 for *this* route, not a
/// rejection warp would merge with other routes').
pub struct Caller(Option<String>);

impl Caller {
    pub fn require(&self, farm: &Farm, access: Access) -> Result<Principal, ApiError> {
        if access == Access::Public {
            return Ok(Principal::Admin);
        }
        let token = self
            .0
            .as_deref()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        let who = token
            .filter(|t| !t.is_empty())
            .and_then(|t| farm.authenticate(t))
            .ok_or_else(ApiError::unauthorized)?;
        if access == Access::Admin && who != Principal::Admin {
            return Err(ApiError::forbidden());
        }
        Ok(who)
    }
}

fn caller() -> impl Filter<Extract = (Caller,), Error = Infallible> + Clone {
    warp::header::optional::<String>("authorization")
        .map(Caller)
        .or(warp::any().map(|| Caller(None)))
        .unify()
}

/// Bodies up to this size are read in full even when over [`MAX_BODY`], so
/// the client finishes sending and reads its 413; answering before the body
/// is read makes the server close the connection under a client that is
/// still writing, which then sees a reset instead of the answer.
const MAX_DRAINED: u64 = 1024 * 1024;

/// The body, or a 413 when it is over [`MAX_BODY`].
fn limited_body(
) -> impl Filter<Extract = (Result<Bytes, ApiError>,), Error = warp::Rejection> + Clone {
    warp::body::content_length_limit(MAX_DRAINED)
        .and(warp::body::bytes())
        .map(|b: Bytes| {
            if b.len() as u64 > MAX_BODY {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is larger than 64 KiB",
                ))
            } else {
                Ok(b)
            }
        })
}

/// A JSON body of at most [`MAX_BODY`] bytes, parsed by the handler so that
/// a malformed body is a 400 naming the problem (line, column, field).
pub fn json_body<T: DeserializeOwned + Send>(
) -> impl Filter<Extract = (Result<T, ApiError>,), Error = warp::Rejection> + Clone {
    limited_body().map(|b: Result<Bytes, ApiError>| b.and_then(|b| parse_json(&b)))
}

pub fn parse_json<T: DeserializeOwned>(b: &[u8]) -> Result<T, ApiError> {
    if b.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    // serde also accepts a struct written as an array; the API takes objects only.
    if b.iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body must be a JSON object",
        ));
    }
    serde_json::from_slice(b).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("invalid JSON body: {e}"),
        )
    })
}

/// A UTF-8 text body of at most [`MAX_BODY`] bytes (login scripts).
pub fn text_body(
) -> impl Filter<Extract = (Result<String, ApiError>,), Error = warp::Rejection> + Clone {
    limited_body().map(|b: Result<Bytes, ApiError>| {
        b.and_then(|b| {
            String::from_utf8(b.to_vec())
                .map_err(|_| ApiError::bad_request("the body must be UTF-8 text"))
        })
    })
}

/// The route table.
pub fn routes(farm: Arc<Farm>) -> BoxedFilter<(Response,)> {
    use handlers as h;
    use warp::path;
    let built = std::cell::RefCell::new(Vec::new());
    let at = |method, p| endpoint(method, p, &built);
    let farm = warp::any().map(move || farm.clone());
    let base = || farm.clone().and(caller());
    let raw_query = || warp::query::raw().or(warp::any().map(String::new)).unify();

    // `/credential/next` is the hot path: it comes first, outside the `or`
    // chain below, so its requests do not walk (and box a future for) every
    // other route on the way.
    let credential_next = path!("credential" / "next")
        .and(at("GET", "/credential/next"))
        .and(base())
        .and(raw_query())
        .then(h::credential_next);
    let others = path!("healthz")
        .and(at("GET", "/healthz"))
        .and(farm.clone())
        .then(h::healthz)
        .boxed()
        .or(path!("metrics")
            .and(at("GET", "/metrics"))
            .and(base())
            .then(h::metrics))
        .unify()
        .boxed()
        .or(path!("credential" / "report")
            .and(at("POST", "/credential/report"))
            .and(base())
            .and(json_body())
            .then(h::credential_report))
        .unify()
        .boxed()
        .or(path!("credential" / "lease" / String)
            .and(at("DELETE", "/credential/lease/{lease_id}"))
            .and(base())
            .then(h::credential_release))
        .unify()
        .boxed()
        .or(path!("api" / "providers")
            .and(at("GET", "/api/providers"))
            .and(base())
            .then(h::providers))
        .unify()
        .boxed()
        .or(path!("api" / "accounts")
            .and(at("GET", "/api/accounts"))
            .and(base())
            .then(h::accounts_list))
        .unify()
        .boxed()
        .or(path!("api" / "accounts")
            .and(at("POST", "/api/accounts"))
            .and(base())
            .and(json_body())
            .then(h::accounts_add))
        .unify()
        .boxed()
        .or(path!("api" / "accounts" / String)
            .and(at("GET", "/api/accounts/{id}"))
            .and(base())
            .then(h::account_get))
        .unify()
        .boxed()
        .or(path!("api" / "accounts" / String)
            .and(at("PATCH", "/api/accounts/{id}"))
            .and(base())
            .and(json_body())
            .then(h::account_patch))
        .unify()
        .boxed()
        .or(path!("api" / "accounts" / String)
            .and(at("DELETE", "/api/accounts/{id}"))
            .and(base())
            .then(h::account_delete))
        .unify()
        .boxed()
        .or(path!("api" / "accounts" / String / "login")
            .and(at("POST", "/api/accounts/{id}/login"))
            .and(base())
            .then(h::login_start))
        .unify()
        .boxed()
        .or(path!("api" / "accounts" / String / "login" / "complete")
            .and(at("POST", "/api/accounts/{id}/login/complete"))
            .and(base())
            .and(json_body())
            .then(h::login_complete))
        .unify()
        .boxed()
        .or(path!("api" / "accounts" / String / "refresh")
            .and(at("POST", "/api/accounts/{id}/refresh"))
            .and(base())
            .then(h::account_refresh))
        .unify()
        .boxed()
        .or(path!("api" / "accounts" / String / "script")
            .and(at("PUT", "/api/accounts/{id}/script"))
            .and(base())
            .and(text_body())
            .then(h::script_put))
        .unify()
        .boxed()
        .or(path!("api" / "accounts" / String / "script")
            .and(at("GET", "/api/accounts/{id}/script"))
            .and(base())
            .then(h::script_get))
        .unify()
        .boxed()
        .or(path!("api" / "accounts" / String / "script")
            .and(at("DELETE", "/api/accounts/{id}/script"))
            .and(base())
            .then(h::script_delete))
        .unify()
        .boxed()
        .or(path!("api" / "accounts" / String / "secrets")
            .and(at("GET", "/api/accounts/{id}/secrets"))
            .and(base())
            .then(h::secrets_list))
        .unify()
        .boxed()
        .or(path!("api" / "accounts" / String / "secrets" / String)
            .and(at("PUT", "/api/accounts/{id}/secrets/{name}"))
            .and(base())
            .and(json_body())
            .then(h::secret_put))
        .unify()
        .boxed()
        .or(path!("api" / "accounts" / String / "secrets" / String)
            .and(at("DELETE", "/api/accounts/{id}/secrets/{name}"))
            .and(base())
            .then(h::secret_delete))
        .unify()
        .boxed()
        .or(path!("api" / "accounts" / String / "relogin")
            .and(at("POST", "/api/accounts/{id}/relogin"))
            .and(base())
            .then(h::relogin))
        .unify()
        .boxed()
        .or(path!("api" / "accounts" / String / "browser")
            .and(at("GET", "/api/accounts/{id}/browser"))
            .and(base())
            .then(h::browser_info))
        .unify()
        .boxed()
        .or(path!("api" / "accounts" / String / "browser")
            .and(at("DELETE", "/api/accounts/{id}/browser"))
            .and(base())
            .then(h::browser_reset))
        .unify()
        .boxed()
        .or(path!("api" / "accounts" / String / "screenshot")
            .and(at("GET", "/api/accounts/{id}/screenshot"))
            .and(base())
            .then(h::screenshot))
        .unify()
        .boxed()
        .or(path!("api" / "usage")
            .and(at("GET", "/api/usage"))
            .and(base())
            .then(h::usage))
        .unify()
        .boxed()
        .or(path!("api" / "events")
            .and(at("GET", "/api/events"))
            .and(base())
            .and(raw_query())
            .and(warp::header::optional::<String>("last-event-id"))
            .then(h::events))
        .unify()
        .boxed()
        .or(path!("api" / "webhooks")
            .and(at("GET", "/api/webhooks"))
            .and(base())
            .then(h::webhooks))
        .unify()
        .boxed()
        .or(path!("api" / "backups")
            .and(at("GET", "/api/backups"))
            .and(base())
            .then(h::backups_list))
        .unify()
        .boxed()
        .or(path!("api" / "backups")
            .and(at("POST", "/api/backups"))
            .and(base())
            .then(h::backups_create))
        .unify()
        .boxed()
        .or(path!("api" / "clients")
            .and(at("GET", "/api/clients"))
            .and(base())
            .then(h::clients_list))
        .unify()
        .boxed()
        .or(path!("api" / "clients")
            .and(at("POST", "/api/clients"))
            .and(base())
            .and(json_body())
            .then(h::clients_add))
        .unify()
        .boxed()
        .or(path!("api" / "clients" / String)
            .and(at("DELETE", "/api/clients/{id}"))
            .and(base())
            .then(h::clients_revoke))
        .unify()
        .boxed()
        .or(path!("api" / "openapi.json")
            .and(at("GET", "/api/openapi.json"))
            .then(h::openapi))
        .unify()
        .boxed();
    // Any method of the table's proxy rows; auth, limits and errors are the
    // proxy's own (`crate::proxy`), so that x-api-key works too.
    let proxy_methods = at("GET", PROXY_PATH)
        .or(at("POST", PROXY_PATH))
        .unify()
        .or(at("PUT", PROXY_PATH))
        .unify()
        .or(at("PATCH", PROXY_PATH))
        .unify()
        .or(at("DELETE", PROXY_PATH))
        .unify();
    let proxy = path!("proxy" / String / ..)
        .and(warp::path::tail())
        .and(proxy_methods)
        .and(farm.clone())
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(raw_query())
        .and(warp::body::stream())
        .then(
            |provider: String, tail: warp::path::Tail, farm, method, headers, query, body| {
                let req = crate::proxy::Incoming {
                    provider,
                    path: tail.as_str().to_owned(),
                    query,
                    method,
                    headers,
                };
                crate::proxy::handle(farm, req, Box::pin(body))
            },
        )
        .boxed();
    let table = credential_next.or(proxy).unify().or(others).unify();

    let built = built.into_inner();
    for r in ROUTES {
        assert!(
            built.contains(&(r.method, r.path)),
            "http::ROUTES lists {} {} but the router has no such route",
            r.method,
            r.path
        );
    }

    table
        .or(admin::page())
        .unify()
        .recover(error::recover)
        .unify()
        .with(warp::reply::with::header("cache-control", "no-store"))
        .map(warp::Reply::into_response)
        .boxed()
}
