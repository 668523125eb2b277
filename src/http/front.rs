//! What the listener serves on each connection ([`Router::service`]): a
//! request to the rotating proxy goes straight to [`crate::proxy::handle`],
//! every other request to warp's route table ([`super::routes`]).
//!
//! The proxy's requests are the farm's busiest and pass through as they
//! came: walking warp's filter chain for them (the `or` of the routes before
//! it, a clone of the request's headers, a boxed future per filter level)
//! cost more CPU than the proxy's own work between client and upstream.
//! Their access is still their `ROUTES` rows' (`PROXY_PATH`, one per
//! method): the rows are looked up when the router is built (through
//! [`super::declared`], as every warp route's: it panics if a row's access
//! is not the proxy's guard) and checked by the same function as every route's ([`auth::admit`]).
//! A method without a row is a 405, as on any route; a path without a
//! provider goes to warp, which answers it as any unknown route.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::future::Either;
use hyper::body::Incoming;
use warp::filters::BoxedFilter;
use warp::http::header::{HeaderValue, CACHE_CONTROL};
use warp::http::{Method, Request};
use warp::reply::Response;

use super::auth;
use super::error::ApiError;
use super::{Access, PROXY_PATH, ROUTES};
use crate::farm::{Farm, Principal};

/// The listener's routes: warp's table and the proxy beside it.
#[derive(Clone)]
pub struct Router {
    routes: BoxedFilter<(Response,)>,
    proxy: Arc<ProxyFront>,
}

/// The proxy's `ROUTES` rows, as served outside warp.
struct ProxyFront {
    farm: Arc<Farm>,
    /// Each method with a row, and the row's access.
    rows: Vec<(Method, Access)>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Router {
    pub fn new(farm: Arc<Farm>) -> Router {
        let built = std::cell::RefCell::new(Vec::new());
        let routes = super::routes(farm.clone(), &built);
        let mut rows = Vec::new();
        for row in ROUTES.iter().filter(|r| r.path == PROXY_PATH) {
            let row = super::declared::<Principal>(row.method, row.path, &built);
            let method: Method = row.method.parse().expect("route methods are valid");
            rows.push((method, row.access));
        }
        let built = built.into_inner();
        for r in ROUTES {
            assert!(
                built.contains(&(r.method, r.path)),
                "http::ROUTES lists {} {} but the router has no such route",
                r.method,
                r.path
            );
        }
        Router {
            routes,
            proxy: Arc::new(ProxyFront { farm, rows }),
        }
    }

    /// One connection's service.
    pub fn service(
        &self,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response,
        Error = Infallible,
        Future: Send + 'static,
    > + Send
           + 'static {
        Connection {
            warp: hyper_util::service::TowerToHyperService::new(warp::service(self.routes.clone())),
            proxy: self.proxy.clone(),
        }
    }
}

struct Connection<W> {
    warp: W,
    proxy: Arc<ProxyFront>,
}

impl<W> hyper::service::Service<Request<Incoming>> for Connection<W>
where
    W: hyper::service::Service<Request<Incoming>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<W::Future, Answer>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if !self.proxy.is_proxied(&req) {
            return Either::Left(self.warp.call(req));
        }
        let proxy = self.proxy.clone();
        Either::Right(Box::pin(async move {
            let mut resp = match proxy.access(req.method()) {
                Some(access) => proxy.serve(access, req).await,
                None => ApiError::method_not_allowed().into_response(),
            };
            // As the route table's answers.
            resp.headers_mut().insert(
                CACHE_CONTROL,
                HeaderValue::from_static(super::CACHE_CONTROL),
            );
            Ok(resp)
        }))
    }
}

impl ProxyFront {
    /// Whether the path is the proxy's: `/proxy/<provider>/…`.
    fn is_proxied(&self, req: &Request<Incoming>) -> bool {
        split(req.uri().path()).is_some_and(|(provider, _)| !provider.is_empty())
    }

    /// The access of the proxy's row for `method` (`None`: it has none).
    fn access(&self, method: &Method) -> Option<Access> {
        self.rows
            .iter()
            .find(|(m, _)| m == method)
            .map(|&(_, access)| access)
    }

    async fn serve(&self, access: Access, req: Request<Incoming>) -> Response {
        let (parts, body) = req.into_parts();
        let header = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let admitted = auth::admit::<Principal>(
            access,
            header("authorization"),
            header("x-api-key"),
            &self.farm,
        );
        match admitted {
            Err(denied) => ApiError::from(denied).into_response(),
            Ok(who) => {
                let (provider, path) = split(parts.uri.path()).unwrap_or_default();
                let incoming = crate::proxy::Incoming {
                    provider: provider.to_owned(),
                    path: path.to_owned(),
                    query: parts.uri.query().unwrap_or_default().to_owned(),
                    method: parts.method,
                    headers: parts.headers,
                };
                let body = http_body_util::BodyDataStream::new(body);
                crate::proxy::handle(self.farm.clone(), who, incoming, body, |e| {
                    ApiError::from(e).into_response()
                })
                .await
            }
        }
    }
}

/// `/proxy/<provider>/<path>` → (provider, path); `<path>` may be empty
/// (`/proxy/<provider>` and `/proxy/<provider>/` both forward to the
/// upstream's base).
fn split(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/proxy/")?;
    Some(rest.split_once('/').unwrap_or((rest, "")))
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn a_proxy_path_splits_into_provider_and_upstream_path() {
        assert_eq!(
            split("/proxy/work/v1/messages"),
            Some(("work", "v1/messages"))
        );
        assert_eq!(split("/proxy/work/"), Some(("work", "")));
        assert_eq!(split("/proxy/work"), Some(("work", "")));
        assert_eq!(split("/proxy/"), Some(("", "")));
        assert_eq!(split("/proxyx/work/v1"), None);
        assert_eq!(split("/api/proxy/work"), None);
    }
}
