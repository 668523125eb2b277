//! Client keys and the admin token: who may call what.
//!
//! Keys are 256-bit random values shown once; only their SHA-256 is stored
//! and held in memory. A presented key is hashed and looked up by hash, so
//! nothing compares secret bytes with early exit; the admin token is
//! compared hash-to-hash in constant time.

use std::collections::HashMap;
use std::sync::RwLock;

use base64::Engine;
use rand::RngCore;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Farm, FarmError, Result};
use crate::events::EventKind;
use crate::secret::{ct_eq, Secret};
use crate::store::crypto::key_hash;
use crate::store::{ClientRecord, Store};

/// Who is calling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Client(i64),
}

impl Principal {
    pub fn client_id(self) -> Option<i64> {
        match self {
            Principal::Admin => None,
            Principal::Client(id) => Some(id),
        }
    }
}

/// The response to creating a client: the only time the key is shown.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "ClientCreated")]
pub struct NewClient {
    pub id: i64,
    pub name: String,
    /// Shown once, on purpose; only its hash is stored.
    #[serde(serialize_with = "Secret::serialize_exposed")]
    #[schemars(with = "String")]
    pub key: Secret,
}

pub(crate) struct ClientKeys {
    admin_hash: Option<[u8; 32]>,
    active: RwLock<HashMap<[u8; 32], i64>>,
}

impl ClientKeys {
    pub fn load(store: &Store, admin_token: Option<Secret>) -> Result<Self> {
        let active = store
            .list_clients()?
            .into_iter()
            .filter(|c| c.revoked_at.is_none())
            .map(|c| (c.key_hash, c.id))
            .collect();
        Ok(ClientKeys {
            admin_hash: admin_token.map(|t| key_hash(t.expose())),
            active: RwLock::new(active),
        })
    }

    /// Whether `hash` (a token's [`key_hash`]) is the admin token's.
    fn is_admin(&self, hash: &[u8; 32]) -> bool {
        self.admin_hash.is_some_and(|h| ct_eq(&h, hash))
    }
}

impl Farm {
    /// Resolves a bearer token. `None`: unknown (the caller answers 401
    /// without saying which part was wrong).
    pub fn authenticate(&self, bearer: &str) -> Option<Principal> {
        let hash = key_hash(bearer);
        if self.clients.is_admin(&hash) {
            return Some(Principal::Admin);
        }
        let active = self
            .clients
            .active
            .read()
            .unwrap_or_else(|p| p.into_inner());
        active.get(&hash).map(|id| Principal::Client(*id))
    }

    pub fn create_client(&self, name: &str) -> Result<NewClient> {
        if name.trim().is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
            return Err(FarmError::Invalid(
                "name must be 1 to 100 printable characters".into(),
            ));
        }
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let key = format!(
            "rfk_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        let hash = key_hash(&key);
        let record = self.store.insert_client(name, hash, self.clock.now())?;
        self.clients
            .active
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, record.id);
        tracing::info!(client = record.id, name, "client key created");
        self.emit(
            EventKind::ClientCreated,
            None,
            format!("client {} ({name}) created", record.id),
        );
        Ok(NewClient {
            id: record.id,
            name: record.name,
            key: Secret::new(key),
        })
    }

    pub fn list_clients(&self) -> Result<Vec<ClientRecord>> {
        Ok(self.store.list_clients()?)
    }

    pub fn revoke_client(&self, id: i64) -> Result<()> {
        if !self.store.revoke_client(id, self.clock.now())? {
            return Err(FarmError::NotFound {
                what: "client",
                id: id.to_string(),
            });
        }
        self.clients
            .active
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, v| *v != id);
        tracing::info!(client = id, "client key revoked");
        self.emit(
            EventKind::ClientRevoked,
            None,
            format!("client {id} revoked"),
        );
        Ok(())
    }
}
