//! A blocking HTTP client for the farm's API, authenticated as the admin,
//! as a client key, or not at all.

use std::time::Duration;

use reqwest::blocking::Client;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;

use super::sse::EventStream;

/// One caller of the farm: a base URL and the bearer token it sends.
#[derive(Clone)]
pub struct Api {
    http: Client,
    base: String,
    /// The whole `Authorization` header value.
    authorization: Option<String>,
}

/// A response, read in full.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Resp {
    /// Reads a whole answer.
    pub fn read(resp: reqwest::blocking::Response) -> Resp {
        Resp {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            text: resp.text().unwrap_or_default(),
        }
    }
}

/// A `{}` JSON body for the methods that take a body (`POST`, `PUT`,
/// `PATCH`): a probe then reaches the handler, not the body checks.
pub fn probe_body(method: &Method) -> Option<Vec<u8>> {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH).then(|| b"{}".to_vec())
}

pub fn http_client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build an HTTP client")
}

impl Api {
    pub fn new(http: Client, base: &str, token: Option<&str>) -> Api {
        Api {
            http,
            base: base.to_string(),
            authorization: token.map(|t| format!("Bearer {t}")),
        }
    }

    /// The same farm with another `Authorization` header value (or none).
    pub fn with_authorization(&self, header: Option<&str>) -> Api {
        Api {
            authorization: header.map(str::to_string),
            ..self.clone()
        }
    }

    /// Sends a request; `Err` only when no HTTP answer came back. An event
    /// stream's body is not read (it never ends): its `text` is empty.
    pub fn try_send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> reqwest::Result<Resp> {
        let resp = self.request(method, path, body).send()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut answer = Resp {
            status,
            headers,
            text: String::new(),
        };
        if !answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream"))
        {
            answer.text = resp.text()?;
        }
        Ok(answer)
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> reqwest::blocking::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(auth) = &self.authorization {
            req = req.header("authorization", auth);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        req
    }

    /// `GET path` as a Server-Sent Events stream, resuming after
    /// `last_event_id` when given. Any answer but a 200 event stream is the
    /// `Err`, read in full.
    pub fn event_stream(
        &self,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<EventStream, Box<Resp>> {
        let mut req = self
            .request(Method::GET, path, None)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: no answer from the farm: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if status == 200 && content_type.starts_with("text/event-stream") {
            return Ok(EventStream::read(resp));
        }
        Err(Box::new(Resp {
            status,
            headers,
            text: resp.text().unwrap_or_default(),
        }))
    }

    pub fn send(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Resp {
        let what = format!("{method} {path}");
        self.try_send(method, path, body)
            .unwrap_or_else(|e| panic!("{what}: no answer from the farm: {e}"))
    }

    pub fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, None)
    }

    pub fn post(&self, path: &str, body: Value) -> Resp {
        self.send(Method::POST, path, Some(body.to_string().into_bytes()))
    }

    pub fn patch(&self, path: &str, body: Value) -> Resp {
        self.send(Method::PATCH, path, Some(body.to_string().into_bytes()))
    }

    pub fn delete(&self, path: &str) -> Resp {
        self.send(Method::DELETE, path, None)
    }

    /// `GET /credential/next` for `provider`, with an optional sticky session.
    pub fn next(&self, provider: &str, session: Option<&str>) -> Resp {
        let mut path = format!("/credential/next?provider={provider}");
        if let Some(s) = session {
            path.push_str(&format!("&session={s}"));
        }
        self.get(&path)
    }

    /// A lease that must be granted (200).
    pub fn lease(&self, provider: &str, session: Option<&str>) -> Value {
        self.next(provider, session).ok()
    }

    /// `POST /credential/report`, which must be recorded.
    pub fn report(&self, lease: &Value, outcome: &str, retry_after_s: Option<u64>) {
        let mut body = serde_json::json!({"lease_id": lease["lease_id"], "outcome": outcome});
        if let Some(s) = retry_after_s {
            body["retry_after_s"] = s.into();
        }
        let answer = self.post("/credential/report", body).ok();
        assert_eq!(answer["recorded"], true, "{answer}");
    }
}

impl Resp {
    /// The body as JSON (panics with the text when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!("HTTP {} body is not JSON ({e}): {}", self.status, self.text)
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts `status`; returns the JSON body (`null` when empty).
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status, status,
            "expected HTTP {status}, got {}: {}",
            self.status, self.text
        );
        if self.text.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts a 200 and returns the JSON body.
    pub fn ok(&self) -> Value {
        self.expect(200)
    }

    /// Asserts an error answer: `status`, a JSON content type, and the body
    /// `{"error": code, "detail": "<non-empty sentence>"}`. Returns the body.
    pub fn expect_error(&self, status: u16, code: &str) -> Value {
        if let Some(problem) = self.error_problem(status, code) {
            panic!("{problem}");
        }
        self.json()
    }

    /// What is wrong with this response as the error answer `status` /
    /// `code` (see [`Resp::expect_error`]), or `None`.
    pub fn error_problem(&self, status: u16, code: &str) -> Option<String> {
        let content_type = self.header("content-type").unwrap_or_default();
        let body: Option<Value> = serde_json::from_str(&self.text).ok();
        let detail = body
            .as_ref()
            .and_then(|b| b["detail"].as_str())
            .unwrap_or_default();
        let problem = if self.status != status {
            format!("expected HTTP {status}, got {}", self.status)
        } else if !content_type.starts_with("application/json") {
            format!("content-type {content_type:?}")
        } else if body.as_ref().is_none_or(|b| b["error"] != code) {
            format!("expected error code {code:?}")
        } else if detail.trim().is_empty() {
            "no detail sentence".to_string()
        } else {
            return None;
        };
        Some(format!("{problem}: {}", self.text))
    }
}
