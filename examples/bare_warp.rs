//! The baseline for `scripts/bench`: a bare warp 0.4 handler built the way
//! the farm is (same crate, release profile, multi-thread tokio runtime,
//! `warp::serve(..).incoming(listener).run()`), answering
//! `GET /credential/next` with a JSON body shaped and sized like the farm's
//! lease (~330 bytes) — without authentication, rotation or a lease record.
//!
//!   cargo run --release --example bare_warp    # prints `LISTENING http://127.0.0.1:<port>`
//!
//! Listens on a free loopback port until killed.

use std::io::Write;

use serde::Serialize;
use warp::Filter;

/// The fields of the farm's `CredentialLease`, with values of typical length.
#[derive(Serialize)]
struct Lease {
    account_id: i64,
    label: &'static str,
    provider: &'static str,
    access_token: &'static str,
    token_type: &'static str,
    expires_at: &'static str,
    lease_id: &'static str,
    lease_expires_at: &'static str,
}

const LEASE: Lease = Lease {
    account_id: 3,
    label: "bench-3",
    provider: "demo",
    access_token: "Hk3oVq1yJ0cWfG7pN2sT9xLbE4mR8uAaZdKiO6jYwC5",
    token_type: "Bearer",
    expires_at: "2025-01-01T12:00:00.123456789Z",
    lease_id: "lease_5f0c9a7e2b1d4c8e9f3a6b0d7e2c1f4a",
    lease_expires_at: "2025-01-01T11:10:00.123456789Z",
};

fn main() -> std::io::Result<()> {
    // The same runtime the `relogin-farm` binary builds.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("LISTENING http://{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let next = warp::get()
            .and(warp::path!("credential" / "next"))
            .then(|| async { warp::reply::json(&LEASE) })
            .with(warp::reply::with::header("cache-control", "no-store"));
        warp::serve(next).incoming(listener).run().await;
        Ok(())
    })
}
