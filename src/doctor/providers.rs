//! `doctor`'s provider checks: per `[[provider]]`, do its endpoints answer
//! (discovery, then the token endpoint, within [`PROBE_TIMEOUT`]), is the
//! port of a loopback `redirect_uri` free on this host, and does the block
//! hold what its preset cannot supply (a client secret)?

use std::time::Duration;

use super::DataReport;
use crate::config::{presets, Config, ProviderConfig};
use crate::domain::provider::LoginKind;

/// How long one provider's endpoints may take to answer `doctor`.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks every provider of `config`; each answer waits `timeout` at most.
pub async fn check(config: &Config, timeout: Duration) -> DataReport {
    let mut report = DataReport::default();
    for provider in &config.providers {
        check_preset(provider, &mut report);
        check_reachable(provider, timeout, &mut report).await;
        check_redirect_port(provider, timeout, &mut report).await;
    }
    report
}

fn check_preset(provider: &ProviderConfig, report: &mut DataReport) {
    let Some(preset) = provider.preset.as_deref().and_then(presets::find) else {
        return;
    };
    if preset.needs_secret && provider.client_secret.is_none() {
        report.problem(
            format!(
                "provider {}: preset \"{}\" needs a client secret and none is given",
                provider.name, preset.name
            ),
            format!(
                "set {} (or client_secret_file in provider {})",
                crate::config::provider_secret_var(&provider.name),
                provider.name
            ),
        );
    }
}

async fn check_reachable(provider: &ProviderConfig, timeout: Duration, report: &mut DataReport) {
    let name = &provider.name;
    let oauth = crate::oauth::Provider::new(provider.clone());
    match tokio::time::timeout(timeout, oauth.probe()).await {
        Ok(Ok((token_url, status))) => report.note(format!(
            "provider {name}: reachable (token endpoint {token_url} answers HTTP {status})"
        )),
        Ok(Err(e)) => report.problem(
            format!("provider {name}: {e}"),
            "check the provider's issuer or endpoint URLs, this host's network and egress_proxy"
                .into(),
        ),
        Err(_) => report.problem(
            format!(
                "provider {name}: no answer within {}",
                humantime::format_duration(timeout)
            ),
            "check the provider's issuer or endpoint URLs, this host's network and egress_proxy"
                .into(),
        ),
    }
}

async fn check_redirect_port(
    provider: &ProviderConfig,
    timeout: Duration,
    report: &mut DataReport,
) {
    if provider.login != LoginKind::Code {
        return;
    }
    let Some(addr) = crate::farm::loopback_addr(&provider.redirect_uri) else {
        return;
    };
    let name = &provider.name;
    let port = addr.port();
    let error = match std::net::TcpListener::bind(addr) {
        Ok(_free) => {
            report.note(format!("provider {name}: redirect port {port} is free"));
            return;
        }
        Err(e) => e,
    };
    // A running farm listens there itself while (or after) a login waits.
    if is_the_farms_listener(addr, timeout).await {
        report.note(format!(
            "provider {name}: redirect port {port} is held by a running farm's login listener"
        ));
        return;
    }
    report.problem(
        format!("provider {name}: cannot listen on {addr}, the port of its redirect_uri: {error}"),
        "stop the program holding that port, or pick another port in redirect_uri and register it with the provider".into(),
    );
}

/// Whether what listens on `addr` answers as the farm's loopback listener.
async fn is_the_farms_listener(addr: std::net::SocketAddr, timeout: Duration) -> bool {
    let Ok(http) = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
    else {
        return false;
    };
    let url = format!("http://{addr}/relogin-farm-doctor");
    match http.get(url).send().await {
        Ok(resp) => resp
            .text()
            .await
            .is_ok_and(|page| page.contains(crate::loopback::OWN_PAGE)),
        Err(_) => false,
    }
}
