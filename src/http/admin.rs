//! The admin web page, embedded in the binary (no CDN, no separate server).
//! The page itself is public; every API call it makes carries the admin
//! token, which the person types in and the page keeps in session storage.

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

const INDEX: &str = include_str!("admin/index.html");
const APP_JS: &str = include_str!("admin/app.js");
const APP_CSS: &str = include_str!("admin/app.css");

/// Scripts and styles only from the farm itself; screenshots as blobs.
const CSP: &str =
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = warp::reply::with_header(body, "content-type", content_type).into_response();
    let h = resp.headers_mut();
    h.insert(
        "content-security-policy",
        warp::http::HeaderValue::from_static(CSP),
    );
    h.insert(
        "x-content-type-options",
        warp::http::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "referrer-policy",
        warp::http::HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// `GET /admin`, `/admin/`, `/admin/app.js`, `/admin/app.css`.
pub fn page() -> BoxedFilter<(Response,)> {
    use warp::{get, path};
    // The path before the method: another method on one of these paths is
    // a 405, but on any other path it must stay the 404 of an unknown route.
    let index = path!("admin")
        .or(path!("admin" / ..).and(path::end()))
        .unify()
        .and(get())
        .map(|| asset(INDEX, "text/html; charset=utf-8"));
    let js = path!("admin" / "app.js")
        .and(get())
        .map(|| asset(APP_JS, "text/javascript; charset=utf-8"));
    let css = path!("admin" / "app.css")
        .and(get())
        .map(|| asset(APP_CSS, "text/css; charset=utf-8"));
    let root = path::end()
        .and(get())
        .map(|| warp::redirect::see_other(warp::http::Uri::from_static("/admin/")).into_response());
    index
        .or(js)
        .unify()
        .or(css)
        .unify()
        .or(root)
        .unify()
        .boxed()
}
