//! `account add | login | list | record` and `secret set`: accounts through
//! the running farm's admin API.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use relogin_farm::config::Config;
use relogin_farm::domain::AccountId;
use relogin_farm::farm::{AccountView, LoginStarted, ProviderView};
use relogin_farm::http::types::{LoginComplete, NewAccount};
use relogin_farm::secret::Secret;
use relogin_farm::store::write_private_file;
use reqwest::Method;

use super::client::{when, FarmClient, Payload};
use super::FarmArgs;

#[derive(Subcommand)]
pub enum AccountCommand {
    /// Add an account and log it in: prints the authorize URL, then waits for
    /// the loopback redirect or a pasted redirect URL.
    Add {
        #[arg(long)]
        provider: String,
        #[arg(long)]
        label: String,
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// Only create it (pending_login): log it in later, e.g. with `account record`.
        #[arg(long)]
        no_login: bool,
        #[command(flatten)]
        farm: FarmArgs,
    },
    /// Log an existing account in again.
    Login {
        id: i64,
        #[command(flatten)]
        farm: FarmArgs,
    },
    /// List accounts and their states.
    List {
        #[command(flatten)]
        farm: FarmArgs,
    },
    /// Record a login script: opens a fresh browser profile (no cookies) at the
    /// account's authorize URL (in a window), turns your clicks and typing into
    /// script steps, and when the login reaches the redirect: logs the account
    /// in, uploads the script and secrets to the farm, and has the farm replay
    /// it headless in a throwaway profile to prove it. Without a display it
    /// prints the admin page's link instead (record there, from any device).
    Record {
        id: i64,
        /// Run the recording browser headless (for automation: no window).
        #[arg(long)]
        headless: bool,
        /// Write the script here instead of scripts/login/<provider>-<label>.toml.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        farm: FarmArgs,
    },
}

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Set an account's secret, read from stdin without echo (e.g. `password`, `totp`).
    Set {
        account: i64,
        name: String,
        #[command(flatten)]
        farm: FarmArgs,
    },
}

pub async fn run(config: &Config, command: &AccountCommand) -> Result<()> {
    match command {
        AccountCommand::Add {
            provider,
            label,
            priority,
            no_login,
            farm,
        } => {
            let client = FarmClient::admin(config, farm)?;
            let body = NewAccount {
                provider: provider.clone(),
                label: label.clone(),
                priority: *priority,
            };
            let account: AccountView = client.post("/api/accounts", &body).await?;
            println!("account {} created", account.id);
            if *no_login {
                println!(
                    "not logged in: record its login with `relogin-farm account record {}`",
                    account.id
                );
                return Ok(());
            }
            interactive_login(&client, account.id).await
        }
        AccountCommand::Login { id, farm } => {
            interactive_login(&FarmClient::admin(config, farm)?, *id).await
        }
        AccountCommand::Record {
            id,
            headless,
            out,
            farm,
        } => record(config, *id, *headless, out.as_deref(), farm).await,
        AccountCommand::List { farm } => {
            let client = FarmClient::admin(config, farm)?;
            let accounts: Vec<AccountView> = client.get("/api/accounts").await?;
            for a in &accounts {
                println!("{}", account_line(a));
            }
            Ok(())
        }
    }
}

/// One line of `account list`.
fn account_line(a: &AccountView) -> String {
    format!(
        "{:>5}  {:<12} {:<24} {:<14} expires {}",
        a.id,
        a.provider,
        a.label,
        a.state.as_str(),
        a.expires_at.as_ref().map_or("-".to_owned(), when)
    )
}

/// `secret set`: the value from stdin, write-only.
pub async fn secret(config: &Config, command: &SecretCommand) -> Result<()> {
    let SecretCommand::Set {
        account,
        name,
        farm,
    } = command;
    let value = read_secret_from_stdin(name)?;
    let client = FarmClient::admin(config, farm)?;
    set_secret(&client, *account, name, &value).await?;
    println!("secret {name} of account {account} set");
    Ok(())
}

async fn set_secret(client: &FarmClient, id: AccountId, name: &str, value: &Secret) -> Result<()> {
    // The one place a secret leaves the CLI: to the farm, on purpose.
    let body = serde_json::json!({"value": value.expose()});
    client
        .send(
            Method::PUT,
            &format!("/api/accounts/{id}/secrets/{name}"),
            Payload::Json(&body),
        )
        .await?;
    Ok(())
}

