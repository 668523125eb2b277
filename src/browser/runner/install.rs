//! Installs the pinned Playwright driver beside a farm: the binary carries
//! `scripts/playwright/package.json` and its lockfile, and `npm ci` puts
//! exactly that `playwright-core` in `<dir>/node_modules/`. `init` does it
//! (and writes the absolute path into `farm.toml`), so a farm set up in its
//! own directory finds its driver without the source tree.

use std::path::{Path, PathBuf};

const PACKAGE_JSON: &str = include_str!("../../../scripts/playwright/package.json");
const PACKAGE_LOCK: &str = include_str!("../../../scripts/playwright/package-lock.json");

/// Where the driver's `cli.js` sits below an install directory.
const CLI_JS_IN_DIR: &str = "node_modules/playwright-core/cli.js";

/// The directory `relogin-farm init` installs into, below the farm's own.
pub const INSTALL_DIR: &str = "playwright";

/// The driver's `cli.js` once `dir` is installed.
pub fn driver_cli_js_in(dir: &Path) -> PathBuf {
    dir.join(CLI_JS_IN_DIR)
}

/// The install directory a configured `browser.driver` lies in, if it has
/// the npm layout (`<dir>/node_modules/playwright-core/cli.js`).
pub fn install_dir_of(cli_js: &Path) -> Option<PathBuf> {
    let dir = cli_js.ancestors().nth(3)?;
    (driver_cli_js_in(dir) == cli_js).then(|| dir.to_path_buf())
}

/// Writes the pinned manifest and lockfile into `dir` (created 0700) and
/// runs `npm ci` there. The error says what to do.
pub async fn install_driver(dir: &Path) -> Result<(), String> {
    super::profile::create_private_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, text) in [
        ("package.json", PACKAGE_JSON),
        ("package-lock.json", PACKAGE_LOCK),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let run = tokio::process::Command::new("npm")
        .args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let output =
        match run {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(
                "npm is not installed: apt-get install -y npm, then relogin-farm browser install"
                    .into(),
            ),
            Err(e) => return Err(format!("running npm: {e}")),
        };
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "npm ci --prefix {} failed ({}): {}",
            dir.display(),
            output.status,
            super::drive::first_line(&said)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_dirs_follow_the_npm_layout() {
        let dir = Path::new("/srv/relogin-farm/playwright");
        let cli = driver_cli_js_in(dir);
        assert_eq!(
            cli,
            Path::new("/srv/relogin-farm/playwright/node_modules/playwright-core/cli.js")
        );
        assert_eq!(install_dir_of(&cli).as_deref(), Some(dir));
        assert_eq!(
            install_dir_of(Path::new(
                "scripts/playwright/node_modules/playwright-core/cli.js"
            )),
            Some(PathBuf::from("scripts/playwright"))
        );
        assert_eq!(install_dir_of(Path::new("/opt/pw/cli.js")), None);
    }

    #[test]
    fn the_embedded_lockfile_pins_the_driver_version() {
        let lock: serde_json::Value = serde_json::from_str(PACKAGE_LOCK).unwrap();
        assert_eq!(
            lock["packages"]["node_modules/playwright-core"]["version"],
            super::super::DRIVER_VERSION
        );
    }
}
