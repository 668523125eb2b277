//! The rotating proxy (`/proxy/{provider}/{path}`) through the real binary,
//! against the fake upstream of `support::upstream`, with accounts logged in
//! at the real OIDC provider: failover before the first byte, cooldowns at
//! the announced reset, refresh on 401, streaming, limits, and what reaches
//! the upstream.

use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::blocking::Client;

use crate::support::upstream::{Behaviour, Upstream, WORDS};
use crate::support::{
    event_kinds, free_port, int_of, json, str_of, time_of, wait_for, Bed, Resp, Settings, Value,
    PROVIDER,
};

/// A farm whose provider proxies to `upstream`; `mia` (priority 0) serves
/// first and `ned` (priority 1) only when she cannot (`fill-first`).
struct ProxyBed {
    bed: Bed,
    key: String,
    mia: i64,
    ned: i64,
    http: Client,
}

fn proxy_settings(upstream: &str, extra: &str) -> Settings {
    Settings {
        strategy: "fill-first",
        default_cooldown: "30s",
        max_cooldown: "10m",
        ..Settings::default()
    }
    .with_toml(&format!(
        "[provider.proxy]\nupstream = \"{upstream}\"\nconnect_timeout = \"2s\"\n{extra}"
    ))
}

impl ProxyBed {
    fn start(upstream: &str, extra: &str) -> ProxyBed {
        let bed = Bed::start(proxy_settings(upstream, extra));
        let mia = bed.logged_in_with_priority("mia", 0);
        let ned = bed.logged_in_with_priority("ned", 1);
        let (_, key) = bed.new_client("sdk");
        ProxyBed {
            bed,
            key,
            mia,
            ned,
            http: Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a client"),
        }
    }

    /// The account's current access token, as the admin API's lease shows
    /// it (leases of `who` until that account serves; `fill-first` means
    /// `mia` unless she cannot).
    fn token_of(&self, id: i64) -> String {
        let lease = self.bed.admin().lease(PROVIDER, None);
        assert_eq!(int_of(&lease, "account_id"), id, "{lease}");
        str_of(&lease, "access_token").to_string()
    }

    /// Both accounts' tokens: `ned`'s by disabling `mia` for a moment.
    fn tokens(&self) -> HashMap<i64, String> {
        let mia = self.token_of(self.mia);
        let path = format!("/api/accounts/{}", self.mia);
        let admin = self.bed.admin();
        admin
            .patch(&path, serde_json::json!({"enabled": false}))
            .ok();
        let ned = self.token_of(self.ned);
        admin
            .patch(&path, serde_json::json!({"enabled": true}))
            .ok();
        HashMap::from([(self.mia, mia), (self.ned, ned)])
    }

