//! The command line: clap definitions, logging, and dispatch to one module
//! per command group. Commands that talk to a running farm go through
//! [`client::FarmClient`] and read its answers into the library's API types.
//! The only place `anyhow` is used.

mod accounts;
mod backup;
mod browser;
mod client;
mod clients;
mod doctor;
mod init;
mod providers;
mod serve;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use relogin_farm::config::{Config, LogFormat, Overrides};

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
        command: accounts::AccountCommand,
    },
    /// Load and validate the configuration, print a summary, and exit.
    CheckConfig,
    /// Check the store, node, the Playwright driver, Chromium and each provider (endpoints reachable, redirect port free, what its preset needs); print the fix for what is wrong.
    Doctor,
    /// Account secrets for login scripts (write-only).
    Secret {
        #[command(subcommand)]
        command: accounts::SecretCommand,
    },
    /// Providers in the config file.
    Provider {
        #[command(subcommand)]
        command: providers::ProviderCommand,
    },
    /// Browser profiles (one per account).
    Browser {
        #[command(subcommand)]
        command: browser::BrowserCommand,
    },
    /// Client keys for the programs that call /credential/next.
    Client {
        #[command(subcommand)]
        command: clients::ClientCommand,
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

/// Where the farm is, for the commands that call its admin API.
#[derive(clap::Args)]
struct FarmArgs {
    /// The farm's base URL (default: from server.listen in the config).
    #[arg(long)]
    farm: Option<String>,
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    let log_level = cli.log_level.as_deref();
    // `init` writes the config, `token` needs none and `provider` edits it
    // (a block it adds may still miss keys): logging from the command line
    // alone. Every other command reads the config first.
    let mut config = match &cli.command {
        Command::Init { .. } | Command::Token { .. } | Command::Provider { .. } => {
            init_logging(log_level.unwrap_or("info"), LogFormat::Text);
            None
        }
        command => {
            let mut overrides = Overrides {
                log_level: cli.log_level.clone(),
                ..Default::default()
            };
            if let Command::Serve { listen, store_path } = command {
                overrides.listen = *listen;
                overrides.store_path = store_path.clone();
            }
            let config = load_config(&cli.config, &overrides)?;
            init_logging(&config.log.level, config.log.format);
            Some(config)
        }
    };
    let mut config = || {
        config
            .take()
            .expect("loaded for every command but init, token and provider")
    };
    match &cli.command {
        Command::Init { tls } => init::run(&cli.config, *tls),
        Command::Token {
            provider,
            farm,
            key,
            session,
        } => runtime()?.block_on(clients::token(farm, key, provider, session.as_deref())),
        Command::Serve { .. } => runtime()?.block_on(serve::run(config())),
        Command::CheckConfig => serve::check_config(&config()),
        Command::Account { command } => runtime()?.block_on(accounts::run(&config(), command)),
        Command::Secret { command } => runtime()?.block_on(accounts::secret(&config(), command)),
        Command::Doctor => runtime()?.block_on(doctor::run(&config(), &cli.config)),
        Command::Provider { command } => providers::run(&cli.config, command),
        Command::Browser { command } => runtime()?.block_on(browser::run(&config(), command)),
        Command::Client { command } => runtime()?.block_on(clients::run(&config(), command)),
        Command::Backup { list, farm } => runtime()?.block_on(backup::take(&config(), *list, farm)),
        Command::Restore { file } => backup::restore(&config(), file),
    }
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

/// Logs to stderr (stdout is the commands' answer): `RUST_LOG` if it
/// parses, else `level` (`log.level`, which `--log-level` overrides), else
/// `info`.
fn init_logging(level: &str, format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every runnable command line: the path of subcommand names to each
    /// leaf, with a value for each of its required arguments.
    fn leaves(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        if cmd.has_subcommands() {
            for sub in cmd.get_subcommands() {
                let mut p = path.clone();
                p.push(sub.get_name().to_owned());
                leaves(sub, p, out);
            }
            return;
        }
        let mut args = path;
        for arg in cmd.get_arguments().filter(|a| a.is_required_set()) {
            if let Some(long) = arg.get_long() {
                args.push(format!("--{long}"));
            }
            // The first allowed value where the argument has a list of them.
            let value = arg
                .get_possible_values()
                .first()
                .map_or_else(|| "1".to_owned(), |v| v.get_name().to_owned());
            args.push(value);
        }
        out.push(args);
    }

    #[test]
    fn every_subcommand_takes_log_level_before_and_after_its_name() {
        let mut all = Vec::new();
        leaves(&Cli::command(), Vec::new(), &mut all);
        assert!(all.len() >= 19, "the tree walk found {all:?}");
        for args in all {
            for at_end in [true, false] {
                let mut line = vec!["relogin-farm".to_owned()];
                if !at_end {
                    line.extend(["--log-level".to_owned(), "debug".to_owned()]);
                }
                line.extend(args.iter().cloned());
                if at_end {
                    line.extend(["--log-level".to_owned(), "debug".to_owned()]);
                }
                let cli = Cli::try_parse_from(&line)
                    .unwrap_or_else(|e| panic!("{line:?} is refused: {e}"));
                assert_eq!(cli.log_level.as_deref(), Some("debug"), "{line:?}");
            }
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
