//! The `relogin-farm` binary: command-line parsing, logging setup, and the
//! commands. Everything else lives in the library.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use relogin_farm::config::{self, Config, Overrides};
use relogin_farm::secret::Secret;
use relogin_farm::store::{write_private_file as write_private, write_secret_file, Cipher};

/// A lease is allocated by its request and freed by whichever worker leads
/// its batch's commit; glibc's allocator pays for such cross-thread frees
/// and mimalloc does not (`scripts/bench` compares). Built with `no_thp`:
/// otherwise mimalloc asks for transparent huge pages, which raises the
/// resident memory of an idle farm (`scripts/bench-memory`) for no speed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "relogin-farm",
    version,
    about = "Keeps OAuth accounts logged in and hands out their tokens with leases."
)]
struct Cli {
    /// Config file (TOML).
    #[arg(
        long,
        global = true,
        env = "RELOGIN_FARM_CONFIG",
        default_value = "farm.toml"
    )]
    config: PathBuf,
    /// Log filter (overrides log.level), e.g. "debug" or "info,relogin_farm=debug".
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented farm.toml, the data dir, a store key and an admin token here.
    Init {
        /// Also make a self-signed TLS certificate for this host's names and
        /// the loopback addresses (data/tls.crt, data/tls.key) and serve HTTPS.
        #[arg(long)]
        tls: bool,
    },
    /// Run the daemon.
    Serve {
        /// Listen address (overrides server.listen); port 0 picks a free port.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Database path (overrides store.path).
        #[arg(long)]
        store_path: Option<PathBuf>,
    },
    /// Manage accounts through the running farm's admin API.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Load and validate the configuration, print a summary, and exit.
    CheckConfig,
    /// Check node, the Playwright driver and Chromium; print the fix for what is missing.
    Doctor,
    /// Account secrets for login scripts (write-only).
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// Browser profiles (one per account).
    Browser {
        #[command(subcommand)]
        command: BrowserCommand,
    },
    /// Client keys for the programs that call /credential/next.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Take a backup of the running farm's database now (into backup.dir).
    Backup {
        /// List the backups instead, newest first.
        #[arg(long)]
        list: bool,
        #[command(flatten)]
        farm: FarmArgs,
    },
    /// Print a fresh access token of PROVIDER's next account on stdout (for
    /// shell scripts), leased through the running farm's /credential/next.
    Token {
        provider: String,
        /// The farm's base URL.
        #[arg(
            long,
            env = "RELOGIN_FARM_URL",
            default_value = "http://127.0.0.1:8377"
        )]
        farm: String,
        /// A client key (or the admin token). Not RELOGIN_FARM_KEY: that is
        /// the store key, which must never travel to the farm's API.
        #[arg(long, env = "RELOGIN_FARM_CLIENT_KEY", hide_env_values = true)]
        key: String,
        /// Sticky session key.
        #[arg(long)]
        session: Option<String>,
    },
    /// Put a backup in place of the database. The farm must be stopped; the
    /// database it replaces is moved aside, not deleted.
    Restore {
        /// A backup file (e.g. data/backups/farm-20261128T033000.000Z.db).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Set an account's secret, read from stdin without echo (e.g. `password`, `totp`).
    Set {
        account: i64,
        name: String,
        #[command(flatten)]
        farm: FarmArgs,
    },
}