/// Prints the authorize URL, then finishes on whichever comes first: the
/// farm's loopback listener receiving the redirect, or a URL pasted here.
async fn interactive_login(client: &FarmClient, id: AccountId) -> Result<()> {
    let path = format!("/api/accounts/{id}");
    let before = client.get::<AccountView>(&path).await?.generation;
    let started: LoginStarted = client.post_empty(&format!("{path}/login")).await?;
    if let (Some(uri), Some(code)) = (&started.verification_uri, &started.user_code) {
        return device_login(client, &path, before, uri, code).await;
    }
    let authorize_url = started
        .authorize_url
        .context("the farm's answer has no authorize URL")?;
    println!("\nOpen this URL in a browser and log in:\n\n  {authorize_url}\n");
    if started.listening {
        println!("The farm is listening for the redirect. If the browser cannot reach it,");
    }
    println!("paste the full URL the browser was sent to (or the code the provider's page shows), then press Enter:");
    let (pasted_tx, mut pasted_rx) = tokio::sync::mpsc::channel::<String>(1);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if !line.trim().is_empty() && pasted_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            Some(url) = pasted_rx.recv() => {
                match complete_login(client, id, url.trim()).await {
                    Ok(a) => return done(&a),
                    Err(e) => eprintln!("{e:#}\npaste the redirect URL or code again:"),
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                // Every successful login writes new tokens, which bumps the generation.
                let a: AccountView = client.get(&path).await?;
                if a.generation > before {
                    return done(&a);
                }
            }
        }
    }
}

/// A device login: prints the page and the code, then waits while the farm
/// polls the provider, until the account has new tokens or the login failed.
async fn device_login(
    client: &FarmClient,
    path: &str,
    before: i64,
    verification_uri: &str,
    user_code: &str,
) -> Result<()> {
    println!("\nOpen {verification_uri} in a browser and enter the code:\n\n  {user_code}\n");
    println!("waiting for the provider to confirm...");
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let a: AccountView = client.get(path).await?;
        if a.generation > before {
            return done(&a);
        }
    }
}

/// Finishes a login with what was pasted: a redirect URL, or the
/// `code#state` (or bare code) some providers' pages show.
async fn complete_login(client: &FarmClient, id: AccountId, pasted: &str) -> Result<AccountView> {
    let body = if pasted.contains("://") {
        LoginComplete {
            redirect_url: Some(pasted.to_owned()),
            ..LoginComplete::default()
        }
    } else {
        LoginComplete {
            code: Some(pasted.to_owned()),
            ..LoginComplete::default()
        }
    };
    client
        .post(&format!("/api/accounts/{id}/login/complete"), &body)
        .await
}

fn done(account: &AccountView) -> Result<()> {
    println!("account {} is {}", account.id, account.state.as_str());
    Ok(())
}

/// Reads one line from stdin; without echo when stdin is a terminal.
fn read_secret_from_stdin(name: &str) -> Result<Secret> {
    use std::io::IsTerminal;
    let value = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("{name}: "))?
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line
    };
    let value = value.trim_end_matches(['\n', '\r']).to_string();
    if value.is_empty() {
        bail!("empty secret: nothing was set");
    }
    Ok(Secret::new(value))
}

