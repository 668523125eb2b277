//! `backup` (through the running farm) and `restore` (with the farm stopped).

use std::path::Path;

use anyhow::Result;
use relogin_farm::config::Config;
use relogin_farm::http::types::Backup;

use super::client::{when, FarmClient};
use super::FarmArgs;

pub async fn take(config: &Config, list: bool, farm: &FarmArgs) -> Result<()> {
    let client = FarmClient::admin(config, farm)?;
    if list {
        let found: Vec<Backup> = client.get("/api/backups").await?;
        for b in &found {
            println!("{}", backup_line(b));
        }
    } else {
        let b: Backup = client.post_empty("/api/backups").await?;
        println!("backup taken: {}", backup_line(&b));
    }
    Ok(())
}

fn backup_line(b: &Backup) -> String {
    format!("{}  {} bytes  {}", b.file, b.bytes, when(&b.created_at))
}

pub fn restore(config: &Config, file: &Path) -> Result<()> {
    let moved = relogin_farm::server::restore_backup(config, file)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_line_is_file_size_and_time() {
        let b: Backup = serde_json::from_value(serde_json::json!({
            "file": "farm-20261129T100000.000Z.db", "bytes": 40960,
            "created_at": "2026-11-29T10:00:00Z"
        }))
        .unwrap();
        assert_eq!(
            backup_line(&b),
            "farm-20261129T100000.000Z.db  40960 bytes  2026-11-29T10:00:00Z"
        );
    }
}
