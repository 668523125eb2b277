//! The loopback redirect listener: while a login is pending on a provider
//! whose `redirect_uri` is `http://127.0.0.1:PORT/path`, the farm listens
//! there, hands the redirect URL (`?code=&state=`) to the farm's callback,
//! and shows a small page with the outcome. It knows nothing of the farm:
//! `farm/login.rs` starts it with the callback that finishes the login.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::oneshot;
use warp::http::StatusCode;
use warp::Filter;

use crate::domain::AccountId;

/// What the listener answers on any other path; `doctor` knows the farm's
/// own listener by it.
pub const OWN_PAGE: &str = "This address only receives login redirects.";

/// How a redirect ended, for the page the person sees.
pub enum Landing {
    LoggedIn(AccountId),
    /// The login failed; the farm's message, safe to show.
    Failed(String),
    /// The farm is shutting down.
    Stopping,
}

/// Finishes a login from the full redirect URL.
pub type Finish = Arc<dyn Fn(String) -> BoxFuture<'static, Landing> + Send + Sync>;

/// Binds `addr` and serves the callback on `path` until the returned
/// sender is used (or dropped).
pub async fn spawn(
    addr: SocketAddr,
    path: String,
    finish: Finish,
) -> std::io::Result<oneshot::Sender<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let route = warp::get()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .then(move |full: warp::path::FullPath, query: String| {
            let finish = finish.clone();
            let path = path.clone();
            async move {
                if full.as_str() != path {
                    return page(StatusCode::NOT_FOUND, "Not found", OWN_PAGE);
                }
                let url = format!("http://{addr}{path}?{query}");
                match finish(url).await {
                    Landing::LoggedIn(id) => page(
                        StatusCode::OK,
                        "Logged in",
                        &format!("Account {id} is logged in. You can close this page."),
                    ),
                    Landing::Failed(e) => page(StatusCode::BAD_REQUEST, "Login failed", &e),
                    Landing::Stopping => page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Farm stopping",
                        "The farm is shutting down.",
                    ),
                }
            }
        });
    tokio::spawn(
        warp::serve(route)
            .incoming(listener)
            .graceful(async {
                let _ = stopped.await;
            })
            .run(),
    );
    tracing::info!(%addr, "listening for login redirects");
    Ok(stop)
}

fn page(status: StatusCode, title: &str, message: &str) -> warp::reply::Response {
    use warp::Reply;
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t} — relogin-farm</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head>\
         <body style=\"font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto\">\
         <h1>{t}</h1><p>{m}</p></body></html>",
        t = escape(title),
        m = escape(message)
    );
    warp::reply::with_status(warp::reply::html(html), status).into_response()
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