    /// The next request of each account gets a 429 with `retry-after: seconds`.
    fn every_account_rate_limited(&self, upstream: &Upstream, seconds: u64) {
        for token in self.tokens().values() {
            upstream.script(
                token,
                &[Behaviour::RateLimited {
                    reset_epoch_s: None,
                    retry_after_s: Some(seconds),
                }],
            );
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/proxy/{PROVIDER}{path}", self.bed.url())
    }

    /// `POST /proxy/demo<path>` with the client key as `x-api-key`.
    fn post(&self, path: &str, body: &[u8]) -> Resp {
        let resp = self
            .http
            .post(self.url(path))
            .header("x-api-key", &self.key)
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .body(body.to_vec())
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: no answer: {e}"));
        Resp::read(resp)
    }

    fn served_by(resp: &Resp) -> i64 {
        resp.header("x-relogin-account")
            .unwrap_or_else(|| panic!("no x-relogin-account: {resp:?}"))
            .parse()
            .expect("an account id")
    }
}

const MESSAGE: &[u8] =
    br#"{"model":"claude-x","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;

/// The lease's entry in `/api/usage`'s recent leases once its attempt is
/// recorded (an answer relayed to the client is recorded when its body ends).
fn attempt_of(pb: &ProxyBed, lease: &str) -> Value {
    let mut found = Value::Null;
    wait_for("the attempt's record", Duration::from_secs(5), || {
        let usage: Value = pb.bed.admin().get("/api/usage").ok();
        found = usage["recent"]
            .as_array()
            .and_then(|r| r.iter().find(|l| l["lease_id"] == lease).cloned())
            .unwrap_or(Value::Null);
        if found["upstream"].is_object() {
            Ok(())
        } else {
            Err(format!("{lease}: {found}"))
        }
    });
    found
}

/// Every recent lease's attempt, newest first: (account, status, body_end).
fn attempts(pb: &ProxyBed) -> Vec<(i64, i64, String)> {
    let usage: Value = pb.bed.admin().get("/api/usage").ok();
    usage["recent"]
        .as_array()
        .expect("recent")
        .iter()
        .filter(|l| l["upstream"].is_object())
        .map(|l| {
            (
                l["account_id"].as_i64().unwrap(),
                l["upstream"]["status"].as_i64().unwrap(),
                l["upstream"]["body_end"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn now_s() -> u64 {
    Utc::now().timestamp() as u64
}

#[test]
fn a_429_moves_to_the_next_account_which_cools_until_the_announced_reset() {
    let upstream = Upstream::start();
    let pb = ProxyBed::start(&upstream.url, "");
    let tokens = pb.tokens();
    let reset = now_s() + 4;
    upstream.script(
        &tokens[&pb.mia],
        &[Behaviour::RateLimited {
            reset_epoch_s: Some(reset),
            retry_after_s: None,
        }],
    );
    // An odd body (spacing, unicode, no newline at the end) to check the replay.
    let body = "{ \"model\":\"claude-x\",  \"max_tokens\":16,\n\"messages\":[{\"role\":\"user\",\"content\":\"héllo \\u00e9\"}]}";
    let resp = pb.post("/v1/messages", body.as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text);
    assert_eq!(resp.json()["content"][0]["text"], WORDS.concat());
    assert_eq!(ProxyBed::served_by(&resp), pb.ned, "{resp:?}");
    assert!(resp.header("x-relogin-lease").is_some(), "{resp:?}");
    // Each attempt is a lease recorded with what the upstream did.
    let served = attempt_of(&pb, resp.header("x-relogin-lease").unwrap());
    assert_eq!(served["outcome"], "ok", "{served}");
    assert_eq!(served["upstream"]["status"], 200, "{served}");
    assert_eq!(served["upstream"]["body_end"], "complete", "{served}");
    assert_eq!(
        served["upstream"]["bytes"],
        resp.text.len() as u64,
        "{served}"
    );
    assert!(served["upstream"]["latency_ms"].is_u64(), "{served}");
    assert_eq!(
        attempts(&pb),
        [
            (pb.ned, 200, "complete".to_owned()),
            (pb.mia, 429, "not_relayed".to_owned())
        ]
    );

    let seen = upstream.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].bearer(), Some(tokens[&pb.mia].as_str()));
    assert_eq!(
        seen[1].bearer(),
        Some(tokens[&pb.ned].as_str()),
        "the upstream saw another token than x-relogin-account says"
    );
    for s in &seen {
        assert_eq!(
            s.body,
            body.as_bytes(),
            "the body was not replayed byte for byte"
        );
        assert_eq!(s.path, "/v1/messages");
        assert_eq!(s.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(s.header("x-api-key"), None);
    }
    upstream.assert_never_saw(&pb.key);

    // mia cools down until the reset the upstream announced.
    let account = pb.bed.account(pb.mia);
    assert_eq!(account["state"], "cooling_down", "{account}");
    let until = time_of(&account, "cooldown_until").timestamp();
    assert!(
        (reset as i64..=reset as i64 + 1).contains(&until),
        "cooldown until {until}, the upstream said {reset}"
    );
    let events = pb.bed.events_since(0);
    let failover = events
        .iter()
        .find(|e| e["kind"] == "proxy_failover")
        .unwrap_or_else(|| panic!("no proxy_failover in {:?}", event_kinds(&events)));
    assert_eq!(failover["account_id"], pb.mia, "{failover}");
    let detail = str_of(failover, "detail");
    assert!(
        detail.contains(&format!("account {}", pb.ned)) && detail.contains("429"),
        "{detail}"
    );
    assert_eq!(
        pb.bed
            .metric("relogin_farm_proxy_failovers_total{reason=\"429\"}"),
        1.0
    );
    assert_eq!(
        pb.bed.metric(&format!(
            "relogin_farm_proxy_requests_total{{provider=\"{PROVIDER}\",status=\"200\"}}"
        )),
        1.0
    );

    // While she cools, ned serves; after the reset, mia again.
    let resp = pb.post("/v1/messages", MESSAGE);
    assert_eq!(ProxyBed::served_by(&resp), pb.ned);
    // The client may report on the lease that served it as soon as it has
    // the answer, before the lease log's own flush of the proxy's rows.
    let reported = pb.bed.api(Some(&pb.key)).post(
        "/credential/report",
        json!({"lease_id": resp.header("x-relogin-lease").unwrap(), "outcome": "ok"}),
    );
    assert_eq!(reported.expect(200)["recorded"], true);
    wait_for(
        "mia to serve again after the reset",
        Duration::from_secs(8),
        || {
            let resp = pb.post("/v1/messages", MESSAGE);
            match ProxyBed::served_by(&resp) {
                id if id == pb.mia && resp.status == 200 => Ok(()),
                id => Err(format!("served by {id}: {}", resp.status)),
            }
        },
    );
    assert!(Utc::now().timestamp() >= reset as i64);

    // No token and no client key in the farm's log.
    let log = pb.bed.farm_log();
    for secret in tokens.values().chain([&pb.key]) {
        assert!(
            !log.contains(secret.as_str()),
            "a secret is in the farm's log"
        );
    }

    // The quota headers of the last answers are on the accounts.
    let quota = &pb.bed.account(pb.ned)["quota"];
    assert_eq!(
        quota["headers"]["anthropic-ratelimit-unified-status"], "allowed",
        "{quota}"
    );
    assert!(
        quota["at"].is_string() && quota["resets_at"].is_string(),
        "{quota}"
    );
    // …and read as windows: the fake upstream's 5-hour window, 25 % used.
    let window = &quota["windows"][0];
    assert_eq!(
        (&window["name"], window["used"].as_f64()),
        (&Value::from("unified 5h"), Some(0.25)),
        "{quota}"
    );
    let resets_in = time_of(window, "resets_at").timestamp() - now_s() as i64;
    assert!((3500..=3600).contains(&resets_in), "{quota}");
}

#[test]
fn a_401_refreshes_the_account_and_retries_on_another_then_it_serves_again() {
    let upstream = Upstream::start();
    let pb = ProxyBed::start(&upstream.url, "");
    let tokens = pb.tokens();
    let old = tokens[&pb.mia].clone();
    upstream.script(&old, &[Behaviour::Unauthorized]);
    let generation = pb.bed.account(pb.mia)["generation"].as_i64().unwrap();
    // A 401 on a token younger than the farm's grace (5 s) is coalesced: no
    // grant. Let mia's token age past it so the 401 asks for a refresh.
    std::thread::sleep(Duration::from_millis(5_500));

    let resp = pb.post("/v1/messages", MESSAGE);
    assert_eq!(resp.status, 200, "{}", resp.text);
    assert_eq!(ProxyBed::served_by(&resp), pb.ned);

    // The single-flight refresh gives mia a new token; she serves again with it.
    pb.bed
        .wait_account("mia's refresh", pb.mia, Duration::from_secs(10), |a| {
            a["generation"].as_i64() > Some(generation) && a["state"] == "healthy"
        });
    assert_eq!(pb.bed.provider.refresh_grants("mia"), 1);
    let resp = pb.post("/v1/messages", MESSAGE);
    assert_eq!(resp.status, 200, "{}", resp.text);
    assert_eq!(ProxyBed::served_by(&resp), pb.mia);
    let last = upstream.seen().pop().expect("a request");
    let new = last.bearer().expect("a bearer token");
    assert_ne!(new, old, "mia's old token was used again");
    pb.bed.provider.assert_active(new, "mia");
    upstream.assert_never_saw(&pb.key);
}

#[test]
fn a_529_or_a_retryable_429_moves_on_without_a_cooldown() {
    let upstream = Upstream::start();
    let pb = ProxyBed::start(&upstream.url, "");
    let tokens = pb.tokens();
    upstream.script(
        &tokens[&pb.mia],
        &[Behaviour::Overloaded, Behaviour::ShouldRetry],
    );
    for why in ["529", "429"] {
        let resp = pb.post(
            "/v1/chat/completions",
            br#"{"model":"gpt-x","messages":[]}"#,
        );
        assert_eq!(resp.status, 200, "{}", resp.text);
        assert_eq!(ProxyBed::served_by(&resp), pb.ned, "after a {why}");
        assert_eq!(
            resp.json()["choices"][0]["message"]["content"],
            WORDS.concat()
        );
        let account = pb.bed.account(pb.mia);
        assert_eq!(account["state"], "healthy", "a {why} cooled mia: {account}");
    }
    assert_eq!(
        ProxyBed::served_by(&pb.post("/v1/messages", MESSAGE)),
        pb.mia
    );
    assert_eq!(
        pb.bed
            .metric("relogin_farm_proxy_failovers_total{reason=\"529\"}"),
        1.0
    );
}

#[test]
fn when_every_account_cools_the_proxy_answers_503_with_retry_after() {
    let upstream = Upstream::start();
    let pb = ProxyBed::start(&upstream.url, "");
    pb.every_account_rate_limited(&upstream, 3);
    let resp = pb.post("/v1/messages", MESSAGE);
    let body = resp.expect_error(503, "no_account_available");
    let wait: i64 = resp
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=3).contains(&wait), "Retry-After {wait}");
    assert_eq!(body["retry_after_s"], wait, "{body}");
    assert_eq!(upstream.seen().len(), 2);
    std::thread::sleep(Duration::from_secs(wait as u64));
    let resp = pb.post("/v1/messages", MESSAGE);
    assert_eq!(resp.status, 200, "after Retry-After: {}", resp.text);
}

/// The body of a streamed answer as it arrives; `Err` with what came before
/// a broken-off stream.
fn read_stream(mut resp: reqwest::blocking::Response) -> (Vec<u8>, Option<String>, Duration) {
    let started = Instant::now();
    let mut first = None;
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match resp.read(&mut buf) {
            Ok(0) => return (all, None, first.unwrap_or_default()),
            Ok(n) => {
                first.get_or_insert_with(|| started.elapsed());
                all.extend_from_slice(&buf[..n]);
            }
            Err(e) => return (all, Some(e.to_string()), first.unwrap_or_default()),
        }
    }
}

#[test]
fn streams_pass_chunk_by_chunk_and_a_cut_is_passed_through() {
    let upstream = Upstream::start();
    let pb = ProxyBed::start(&upstream.url, "");
    let tokens = pb.tokens();
    let mia = &tokens[&pb.mia];
    upstream.script(
        mia,
        &[
            Behaviour::Slow {
                gap: Duration::from_millis(300),
            },
            Behaviour::Cut { events: 3 },
        ],
    );
    let stream_body =
        br#"{"model":"claude-x","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let send = || {
        let started = Instant::now();
        let resp = pb
            .http
            .post(pb.url("/v1/messages"))
            .bearer_auth(&pb.key)
            .body(stream_body.to_vec())
            .send()
            .expect("an answer");
        (resp, started)
    };

    // Slow: the first event arrives long before the last.
    let (resp, started) = send();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let lease = resp.headers()["x-relogin-lease"]
        .to_str()
        .unwrap()
        .to_owned();
    let (body, error, first) = read_stream(resp);
    let total = started.elapsed();
    assert_eq!(error, None);
    let slow = attempt_of(&pb, &lease);
    assert_eq!(slow["upstream"]["body_end"], "complete", "{slow}");
    assert_eq!(slow["upstream"]["bytes"], body.len() as u64, "{slow}");
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("event: message_stop"), "{text}");
    assert!(
        total >= Duration::from_millis(2400),
        "the slow stream took {total:?}"
    );
    assert!(
        first < Duration::from_millis(1000),
        "the first chunk came after {first:?}: the proxy buffered the stream"
    );