/// `account record`: records locally, then hands everything to the farm.
async fn record(
    config: &Config,
    id: AccountId,
    headless: bool,
    out: Option<&Path>,
    farm: &FarmArgs,
) -> Result<()> {
    use relogin_farm::browser::recorder::{
        record, script_file_name, RecordOptions, NOTHING_RECORDED,
    };
    let client = FarmClient::admin(config, farm)?;
    let account: AccountView = client.get(&format!("/api/accounts/{id}")).await?;
    // Before any login starts at the farm: without a display there is no
    // window to record in, and the admin page's browser is the way.
    if !headless && !relogin_farm::browser::runner::has_display() {
        println!(
            "no display here (DISPLAY / WAYLAND_DISPLAY unset): record from any device in the admin page's \
             remote browser instead:\n  {}/admin/#record={id}",
            client.base()
        );
        return Ok(());
    }
    let (provider, label) = (account.provider, account.label);
    let providers: Vec<ProviderView> = client.get("/api/providers").await?;
    let redirect_uri = providers
        .iter()
        .find(|p| p.name == provider)
        .context("the farm does not list the account's provider")?
        .redirect_uri
        .parse()?;
    let started: LoginStarted = client
        .post_empty(&format!("/api/accounts/{id}/login"))
        .await?;
    let pool = relogin_farm::browser::BrowserPool::new(config.browser.engine());
    // A person's browser lasts as long as the admin page's does.
    let timeout = config.browser.session_max;
    let within = humantime::format_duration(timeout);
    if headless {
        println!("recording {provider} as {label} headless (no window): it stops at the redirect, or after {within}");
    } else {
        println!("recording: log in to {provider} as {label} in the browser window; it stops at the redirect, or after {within}");
    }
    let options = RecordOptions {
        provider: provider.clone(),
        authorize_url: started
            .authorize_url
            .context(
                "the account's provider logs in with the device flow, which has nothing to record",
            )?
            .parse()?,
        redirect_uri,
        headless,
        timeout,
    };
    let recording = record(&pool, &id.to_string(), options).await;
    pool.shutdown().await;
    let recording = recording?;

    complete_login(&client, id, recording.redirect_url.as_str()).await?;
    println!("account {id} logged in");
    if !recording.acts_on_page() {
        bail!("{NOTHING_RECORDED}");
    }
    let text = recording.script.to_toml();
    let path = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new("scripts/login").join(script_file_name(&provider, &label)));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_private_file(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    client
        .send::<()>(
            Method::PUT,
            &format!("/api/accounts/{id}/script"),
            Payload::Toml(&text),
        )
        .await
        .context("uploading the script")?;
    for (name, value) in &recording.secrets {
        set_secret(&client, id, name, value).await?;
    }
    println!(
        "script written to {} and attached; {} secret(s) stored",
        path.display(),
        recording.secrets.len()
    );
    if recording.needs_totp_seed {
        println!("the login asked for a one-time code: store the TOTP seed with `relogin-farm secret set {id} totp`");
        return Ok(());
    }
    // The answer is the account and the run (`Relogged`).
    let proof: serde_json::Value = client
        .post_empty(&format!("/api/accounts/{id}/script/prove"))
        .await
        .context("proving the script in a fresh browser profile")?;
    println!(
        "proved by the farm in a fresh browser profile (no cookies): account {id} is {}; script lines run: {}",
        proof["state"].as_str().unwrap_or("?"),
        lines_text(&proof["relogin"]["lines_run"])
    );
    Ok(())
}

/// `[3, 7]` → `3, 7`.
fn lines_text(lines: &serde_json::Value) -> String {
    let lines: Vec<String> = lines
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| l.to_string())
        .collect();
    lines.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(answer: serde_json::Value) -> AccountView {
        serde_json::from_value(answer).unwrap()
    }

    fn answer(expires_at: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "id": 7, "provider": "acme", "label": "alice", "state": "needs_relogin",
            "priority": 0, "enabled": true, "expires_at": expires_at,
            "cooldown_until": null, "last_refresh_at": null, "last_used_at": null,
            "last_error": {"at": "2026-11-29T10:00:00Z", "message": "invalid_grant", "screenshot": null},
            "leases_24h": 3, "has_refresh_token": true, "has_login_script": false,
            "browser": false, "generation": 4, "created_at": "2026-11-01T00:00:00Z",
            "quota": {"at": "2026-11-29T10:00:00Z", "headers": {"x-ratelimit-remaining": "9"}, "resets_at": null}
        })
    }

    #[test]
    fn an_account_line_shows_what_the_farm_sent() {
        let line = account_line(&account(answer("2026-11-29T11:00:00.123456Z".into())));
        assert_eq!(
            line,
            "    7  acme         alice                    needs_relogin  expires 2026-11-29T11:00:00.123456Z"
        );
        let never = account_line(&account(answer(serde_json::Value::Null)));
        assert!(never.ends_with("expires -"), "{never}");
    }

    #[test]
    fn a_relogin_answer_reads_as_its_account() {
        let mut relogged = answer(serde_json::Value::Null);
        relogged["state"] = "healthy".into();
        relogged["relogin"] = serde_json::json!({"account_id": 7, "elapsed_ms": 1234, "steps_acted": 1, "session_expires_at": null});
        assert_eq!(account(relogged).state.as_str(), "healthy");
    }
}
