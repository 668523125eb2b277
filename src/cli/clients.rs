//! `client add | list | revoke` (client keys, through the admin API) and
//! `token` (one lease with a client key).

use anyhow::Result;
use clap::Subcommand;
use relogin_farm::config::Config;
use relogin_farm::farm::{CredentialLease, NewClient};
use relogin_farm::http::types::{self, Client};
use relogin_farm::secret::Secret;
use reqwest::Method;

use super::client::{when, FarmClient, NO_BODY};
use super::FarmArgs;

#[derive(Subcommand)]
pub enum ClientCommand {
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

pub async fn run(config: &Config, command: &ClientCommand) -> Result<()> {
    match command {
        ClientCommand::Add { name, farm } => {
            let api = FarmClient::admin(config, farm)?;
            let body = types::NewClient { name: name.clone() };
            let created: NewClient = api.post("/api/clients", &body).await?;
            eprintln!(
                "client {} ({name}) created; its key, shown this once:",
                created.id
            );
            // The key alone on stdout, for `KEY=$(relogin-farm client add …)`.
            println!("{}", created.key.expose());
        }
        ClientCommand::List { farm } => {
            let api = FarmClient::admin(config, farm)?;
            let clients: Vec<Client> = api.get("/api/clients").await?;
            for c in &clients {
                println!("{}", client_line(c));
            }
        }
        ClientCommand::Revoke { id, farm } => {
            let api = FarmClient::admin(config, farm)?;
            api.send(Method::DELETE, &format!("/api/clients/{id}"), NO_BODY)
                .await?;
            println!("client {id} revoked");
        }
    }
    Ok(())
}

/// One line of `client list`.
fn client_line(c: &Client) -> String {
    let status = match &c.revoked_at {
        Some(at) => format!("revoked {}", when(at)),
        None => "active".to_owned(),
    };
    format!(
        "{:>5}  {:<24} created {}  {status}",
        c.id,
        c.name,
        when(&c.created_at)
    )
}

/// `relogin-farm token`: one `/credential/next`, the token alone on stdout.
pub async fn token(farm: &str, key: &str, provider: &str, session: Option<&str>) -> Result<()> {
    let client = FarmClient::new(farm, Secret::new(key), None)?;
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("provider", provider);
    if let Some(s) = session {
        query.append_pair("session", s);
    }
    let lease: CredentialLease = client
        .get(&format!("/credential/next?{}", query.finish()))
        .await?;
    println!("{}", lease.access_token.expose());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_line_says_active_or_when_revoked() {
        let mut c: Client = serde_json::from_value(serde_json::json!({
            "id": 12, "name": "nightly-agent", "created_at": "2026-11-29T10:00:00.5Z"
        }))
        .unwrap();
        assert_eq!(
            client_line(&c),
            "   12  nightly-agent            created 2026-11-29T10:00:00.500Z  active"
        );
        c.revoked_at = Some(c.created_at);
        assert!(client_line(&c).ends_with("  revoked 2026-11-29T10:00:00.500Z"));
    }
}
