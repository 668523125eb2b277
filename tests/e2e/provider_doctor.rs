//! `relogin-farm doctor`'s provider checks through the binary: a provider
//! that answers, one nobody listens for, one that never answers (the probe's
//! time limit), a redirect port another program holds, and a preset's
//! missing client secret.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::backup::output_text;
use crate::support::farm::toml_string;
use crate::support::quirk_provider::{QuirkProvider, Quirks};
use crate::support::{free_port, Bed, Settings};

#[test]
fn doctor_checks_each_provider_s_endpoints_redirect_port_and_preset() {
    let emulator = QuirkProvider::start(Quirks::default());
    // Accepts connections (the kernel's backlog) but never answers.
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_url = format!("http://{}/token", mute.local_addr().unwrap());
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let closed = free_port();
    let redirect = |port: u16| format!("redirect_uri = \"http://127.0.0.1:{port}/callback\"\n");
    let manual = |name: &str, token_url: &str, redirect_port: u16| {
        format!(
            "[[provider]]\nname = \"{name}\"\nclient_id = \"c\"\n\
             authorize_url = \"http://127.0.0.1:{closed}/authorize\"\ntoken_url = {}\n{}",
            toml_string(token_url),
            redirect(redirect_port)
        )
    };
    let toml = [
        format!(
            "[[provider]]\nname = \"up\"\npreset = \"keycloak\"\nissuer = {}\nclient_id = \"c\"\n{}",
            toml_string(&emulator.url),
            redirect(free_port())
        ),
        manual("down", &format!("http://127.0.0.1:{closed}/token"), free_port()),
        manual("mute", &mute_url, free_port()),
        manual("busy", &emulator.token_url(), busy_port),
        format!(
            "[[provider]]\nname = \"gsecret\"\npreset = \"google\"\nissuer = {}\nclient_id = \"c\"\n{}",
            toml_string(&emulator.url),
            redirect(free_port())
        ),
    ]
    .join("\n");
    let bed = Bed::start(Settings::default().with_toml(&toml));
    let began = Instant::now();
    let out = bed.run_cli(&["doctor"], "");
    let took = began.elapsed();
    let said = output_text(&out);
    assert!(!out.status.success(), "{said}");
    for expected in [
        &format!("provider up: reachable (token endpoint {}/token answers HTTP", emulator.url),
        "provider up: redirect port",
        "problem: provider down: could not reach the provider",
        "problem: provider mute: no answer within 5s",
        &format!("problem: provider busy: cannot listen on 127.0.0.1:{busy_port}, the port of its redirect_uri"),
        "problem: provider gsecret: preset \"google\" needs a client secret and none is given",
        "fix: set RELOGIN_FARM_PROVIDER_GSECRET_CLIENT_SECRET",
    ] {
        assert!(said.contains(expected), "{expected:?} in:\n{said}");
    }
    assert!(!said.contains("problem: provider up"), "{said}");
    // The silent one waited the probe's limit, not the farm's 20 s.
    assert!(took < Duration::from_secs(25), "doctor took {took:?}");
    drop((mute, busy));
}