    // Cut: the client sees the break, and no retry happens mid-stream.
    let before = upstream.seen().len();
    let (resp, _) = send();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-relogin-account"],
        pb.mia.to_string().as_str()
    );
    let lease = resp.headers()["x-relogin-lease"]
        .to_str()
        .unwrap()
        .to_owned();
    let (body, error, _) = read_stream(resp);
    let text = String::from_utf8_lossy(&body);
    assert!(error.is_some(), "a cut stream ended cleanly: {text}");
    let cut = attempt_of(&pb, &lease);
    assert_eq!(cut["upstream"]["body_end"], "upstream_broke", "{cut}");
    assert_eq!(cut["outcome"], "error", "{cut}");
    assert!(
        text.contains("message_start") && !text.contains("message_stop"),
        "{text}"
    );
    assert_eq!(
        upstream.seen().len(),
        before + 1,
        "the cut stream was retried"
    );
    upstream.assert_never_saw(&pb.key);

    // A client that goes away mid-stream: the attempt is recorded as such,
    // with the bytes it got.
    upstream.script(
        mia,
        &[Behaviour::Slow {
            gap: Duration::from_millis(300),
        }],
    );
    let (mut resp, _) = send();
    let lease = resp.headers()["x-relogin-lease"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut first = [0u8; 64];
    let n = std::io::Read::read(&mut resp, &mut first).expect("the first chunk");
    assert!(n > 0);
    drop(resp);
    let gone = attempt_of(&pb, &lease);
    assert_eq!(gone["upstream"]["body_end"], "client_gone", "{gone}");
    assert_eq!(gone["outcome"], "ok", "{gone}");
    let bytes = gone["upstream"]["bytes"].as_u64().unwrap();
    assert!(
        bytes > 0 && bytes < body.len() as u64,
        "{bytes} of {}",
        body.len()
    );
}

