//! The HTTP API (warp). [`ROUTES`] is the one route table: [`routes`] builds
//! its warp routes, [`front`] serves its proxy rows beside them; handlers in
//! [`handlers`] are thin: parse, call the [`Farm`], render. Errors become
//! responses in [`error`] only.

pub mod admin;
pub mod auth;
pub mod error;
pub mod front;
pub mod handlers;
pub mod openapi;
pub mod remote;
pub mod sse;
pub mod types;

use std::sync::Arc;

use bytes::Bytes;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use crate::farm::{self, AccountView, Farm, Health, Principal};
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
/// method/path checks and of each route's auth filter (see `endpoint`), the
/// OpenAPI document and the README's route list.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub method: &'static str,
    /// OpenAPI path template (`{id}` parameters).
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
    /// The request body, if any.
    pub request: Option<Body>,
    /// Success status and its body (`None`: no body).
    pub ok: (u16, Option<Body>),
}

/// A request or response body as the document describes it.
#[derive(Clone, Copy)]
pub enum Body {
    /// JSON of a Rust type: its schema comes from the type (`schemars`).
    Json(fn(&mut SchemaGenerator) -> Schema),
    /// A body that is not JSON.
    Text(&'static TextBody),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Json(_) => f.write_str("Json"),
            Body::Text(t) => write!(f, "Text({})", t.media),
        }
    }
}

#[derive(Debug)]
pub struct TextBody {
    pub media: &'static str,
    pub description: &'static str,
}

/// The JSON body of type `T` (request or response).
const fn json<T: JsonSchema>() -> Option<Body> {
    Some(Body::Json(SchemaGenerator::subschema_for::<T>))
}

const METRICS: TextBody = TextBody {
    media: "text/plain",
    description: "Prometheus text exposition format",
};
const SCRIPT: TextBody = TextBody {
    media: "application/toml",
    description: "A login script (TOML); see the README",
};
const PNG: TextBody = TextBody {
    media: "image/png",
    description: "A PNG image",
};

/// The remote browser's WebSocket: public to the router, authenticated by
/// its first message (`http::remote`).
pub const REMOTE_SOCKET_PATH: &str = "/api/browser/sessions/{session_id}/ws";

/// The rotating proxy's path; one row per method it forwards.
pub const PROXY_PATH: &str = "/proxy/{provider}/{path}";

const fn proxy_route(method: &'static str) -> Route {
    Route {
        method,
        path: PROXY_PATH,
        access: Access::Client,
        summary: "Forward to the provider's upstream with the next account's token (failover inside the request)",
        request: None,
        ok: (200, None),
    }
}

