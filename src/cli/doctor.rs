//! `doctor`: the data checks (`relogin_farm::doctor`) and the browser's.

use std::path::Path;

use anyhow::{bail, Result};
use relogin_farm::config::Config;

pub async fn run(config: &Config, config_path: &Path) -> Result<()> {
    let data = relogin_farm::doctor::check_data(config, chrono::Utc::now());
    for note in &data.notes {
        println!("{note}");
    }
    let mut problems = data.problems;
    let providers = relogin_farm::doctor::providers::check(
        config,
        relogin_farm::doctor::providers::PROBE_TIMEOUT,
    )
    .await;
    for note in &providers.notes {
        println!("{note}");
    }
    problems.extend(providers.problems);
    if config.browser.enabled {
        let cfg = config.browser.engine();
        let browser = relogin_farm::browser::doctor(&cfg).await;
        if browser.is_empty() {
            println!(
                "browser: node {}, driver {}, chromium {}",
                cfg.node.display(),
                cfg.driver_cli_js.display(),
                cfg.chromium.display()
            );
        }
        let root = relogin_farm::browser::runner::running_as_root();
        println!(
            "browser sandbox: {} (browser.sandbox = {}, running as {})",
            if cfg.sandbox {
                "on"
            } else {
                "off: Chromium runs with --no-sandbox"
            },
            config.browser.sandbox.as_config(),
            if root { "root" } else { "a user" }
        );
        problems.extend(browser);
    } else {
        println!("browser: off (browser.enabled = false)");
    }
    if problems.is_empty() {
        println!("no problems found");
        return Ok(());
    }
    for p in &problems {
        println!(
            "problem: {}\n    fix: {}",
            p.problem,
            fix_for_this_config(&p.fix, config_path)
        );
    }
    bail!("{} problem(s) found", problems.len())
}

/// The install command must read this farm's config.
fn fix_for_this_config(fix: &str, config_path: &Path) -> String {
    let install = relogin_farm::browser::runner::INSTALL_COMMAND;
    if fix.starts_with(install) && config_path != Path::new("farm.toml") {
        fix.replacen(
            install,
            &format!(
                "relogin-farm --config {} browser install",
                config_path.display()
            ),
            1,
        )
    } else {
        fix.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relogin_farm::browser::runner::INSTALL_COMMAND;

    #[test]
    fn the_install_fix_names_a_config_that_is_not_the_default() {
        let fix = format!("{INSTALL_COMMAND} (downloads the driver)");
        assert_eq!(fix_for_this_config(&fix, Path::new("farm.toml")), fix);
        let other = fix_for_this_config(&fix, Path::new("/etc/farm/prod.toml"));
        assert!(
            other.starts_with("relogin-farm --config /etc/farm/prod.toml browser install"),
            "{other}"
        );
        assert_eq!(
            fix_for_this_config("install chromium", Path::new("x.toml")),
            "install chromium"
        );
    }
}
