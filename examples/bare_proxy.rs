//! The floor of the proxy benchmark (scripts/bench-proxy): a bare
//! pass-through proxy with the farm's proxy's parts — a hyper 1 server and a
//! pooled reqwest client — and none of its work (no client key, no lease, no
//! failover, no header rules beyond hop-by-hop).
//!
//! `cargo run --release --example bare_proxy -- UPSTREAM [ADDR]`
//! (default `127.0.0.1:0`). Prints `LISTENING http://…` and serves until
//! killed: `<ADDR>/<path>` goes to `<UPSTREAM>/<path>`.
//!
//! The request body is read in full before it goes upstream, as the farm's
//! proxy does (it may replay it on another account); the answer streams
//! back chunk by chunk as it arrives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};

type Body = http_body_util::combinators::BoxBody<Bytes, reqwest::Error>;

/// Headers that describe one connection, not the message: never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

struct Proxy {
    upstream: String,
    http: reqwest::Client,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let upstream = args
        .next()
        .expect("UPSTREAM: the base URL to forward to, such as http://127.0.0.1:8080")
        .trim_end_matches('/')
        .to_owned();
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:0".to_string())
        .parse()
        .expect("ADDR: an IP address and port, such as 127.0.0.1:8081");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(serve(upstream, addr));
}

async fn serve(upstream: String, addr: SocketAddr) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .build()
        .expect("an HTTP client");
    let proxy = Arc::new(Proxy { upstream, http });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind the bare proxy");
    println!(
        "LISTENING http://{}",
        listener.local_addr().expect("its address")
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(forward(&proxy, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(proxy: &Proxy, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{}", proxy.upstream, path);
    let mut headers = parts.headers;
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad_gateway(format!("reading the request body: {e}")),
    };
    let sent = proxy
        .http
        .request(parts.method, url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let resp = match sent {
        Ok(resp) => resp,
        Err(e) => return bad_gateway(format!("upstream: {e}")),
    };
    let mut out = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out = out.header(name, value);
        }
    }
    let chunks = resp.bytes_stream().map(|c| c.map(Frame::data));
    out.body(BodyExt::boxed(StreamBody::new(chunks)))
        .unwrap_or_else(|e| bad_gateway(format!("answer: {e}")))
}

fn bad_gateway(why: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(why)).map_err(|e| match e {}).boxed());
    *resp.status_mut() = hyper::StatusCode::BAD_GATEWAY;
    resp
}
