//! "Running it" as the README says: `relogin-farm init` in a directory of
//! its own (no source tree around it), then `serve` there, and a scripted
//! browser relogin works: `init` installed the pinned Playwright driver
//! beside the farm and wrote its absolute path into `farm.toml`.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use reqwest::Method;

use crate::browser_engine::support::PASSWORD_SCRIPT;
use crate::support::api::{http_client, Api};
use crate::support::bed::Settings;
use crate::support::farm::{toml_string, FarmProcess, Layout};
use crate::support::process::{clean_command, run_with_deadline};
use crate::support::provider::Provider;
use crate::support::{json, str_of, wait_for};

#[test]
fn init_in_its_own_directory_then_serve_logs_in_by_script() {
    let dir = tempfile::Builder::new()
        .prefix("relogin-farm-init-")
        .tempdir()
        .unwrap();
    let root = dir.path().to_path_buf();
    let mut init = clean_command(env!("CARGO_BIN_EXE_relogin-farm"));
    init.arg("init").current_dir(&root);
    let out = run_with_deadline("relogin-farm init", init, Duration::from_secs(300));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "init failed: {said}");

    let config_path = root.join("farm.toml");
    let mode = std::fs::metadata(&config_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "farm.toml may hold a client secret");
    let driver = root.join("playwright/node_modules/playwright-core/cli.js");
    assert!(driver.is_file(), "init installed the driver: {said}");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let driver_line = format!("driver = {}", toml_string(&driver.display().to_string()));
    assert!(config.contains(&driver_line), "{config}");

    // Point the template's demo provider at the test provider; nothing else
    // changes (the farm listens where the test says on the command line).
    let layout = Layout { root: root.clone() };
    let provider = Provider::start(&layout.provider_log(), 120);
    let config = config
        .replacen(
            "issuer = \"http://127.0.0.1:19000\"",
            &format!("issuer = {}", toml_string(&provider.issuer)),
            1,
        )
        .replacen(
            "redirect_uri = \"http://127.0.0.1:18765/callback\"",
            &format!("redirect_uri = {}", toml_string(&provider.redirect_uri)),
            1,
        );
    std::fs::write(&config_path, config).unwrap();

    let farm = FarmProcess::start(&layout, None, &Settings::default()).expect("serve starts");
    let token = std::fs::read_to_string(root.join("data/admin.token")).unwrap();
    let admin = Api::new(http_client(), &farm.url, Some(token.trim()));
    let account = admin
        .post(
            "/api/accounts",
            json!({"provider": "demo", "label": "alice"}),
        )
        .expect(201);
    let id = account["id"].as_i64().unwrap();
    for (name, value) in [("username", "alice"), ("password", "alice-password")] {
        let body = json!({ "value": value }).to_string().into_bytes();
        admin
            .send(
                Method::PUT,
                &format!("/api/accounts/{id}/secrets/{name}"),
                Some(body),
            )
            .expect(204);
    }
    admin
        .send(
            Method::PUT,
            &format!("/api/accounts/{id}/script"),
            Some(PASSWORD_SCRIPT.as_bytes().to_vec()),
        )
        .ok();
    wait_for("the scripted relogin", Duration::from_secs(60), || {
        let a = admin.get(&format!("/api/accounts/{id}")).ok();
        match str_of(&a, "state") {
            "healthy" => Ok(()),
            other => Err(format!("{other}: {}", a["last_error"])),
        }
    });
    let lease = admin.lease("demo", None);
    assert!(lease["access_token"].is_string(), "{lease}");
}
