//! Fills a farm's database with COUNT accounts that look logged in (tokens
//! valid for two hours, refresh tokens set), for `scripts/bench-memory`:
//! logging 10,000 accounts in through a browser would take an hour.
//!
//!   cargo run --release --example seed_accounts -- DB KEY_FILE PROVIDER COUNT
//!
//! The farm must not be running (the store refuses a second opener).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use chrono::{Duration, Utc};
use relogin_farm::domain::Tokens;
use relogin_farm::secret::Secret;
use relogin_farm::store::{read_secret_file, Cipher, Store};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, key_file, provider, count] = &args[..] else {
        bail!("usage: seed_accounts DB KEY_FILE PROVIDER COUNT");
    };
    let count: i64 = count.parse().context("COUNT")?;
    let key = read_secret_file(&PathBuf::from(key_file)).context("KEY_FILE")?;
    let store = Store::open(&PathBuf::from(db), Cipher::from_text(&key)?)?;
    let now = Utc::now();
    // Opaque tokens of oidc-provider's length (43 characters).
    let token = |kind: &str, i: i64| Secret::new(format!("{kind}-{i:012}-{}", "x".repeat(28)));
    for i in 1..=count {
        let account = store.insert_account(provider, &format!("seed-{i}"), 0, now)?;
        let tokens = Tokens {
            access_token: token("at", i),
            token_type: "Bearer".into(),
            expires_at: now + Duration::hours(2),
            issued_at: now,
            refresh_token: Some(token("rt", i)),
        };
        store.save_tokens(account.id, &tokens, now)?;
    }
    println!("seeded {count} accounts");
    Ok(())
}
