//! An HTTP server inside the test (a webhook's receiver): it answers every
//! request with one fixed status and records each one (when it came, its
//! headers, its body). It stops when dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::farm::toml_string;
use super::wait_for;

/// One request received.
#[derive(Clone, Debug)]
pub struct Hit {
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// Names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Hit {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The body as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the request body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

pub struct Receiver {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl Receiver {
    /// Listens on a free loopback port and answers `status` to everything.
    pub fn start(status: u16) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let port = listener
            .local_addr()
            .expect("the receiver's address")
            .port();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (hits.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(conn) = conn {
                    serve(conn, status, &seen);
                }
            }
        });
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            hits,
            stop,
            port,
        }
    }

    /// A `[[webhook]]` block of `farm.toml` that posts the `events` kinds
    /// here, signed with `secret` when given.
    pub fn webhook_toml(&self, events: &[&str], max_attempts: u32, secret: Option<&str>) -> String {
        let events: Vec<String> = events.iter().map(|e| toml_string(e)).collect();
        let mut block = format!(
            "[[webhook]]\nurl = {}\nevents = [{}]\nmax_attempts = {max_attempts}\ntimeout = \"2s\"\n",
            toml_string(&self.url),
            events.join(", ")
        );
        if let Some(secret) = secret {
            block.push_str(&format!("secret = {}\n", toml_string(secret)));
        }
        block
    }

    /// Every request so far, in arrival order.
    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests came; returns all of them.
    pub fn wait_hits(&self, n: usize, timeout: Duration) -> Vec<Hit> {
        wait_for(&format!("{n} requests at the receiver"), timeout, || {
            let hits = self.hits();
            let summary = || {
                hits.iter()
                    .map(|h| String::from_utf8_lossy(&h.body).into_owned())
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            if hits.len() >= n {
                Ok(hits.clone())
            } else {
                Err(format!("{} requests: {}", hits.len(), summary()))
            }
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the accept loop
    }
}

/// Reads one request (headers, then a `Content-Length` body), records it
/// in `hits` and only then answers `status`, closing the connection.
fn serve(conn: TcpStream, status: u16, hits: &Mutex<Vec<Hit>>) -> Option<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(conn);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let at = Instant::now();
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next()?.to_string(), words.next()?.to_string());
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    hits.lock().unwrap().push(Hit {
        at,
        method,
        path,
        headers,
        body,
    });
    let answer =
        format!("HTTP/1.1 {status} Test\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    reader.get_mut().write_all(answer.as_bytes()).ok()
}
