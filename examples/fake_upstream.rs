//! The proxy tests' fake upstream as a program, for benchmarks:
//! `cargo run --release --example fake_upstream -- [ADDR] [THREADS] [JSON_BYTES]`
//! (default `127.0.0.1:0`, 2 threads, short answers). Prints
//! `LISTENING http://…` and serves until killed; every token gets 200s (JSON
//! of at least JSON_BYTES, or SSE with `"stream": true`; events
//! `x-fake-gap-ms` apart when the request has that header).

#[path = "../tests/e2e/support/upstream.rs"]
#[allow(dead_code)] // the scripting half is for the e2e tests
mod upstream;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:0".to_string())
        .parse()
        .expect("ADDR: an IP address and port, such as 127.0.0.1:8080");
    let threads = args
        .next()
        .map(|t| t.parse().expect("THREADS: a number"))
        .unwrap_or(2);
    let json_bytes = args
        .next()
        .map(|b| b.parse().expect("JSON_BYTES: a number"))
        .unwrap_or(0);
    let up = upstream::Upstream::start_on(addr, threads);
    up.stop_recording();
    up.pad_json_to(json_bytes);
    println!("LISTENING {}", up.url);
    up.serve_forever()
}