use Access::{Admin, Client, Public};
pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/healthz",
        access: Public,
        summary: "Liveness check",
        request: None,
        ok: (200, json::<Health>()),
    },
    Route {
        method: "GET",
        path: "/metrics",
        access: Admin,
        summary: "Prometheus metrics (text format)",
        request: None,
        ok: (200, Some(Body::Text(&METRICS))),
    },
    Route {
        method: "GET",
        path: "/credential/next",
        access: Client,
        summary: "Lease the next usable account's token",
        request: None,
        ok: (200, json::<farm::CredentialLease>()),
    },
    Route {
        method: "POST",
        path: "/credential/report",
        access: Client,
        summary: "Report how a leased token fared",
        request: json::<types::Report>(),
        ok: (200, json::<types::Recorded>()),
    },
    Route {
        method: "DELETE",
        path: "/credential/lease/{lease_id}",
        access: Client,
        summary: "Release a lease",
        request: None,
        ok: (204, None),
    },
    Route {
        method: "GET",
        path: "/api/providers",
        access: Admin,
        summary: "List configured providers",
        request: None,
        ok: (200, json::<Vec<farm::ProviderView>>()),
    },
    Route {
        method: "GET",
        path: "/api/accounts",
        access: Admin,
        summary: "List accounts",
        request: None,
        ok: (200, json::<Vec<AccountView>>()),
    },
    Route {
        method: "POST",
        path: "/api/accounts",
        access: Admin,
        summary: "Add an account (pending login)",
        request: json::<types::NewAccount>(),
        ok: (201, json::<AccountView>()),
    },
    Route {
        method: "GET",
        path: "/api/accounts/{id}",
        access: Admin,
        summary: "Get one account",
        request: None,
        ok: (200, json::<AccountView>()),
    },
    Route {
        method: "PATCH",
        path: "/api/accounts/{id}",
        access: Admin,
        summary: "Change label, priority or enabled",
        request: json::<farm::AccountPatch>(),
        ok: (200, json::<AccountView>()),
    },
    Route {
        method: "DELETE",
        path: "/api/accounts/{id}",
        access: Admin,
        summary: "Remove an account for good",
        request: None,
        ok: (204, None),
    },
    Route {
        method: "POST",
        path: "/api/accounts/{id}/login",
        access: Admin,
        summary: "Start a login: returns the authorize URL",
        request: None,
        ok: (200, json::<farm::LoginStarted>()),
    },
    Route {
        method: "POST",
        path: "/api/accounts/{id}/login/complete",
        access: Admin,
        summary: "Finish a login with the pasted redirect URL",
        request: json::<types::LoginComplete>(),
        ok: (200, json::<AccountView>()),
    },
    Route {
        method: "POST",
        path: "/api/accounts/{id}/refresh",
        access: Admin,
        summary: "Refresh now (waits for the single-flight result)",
        request: None,
        ok: (200, json::<types::Refreshed>()),
    },
    Route {
        method: "PUT",
        path: "/api/accounts/{id}/script",
        access: Admin,
        summary: "Attach a login script (the body is the TOML text)",
        request: Some(Body::Text(&SCRIPT)),
        ok: (200, json::<types::ScriptAttached>()),
    },
    Route {
        method: "GET",
        path: "/api/accounts/{id}/script",
        access: Admin,
        summary: "The account's login script (TOML)",
        request: None,
        ok: (200, Some(Body::Text(&SCRIPT))),
    },
    Route {
        method: "DELETE",
        path: "/api/accounts/{id}/script",
        access: Admin,
        summary: "Detach the account's login script",
        request: None,
        ok: (204, None),
    },
    Route {
        method: "GET",
        path: "/api/accounts/{id}/secrets",
        access: Admin,
        summary: "Names of the account's secrets (values are write-only)",
        request: None,
        ok: (200, json::<Vec<farm::SecretName>>()),
    },
    Route {
        method: "PUT",
        path: "/api/accounts/{id}/secrets/{name}",
        access: Admin,
        summary: "Set a secret (write-only)",
        request: json::<types::SecretValue>(),
        ok: (204, None),
    },
    Route {
        method: "DELETE",
        path: "/api/accounts/{id}/secrets/{name}",
        access: Admin,
        summary: "Delete a secret",
        request: None,
        ok: (204, None),
    },
    Route {
        method: "POST",
        path: "/api/accounts/{id}/relogin",
        access: Admin,
        summary: "Log in with the farm's browser now; returns the outcome",
        request: None,
        ok: (200, json::<types::Relogged>()),
    },
    Route {
        method: "POST",
        path: "/api/accounts/{id}/script/prove",
        access: Admin,
        summary: "Prove the login script: a relogin in a throwaway browser profile (no cookies); \
                  `relogin.lines_run` names the script lines that ran",
        request: None,
        ok: (200, json::<types::Relogged>()),
    },
    Route {
        method: "GET",
        path: "/api/accounts/{id}/browser",
        access: Admin,
        summary: "The account's browser profile and last browser run",
        request: None,
        ok: (200, json::<farm::BrowserInfo>()),
    },
    Route {
        method: "DELETE",
        path: "/api/accounts/{id}/browser",
        access: Admin,
        summary: "Wipe the account's browser profile",
        request: None,
        ok: (204, None),
    },
    Route {
        method: "POST",
        path: "/api/accounts/{id}/browser/session",
        access: Admin,
        summary: "Open a remote browser on the account's profile for the admin page (record, takeover or view); connect to its socket next",
        request: json::<farm::RemoteRequest>(),
        ok: (201, json::<farm::RemoteStarted>()),
    },
    Route {
        method: "DELETE",
        path: "/api/accounts/{id}/browser/session",
        access: Admin,
        summary: "End the account's remote browser session; answers once its browser closed cleanly",
        request: None,
        ok: (204, None),
    },
    Route {
        method: "GET",
        path: REMOTE_SOCKET_PATH,
        access: Public,
        summary: "The remote browser's WebSocket, for a session waiting for its socket (else 404, or 409 when it has one): first message {\"type\":\"auth\",\"token\"} with the admin token (else close 4401); then binary JPEG frames and JSON messages out, input messages in (see the README)",
        request: None,
        ok: (101, None),
    },
    Route {
        method: "GET",
        path: "/api/accounts/{id}/screenshot",
        access: Admin,
        summary: "The screenshot of the last failed browser relogin",
        request: None,
        ok: (200, Some(Body::Text(&PNG))),
    },
    Route {
        method: "GET",
        path: "/api/usage",
        access: Admin,
        summary: "Leases and outcomes per account and client",
        request: None,
        ok: (200, json::<types::Usage>()),
    },
    Route {
        method: "GET",
        path: "/api/events",
        access: Admin,
        summary: "Event stream (SSE, Last-Event-ID resume) or JSON with ?since=ID",
        request: None,
        ok: (200, json::<Vec<types::Event>>()),
    },
    Route {
        method: "GET",
        path: "/api/webhooks",
        access: Admin,
        summary: "Webhook delivery status",
        request: None,
        ok: (200, json::<Vec<types::Webhook>>()),
    },
    Route {
        method: "GET",
        path: "/api/backups",
        access: Admin,
        summary: "Backups of the database, newest first",
        request: None,
        ok: (200, json::<Vec<types::Backup>>()),
    },
    Route {
        method: "POST",
        path: "/api/backups",
        access: Admin,
        summary: "Take a backup now (waits for it; prunes beyond backup.keep)",
        request: None,
        ok: (201, json::<types::Backup>()),
    },
    Route {
        method: "GET",
        path: "/api/clients",
        access: Admin,
        summary: "List client keys",
        request: None,
        ok: (200, json::<Vec<types::Client>>()),
    },
    Route {
        method: "POST",
        path: "/api/clients",
        access: Admin,
        summary: "Create a client key (shown once)",
        request: json::<types::NewClient>(),
        ok: (201, json::<farm::NewClient>()),
    },
    Route {
        method: "DELETE",
        path: "/api/clients/{id}",
        access: Admin,
        summary: "Revoke a client key",
        request: None,
        ok: (204, None),
    },
    proxy_route("GET"),
    proxy_route("POST"),
    proxy_route("PUT"),
    proxy_route("PATCH"),
    proxy_route("DELETE"),
    Route {
        method: "GET",
        path: "/api/openapi.json",
        access: Public,
        summary: "This document",
        request: None,
        ok: (200, json::<serde_json::Value>()),
    },
];

