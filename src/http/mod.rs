//! The HTTP API (warp). [`routes`] is the one route table; handlers in
//! [`handlers`] are thin: parse, call the [`Farm`], render. Errors become
//! responses in [`error`] only.

pub mod error;
pub mod handlers;
pub mod loopback;

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

/// One row of the route table: method, path pattern, access. Also the
/// source of the route list in the README and of `GET /api/routes`.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Access::Public),
    ("GET", "/metrics", Access::Admin),
    ("GET", "/credential/next", Access::Client),
    ("POST", "/credential/report", Access::Client),
    ("DELETE", "/credential/lease/{lease_id}", Access::Client),
    ("GET", "/api/providers", Access::Admin),
    ("GET", "/api/accounts", Access::Admin),
    ("POST", "/api/accounts", Access::Admin),
    ("GET", "/api/accounts/{id}", Access::Admin),
    ("PATCH", "/api/accounts/{id}", Access::Admin),
    ("DELETE", "/api/accounts/{id}", Access::Admin),
    ("POST", "/api/accounts/{id}/login", Access::Admin),
    ("POST", "/api/accounts/{id}/login/complete", Access::Admin),
    ("POST", "/api/accounts/{id}/refresh", Access::Admin),
    ("GET", "/api/usage", Access::Admin),
    ("GET", "/api/clients", Access::Admin),
    ("POST", "/api/clients", Access::Admin),
    ("DELETE", "/api/clients/{id}", Access::Admin),
];

/// The caller's `Authorization` header, checked by [`Caller::require`]
/// inside the handler (so a bad token is a 401 for *this* route, not a
/// rejection warp would merge with other routes').
pub struct Caller(Option<String>);

impl Caller {
    pub fn require(&self, farm: &Farm, access: Access) -> Result<Principal, ApiError> {
        if access == Access::Public {
            return Ok(Principal::Admin);
        }
        let token = self.0.as_deref().and_then(|h| h.strip_prefix("Bearer ")).map(str::trim);
        let who = token.filter(|t| !t.is_empty()).and_then(|t| farm.authenticate(t)).ok_or_else(ApiError::unauthorized)?;
        if access == Access::Admin && who != Principal::Admin {
            return Err(ApiError::forbidden());
        }
        Ok(who)
    }
}

fn caller() -> impl Filter<Extract = (Caller,), Error = Infallible> + Clone {
    warp::header::optional::<String>("authorization").map(Caller).or(warp::any().map(|| Caller(None))).unify()
}

/// A JSON body of at most [`MAX_BODY`] bytes, parsed by the handler so that
/// a malformed body is a 400 naming the problem (line, column, field).
pub fn json_body<T: DeserializeOwned + Send>() -> impl Filter<Extract = (Result<T, ApiError>,), Error = warp::Rejection> + Clone {
    warp::body::content_length_limit(MAX_BODY).and(warp::body::bytes()).map(|b: Bytes| parse_json(&b))
}

pub fn parse_json<T: DeserializeOwned>(b: &[u8]) -> Result<T, ApiError> {
    if b.is_empty() {
        return Err(ApiError::bad_request("the request body is empty; send a JSON object"));
    }
    serde_json::from_slice(b).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("invalid JSON body: {e}")))
}

/// The route table.
pub fn routes(farm: Arc<Farm>) -> BoxedFilter<(Response,)> {
    use handlers as h;
    use warp::{delete, get, patch, path, post};
    let farm = warp::any().map(move || farm.clone());
    let base = || farm.clone().and(caller());

    let health = get().and(path!("healthz")).and(farm.clone()).then(h::healthz).boxed();
    let metrics = get().and(path!("metrics")).and(base()).then(h::metrics).boxed();
    let next = get()
        .and(path!("credential" / "next"))
        .and(base())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .then(h::credential_next)
        .boxed();
    let report = post().and(path!("credential" / "report")).and(base()).and(json_body()).then(h::credential_report).boxed();
    let release = delete().and(path!("credential" / "lease" / String)).and(base()).then(h::credential_release).boxed();

    let providers = get().and(path!("api" / "providers")).and(base()).then(h::providers).boxed();
    let accounts = get().and(path!("api" / "accounts")).and(base()).then(h::accounts_list).boxed();
    let add = post().and(path!("api" / "accounts")).and(base()).and(json_body()).then(h::accounts_add).boxed();
    let one = get().and(path!("api" / "accounts" / String)).and(base()).then(h::account_get).boxed();
    let change = patch().and(path!("api" / "accounts" / String)).and(base()).and(json_body()).then(h::account_patch).boxed();
    let remove = delete().and(path!("api" / "accounts" / String)).and(base()).then(h::account_delete).boxed();
    let login = post().and(path!("api" / "accounts" / String / "login")).and(base()).then(h::login_start).boxed();
    let complete = post()
        .and(path!("api" / "accounts" / String / "login" / "complete"))
        .and(base())
        .and(json_body())
        .then(h::login_complete)
        .boxed();
    let refresh = post().and(path!("api" / "accounts" / String / "refresh")).and(base()).then(h::account_refresh).boxed();
    let usage = get().and(path!("api" / "usage")).and(base()).then(h::usage).boxed();
    let clients = get().and(path!("api" / "clients")).and(base()).then(h::clients_list).boxed();
    let client_add = post().and(path!("api" / "clients")).and(base()).and(json_body()).then(h::clients_add).boxed();
    let client_del = delete().and(path!("api" / "clients" / String)).and(base()).then(h::clients_revoke).boxed();

    health
        .or(metrics)
        .unify()
        .or(next)
        .unify()
        .or(report)
        .unify()
        .or(release)
        .unify()
        .or(providers)
        .unify()
        .or(accounts)
        .unify()
        .or(add)
        .unify()
        .or(one)
        .unify()
        .or(change)
        .unify()
        .or(remove)
        .unify()
        .or(login)
        .unify()
        .or(complete)
        .unify()
        .or(refresh)
        .unify()
        .or(usage)
        .unify()
        .or(clients)
        .unify()
        .or(client_add)
        .unify()
        .or(client_del)
        .unify()
        .recover(error::recover)
        .unify()
        .with(warp::reply::with::header("cache-control", "no-store"))
        .map(|r| warp::Reply::into_response(r))
        .boxed()
}
