//! `browser list | open | reset | install`: the accounts' browser profiles
//! and the Playwright driver.

use anyhow::{bail, Result};
use clap::Subcommand;
use relogin_farm::config::Config;
use relogin_farm::farm::{AccountView, BrowserInfo};
use reqwest::Method;

use super::client::{when, FarmClient, NO_BODY};
use super::FarmArgs;

#[derive(Subcommand)]
pub enum BrowserCommand {
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

pub async fn run(config: &Config, command: &BrowserCommand) -> Result<()> {
    match command {
        BrowserCommand::List { farm } => {
            let client = FarmClient::admin(config, farm)?;
            let accounts: Vec<AccountView> = client.get("/api/accounts").await?;
            for a in &accounts {
                let info: BrowserInfo = client
                    .get(&format!("/api/accounts/{}/browser", a.id))
                    .await?;
                println!("{}", profile_line(a, &info));
            }
            Ok(())
        }
        BrowserCommand::Open { account, url } => {
            let pool = relogin_farm::browser::BrowserPool::new(config.browser.engine());
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
            let client = FarmClient::admin(config, farm)?;
            client
                .send(
                    Method::DELETE,
                    &format!("/api/accounts/{account}/browser"),
                    NO_BODY,
                )
                .await?;
            println!("profile of account {account} wiped");
            Ok(())
        }
    }
}

/// One line of `browser list`.
fn profile_line(a: &AccountView, info: &BrowserInfo) -> String {
    format!(
        "{:>5}  {:<24} profile {:<8} {:>8} KiB  last run {} ({})  session until {}",
        a.id,
        a.label,
        if info.profile_present {
            "present"
        } else {
            "none"
        },
        info.profile_bytes / 1024,
        info.last_run_at.as_ref().map_or("never".to_owned(), when),
        info.last_outcome.as_deref().unwrap_or("-"),
        info.session_expires_at
            .as_ref()
            .map_or("-".to_owned(), when),
    )
}
