//! HTTPS: `relogin-farm init --tls` makes a self-signed certificate, the
//! farm serves it, a client that trusts only that certificate talks to the
//! farm (so do the CLI commands), plain HTTP does not, and SIGHUP swaps the
//! certificate (keeping the old one when the new files are bad).

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::support::process::{clean_command, run_with_deadline, Daemon};
use crate::support::{mode_of, secs, wait_for};

fn relogin_farm(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = clean_command(env!("CARGO_BIN_EXE_relogin-farm"));
    cmd.args(args).current_dir(dir);
    run_with_deadline("relogin-farm", cmd, secs(30))
}

fn der_of(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("the certificate is PEM")
}

fn fingerprint(pem: &str) -> String {
    let hex: Vec<String> = Sha256::digest(der_of(pem))
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    hex.join(":")
}

/// A client whose only trust root is `cert_pem`.
fn trusting(cert_pem: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .timeout(secs(10))
        .build()
        .unwrap()
}

fn healthz(client: &reqwest::blocking::Client, base: &str) -> Result<u16, String> {
    client
        .get(format!("{base}/healthz"))
        .send()
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

fn sighup(farm: &Daemon) {
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &farm.pid().to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "could not send SIGHUP");
}

#[test]
fn init_tls_serves_https_that_trusts_only_its_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let out = relogin_farm(dir.path(), &["init", "--tls"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = dir.path().join("data");
    let (cert_file, key_file) = (data.join("tls.crt"), data.join("tls.key"));
    assert_eq!(mode_of(&cert_file), 0o600);
    assert_eq!(mode_of(&key_file), 0o600);
    let cert = std::fs::read_to_string(&cert_file).unwrap();
    assert!(
        said.contains(&format!(
            "certificate SHA-256 fingerprint: {}",
            fingerprint(&cert)
        )),
        "{said}"
    );
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert!(!said.contains(key.trim()), "the key is never printed");

    let log = dir.path().join("farm.log");
    let mut cmd = clean_command(env!("CARGO_BIN_EXE_relogin-farm"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path());
    let (farm, url) = Daemon::spawn("relogin-farm", cmd, &log, "LISTENING ")
        .unwrap_or_else(|f| panic!("the farm did not start: {f:?}"));
    let base = url
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("not an https URL: {url}"));
    let port = base.rsplit_once(':').unwrap().1;

    let client = trusting(&cert);
    assert_eq!(healthz(&client, &url), Ok(200));
    // The certificate names localhost too.
    assert_eq!(
        healthz(&client, &format!("https://localhost:{port}")),
        Ok(200)
    );
    // Plain HTTP to the TLS port gets no answer.
    let plain = healthz(&client, &format!("http://{base}"));
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    // A client that does not trust the certificate refuses the farm.
    let stranger = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(secs(10))
        .build()
        .unwrap();
    assert!(healthz(&stranger, &url).is_err());

    // The CLI finds the farm from farm.toml (https) and trusts its
    // configured certificate.
    let out = relogin_farm(
        dir.path(),
        &[
            "client",
            "add",
            "lan-worker",
            "--farm",
            &format!("https://localhost:{port}"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("rfk_"));

    // SIGHUP: new connections get the new certificate.
    let second =
        relogin_farm::listener::tls::self_signed(relogin_farm::listener::tls::host_names())
            .unwrap();
    std::fs::write(&key_file, second.key_pem.expose()).unwrap();
    std::fs::write(&cert_file, &second.cert_pem).unwrap();
    sighup(&farm);
    let second_client = trusting(&second.cert_pem);
    wait_for(
        "the farm to present the new certificate",
        secs(10),
        || match healthz(&trusting(&second.cert_pem), &url) {
            Ok(200) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(healthz(&trusting(&cert), &url).is_err());

    // A bad file on SIGHUP: logged, the certificate in use kept.
    std::fs::write(&cert_file, "not a certificate").unwrap();
    sighup(&farm);
    wait_for("the failed reload to be logged", secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("not reloaded").then_some(()).ok_or(text)
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(healthz(&second_client, &url), Ok(200));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("server.tls_cert_file"), "{text}");
    drop(farm);

    // At start a bad file is a config error naming the key.
    let out = relogin_farm(dir.path(), &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.tls_cert_file: "), "{err}");
}