#[derive(Subcommand)]
enum BrowserCommand {
    /// Every account's profile: present, size, last run, session-cookie expiry.
    List {
        #[command(flatten)]
        farm: FarmArgs,
    },
    /// Open an account's profile in a visible browser window, for a person to
    /// fix something by hand; closes cleanly (cookies kept) when the window closes.
    Open {
        account: i64,
        /// A page to open first (e.g. the provider's sign-in page).
        #[arg(long)]
        url: Option<url::Url>,
    },
    /// Wipe an account's profile (the next relogin runs the full script).
    Reset {
        account: i64,
        #[command(flatten)]
        farm: FarmArgs,
    },
    /// Install the pinned Playwright driver (npm ci) where browser.driver
    /// points; `init` does it once.
    Install,
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Add an account and log it in: prints the authorize URL, then waits for
    /// the loopback redirect or a pasted redirect URL.
    Add {
        #[arg(long)]
        provider: String,
        #[arg(long)]
        label: String,
        #[arg(long, default_value_t = 0)]
        priority: i64,
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
    /// Record a login script: opens the account's profile at its authorize URL
    /// (in a window), turns your clicks and typing into script steps, and when
    /// the login reaches the redirect: logs the account in, uploads the script
    /// and secrets to the farm, and replays it there headless to prove it.
    Record {
        id: i64,
        /// Run the recording browser headless (for automation).
        #[arg(long)]
        headless: bool,
        /// Also write the script here (default: scripts/login/<provider>-<label>.toml).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        farm: FarmArgs,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Create a key; it is printed once (only its hash is stored).
    Add {
        name: String,
        #[command(flatten)]
        farm: FarmArgs,
    },
    /// List the keys (names and dates; never the keys).
    List {
        #[command(flatten)]
        farm: FarmArgs,
    },
    /// Revoke a key: programs using it are refused from now on.
    Revoke {
        id: i64,
        #[command(flatten)]
        farm: FarmArgs,
    },
}

#[derive(clap::Args)]
struct FarmArgs {
    /// The farm's base URL (default: from server.listen in the config).
    #[arg(long)]
    farm: Option<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Init { tls } => init(&cli.config, *tls),
        Command::Serve { listen, store_path } => {
            let overrides = Overrides {
                listen: *listen,
                store_path: store_path.clone(),
                log_level: cli.log_level.clone(),
            };
            let config = load_config(&cli.config, &overrides)?;
            init_logging(&config);
            runtime()?.block_on(serve(config))
        }
        Command::CheckConfig => {
            let config = load_config(
                &cli.config,
                &Overrides {
                    log_level: cli.log_level.clone(),
                    ..Default::default()
                },
            )?;
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
        Command::Account { command } => {
            let config = load_config(&cli.config, &Overrides::default())?;
            runtime()?.block_on(account(config, command))
        }
        Command::Doctor => {
            let config = load_config(&cli.config, &Overrides::default())?;
            runtime()?.block_on(doctor(&config, &cli.config))
        }
        Command::Secret {
            command:
                SecretCommand::Set {
                    account,
                    name,
                    farm,
                },
        } => {
            let config = load_config(&cli.config, &Overrides::default())?;
            let value = read_secret_from_stdin(name)?;
            runtime()?.block_on(async {
                let client = FarmClient::new(&config, farm)?;
                let path = format!("/api/accounts/{account}/secrets/{name}");
                client
                    .call(
                        reqwest::Method::PUT,
                        &path,
                        Some(serde_json::json!({"value": value.expose()})),
                    )
                    .await?;
                println!("secret {name} of account {account} set");
                Ok(())
            })
        }
        Command::Browser { command } => {
            let config = load_config(&cli.config, &Overrides::default())?;
            runtime()?.block_on(browser(config, command))
        }
        Command::Client { command } => {
            let config = load_config(&cli.config, &Overrides::default())?;
            runtime()?.block_on(client(&config, command))
        }
        Command::Backup { list, farm } => {
            let config = load_config(&cli.config, &Overrides::default())?;
            runtime()?.block_on(backup(&config, *list, farm))
        }
        Command::Token {
            provider,
            farm,
            key,
            session,
        } => runtime()?.block_on(token(farm, key, provider, session.as_deref())),
        Command::Restore { file } => {
            let config = load_config(&cli.config, &Overrides::default())?;
            let moved = relogin_farm::server::restore_backup(&config, file)?;
            println!(
                "restored {} to {}",
                file.display(),
                config.store.path.display()
            );
            if let Some(old) = moved {
                println!("the database it replaced is kept at {}", old.display());
            }
            println!(
                "start the farm; an account whose refresh token was rotated after this backup \
                 will be found dead and logged in again"
            );
            Ok(())
        }
    }
}

async fn client(config: &Config, command: &ClientCommand) -> Result<()> {
    use reqwest::Method;
    match command {
        ClientCommand::Add { name, farm } => {
            let api = FarmClient::new(config, farm)?;
            let created = api
                .call(
                    Method::POST,
                    "/api/clients",
                    Some(serde_json::json!({"name": name})),
                )
                .await?;
            let key = created["key"]
                .as_str()
                .context("the farm answered without a key")?;
            eprintln!(
                "client {} ({name}) created; its key, shown this once:",
                created["id"]
            );
            // The key alone on stdout, for `KEY=$(relogin-farm client add …)`.
            println!("{key}");
        }
        ClientCommand::List { farm } => {
            let api = FarmClient::new(config, farm)?;
            let clients = api.call(Method::GET, "/api/clients", None).await?;
            for c in clients.as_array().into_iter().flatten() {
                let status = match c["revoked_at"].as_str() {
                    Some(at) => format!("revoked {at}"),
                    None => "active".to_owned(),
                };
                println!(
                    "{:>5}  {:<24} created {}  {status}",
                    c["id"],
                    c["name"].as_str().unwrap_or(""),
                    c["created_at"].as_str().unwrap_or("")
                );
            }
        }
        ClientCommand::Revoke { id, farm } => {
            let api = FarmClient::new(config, farm)?;
            api.call(Method::DELETE, &format!("/api/clients/{id}"), None)
                .await?;
            println!("client {id} revoked");
        }
    }
    Ok(())
}

async fn backup(config: &Config, list: bool, farm: &FarmArgs) -> Result<()> {
    let client = FarmClient::new(config, farm)?;
    let line = |b: &serde_json::Value| {
        format!(
            "{}  {} bytes  {}",
            b["file"].as_str().unwrap_or(""),
            b["bytes"],
            b["created_at"].as_str().unwrap_or("")
        )
    };
    if list {
        let found = client
            .call(reqwest::Method::GET, "/api/backups", None)
            .await?;
        for b in found.as_array().into_iter().flatten() {
            println!("{}", line(b));
        }
    } else {
        let b = client
            .call(reqwest::Method::POST, "/api/backups", None)
            .await?;
        println!("backup taken: {}", line(&b));
    }
    Ok(())
}

/// `relogin-farm token`: one `/credential/next`, the token alone on stdout.
async fn token(farm: &str, key: &str, provider: &str, session: Option<&str>) -> Result<()> {
    let client = FarmClient {
        base: farm.trim_end_matches('/').to_string(),
        token: Secret::new(key.to_string()),
        http: reqwest::Client::new(),
    };
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("provider", provider);
    if let Some(s) = session {
        query.append_pair("session", s);
    }
    let path = format!("/credential/next?{}", query.finish());
    let lease = client.call(reqwest::Method::GET, &path, None).await?;
    let token = lease["access_token"]
        .as_str()
        .context("the farm's answer has no access_token")?;
    println!("{token}");
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn load_config(path: &Path, overrides: &Overrides) -> Result<Config> {
    // The default path may be absent (defaults only); an explicit one must exist.
    let explicit =
        std::env::var_os("RELOGIN_FARM_CONFIG").is_some() || path != Path::new("farm.toml");
    Config::load(path, explicit, std::env::vars(), overrides)
        .with_context(|| format!("config {}", path.display()))
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&config.log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Text => builder.init(),
    }
}

async fn serve(config: Config) -> Result<()> {
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

/// `init`: everything a first `serve` needs, in the current directory.
/// Never overwrites: an existing file is a reason to stop, not to replace it.
fn init(config_path: &Path, tls: bool) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let data = Path::new("data");
    let key_file = data.join("farm.key");
    let token_file = data.join("admin.token");
    let tls_files = tls.then(|| config::TlsFiles {
        cert_file: data.join("tls.crt"),
        key_file: data.join("tls.key"),
    });
    let mut files = vec![config_path, &key_file, &token_file];
    if let Some(t) = &tls_files {
        files.extend([t.cert_file.as_path(), t.key_file.as_path()]);
    }
    for f in files {
        if f.exists() {
            bail!(
                "{} already exists; init does not overwrite anything",
                f.display()
            );
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data)
        .context("creating data/")?;
    write_secret_file(&key_file, &Cipher::generate_key_text()).context("writing the store key")?;
    let token = Secret::new(format!("rfa_{}", random_token()));
    write_secret_file(&token_file, &token).context("writing the admin token")?;
    let fingerprint = match &tls_files {
        Some(t) => Some(write_self_signed(t)?),
        None => None,
    };
    let driver_dir = std::path::absolute(relogin_farm::browser::runner::INSTALL_DIR)?;
    let driver = relogin_farm::browser::runner::driver_cli_js_in(&driver_dir);
    // 0600: a farm.toml may come to hold a client secret.
    write_private(
        config_path,
        config::init_template(
            &token_file.display().to_string(),
            &driver.display().to_string(),
            tls_files.as_ref(),
        )
        .as_bytes(),
    )
    .with_context(|| format!("writing {}", config_path.display()))?;
    println!(
        "wrote {} (edit the [[provider]] section)",
        config_path.display()
    );
    println!(
        "wrote {} (0600) — back it up: without it the database cannot be read",
        key_file.display()
    );
    println!(
        "wrote {} (0600) — the admin API token",
        token_file.display()
    );
    if let (Some(t), Some(fingerprint)) = (&tls_files, fingerprint) {
        println!(
            "wrote {} and {} (0600) — a self-signed certificate for {}",
            t.cert_file.display(),
            t.key_file.display(),
            relogin_farm::listener::tls::host_names().join(", ")
        );
        println!("certificate SHA-256 fingerprint: {fingerprint}");
        println!(
            "clients on other machines trust that certificate (copy {}; the CLI: \
             RELOGIN_FARM_CA_FILE); set server.listen to an address they reach",
            t.cert_file.display()
        );
    }
    println!(
        "installing the Playwright driver into {} (npm ci)…",
        driver_dir.display()
    );
    runtime()?
        .block_on(relogin_farm::browser::runner::install_driver(&driver_dir))
        .map_err(anyhow::Error::msg)
        .context("the browser relogin needs the Playwright driver")?;
    println!("installed {}", driver.display());
    println!(
        "next: relogin-farm serve --config {}",
        config_path.display()
    );
    Ok(())
}

/// Writes a new self-signed certificate and its key (both 0600); returns
/// the certificate's fingerprint.
fn write_self_signed(files: &config::TlsFiles) -> Result<String> {
    let made = relogin_farm::listener::tls::self_signed(relogin_farm::listener::tls::host_names())
        .context("generating the TLS certificate")?;
    write_secret_file(&files.key_file, &made.key_pem).context("writing the TLS key")?;
    write_secret_file(&files.cert_file, &Secret::new(made.cert_pem))
        .context("writing the TLS certificate")?;
    Ok(made.fingerprint)
}

fn random_token() -> String {
    let key = Cipher::generate_key_text();
    key.expose()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect()
}

/// A small admin-API client for the CLI.
struct FarmClient {
    base: String,
    token: Secret,
    http: reqwest::Client,
}

impl FarmClient {
    fn new(config: &Config, args: &FarmArgs) -> Result<Self> {
        let token = config.server.admin_token.clone().context(
            "no admin token: set server.admin_token_file or RELOGIN_FARM_ADMIN_TOKEN to talk to the farm",
        )?;
        let base = args
            .farm
            .clone()
            .unwrap_or_else(|| default_farm_url(&config.server));
        Ok(FarmClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: farm_http_client(&config.server)?,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the farm at {} (is it running?)", self.base))?;
        let status = resp.status();
        let value: serde_json::Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!(
                "{} {}: {}",
                status.as_u16(),
                value["error"].as_str().unwrap_or("error"),
                value["detail"].as_str().unwrap_or("")
            );
        }
        Ok(value)
    }
}

/// The farm's URL from `server.listen`: `https` when it serves TLS, and a
/// loopback address for a wildcard one.
fn default_farm_url(server: &config::ServerConfig) -> String {
    let mut addr = server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = if server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}")
}

/// The CLI's HTTP client. Besides the usual roots it trusts the certificate
/// in `RELOGIN_FARM_CA_FILE` or, without it, the farm's own
/// `server.tls_cert_file` (a self-signed one is its own root).
fn farm_http_client(server: &config::ServerConfig) -> Result<reqwest::Client> {
    let ca_file = std::env::var_os("RELOGIN_FARM_CA_FILE")
        .map(|f| ("RELOGIN_FARM_CA_FILE", PathBuf::from(f)))
        .or_else(|| {
            server
                .tls
                .as_ref()
                .map(|t| ("server.tls_cert_file", t.cert_file.clone()))
        });
    let mut builder = reqwest::Client::builder();
    if let Some((source, path)) = ca_file {
        let pem = std::fs::read(&path)
            .with_context(|| format!("{source}: cannot read {}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{source}: {} is not a PEM certificate", path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

async fn account(config: Config, command: &AccountCommand) -> Result<()> {
    use reqwest::Method;
    match command {
        AccountCommand::Add {
            provider,
            label,
            priority,
            farm,
        } => {
            let client = FarmClient::new(&config, farm)?;
            let body =
                serde_json::json!({"provider": provider, "label": label, "priority": priority});
            let account = client
                .call(Method::POST, "/api/accounts", Some(body))
                .await?;
            let id = account["id"]
                .as_i64()
                .context("the farm answered without an account id")?;
            println!("account {id} created");
            interactive_login(&client, id).await
        }
        AccountCommand::Login { id, farm } => {
            interactive_login(&FarmClient::new(&config, farm)?, *id).await
        }
        AccountCommand::Record {
            id,
            headless,
            out,
            farm,
        } => record(&config, *id, *headless, out.as_deref(), farm).await,
        AccountCommand::List { farm } => {
            let client = FarmClient::new(&config, farm)?;
            let accounts = client.call(Method::GET, "/api/accounts", None).await?;
            for a in accounts.as_array().into_iter().flatten() {
                println!(
                    "{:>5}  {:<12} {:<24} {:<14} expires {}",
                    a["id"],
                    a["provider"].as_str().unwrap_or(""),
                    a["label"].as_str().unwrap_or(""),
                    a["state"].as_str().unwrap_or(""),
                    a["expires_at"].as_str().unwrap_or("-")
                );
            }
            Ok(())
        }
    }
}

/// Prints the authorize URL, then finishes on whichever comes first: the
/// farm's loopback listener receiving the redirect, or a URL pasted here.
async fn interactive_login(client: &FarmClient, id: i64) -> Result<()> {
    use reqwest::Method;
    let path = format!("/api/accounts/{id}");
    let generation = |a: &serde_json::Value| a["generation"].as_i64().unwrap_or(0);
    let before = generation(&client.call(Method::GET, &path, None).await?);
    let started = client
        .call(Method::POST, &format!("{path}/login"), None)
        .await?;
    println!(
        "\nOpen this URL in a browser and log in:\n\n  {}\n",
        started["authorize_url"].as_str().unwrap_or("")
    );
    if started["listening"].as_bool() == Some(true) {
        println!("The farm is listening for the redirect. If the browser cannot reach it,");
    }
    println!("paste the full URL the browser was sent to, then press Enter:");
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
                let body = serde_json::json!({"redirect_url": url.trim()});
                match client.call(Method::POST, &format!("{path}/login/complete"), Some(body)).await {
                    Ok(a) => return done(&a),
                    Err(e) => eprintln!("{e:#}\npaste the redirect URL again:"),
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                // Every successful login writes new tokens, which bumps the generation.
                let a = client.call(Method::GET, &path, None).await?;
                if generation(&a) > before {
                    return done(&a);
                }
            }
        }
    }
}

fn done(account: &serde_json::Value) -> Result<()> {
    println!(
        "account {} is {}",
        account["id"],
        account["state"].as_str().unwrap_or("?")
    );
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

async fn doctor(config: &Config, config_path: &Path) -> Result<()> {
    let data = relogin_farm::doctor::check_data(config, chrono::Utc::now());
    for note in &data.notes {
        println!("{note}");
    }
    let mut problems = data.problems;
    if config.browser.enabled {
        let cfg = relogin_farm::farm::browser_config(&config.browser);
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
    let install = relogin_farm::browser::runner::INSTALL_COMMAND;
    for p in &problems {
        // The install command must read this farm's config.
        let fix = match (
            p.fix.starts_with(install),
            config_path == Path::new("farm.toml"),
        ) {
            (true, false) => p.fix.replacen(
                install,
                &format!(
                    "relogin-farm --config {} browser install",
                    config_path.display()
                ),
                1,
            ),
            _ => p.fix.clone(),
        };
        println!("problem: {}\n    fix: {fix}", p.problem);
    }
    bail!("{} problem(s) found", problems.len())
}

async fn browser(config: Config, command: &BrowserCommand) -> Result<()> {
    use reqwest::Method;
    match command {
        BrowserCommand::List { farm } => {
            let client = FarmClient::new(&config, farm)?;
            let accounts = client.call(Method::GET, "/api/accounts", None).await?;
            for a in accounts.as_array().into_iter().flatten() {
                let info = client
                    .call(
                        Method::GET,
                        &format!("/api/accounts/{}/browser", a["id"]),
                        None,
                    )
                    .await?;
                println!(
                    "{:>5}  {:<24} profile {:<8} {:>8} KiB  last run {} ({})  session until {}",
                    a["id"],
                    a["label"].as_str().unwrap_or(""),
                    if info["profile_present"] == true {
                        "present"
                    } else {
                        "none"
                    },
                    info["profile_bytes"].as_u64().unwrap_or(0) / 1024,
                    info["last_run_at"].as_str().unwrap_or("never"),
                    info["last_outcome"].as_str().unwrap_or("-"),
                    info["session_expires_at"].as_str().unwrap_or("-"),
                );
            }
            Ok(())
        }
        BrowserCommand::Open { account, url } => {
            let pool = relogin_farm::browser::BrowserPool::new(relogin_farm::farm::browser_config(
                &config.browser,
            ));
            println!("opening the profile of account {account}; close the window when done");
            pool.open_headed(&account.to_string(), url.as_ref()).await?;
            println!("closed cleanly; cookies kept");
            Ok(())
        }
        BrowserCommand::Install => {
            use relogin_farm::browser::runner::{install_dir_of, install_driver};
            let driver = std::path::absolute(&config.browser.driver)?;
            let Some(dir) = install_dir_of(&driver) else {
                bail!(
                    "browser.driver {} is not <dir>/node_modules/playwright-core/cli.js: \
                     point it at such a path, then run this again",
                    driver.display()
                );
            };
            println!(
                "installing the Playwright driver into {} (npm ci)…",
                dir.display()
            );
            install_driver(&dir).await.map_err(anyhow::Error::msg)?;
            println!("installed {}", driver.display());
            Ok(())
        }
        BrowserCommand::Reset { account, farm } => {
            let client = FarmClient::new(&config, farm)?;
            client
                .call(
                    Method::DELETE,
                    &format!("/api/accounts/{account}/browser"),
                    None,
                )
                .await?;
            println!("profile of account {account} wiped");
            Ok(())
        }
    }
}

/// `account record`: records locally, then hands everything to the farm.
async fn record(
    config: &Config,
    id: i64,
    headless: bool,
    out: Option<&Path>,
    farm: &FarmArgs,
) -> Result<()> {
    use relogin_farm::browser::recorder::{record, RecordOptions};
    use reqwest::Method;
    let client = FarmClient::new(config, farm)?;
    let account = client
        .call(Method::GET, &format!("/api/accounts/{id}"), None)
        .await?;
    let provider = account["provider"]
        .as_str()
        .context("the farm answered without a provider")?
        .to_string();
    let label = account["label"].as_str().unwrap_or("account").to_string();
    let providers = client.call(Method::GET, "/api/providers", None).await?;
    let redirect_uri = providers
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == provider.as_str())
        .and_then(|p| p["redirect_uri"].as_str())
        .context("the farm does not list the account's provider")?
        .parse()?;
    let started = client
        .call(Method::POST, &format!("/api/accounts/{id}/login"), None)
        .await?;
    let authorize_url = started["authorize_url"]
        .as_str()
        .context("no authorize_url")?
        .parse()?;
    let pool = relogin_farm::browser::BrowserPool::new(relogin_farm::farm::browser_config(
        &config.browser,
    ));
    println!("recording: log in to {provider} as {label} in the browser window; it stops at the redirect");
    let options = RecordOptions {
        provider: provider.clone(),
        authorize_url,
        redirect_uri,
        headless,
        timeout: Duration::from_secs(600),
    };
    let recording = record(&pool, &id.to_string(), options).await?;
    pool.shutdown().await;

    let body = serde_json::json!({"redirect_url": recording.redirect_url.as_str()});
    client
        .call(
            Method::POST,
            &format!("/api/accounts/{id}/login/complete"),
            Some(body),
        )
        .await?;
    println!("account {id} logged in");
    let text = recording.script.to_toml();
    let path = out.map(Path::to_path_buf).unwrap_or_else(|| {
        Path::new("scripts/login").join(relogin_farm::browser::recorder::script_file_name(
            &provider, &label,
        ))
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_private(&path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    upload_script(&client, id, &text).await?;
    for (name, value) in &recording.secrets {
        let body = serde_json::json!({"value": value.expose()});
        client
            .call(
                Method::PUT,
                &format!("/api/accounts/{id}/secrets/{name}"),
                Some(body),
            )
            .await?;
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
    let replay = client
        .call(Method::POST, &format!("/api/accounts/{id}/relogin"), None)
        .await?;
    println!(
        "replayed by the farm: account {id} is {}",
        replay["state"].as_str().unwrap_or("?")
    );
    Ok(())
}

async fn upload_script(client: &FarmClient, id: i64, text: &str) -> Result<()> {
    let resp = client
        .http
        .put(format!("{}/api/accounts/{id}/script", client.base))
        .bearer_auth(client.token.expose())
        .header("content-type", "application/toml")
        .body(text.to_string())
        .send()
        .await?;
    if !resp.status().is_success() {
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        bail!(
            "uploading the script: {}",
            v["detail"].as_str().unwrap_or("refused")
        );
    }
    Ok(())
}
