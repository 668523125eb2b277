//! `relogin-farm doctor`: is everything the browser engine needs installed?
//! Each problem comes with the exact command that fixes it.

use std::path::Path;
use std::time::Duration;

use super::config::{BrowserConfig, DRIVER_VERSION};

/// Installs the pinned driver where `browser.driver` points (main adds
/// `--config` when the farm's config is not `./farm.toml`).
pub const INSTALL_COMMAND: &str = "relogin-farm browser install";

/// Something missing or wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong, e.g. "chromium not found at /usr/bin/chromium".
    pub problem: String,
    /// The command (or config change) that fixes it.
    pub fix: String,
}

/// Checks node, the pinned driver, Chromium and the profile directory.
/// An empty list means a relogin can launch.
pub async fn doctor(cfg: &BrowserConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    problems.extend(check_node(&cfg.node).await);
    problems.extend(check_driver(&cfg.driver_cli_js));
    problems.extend(check_chromium(&cfg.chromium).await);
    problems.extend(check_writable(&cfg.profiles_dir, "profiles_dir"));
    problems
}

async fn check_node(node: &Path) -> Option<Problem> {
    let fix = "apt-get install -y nodejs".to_string();
    let Some(version) = version_of(node).await else {
        return Some(Problem {
            problem: format!("node not found or not runnable at {}", node.display()),
            fix,
        });
    };
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()?;
    (major < 18).then(|| Problem {
        problem: format!(
            "node {version} at {} is too old for playwright-core {DRIVER_VERSION} (needs 18+)",
            node.display()
        ),
        fix: "install Node.js 20 (Debian 12: apt-get install -y nodejs; or from NodeSource)".into(),
    })
}

/// The driver must be the version playwright-rs 0.20 speaks: a different
/// one fails with protocol errors far from the cause.
fn check_driver(cli_js: &Path) -> Option<Problem> {
    let package_dir = cli_js.parent().unwrap_or(Path::new("."));
    let fix = match super::install_dir_of(cli_js) {
        Some(_) => INSTALL_COMMAND.to_string(),
        None => format!(
            "{INSTALL_COMMAND} into ./{}, then set [browser] driver = {:?}",
            super::INSTALL_DIR,
            super::driver_cli_js_in(&BrowserConfig::absolute(Path::new(super::INSTALL_DIR)))
        ),
    };
    if !cli_js.is_file() {
        return Some(Problem {
            problem: format!("Playwright driver not found at {}", cli_js.display()),
            fix,
        });
    }
    let manifest = std::fs::read_to_string(package_dir.join("package.json")).unwrap_or_default();
    let version = serde_json::from_str::<serde_json::Value>(&manifest)
        .ok()
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    (version != DRIVER_VERSION).then(|| Problem {
        problem: format!(
            "Playwright driver at {} is {version}, playwright-rs needs {DRIVER_VERSION}",
            cli_js.display()
        ),
        fix,
    })
}

async fn check_chromium(chromium: &Path) -> Option<Problem> {
    version_of(chromium).await.is_none().then(|| Problem {
        problem: format!(
            "chromium not found or not runnable at {}",
            chromium.display()
        ),
        fix: "apt-get update && apt-get install -y chromium".into(),
    })
}

fn check_writable(dir: &Path, key: &str) -> Option<Problem> {
    let existing = dir.ancestors().find(|d| d.exists())?;
    let readonly = std::fs::metadata(existing)
        .map(|m| m.permissions().readonly())
        .unwrap_or(true);
    readonly.then(|| Problem {
        problem: format!("{key} {} is not writable", dir.display()),
        fix: format!(
            "mkdir -p {0} && chmod 700 {0} (as the farm's user), or set [browser] {key}",
            dir.display()
        ),
    })
}

/// `<binary> --version`, first line, if it runs within 10 s.
async fn version_of(binary: &Path) -> Option<String> {
    let run = tokio::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .ok()?
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Some(text.lines().next().unwrap_or("").trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_each_missing_piece_with_its_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = BrowserConfig {
            chromium: tmp.path().join("no-chromium"),
            node: tmp.path().join("no-node"),
            driver_cli_js: tmp
                .path()
                .join("scripts/playwright/node_modules/playwright-core/cli.js"),
            ..crate::config::BrowserSettings::defaults_under(tmp.path()).engine()
        };
        let problems = doctor(&cfg).await;
        let fixes: Vec<_> = problems.iter().map(|p| p.fix.as_str()).collect();
        assert_eq!(
            fixes,
            [
                "apt-get install -y nodejs",
                INSTALL_COMMAND,
                "apt-get update && apt-get install -y chromium",
            ]
        );
    }

    #[test]
    fn wrong_driver_version() {
        let tmp = tempfile::tempdir().unwrap();
        let pkg = tmp.path().join("node_modules/playwright-core");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(pkg.join("cli.js"), "").unwrap();
        std::fs::write(pkg.join("package.json"), r#"{"version":"1.50.0"}"#).unwrap();
        let problem = check_driver(&pkg.join("cli.js")).unwrap();
        assert!(
            problem
                .problem
                .contains("is 1.50.0, playwright-rs needs 1.64.0"),
            "{problem:?}"
        );
        assert_eq!(problem.fix, INSTALL_COMMAND);
    }
}