/// The filters of the route `method path` in [`ROUTES`]: its method check
/// and its auth filter, built from the row's access and yielding the guard
/// `G` its handler takes. Building the router through this makes it panic
/// at startup (and in every test) if a route is not in the table or its
/// handler's guard is not the row's access, and [`front::Router::new`] checks
/// that every table row was built: the router, its access checks and the document
/// cannot drift apart.
fn endpoint<G: auth::Guard>(
    method: &'static str,
    path: &'static str,
    farm: &Arc<Farm>,
    built: &std::cell::RefCell<Vec<(&'static str, &'static str)>>,
) -> (
    impl Filter<Extract = (), Error = warp::Rejection> + Clone,
    impl Filter<Extract = (G,), Error = warp::Rejection> + Clone,
) {
    let row = declared::<G>(method, path, built);
    let m: warp::http::Method = method.parse().expect("route methods are valid");
    let method_filter = warp::method()
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
        .untuple_one();
    (method_filter, auth::filter::<G>(row.access, farm.clone()))
}

/// The row of `method path` in [`ROUTES`], noted in `built`. Panics if there
/// is none, or if its access is not that of the guard `G` the route's
/// handler takes: every route, in warp or in [`front`], is built through this.
fn declared<G: auth::Guard>(
    method: &'static str,
    path: &'static str,
    built: &std::cell::RefCell<Vec<(&'static str, &'static str)>>,
) -> &'static Route {
    let row = ROUTES
        .iter()
        .find(|r| r.method == method && r.path == path)
        .unwrap_or_else(|| panic!("route {method} {path} is not in http::ROUTES"));
    assert_eq!(
        row.access,
        G::ACCESS,
        "the handler of {method} {path} takes the guard of another access than http::ROUTES lists"
    );
    built.borrow_mut().push((method, path));
    row
}

