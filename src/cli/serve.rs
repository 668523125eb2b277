//! `serve` (the daemon) and `check-config`.

use std::io::Write;

use anyhow::{Context, Result};
use relogin_farm::config::Config;

pub async fn run(config: Config) -> Result<()> {
    // Before anything opens a file: every descriptor the hard limit allows.
    match relogin_farm::listener::raise_nofile_limit() {
        Ok(nofile) => tracing::info!(nofile, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let tcp = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("server.listen: cannot listen on {}", config.server.listen))?;
    let listener = relogin_farm::listener::Listener::new(tcp, &config.server)?;
    let url = listener.url()?;
    tracing::info!(browsers = %config.browser.at_once(), "browser relogins");
    let farm = relogin_farm::server::open_farm(config)?;
    // Before anyone is told the farm is up: a SIGTERM that follows the
    // first answer closely must find the handler, not end the process.
    let shutdown = shutdown_signal()?;
    // One machine-readable line, for scripts and tests that bind port 0.
    println!("LISTENING {url}");
    std::io::stdout().flush()?;
    relogin_farm::server::serve(farm, listener, shutdown).await?;
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now; the future ends at the
/// first of them.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

pub fn check_config(config: &Config) -> Result<()> {
    println!("{}", summary(config));
    Ok(())
}

/// `check-config`'s line: what the farm will run with, derived defaults
/// (`browser.max_concurrent`) as this machine gives them.
fn summary(config: &Config) -> String {
    format!(
        "config ok: listen {}, store {}, browsers {}, {} provider(s): {}",
        config.server.listen,
        config.store.path.display(),
        config.browser.at_once(),
        config.providers.len(),
        config
            .providers
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use relogin_farm::config::Overrides;

    fn summary_of(toml: &str) -> String {
        let env = [("RELOGIN_FARM_ADMIN_TOKEN".to_owned(), "a".repeat(32))];
        summary(&Config::from_toml_str(toml, env, &Overrides::default()).unwrap())
    }

    #[test]
    fn check_config_says_how_many_browsers_run_at_once() {
        let three = summary_of("[browser]\nmax_concurrent = 3\n");
        assert!(three.contains(", browsers at most 3 at once,"), "{three}");
        let off = summary_of("[browser]\nenabled = false\n");
        assert!(off.contains(", browsers off,"), "{off}");
        assert!(
            off.starts_with("config ok: listen 127.0.0.1:8377, "),
            "{off}"
        );
    }
}
