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
    let farm = relogin_farm::server::open_farm(config)?;
    // One machine-readable line, for scripts and tests that bind port 0.
    println!("LISTENING {url}");
    std::io::stdout().flush()?;
    relogin_farm::server::serve(farm, listener, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

pub fn check_config(config: &Config) -> Result<()> {
    println!(
        "config ok: listen {}, store {}, {} provider(s): {}",
        config.server.listen,
        config.store.path.display(),
        config.providers.len(),
        config
            .providers
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
