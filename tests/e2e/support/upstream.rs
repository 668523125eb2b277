//! A fake LLM upstream for the proxy: a hyper 1 server on a free loopback
//! port, speaking the shapes the official SDKs parse — Anthropic Messages
//! (`POST /v1/messages`), OpenAI Chat Completions (`POST /v1/chat/completions`)
//! and Responses (`POST /v1/responses`), as JSON or, with `"stream": true`,
//! as Server-Sent Events.
//!
//! What it answers is scripted per access token (the account the proxy
//! chose): a queue of [`Behaviour`]s per token, then [`Behaviour::Ok`]. It
//! records every request it sees, so a test can check what reached it (and
//! that a client key never did).
//!
//! `GET /api/oauth/usage` is a usage endpoint (`proxy.usage_url`): it
//! answers the JSON set for the token with [`Upstream::usage_answer`], and
//! 401 to any other token.
//!
//! Also compiled into `examples/fake_upstream.rs` (benchmarks), so it uses
//! nothing of the e2e harness.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};

/// What the upstream does with one request of a token.
#[derive(Clone, Debug, PartialEq)]
pub enum Behaviour {
    /// 200, JSON or a stream, per the request.
    Ok,
    /// 429 with `anthropic-ratelimit-unified-reset: <reset_epoch_s>` (and
    /// `retry-after` if given, in seconds).
    RateLimited {
        reset_epoch_s: Option<u64>,
        retry_after_s: Option<u64>,
    },
    /// A bare 429 with `x-should-retry: true` (a transient limit).
    ShouldRetry,
    /// 529 overloaded.
    Overloaded,
    /// 401: the token is refused.
    Unauthorized,
    /// 200 whose stream events come `gap` apart.
    Slow { gap: Duration },
    /// 200 whose stream breaks off after `events` events (no clean end).
    Cut { events: usize },
    /// The status line after `delay` (for first-byte timeouts).
    Stall { delay: Duration },
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Names lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The token in `Authorization: Bearer …`.
    pub fn bearer(&self) -> Option<&str> {
        self.header("authorization")?.strip_prefix("Bearer ")
    }
}

struct State {
    scripts: Mutex<HashMap<String, VecDeque<Behaviour>>>,
    seen: Mutex<Vec<Seen>>,
    /// The usage endpoint's answer per token, and how long it waits first.
    usage: Mutex<HashMap<String, (String, Duration)>>,
    /// Off in benchmarks, where the record would only grow.
    record: AtomicBool,
    /// The least size of a JSON answer's body, in bytes (0: as short as it
    /// comes); the text repeats to reach it. For benchmarks.
    json_bytes: AtomicUsize,
}

/// A running fake upstream; stops when dropped.
pub struct Upstream {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// A request header asking for a slow stream: its events this many
/// milliseconds apart (benchmarks hold streams open with it).
pub const GAP_HEADER: &str = "x-fake-gap-ms";

/// The text every successful answer carries, split into stream deltas.
pub const WORDS: [&str; 5] = ["Hello", " from", " the", " fake", " upstream"];

impl Upstream {
    /// Starts on a free loopback port.
    pub fn start() -> Upstream {
        Upstream::start_on("127.0.0.1:0".parse().expect("an address"), 2)
    }

    /// Starts on `addr` with `threads` runtime threads.
    pub fn start_on(addr: SocketAddr, threads: usize) -> Upstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()
            .expect("a tokio runtime for the fake upstream");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .expect("bind the fake upstream");
        let addr = listener.local_addr().expect("its address");
        let state = Arc::new(State {
            scripts: Mutex::default(),
            seen: Mutex::default(),
            usage: Mutex::default(),
            record: AtomicBool::new(true),
            json_bytes: AtomicUsize::new(0),
        });
        let shared = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
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
        Upstream {
            url: format!("http://{addr}"),
            state,
            runtime: Some(runtime),
        }
    }