#[test]
fn limits_auth_and_errors_of_the_proxy() {
    let upstream = Upstream::start();
    let pb = ProxyBed::start(
        &upstream.url,
        "max_body = 1024\nfirst_byte_timeout = \"1s\"\nmax_attempts = 1",
    );
    let tokens = pb.tokens();

    // No key, a wrong key: 401 JSON, nothing sent upstream.
    for auth in [None, Some("Bearer nope"), Some("Basic abc")] {
        let mut req = pb.http.post(pb.url("/v1/messages")).body(MESSAGE.to_vec());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        Resp::read(req.send().expect("an answer")).expect_error(401, "unauthorized");
    }
    assert_eq!(
        upstream.seen().len(),
        0,
        "a request without a valid key went upstream"
    );
    // The scheme is case-insensitive (RFC 9110), as on every other route.
    let resp = pb
        .http
        .post(pb.url("/v1/messages"))
        .header("authorization", format!("bearer {}", pb.key))
        .body(MESSAGE.to_vec())
        .send()
        .expect("an answer");
    assert_eq!(resp.status(), 200, "{:?}", resp.text());
    let before = 1;

    // Over max_body: 413, nothing sent upstream.
    let big = vec![b'x'; 4096];
    pb.post("/v1/messages", &big)
        .expect_error(413, "payload_too_large");
    assert_eq!(upstream.seen().len(), before);

    // A WebSocket upgrade: 501.
    let resp = pb
        .http
        .get(pb.url("/v1/realtime"))
        .bearer_auth(&pb.key)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .send()
        .expect("an answer");
    assert_eq!(resp.status(), 501, "{:?}", resp.text());

    // An upstream slower than first_byte_timeout: 504 after about that long.
    upstream.script(
        &tokens[&pb.mia],
        &[Behaviour::Stall {
            delay: Duration::from_secs(4),
        }],
    );
    let started = Instant::now();
    pb.post("/v1/messages", MESSAGE)
        .expect_error(504, "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A method the proxy has no route for: 405 JSON, as on any route.
    // Nothing of this goes upstream.
    let seen = upstream.seen().len();
    let resp = Resp::read(
        pb.http
            .request(reqwest::Method::OPTIONS, pb.url("/v1/messages"))
            .bearer_auth(&pb.key)
            .send()
            .expect("an answer"),
    );
    resp.expect_error(405, "method_not_allowed");
    assert_eq!(resp.headers["cache-control"], "no-store");
    // A proxy path without a provider, and a provider without
    // [provider.proxy] (it does not exist as far as the proxy goes): 404.
    for path in ["/proxy/", "/proxy/other/v1/messages"] {
        let resp = pb
            .http
            .post(format!("{}{path}", pb.bed.url()))
            .bearer_auth(&pb.key)
            .send()
            .expect("an answer");
        assert_eq!(resp.status(), 404, "{path}");
    }
    assert_eq!(upstream.seen().len(), seen);
    upstream.assert_never_saw(&pb.key);
}

#[test]
fn an_unreachable_upstream_is_a_502_within_the_connect_timeout() {
    let down = format!("http://127.0.0.1:{}", free_port());
    let pb = ProxyBed::start(&down, "");
    let started = Instant::now();
    let resp = pb.post("/v1/messages", MESSAGE);
    let body = resp.expect_error(502, "upstream_unreachable");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(!body.to_string().contains(&pb.key), "{body}");
    // Every attempt was an account's lease, reported as an error, none cooled.
    for id in [pb.mia, pb.ned] {
        assert_eq!(pb.bed.account(id)["state"], "healthy");
    }
    let usage: Value = pb.bed.admin().get("/api/usage").ok();
    let errors: i64 = usage["per_account"]
        .as_array()
        .expect("per_account")
        .iter()
        .map(|row| row["last_hour"]["error"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(
        errors, 2,
        "one error report per attempt, each account once: {usage}"
    );
}

#[test]
fn the_token_command_prints_a_fresh_access_token() {
    use crate::support::process::{clean_command, run_with_deadline};
    let upstream = Upstream::start();
    let pb = ProxyBed::start(&upstream.url, "");
    let run = |key: &str| {
        let mut cmd = clean_command(env!("CARGO_BIN_EXE_relogin-farm"));
        cmd.args(["token", PROVIDER])
            .env("RELOGIN_FARM_URL", pb.bed.url())
            .env("RELOGIN_FARM_CLIENT_KEY", key);
        run_with_deadline("relogin-farm token", cmd, Duration::from_secs(30))
    };
    let out = run(&pb.key);
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.strip_suffix('\n').expect("one line");
    pb.bed.provider.assert_active(token, "mia");

    let out = run("not-a-key");
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("401 unauthorized"), "{stderr}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

/// Runs `tests/clients/sdk.mjs SDK BASE KEY [stream]`: one request with an
/// official SDK (its own retries on) through the proxy; returns its text
/// and how long it took in ms.
fn sdk(pb: &ProxyBed, sdk: &str, stream: bool) -> (String, u64) {
    use crate::support::clients_dir;
    use crate::support::process::{clean_command, run_with_deadline};
    // The Anthropic SDK appends /v1/messages; the OpenAI SDK wants /v1 in the base.
    let base = match sdk {
        "anthropic" => pb.url(""),
        _ => pb.url("/v1"),
    };
    let dir = clients_dir();
    let mut cmd = clean_command("node");
    cmd.arg(dir.join("sdk.mjs"))
        .args([sdk, &base, &pb.key])
        .args(stream.then_some("stream"))
        .current_dir(&dir);
    let out = run_with_deadline("node sdk.mjs", cmd, Duration::from_secs(60));
    let what = format!("{sdk} (stream: {stream})");
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {:?}", out.stdout));
    (
        str_of(&answer, "text").to_string(),
        answer["ms"].as_u64().unwrap_or_default(),
    )
}

#[test]
fn the_official_sdks_get_their_answer_across_a_429_failover() {
    let upstream = Upstream::start();
    let pb = ProxyBed::start(&upstream.url, "");
    let tokens = pb.tokens();
    for name in ["anthropic", "openai-chat", "openai-responses"] {
        for stream in [false, true] {
            upstream.script(&tokens[&pb.mia], &[Behaviour::ShouldRetry]);
            let before = upstream.seen().len();
            let (text, _) = sdk(&pb, name, stream);
            assert_eq!(text, WORDS.concat(), "{name} (stream: {stream})");
            let seen = upstream.seen();
            let tried: Vec<_> = seen[before..].iter().map(|s| s.bearer()).collect();
            assert_eq!(
                tried,
                [
                    Some(tokens[&pb.mia].as_str()),
                    Some(tokens[&pb.ned].as_str())
                ],
                "{name} (stream: {stream}): not one failover from mia to ned"
            );
        }
    }
    upstream.assert_never_saw(&pb.key);
}

#[test]
fn an_sdk_waits_out_the_503_when_every_account_cools_and_succeeds() {
    let upstream = Upstream::start();
    let pb = ProxyBed::start(&upstream.url, "");
    pb.every_account_rate_limited(&upstream, 2);
    let (text, ms) = sdk(&pb, "anthropic", false);
    assert_eq!(text, WORDS.concat());
    assert!(ms >= 1500, "the SDK did not wait for Retry-After: {ms} ms");
    let answers = pb.bed.metric(&format!(
        "relogin_farm_proxy_requests_total{{provider=\"{PROVIDER}\",status=\"503\"}}"
    ));
    assert!(answers >= 1.0, "no 503 was answered");
    upstream.assert_never_saw(&pb.key);
}

#[test]
fn claude_code_answers_through_the_proxy_across_a_failover() {
    use crate::support::clients_dir;
    use crate::support::netns::run_in_loopback_namespace;
    use crate::support::process::clean_command;
    let upstream = Upstream::start();
    let pb = ProxyBed::start(&upstream.url, "");
    let tokens = pb.tokens();
    upstream.script(&tokens[&pb.mia], &[Behaviour::ShouldRetry]);
    let home = tempfile::tempdir().expect("a home for claude");
    let claude = clients_dir().join("node_modules/.bin/claude");
    let mut cmd = clean_command(&claude);
    cmd.args(["-p", "say hello"])
        .env("HOME", home.path())
        .env("ANTHROPIC_BASE_URL", pb.url(""))
        .env("ANTHROPIC_API_KEY", &pb.key)
        // Nothing but the model's API: no telemetry, error reports or updates.
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .current_dir(home.path());
    // claude runs with nothing but loopback: the farm through a unix socket.
    let out = run_in_loopback_namespace("claude -p", cmd, pb.bed.port(), Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&WORDS.concat()),
        "claude -p: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = upstream.seen();
    assert!(
        seen.iter()
            .any(|s| s.bearer() == Some(tokens[&pb.mia].as_str()))
            && seen
                .iter()
                .any(|s| s.bearer() == Some(tokens[&pb.ned].as_str())),
        "no failover from mia to ned: {:?}",
        seen.iter()
            .map(|s| (&s.path, s.bearer()))
            .collect::<Vec<_>>()
    );
    assert!(
        seen.iter().all(|s| s.path.starts_with("/v1/messages")),
        "{seen:?}"
    );
    upstream.assert_never_saw(&pb.key);
}

#[test]
fn the_usage_url_is_polled_with_each_accounts_token_and_shown_on_it() {
    let upstream = Upstream::start();
    let extra = format!(
        "usage_url = \"{}/api/oauth/usage\"\nusage_schedule = \"* * * * * *\"\n\
         usage_timeout = \"1s\"\nheaders = {{ \"anthropic-beta\" = \"oauth-2025-04-20\" }}",
        upstream.url
    );
    let pb = ProxyBed::start(&upstream.url, &extra);
    let tokens = pb.tokens();
    // The endpoint knows mia's token only: ned's poll gets a 401.
    upstream.usage_answer(
        &tokens[&pb.mia],
        r#"{"five_hour":{"utilization":25.0,"resets_at":"2030-01-01T00:00:00Z"}}"#,
    );
    let usage = wait_for("mia's usage report", Duration::from_secs(10), || {
        let quota = pb.bed.account(pb.mia)["quota"].clone();
        match quota["usage"].is_object() {
            true => Ok(quota["usage"].clone()),
            false => Err(format!("no usage yet: {quota}")),
        }
    });
    assert_eq!(usage["answer"]["five_hour"]["utilization"], 25.0, "{usage}");
    let polls: Vec<_> = upstream
        .seen()
        .into_iter()
        .filter(|s| s.path == "/api/oauth/usage")
        .collect();
    let mia_poll = polls
        .iter()
        .find(|s| s.bearer() == Some(tokens[&pb.mia].as_str()))
        .expect("a poll with mia's token");
    assert_eq!(mia_poll.method, "GET");
    assert_eq!(mia_poll.header("anthropic-beta"), Some("oauth-2025-04-20"));
    assert!(
        polls
            .iter()
            .any(|s| s.bearer() == Some(tokens[&pb.ned].as_str())),
        "ned's token was not polled"
    );

    // ned's refused poll is logged, without a token, and changes nothing.
    wait_for("the failed poll in the log", Duration::from_secs(5), || {
        let log = pb.bed.farm_log();
        match log.contains("usage poll failed") && log.contains("status 401") {
            true => Ok(()),
            false => Err("not logged yet".to_string()),
        }
    });
    let ned = pb.bed.account(pb.ned);
    assert_eq!(ned["state"], "healthy", "{ned}");
    assert!(ned["quota"].is_null(), "{ned}");

    // An answer later than usage_timeout is given up on, and logged.
    upstream.usage_answer_after(&tokens[&pb.ned], "{}", Duration::from_secs(3));
    let timed_out = format!("account={} error=timed out", pb.ned);
    wait_for(
        "the timed-out poll in the log",
        Duration::from_secs(8),
        || match pb.bed.farm_log().contains(&timed_out) {
            true => Ok(()),
            false => Err("not logged yet".to_string()),
        },
    );
    assert!(pb.bed.account(pb.ned)["quota"].is_null());

    // An answer over the size limit is dropped: mia keeps her last report.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(70 * 1024));
    upstream.usage_answer(&tokens[&pb.mia], &big);
    wait_for(
        "the oversized answer in the log",
        Duration::from_secs(5),
        || match pb.bed.farm_log().contains("answer larger than 65536 bytes") {
            true => Ok(()),
            false => Err("not logged yet".to_string()),
        },
    );
    let after = &pb.bed.account(pb.mia)["quota"]["usage"];
    assert_eq!(after["answer"], usage["answer"], "{after}");
    assert_eq!(pb.bed.account(pb.mia)["state"], "healthy");
    let log = pb.bed.farm_log();
    for token in tokens.values() {
        assert!(!log.contains(token.as_str()), "a token is in the log");
    }
    upstream.assert_never_saw(&pb.key);
}

/// Codex CLI's provider settings for the farm, as the README gives them:
/// the proxy's base URL, the client key from `FARM_KEY`, plain HTTP
/// streaming (the proxy refuses WebSocket upgrades).
fn codex_config(base_url: &str) -> String {
    format!(
        r#"model_provider = "farm"

[model_providers.farm]
name = "relogin-farm"
base_url = "{base_url}"
env_key = "FARM_KEY"
wire_api = "responses"
supports_websockets = false
"#
    )
}

#[test]
fn codex_exec_answers_through_the_proxy_across_a_429_failover() {
    use crate::support::clients_dir;
    use crate::support::netns::run_in_loopback_namespace;
    use crate::support::process::clean_command;
    let upstream = Upstream::start();
    let pb = ProxyBed::start(&upstream.url, "");
    let tokens = pb.tokens();
    let reset = now_s() + 600;
    upstream.script(
        &tokens[&pb.mia],
        &[Behaviour::RateLimited {
            reset_epoch_s: Some(reset),
            retry_after_s: None,
        }],
    );
    let home = tempfile::tempdir().expect("a home for codex");
    let codex_home = home.path().join(".codex");
    std::fs::create_dir_all(&codex_home).expect("CODEX_HOME");
    std::fs::write(codex_home.join("config.toml"), codex_config(&pb.url("/v1")))
        .expect("codex's config.toml");
    let codex = clients_dir().join("node_modules/.bin/codex");
    let mut cmd = clean_command(&codex);
    cmd.args(["exec", "--skip-git-repo-check", "say hello"])
        .env("HOME", home.path())
        .env("CODEX_HOME", &codex_home)
        .env("FARM_KEY", &pb.key)
        .current_dir(home.path());
    // codex runs with nothing but loopback: the farm through a unix socket.
    let out = run_in_loopback_namespace("codex exec", cmd, pb.bed.port(), Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with(&WORDS.concat()),
        "codex exec: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Its one model request met mia's 429 and was served by ned.
    let seen = upstream.seen();
    let tried: Vec<_> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str(), s.bearer()))
        .collect();
    assert_eq!(
        tried,
        [
            ("POST", "/v1/responses", Some(tokens[&pb.mia].as_str())),
            ("POST", "/v1/responses", Some(tokens[&pb.ned].as_str())),
        ],
        "not one failover from mia to ned"
    );
    let mia = pb.bed.account(pb.mia);
    assert_eq!(
        time_of(&mia, "cooldown_until").timestamp(),
        reset as i64,
        "mia cools until the announced reset: {mia}"
    );
    upstream.assert_never_saw(&pb.key);
}

/// What an agent CLI in `run_in_loopback_namespace` can reach: the farm at
/// its usual URL, and no other address (no route: no packet leaves).
#[test]
fn the_loopback_namespace_reaches_the_farm_and_no_public_address() {
    use crate::support::netns::run_in_loopback_namespace;
    use crate::support::process::clean_command;
    let bed = Bed::start(Settings::default());
    let probe = r#"
        const health = (await fetch(process.argv[1] + "/healthz")).status;
        const net = await import("node:net");
        const outside = await new Promise((done) => {
          const s = net.connect(443, "1.1.1.1");
          s.on("connect", () => { s.destroy(); done("connected"); });
          s.on("error", (e) => done(e.code));
        });
        console.log(JSON.stringify({ health, outside }));
    "#;
    let mut cmd = clean_command("node");
    cmd.args(["--input-type=module", "-e", probe, bed.url()]);
    let out = run_in_loopback_namespace("probe", cmd, bed.port(), Duration::from_secs(30));
    assert!(
        out.status.success(),
        "probe: {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("JSON from the probe");
    assert_eq!(seen["health"], 200, "{seen}");
    assert_eq!(seen["outside"], "ENETUNREACH", "{seen}");
}
