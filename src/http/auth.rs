//! Who may call a route, enforced by the router: the auth filter of each
//! route is built from its row in [`super::ROUTES`], and the handler takes
//! the guard that filter yields ([`Admin`], [`Principal`] or [`Anyone`]).
//! A handler cannot be reached without its check, and the router panics at
//! construction if a handler's guard does not match its row's access.

use std::future::ready;
use std::sync::Arc;

use warp::Filter;

use super::Access;
use crate::farm::{Farm, Principal};

/// Proof that the caller presented the admin token. Only the auth filter
/// makes one.
#[derive(Debug)]
pub struct Admin(());

/// A public route's guard: no credentials were read, and it names nobody.
#[derive(Debug)]
pub struct Anyone(());

/// Why the auth filter refused a request; rendered by `error::recover`
/// ahead of every other rejection (this route matched; the others did not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token, or not one the farm knows (401).
    Unauthorized,
    /// A client key on an admin route (403).
    Forbidden,
}
impl warp::reject::Reject for Denied {}

/// What a handler is handed once its route's access is satisfied.
pub trait Guard: Sized + Send + 'static {
    const ACCESS: Access;
    /// `who` is `None` when the route is public (nothing was checked).
    fn admit(who: Option<Principal>) -> Result<Self, Denied>;
}

impl Guard for Anyone {
    const ACCESS: Access = Access::Public;
    fn admit(_: Option<Principal>) -> Result<Self, Denied> {
        Ok(Anyone(()))
    }
}

impl Guard for Principal {
    const ACCESS: Access = Access::Client;
    fn admit(who: Option<Principal>) -> Result<Self, Denied> {
        who.ok_or(Denied::Unauthorized)
    }
}

impl Guard for Admin {
    const ACCESS: Access = Access::Admin;
    fn admit(who: Option<Principal>) -> Result<Self, Denied> {
        match who {
            Some(Principal::Admin) => Ok(Admin(())),
            Some(Principal::Client(_)) => Err(Denied::Forbidden),
            None => Err(Denied::Unauthorized),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is
/// case-insensitive (RFC 9110 §11.1); one or more spaces separate it from
/// the token.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The check behind every route: the request's credential (`Authorization:
/// Bearer`, else `x-api-key`, what SDKs send their API key as) admitted by
/// the guard `G` of a route with `access`. Public routes read nothing.
pub(super) fn admit<G: Guard>(
    access: Access,
    authorization: Option<&str>,
    api_key: Option<&str>,
    farm: &Farm,
) -> Result<G, Denied> {
    if access == Access::Public {
        return G::admit(None);
    }
    authorization
        .and_then(bearer_token)
        .or(api_key)
        .and_then(|t| farm.authenticate(t))
        .ok_or(Denied::Unauthorized)
        .and_then(|who| G::admit(Some(who)))
}

/// The auth filter of a route with `access`, yielding its guard `G`.
pub(super) fn filter<G: Guard>(
    access: Access,
    farm: Arc<Farm>,
) -> impl Filter<Extract = (G,), Error = warp::Rejection> + Clone {
    let header = |name: &'static str| {
        warp::header::optional::<String>(name)
            .or(warp::any().map(|| None))
            .unify()
    };
    header("authorization").and(header("x-api-key")).and_then(
        move |authorization: Option<String>, api_key: Option<String>| {
            let admitted = admit(access, authorization.as_deref(), api_key.as_deref(), &farm);
            ready(admitted.map_err(warp::reject::custom))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer t0k", "bearer t0k", "BEARER t0k", "bEaReR  t0k "] {
            assert_eq!(bearer_token(header), Some("t0k"), "{header:?}");
        }
        for header in [
            "Bearer",
            "Bearer ",
            "Bearer   ",
            "Basic t0k",
            "Bearert0k",
            "Bearers t0k",
        ] {
            assert_eq!(bearer_token(header), None, "{header:?}");
        }
    }

    #[test]
    fn only_the_admin_token_makes_an_admin_guard() {
        assert!(Admin::admit(Some(Principal::Admin)).is_ok());
        assert_eq!(
            Admin::admit(Some(Principal::Client(3))).unwrap_err(),
            Denied::Forbidden
        );
        assert_eq!(Admin::admit(None).unwrap_err(), Denied::Unauthorized);
        assert_eq!(Principal::admit(None).unwrap_err(), Denied::Unauthorized);
        assert_eq!(
            Principal::admit(Some(Principal::Client(3))).unwrap(),
            Principal::Client(3)
        );
    }
}
