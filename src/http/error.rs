//! The one place where errors become HTTP responses: every error body is
//! `{"error": "<short_code>", "detail": "<human sentence>"}`.

use std::borrow::Cow;
use std::convert::Infallible;

use serde::{Deserialize, Serialize};
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::farm::FarmError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub retry_after_s: Option<i64>,
}

/// Every error's body (also what the CLI reads back: `Cow` so that it
/// borrows when rendering and owns when parsing escaped text).
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Error")]
pub struct Body<'a> {
    /// A short code (`unauthorized`, `not_found`, `invalid_json`, ...).
    #[serde(borrow)]
    pub error: Cow<'a, str>,
    /// A human sentence.
    #[serde(borrow)]
    pub detail: Cow<'a, str>,
    /// With `no_account_available`: when to retry (also `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<i64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            retry_after_s: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    /// Deliberately says nothing about which part of the credentials was wrong.
    pub fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    pub fn forbidden() -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this key may not use the admin API",
        )
    }

    /// The path exists, not with this method.
    pub fn method_not_allowed() -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    }

    pub fn into_response(self) -> Response {
        let body = Body {
            error: Cow::Borrowed(self.code),
            detail: Cow::Borrowed(&self.detail),
            retry_after_s: self.retry_after_s,
        };
        let mut resp =
            warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<FarmError> for ApiError {
    fn from(e: FarmError) -> Self {
        let detail = e.to_string();
        match e {
            FarmError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "not_found", detail),
            FarmError::Invalid(_) => ApiError::bad_request(detail),
            FarmError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", detail),
            FarmError::NoAccountAvailable { retry_after_s, .. } => ApiError {
                retry_after_s: Some(retry_after_s),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_account_available",
                    detail,
                )
            },
            FarmError::LeaseClosed(_) => {
                ApiError::new(StatusCode::CONFLICT, "lease_closed", detail)
            }
            FarmError::RateLimited { retry_after_s, .. } => ApiError {
                retry_after_s: Some(retry_after_s),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail)
            },
            FarmError::Login(_) | FarmError::CodeExchange(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "login_failed", detail)
            }
            FarmError::InvalidScript(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_script", detail)
            }
            FarmError::Relogin(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "relogin_failed", detail)
            }
            FarmError::Refresh(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "refresh_failed", detail)
            }
            FarmError::Config(_) => {
                tracing::error!(error = %detail, "configuration error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "config_error", detail)
            }
            FarmError::Backup(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "backup_failed", detail)
            }
            FarmError::Store(StoreError::DuplicateAccount { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", detail)
            }
            FarmError::Store(_) => {
                tracing::error!(error = %detail, "storage error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "a storage error occurred; see the farm's log",
                )
            }
        }
    }
}

impl From<super::auth::Denied> for ApiError {
    fn from(denied: super::auth::Denied) -> Self {
        match denied {
            super::auth::Denied::Unauthorized => ApiError::unauthorized(),
            super::auth::Denied::Forbidden => ApiError::forbidden(),
        }
    }
}

impl From<crate::proxy::ProxyError> for ApiError {
    fn from(e: crate::proxy::ProxyError) -> Self {
        use crate::proxy::ProxyError as P;
        let detail = e.to_string();
        match e {
            P::Unauthorized => ApiError::unauthorized(),
            P::NotProxied(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", detail),
            P::TooLarge(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", detail)
            }
            P::Body(_) => ApiError::bad_request(detail),
            P::WebSocket => ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", detail),
            P::Unreachable(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "upstream_unreachable", detail)
            }
            P::Timeout(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", detail),
            P::Farm(e) => e.into(),
        }
    }
}

/// Renders a handler's result.
pub fn render<T: Reply>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(reply) => reply.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Turns warp's own rejections (no route, wrong method, body too large…)
/// into the same JSON shape.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    // The auth filter refuses only on a route whose path and method
    // matched: its answer beats the other routes' "not this one".
    let e = if let Some(denied) = rejection.find::<super::auth::Denied>() {
        ApiError::from(*denied)
    } else if rejection.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than 1 MiB",
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "send a Content-Length header with the body",
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some()
        || rejection.find::<super::WrongMethod>().is_some()
    {
        ApiError::method_not_allowed()
    } else if let Some(q) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::bad_request(format!("invalid query string: {q}"))
    } else if let Some(h) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::bad_request(h.to_string())
    } else {
        tracing::warn!(?rejection, "unhandled rejection");
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request could not be processed",
        )
    };
    Ok(e.into_response())
}
