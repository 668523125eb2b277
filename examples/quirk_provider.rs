//! The provider emulator of the e2e tests as a program, to try a login
//! script or a provider block by hand:
//! `cargo run --example quirk_provider -- [ADDR] [QUIRKS_JSON]` (default
//! `127.0.0.1:0`, no quirks). Prints `LISTENING http://…` and serves until
//! killed; users `alice`/`alice-password` and `bob`/`bob-password`; change
//! the quirks with `POST /control` (a JSON object of the fields to change).

#[path = "../tests/e2e/support/quirk_provider.rs"]
#[allow(dead_code)] // the recording half is for the e2e tests
mod quirk_provider;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:0".to_string())
        .parse()
        .expect("ADDR: an IP address and port, such as 127.0.0.1:8080");
    let quirks = args
        .next()
        .map(|j| serde_json::from_str(&j).expect("QUIRKS_JSON: a JSON object of quirks"))
        .unwrap_or_default();
    let provider = quirk_provider::QuirkProvider::start_on(addr, quirks);
    println!("LISTENING {}", provider.url);
    provider.serve_forever()
}
