//! The proxy tests' fake upstream as a program, for benchmarks:
//! `cargo run --release --example fake_upstream -- [ADDR] [THREADS]`
//! (default `127.0.0.1:0`, 2 threads). Prints `LISTENING http://…` and serves
//! until killed; every token gets 200s (JSON, or SSE with `"stream": true`).

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
    let up = upstream::Upstream::start_on(addr, threads);
    up.stop_recording();
    println!("LISTENING {}", up.url);
    up.serve_forever()
}