/// `Cache-Control` of every answer (the farm's answers carry tokens and
/// account state: nothing is to be kept by a cache on the way).
const CACHE_CONTROL: &str = "no-store";

/// Rejection for a path that exists with another method (→ 405).
#[derive(Debug)]
pub struct WrongMethod;
impl warp::reject::Reject for WrongMethod {}

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

/// `a.or(b).or(c)...`, each boxed so the type stays small.
macro_rules! any_of {
    ($first:expr $(, $rest:expr)* $(,)?) => {
        $first.boxed() $(.or($rest).unify().boxed())*
    };
}

/// The route table, but for the proxy's rows ([`front`] serves those);
/// each route built is added to `built`.
fn routes(
    farm: Arc<Farm>,
    built: &std::cell::RefCell<Vec<(&'static str, &'static str)>>,
) -> BoxedFilter<(Response,)> {
    use auth::{Admin, Anyone};
    use handlers as h;
    use warp::path;
    let with_farm = {
        let farm = farm.clone();
        warp::any().map(move || farm.clone())
    };
    let raw_query = || warp::query::raw().or(warp::any().map(String::new)).unify();

    // One route: `route!(Guard, "METHOD", "/template", path filter, extra
    // filters... => handler)`. The handler is called with the path's
    // parameters, the farm, the extra filters' values, then the guard. The
    // auth filter runs after the body is read, as a handler would: a client
    // still sending its body reads the 401 instead of a reset connection.
    macro_rules! route {
        ($guard:ty, $method:literal, $template:literal, $path:expr $(, $arg:expr)* => $handler:expr) => {{
            let (method, auth) = endpoint::<$guard>($method, $template, &farm, built);
            $path
                .and(method)
                .and(with_farm.clone())
                $(.and($arg))*
                .and(auth)
                .then($handler)
        }};
    }

    // `/credential/next` is the hot path: it comes first, outside the `or`
    // chain below, so its requests do not walk (and box a future for) every
    // other route on the way.
    let credential_next = route!(Principal, "GET", "/credential/next",
        path!("credential" / "next"), raw_query() => h::credential_next);
    let others = any_of![
        route!(Anyone, "GET", "/healthz", path!("healthz") => h::healthz),
        route!(Admin, "GET", "/metrics", path!("metrics") => h::metrics),
        route!(Principal, "POST", "/credential/report",
            path!("credential" / "report"), json_body() => h::credential_report),
        route!(Principal, "DELETE", "/credential/lease/{lease_id}",
            path!("credential" / "lease" / String) => h::credential_release),
        route!(Admin, "GET", "/api/providers", path!("api" / "providers") => h::providers),
        route!(Admin, "GET", "/api/accounts", path!("api" / "accounts") => h::accounts_list),
        route!(Admin, "POST", "/api/accounts",
            path!("api" / "accounts"), json_body() => h::accounts_add),
        route!(Admin, "GET", "/api/accounts/{id}",
            path!("api" / "accounts" / String) => h::account_get),
        route!(Admin, "PATCH", "/api/accounts/{id}",
            path!("api" / "accounts" / String), json_body() => h::account_patch),
        route!(Admin, "DELETE", "/api/accounts/{id}",
            path!("api" / "accounts" / String) => h::account_delete),
        route!(Admin, "POST", "/api/accounts/{id}/login",
            path!("api" / "accounts" / String / "login") => h::login_start),
        route!(Admin, "POST", "/api/accounts/{id}/login/complete",
            path!("api" / "accounts" / String / "login" / "complete"), json_body()
            => h::login_complete),
        route!(Admin, "POST", "/api/accounts/{id}/refresh",
            path!("api" / "accounts" / String / "refresh") => h::account_refresh),
        route!(Admin, "PUT", "/api/accounts/{id}/script",
            path!("api" / "accounts" / String / "script"), text_body() => h::script_put),
        route!(Admin, "GET", "/api/accounts/{id}/script",
            path!("api" / "accounts" / String / "script") => h::script_get),
        route!(Admin, "DELETE", "/api/accounts/{id}/script",
            path!("api" / "accounts" / String / "script") => h::script_delete),
        route!(Admin, "GET", "/api/accounts/{id}/secrets",
            path!("api" / "accounts" / String / "secrets") => h::secrets_list),
        route!(Admin, "PUT", "/api/accounts/{id}/secrets/{name}",
            path!("api" / "accounts" / String / "secrets" / String), json_body()
            => h::secret_put),
        route!(Admin, "DELETE", "/api/accounts/{id}/secrets/{name}",
            path!("api" / "accounts" / String / "secrets" / String) => h::secret_delete),
        route!(Admin, "POST", "/api/accounts/{id}/relogin",
            path!("api" / "accounts" / String / "relogin") => h::relogin),
        route!(Admin, "POST", "/api/accounts/{id}/script/prove",
            path!("api" / "accounts" / String / "script" / "prove") => h::script_prove),
        route!(Admin, "GET", "/api/accounts/{id}/browser",
            path!("api" / "accounts" / String / "browser") => h::browser_info),
        route!(Admin, "DELETE", "/api/accounts/{id}/browser",
            path!("api" / "accounts" / String / "browser") => h::browser_reset),
        route!(Admin, "POST", "/api/accounts/{id}/browser/session",
            path!("api" / "accounts" / String / "browser" / "session"), json_body()
            => h::remote_open),
        route!(Admin, "DELETE", "/api/accounts/{id}/browser/session",
            path!("api" / "accounts" / String / "browser" / "session") => h::remote_close),
        route!(Anyone, "GET", "/api/browser/sessions/{session_id}/ws",
            path!("api" / "browser" / "sessions" / String / "ws"),
            warp::ws::ws().map(Some).or(warp::any().map(|| None)).unify()
            => remote::socket),
        route!(Admin, "GET", "/api/accounts/{id}/screenshot",
            path!("api" / "accounts" / String / "screenshot") => h::screenshot),
        route!(Admin, "GET", "/api/usage", path!("api" / "usage") => h::usage),
        route!(Admin, "GET", "/api/events", path!("api" / "events"), raw_query(),
            warp::header::optional::<String>("last-event-id") => h::events),
        route!(Admin, "GET", "/api/webhooks", path!("api" / "webhooks") => h::webhooks),
        route!(Admin, "GET", "/api/backups", path!("api" / "backups") => h::backups_list),
        route!(Admin, "POST", "/api/backups", path!("api" / "backups") => h::backups_create),
        route!(Admin, "GET", "/api/clients", path!("api" / "clients") => h::clients_list),
        route!(Admin, "POST", "/api/clients",
            path!("api" / "clients"), json_body() => h::clients_add),
        route!(Admin, "DELETE", "/api/clients/{id}",
            path!("api" / "clients" / String) => h::clients_revoke),
        route!(Anyone, "GET", "/api/openapi.json",
            path!("api" / "openapi.json") => h::openapi),
    ];
    let table = credential_next.or(others).unify();

    table
        .or(admin::page())
        .unify()
        .recover(error::recover)
        .unify()
        .with(warp::reply::with::header("cache-control", CACHE_CONTROL))
        .map(warp::Reply::into_response)
        .boxed()
}