    /// The next requests with `token` get `behaviours`, in order; then 200s.
    pub fn script(&self, token: &str, behaviours: &[Behaviour]) {
        let mut scripts = self.state.scripts.lock().unwrap();
        scripts
            .entry(token.to_string())
            .or_default()
            .extend(behaviours.iter().cloned());
    }

    /// `GET /api/oauth/usage` with `token` answers `body` (200, JSON).
    #[allow(dead_code)] // examples/fake_upstream.rs
    pub fn usage_answer(&self, token: &str, body: &str) {
        self.usage_answer_after(token, body, Duration::ZERO);
    }

    /// `usage_answer`, the status line sent after `delay`.
    #[allow(dead_code)] // examples/fake_upstream.rs
    pub fn usage_answer_after(&self, token: &str, body: &str, delay: Duration) {
        let mut usage = self.state.usage.lock().unwrap();
        usage.insert(token.to_string(), (body.to_string(), delay));
    }

    /// Stops recording requests (a benchmark's millions would pile up).
    #[allow(dead_code)] // examples/fake_upstream.rs
    pub fn stop_recording(&self) {
        self.state.record.store(false, Ordering::Relaxed);
    }

    /// JSON answers grow to at least `bytes` (their text repeats).
    #[allow(dead_code)] // examples/fake_upstream.rs
    pub fn pad_json_to(&self, bytes: usize) {
        self.state.json_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Every request seen so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Panics if `secret` appeared in any header or body the upstream saw.
    pub fn assert_never_saw(&self, secret: &str) {
        for s in self.seen() {
            let in_headers = s.headers.iter().any(|(_, v)| v.contains(secret));
            let in_body = String::from_utf8_lossy(&s.body).contains(secret);
            assert!(
                !in_headers && !in_body,
                "the upstream saw the secret in {} {}: {:?}",
                s.method,
                s.path,
                s.headers
            );
        }
    }

    /// Blocks the calling thread for ever (the example's main).
    #[allow(dead_code)] // examples/fake_upstream.rs
    pub fn serve_forever(self) -> ! {
        loop {
            std::thread::park();
        }
    }
}

impl Drop for Upstream {
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

/// Which API a path speaks.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Anthropic,
    Chat,
    Responses,
}

async fn answer(state: &State, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
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
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let seen = Seen {
        method,
        path: path.clone(),
        headers,
        body: body.clone(),
    };
    let token = seen.bearer().unwrap_or_default().to_string();
    let gap_header = seen
        .header(GAP_HEADER)
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    if state.record.load(Ordering::Relaxed) {
        state.seen.lock().unwrap().push(seen);
    }

    if path.starts_with("/api/oauth/usage") {
        let answer = state.usage.lock().unwrap().get(&token).cloned();
        return match answer {
            Some((body, delay)) => {
                tokio::time::sleep(delay).await;
                json(200, body)
            }
            None => error(
                Shape::Anthropic,
                401,
                "authentication_error",
                "unknown token",
            ),
        };
    }
    let shape = if path.starts_with("/v1/messages") {
        Shape::Anthropic
    } else if path.starts_with("/v1/chat/completions") {
        Shape::Chat
    } else if path.starts_with("/v1/responses") {
        Shape::Responses
    } else {
        return json(
            404,
            r#"{"error":{"type":"not_found","message":"no such path"}}"#.into(),
        );
    };
    let behaviour = state
        .scripts
        .lock()
        .unwrap()
        .get_mut(&token)
        .and_then(VecDeque::pop_front)
        .unwrap_or(Behaviour::Ok);
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let stream = request["stream"] == true;
    let model = request["model"]
        .as_str()
        .unwrap_or("fake-model")
        .to_string();
    let quota = [
        ("anthropic-ratelimit-unified-status", "allowed".to_string()),
        (
            "anthropic-ratelimit-unified-reset",
            (now_s() + 3600).to_string(),
        ),
        ("anthropic-ratelimit-unified-5h-utilization", "0.25".into()),
        (
            "anthropic-ratelimit-unified-5h-reset",
            (now_s() + 3600).to_string(),
        ),
    ];
    // A benchmark's slow streams are asked for by the client, through any
    // proxy that passes its headers on.
    let behaviour = match (behaviour, gap_header) {
        (Behaviour::Ok, Some(gap)) => Behaviour::Slow { gap },
        (b, _) => b,
    };
    let pad = state.json_bytes.load(Ordering::Relaxed);
    let mut resp = match behaviour {
        Behaviour::Ok => ok(shape, &model, stream, Duration::ZERO, None, pad),
        Behaviour::Slow { gap } => ok(shape, &model, stream, gap, None, pad),
        Behaviour::Cut { events } => ok(shape, &model, stream, Duration::ZERO, Some(events), pad),
        Behaviour::Stall { delay } => {
            tokio::time::sleep(delay).await;
            ok(shape, &model, stream, Duration::ZERO, None, pad)
        }
        Behaviour::RateLimited {
            reset_epoch_s,
            retry_after_s,
        } => {
            let mut r = error(shape, 429, "rate_limit_error", "rate limited");
            let h = r.headers_mut();
            if let Some(reset) = reset_epoch_s {
                h.insert("anthropic-ratelimit-unified-reset", reset.into());
                h.insert(
                    "anthropic-ratelimit-unified-status",
                    "rejected".parse().unwrap(),
                );
            }
            if let Some(s) = retry_after_s {
                h.insert("retry-after", s.into());
            }
            return r;
        }
        Behaviour::ShouldRetry => {
            let mut r = error(shape, 429, "rate_limit_error", "try again");
            r.headers_mut()
                .insert("x-should-retry", "true".parse().unwrap());
            return r;
        }
        Behaviour::Overloaded => return error(shape, 529, "overloaded_error", "Overloaded"),
        Behaviour::Unauthorized => {
            return error(shape, 401, "authentication_error", "invalid bearer token")
        }
    };
    for (name, value) in quota {
        resp.headers_mut().insert(name, value.parse().unwrap());
    }
    resp
}

fn json(status: u16, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("request-id", "req_fake")
        .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
        .unwrap()
}

fn error(shape: Shape, status: u16, kind: &str, message: &str) -> Response<Body> {
    let body = match shape {
        Shape::Anthropic => {
            serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        Shape::Chat | Shape::Responses => {
            serde_json::json!({"error": {"type": kind, "message": message, "code": kind}})
        }
    };
    json(status, body.to_string())
}

fn ok(
    shape: Shape,
    model: &str,
    stream: bool,
    gap: Duration,
    cut_after: Option<usize>,
    json_bytes: usize,
) -> Response<Body> {
    // The text alone comes to about `json_bytes`; the JSON around it adds a
    // few hundred bytes.
    let text: String = WORDS
        .concat()
        .repeat((json_bytes / WORDS.concat().len()).max(1));
    let created = now_s();
    if !stream {
        let body = match shape {
            Shape::Anthropic => serde_json::json!({
                "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 5, "output_tokens": 5}}),
            Shape::Chat => serde_json::json!({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop", "logprobs": null}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}}),
            Shape::Responses => responses_object(model, created, &text, "completed"),
        };
        return json(200, body.to_string());
    }
    let events = stream_events(shape, model, created);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(8);
    tokio::spawn(async move {
        for (i, event) in events.into_iter().enumerate() {
            if cut_after == Some(i) {
                // What was sent reaches the wire before the break (hyper
                // drops unflushed bytes when a body fails).
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = tx
                    .send(Err(std::io::Error::other(
                        "the fake upstream cuts the stream",
                    )))
                    .await;
                return;
            }
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(tokio_stream_from(rx)).boxed();
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("request-id", "req_fake")
        .body(body)
        .unwrap()
}

/// A receiver as a `Stream` (no tokio-stream dependency for one adapter).
fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + Sync + 'static
where
    T: Send + 'static,
{
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn responses_object(model: &str, created: u64, text: &str, status: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "resp_fake", "object": "response", "created_at": created, "status": status,
        "model": model, "error": null, "incomplete_details": null,
        "output": [{"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
        "usage": {"input_tokens": 5, "output_tokens": 5, "total_tokens": 10,
                  "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}})
}

/// The whole stream of one answer, one SSE event per item.
fn stream_events(shape: Shape, model: &str, created: u64) -> Vec<String> {
    let sse = |event: Option<&str>, data: serde_json::Value| match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    };
    let mut out = Vec::new();
    match shape {
        Shape::Anthropic => {
            out.push(sse(Some("message_start"), serde_json::json!({"type": "message_start", "message": {
                "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 5, "output_tokens": 1}}})));
            out.push(sse(
                Some("content_block_start"),
                serde_json::json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ));
            for w in WORDS {
                out.push(sse(
                    Some("content_block_delta"),
                    serde_json::json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": w}}),
                ));
            }
            out.push(sse(
                Some("content_block_stop"),
                serde_json::json!({"type": "content_block_stop", "index": 0}),
            ));
            out.push(sse(Some("message_delta"), serde_json::json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 5}})));
            out.push(sse(
                Some("message_stop"),
                serde_json::json!({"type": "message_stop"}),
            ));
        }
        Shape::Chat => {
            let chunk = |delta: serde_json::Value, finish: Option<&str>| {
                serde_json::json!({
                "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]})
            };
            out.push(sse(
                None,
                chunk(
                    serde_json::json!({"role": "assistant", "content": ""}),
                    None,
                ),
            ));
            for w in WORDS {
                out.push(sse(None, chunk(serde_json::json!({"content": w}), None)));
            }
            out.push(sse(None, chunk(serde_json::json!({}), Some("stop"))));
            out.push("data: [DONE]\n\n".to_string());
        }
        Shape::Responses => {
            // The whole event sequence of a streamed message: agent CLIs
            // (codex) build their answer from the item events, the SDKs
            // from the deltas.
            let text: String = WORDS.concat();
            let mut n = 0;
            let mut event = |kind: &str, mut data: serde_json::Value| {
                data["type"] = kind.into();
                data["sequence_number"] = n.into();
                n += 1;
                sse(Some(kind), data)
            };
            let item = |status: &str, text: Option<&str>| {
                let content = text.map_or_else(Vec::new, |t| {
                    vec![serde_json::json!({"type": "output_text", "text": t, "annotations": []})]
                });
                serde_json::json!({"type": "message", "id": "msg_fake", "status": status,
                    "role": "assistant", "content": content})
            };
            let part =
                |t: &str| serde_json::json!({"type": "output_text", "text": t, "annotations": []});
            let at =
                serde_json::json!({"item_id": "msg_fake", "output_index": 0, "content_index": 0});
            let with = |mut base: serde_json::Value, key: &str, value: serde_json::Value| {
                base[key] = value;
                base
            };
            out.push(event(
                "response.created",
                serde_json::json!({"response": responses_object(model, created, "", "in_progress")}),
            ));
            out.push(event(
                "response.output_item.added",
                serde_json::json!({"output_index": 0, "item": item("in_progress", None)}),
            ));
            out.push(event(
                "response.content_part.added",
                with(at.clone(), "part", part("")),
            ));
            for w in WORDS {
                out.push(event(
                    "response.output_text.delta",
                    with(at.clone(), "delta", w.into()),
                ));
            }
            out.push(event(
                "response.output_text.done",
                with(at.clone(), "text", text.clone().into()),
            ));
            out.push(event(
                "response.content_part.done",
                with(at.clone(), "part", part(&text)),
            ));
            out.push(event(
                "response.output_item.done",
                serde_json::json!({"output_index": 0, "item": item("completed", Some(&text))}),
            ));
            out.push(event(
                "response.completed",
                serde_json::json!({"response": responses_object(model, created, &text, "completed")}),
            ));
        }
    }
    out
}
