//! The SQLite store: accounts (tokens encrypted), client keys (hashed),
//! leases and reports.
//!
//! Two connections to one WAL-mode file: the *account* connection runs with
//! `synchronous = FULL`, because a rotated refresh token that is lost on a
//! power cut kills the account; the *lease log* ([`leases::LeaseLog`]) has
//! its own connection that commits leases in groups with
//! `synchronous = NORMAL` — a lost lease record costs nothing but a line of
//! usage history, and grouping is what keeps `/credential/next` fast.

pub mod backup;
pub mod crypto;
pub mod leases;
pub mod lock;
mod schema;
pub mod usage;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::domain::identity::{self, Identity, Pin};
use crate::domain::{Account, AccountId, AuthState, LastError, Tokens};
use crate::secret::Secret;
pub use crypto::Cipher;

/// What became of a login's tokens ([`Store::save_login_tokens`]).
#[derive(Debug, PartialEq, Eq)]
pub enum LoginSave {
    /// Written, as this generation; `identity` is the account's pinned one.
    Saved {
        generation: i64,
        identity: Option<Identity>,
    },
    /// The login was someone else's: nothing was written.
    Refused {
        got: Option<Identity>,
        expected: Identity,
    },
    /// A first identity that another account of the provider holds:
    /// nothing was written.
    Taken {
        identity: Identity,
        account: AccountId,
        label: String,
    },
    /// The account was removed meanwhile.
    Gone,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    #[error(
        "the store key does not match the key this database was created with (fingerprint {expected}, \
         key given has {actual}); start with the original key file or RELOGIN_FARM_KEY"
    )]
    WrongKey { expected: String, actual: String },
    #[error("the database was written by a newer relogin-farm (schema {found}, this build knows {known})")]
    TooNew { found: i64, known: i64 },
    #[error("an account {label:?} already exists for provider {provider:?}")]
    DuplicateAccount { provider: String, label: String },
    #[error("recording leases failed: {0}")]
    LeaseLog(String),
    #[error("the lease log has stopped")]
    LeaseLogClosed,
    #[error(
        "{db} is in use by {holder} (another relogin-farm on the same database?); \
         stop it first: two farms on one store would refresh the same accounts"
    )]
    InUse { db: PathBuf, holder: String },
    #[error("{path} is not a usable backup: {reason}")]
    BadBackup { path: PathBuf, reason: String },
    #[error(
        "the database has schema {from} and this build would upgrade it to {to}, but the backup \
         taken first failed, so nothing was changed: {source} (fix that, e.g. backup.dir, and start again)"
    )]
    UpgradeBackup {
        from: i64,
        to: i64,
        source: Box<StoreError>,
    },
}

/// The schema version this build writes (a newer database is refused).
pub fn schema_version() -> i64 {
    schema::latest()
}

/// Where [`Store::open_with`] puts the backup it takes before upgrading the
/// schema of an existing database.
#[derive(Clone, Copy, Debug)]
pub struct UpgradeBackup<'a> {
    pub dir: &'a Path,
    /// Backups to keep in `dir` (this one included).
    pub keep: usize,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub struct Store {
    conn: Mutex<Connection>,
    cipher: Cipher,
    path: PathBuf,
    /// Held for as long as the store is open: one farm per database.
    _lock: lock::StoreLock,
}

/// A client key's record (the key itself is never stored). Not serializable:
/// the API answers with its own type (`http::types::Client`), so the hash
/// cannot reach the wire by a missed attribute.
#[derive(Clone, Debug)]
pub struct ClientRecord {
    pub id: i64,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub key_hash: [u8; 32],
}

impl Store {
    /// Opens (creating if needed) the database at `path`, its directory 0700
    /// and its files 0600, migrates the schema and checks the key.
    ///
    /// Fails with [`StoreError::InUse`] while another `Store` (in this or
    /// another process) has the same database open.
    pub fn open(path: &Path, cipher: Cipher) -> Result<Store> {
        Self::open_with(path, cipher, None)
    }

    /// Like [`Store::open`]; and when the database was written by an older
    /// release (an older schema), first takes a backup of it as it is into
    /// `upgrade_backup` — an upgrade is the one moment a bug of ours could
    /// damage every account at once — and refuses to upgrade without one.
    pub fn open_with(
        path: &Path,
        cipher: Cipher,
        upgrade_backup: Option<UpgradeBackup<'_>>,
    ) -> Result<Store> {
        create_parent_dir(path)?;
        let lock = lock::StoreLock::acquire(path)?;
        let conn = open_connection(path, true)?;
        let (found, latest) = (schema::version(&conn)?, schema::latest());
        if found > 0 {
            // The key before anything else (a backup is verified against it).
            check_fingerprint(&conn, &cipher)?;
        }
        if let Some(b) = upgrade_backup.filter(|_| found > 0 && found < latest) {
            let taken = backup::create(path, b.dir, b.keep, cipher.fingerprint(), Utc::now())
                .map_err(|source| StoreError::UpgradeBackup {
                    from: found,
                    to: latest,
                    source: Box::new(source),
                })?;
            tracing::info!(
                from = found,
                to = latest,
                backup = %b.dir.join(&taken.file).display(),
                "upgrading the database schema; backup taken first"
            );
        }
        schema::migrate(&conn)?;
        if found == 0 {
            // A new database: records the key's fingerprint.
            check_fingerprint(&conn, &cipher)?;
        }
        restrict_sidecar_files(path);
        Ok(Store {
            conn: Mutex::new(conn),
            cipher,
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The store key's fingerprint (as recorded in the database).
    pub fn fingerprint(&self) -> &str {
        self.cipher.fingerprint()
    }

    /// Takes a verified backup into `dir` and keeps the newest `keep`
    /// (see [`backup`]). Blocking; one at a time.
    pub fn backup(
        &self,
        dir: &Path,
        keep: usize,
        now: DateTime<Utc>,
    ) -> Result<backup::BackupFile> {
        backup::create(&self.path, dir, keep, self.fingerprint(), now)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- accounts ----

    pub fn insert_account(
        &self,
        provider: &str,
        label: &str,
        priority: i64,
        now: DateTime<Utc>,
    ) -> Result<Account> {
        let conn = self.conn();
        let res = conn.execute(
            "INSERT INTO accounts (provider, label, priority, enabled, auth_state, generation, created_at)
             VALUES (?1, ?2, ?3, 1, ?4, 0, ?5)",
            params![provider, label, priority, AuthState::PendingLogin.as_str(), ms(now)],
        );
        match res {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(StoreError::DuplicateAccount {
                    provider: provider.into(),
                    label: label.into(),
                })
            }
            other => other?,
        };
        Ok(Account::new(
            conn.last_insert_rowid(),
            provider.into(),
            label.into(),
            priority,
            now,
        ))
    }

    /// Every account, with `uses` = its leases since `leases_since`.
    pub fn load_accounts(&self, leases_since: DateTime<Utc>) -> Result<Vec<Account>> {
        let mut accounts = {
            let conn = self.conn();
            let mut stmt = conn.prepare(
                "SELECT a.id, a.provider, a.label, a.priority, a.enabled, a.auth_state, a.access_token, a.token_type,
                        a.expires_at, a.issued_at, a.refresh_token, a.generation, a.cooldown_until, a.last_refresh_at,
                        a.last_error, a.last_error_at, COALESCE(a.last_used_at, 0),
                        a.created_at, a.refresh_started_at, a.login_script IS NOT NULL,
                        a.identity, a.identity_display, a.identity_refused
                 FROM accounts a ORDER BY a.id",
            )?;
            let rows = stmt.query_map([], |row| Ok(self.account_from_row(row)))?;
            rows.map(|r| r?).collect::<Result<Vec<_>>>()?
        };
        // The stored `last_used_at` is written by the sweep, so the lease
        // log may hold later uses.
        let mut used = self.lease_use_since(leases_since, None)?;
        for a in &mut accounts {
            if let Some(used) = used.remove(&a.id) {
                a.uses = used.leases as u64;
                a.last_used_at = a.last_used_at.max(Some(used.last_at));
            }
        }
        Ok(accounts)
    }

    /// Stores each account's last use if it is later than the stored one
    /// (the lease log holds every use; this keeps the account row from
    /// having to search it).
    pub fn store_last_used(&self, uses: &[(AccountId, DateTime<Utc>)]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE accounts SET last_used_at = ?2
                 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
            )?;
            for (id, at) in uses {
                stmt.execute(params![id, ms(*at)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn account_from_row(&self, row: &Row<'_>) -> Result<Account> {
        let id: AccountId = row.get(0)?;
        let auth_text: String = row.get(5)?;
        let access: Option<Vec<u8>> = row.get(6)?;
        let refresh: Option<Vec<u8>> = row.get(10)?;
        let tokens = match (access, row.get::<_, Option<i64>>(8)?) {
            (Some(sealed), Some(expires_at)) => Some(Tokens {
                access_token: self.cipher.open(&sealed, &aad(id, "access_token"))?,
                token_type: row
                    .get::<_, Option<String>>(7)?
                    .unwrap_or_else(|| "Bearer".into()),
                expires_at: from_ms(expires_at),
                issued_at: row
                    .get::<_, Option<i64>>(9)?
                    .map(from_ms)
                    .unwrap_or_else(|| from_ms(expires_at)),
                refresh_token: refresh
                    .map(|r| self.cipher.open(&r, &aad(id, "refresh_token")))
                    .transpose()?,
            }),
            _ => None,
        };
        let last_error = match (
            row.get::<_, Option<String>>(14)?,
            row.get::<_, Option<i64>>(15)?,
        ) {
            (Some(message), Some(at)) => Some(LastError {
                at: from_ms(at),
                message,
            }),
            _ => None,
        };
        let mut account = Account::new(
            id,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            from_ms(row.get(17)?),
        );
        account.enabled = row.get(4)?;
        account.auth = AuthState::parse(&auth_text).unwrap_or(AuthState::NeedsRelogin);
        account.tokens = tokens;
        account.generation = row.get(11)?;
        account.cooldown_until = row.get::<_, Option<i64>>(12)?.map(from_ms);
        account.last_refresh_at = row.get::<_, Option<i64>>(13)?.map(from_ms);
        account.last_error = last_error;
        account.last_used_at = Some(row.get::<_, i64>(16)?).filter(|t| *t > 0).map(from_ms);
        // A refresh that was in flight when the process died: the scheduler
        // retries it at once (see `domain::timing::next_refresh_at`).
        account.suspect = row.get::<_, Option<i64>>(18)?.is_some();
        account.has_login_script = row.get(19)?;
        if let Some(value) = row.get::<_, Option<String>>(20)? {
            account.identity = Some(Identity {
                value,
                display: row.get(21)?,
            });
        }
        account.identity_refused = row.get(22)?;
        Ok(account)
    }

    /// Writes everything about an account except its tokens.
    pub fn update_account(&self, a: &Account) -> Result<()> {
        self.conn().execute(
            "UPDATE accounts SET label = ?2, priority = ?3, enabled = ?4, auth_state = ?5, cooldown_until = ?6,
                    last_error = ?7, last_error_at = ?8, last_used_at = ?9, identity_refused = ?10
             WHERE id = ?1",
            params![
                a.id,
                a.label,
                a.priority,
                a.enabled,
                a.auth.as_str(),
                a.cooldown_until.map(ms),
                a.last_error.as_ref().map(|e| e.message.as_str()),
                a.last_error.as_ref().map(|e| ms(e.at)),
                a.last_used_at.map(ms),
                a.identity_refused,
            ],
        )?;
        Ok(())
    }

    /// Marks (or clears) a refresh as in flight, durably, before the grant
    /// is sent: after a crash the account is known to need a retry.
    pub fn set_refresh_started(&self, id: AccountId, at: Option<DateTime<Utc>>) -> Result<()> {
        self.conn().execute(
            "UPDATE accounts SET refresh_started_at = ?2 WHERE id = ?1",
            params![id, at.map(ms)],
        )?;
        Ok(())
    }

    /// Persists a new token set in one transaction, bumps the generation and
    /// returns it. Keeps the old refresh token when the provider did not
    /// rotate it. Returns `None` (and writes nothing) if the account is gone.
    pub fn save_tokens(
        &self,
        id: AccountId,
        tokens: &Tokens,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>> {
        let mut conn = self.conn();
        // Reads then writes: the write lock up front (see `save_login_tokens`);
        // a stale read snapshot could not be upgraded once the lease log
        // committed, and the rotated tokens would be lost.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let generation = self.write_tokens(&tx, id, tokens, now)?;
        tx.commit()?;
        Ok(generation)
    }

    /// `save_tokens`' writes, inside the caller's transaction.
    fn write_tokens(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: AccountId,
        tokens: &Tokens,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>> {
        let exists = tx
            .query_row("SELECT generation FROM accounts WHERE id = ?1", [id], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?;
        let Some(generation) = exists else {
            return Ok(None);
        };
        let refresh = tokens
            .refresh_token
            .as_ref()
            .map(|r| self.cipher.seal(r, &aad(id, "refresh_token")));
        tx.execute(
            "UPDATE accounts SET access_token = ?2, token_type = ?3, expires_at = ?4, issued_at = ?5,
                    refresh_token = COALESCE(?6, refresh_token), generation = ?7, auth_state = 'active',
                    last_refresh_at = ?8, refresh_started_at = NULL, last_error = NULL, last_error_at = NULL
             WHERE id = ?1",
            params![
                id,
                self.cipher.seal(&tokens.access_token, &aad(id, "access_token")),
                tokens.token_type,
                ms(tokens.expires_at),
                ms(tokens.issued_at),
                refresh,
                generation + 1,
                ms(now),
            ],
        )?;
        Ok(Some(generation + 1))
    }

    /// Persists a login's tokens, in one transaction with the identity
    /// check (`domain::identity::pin`) against the identity on disk: the
    /// tokens of a login as someone else are never written, and a first
    /// identity is pinned with its tokens unless another account of the
    /// provider holds it. On `Saved` the identity, if any, is the pinned one
    /// (`identity_refused` cleared).
    pub fn save_login_tokens(
        &self,
        id: AccountId,
        tokens: &Tokens,
        got: Option<Identity>,
        now: DateTime<Utc>,
    ) -> Result<LoginSave> {
        let mut conn = self.conn();
        // Reads then writes: take the write lock up front, waiting for it
        // (busy timeout), rather than fail to upgrade a stale read snapshot
        // when the lease log committed meanwhile.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut pinned_after;
        {
            let row = tx
                .query_row(
                    "SELECT provider, identity, identity_display FROM accounts WHERE id = ?1",
                    [id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, Option<String>>(2)?,
                        ))
                    },
                )
                .optional()?;
            let Some((provider, value, display)) = row else {
                return Ok(LoginSave::Gone);
            };
            let pinned = value.map(|value| Identity { value, display });
            pinned_after = pinned.clone();
            match identity::pin(pinned.as_ref(), got) {
                Pin::Mismatch { got, expected } => {
                    return Ok(LoginSave::Refused { got, expected });
                }
                Pin::Learn(learnt) => {
                    let holder = tx
                        .query_row(
                            "SELECT id, label FROM accounts WHERE provider = ?1 AND identity = ?2",
                            params![provider, learnt.value],
                            |r| Ok((r.get::<_, AccountId>(0)?, r.get::<_, String>(1)?)),
                        )
                        .optional()?;
                    if let Some((account, label)) = holder {
                        return Ok(LoginSave::Taken {
                            identity: learnt,
                            account,
                            label,
                        });
                    }
                    tx.execute(
                        "UPDATE accounts SET identity = ?2, identity_display = ?3 WHERE id = ?1",
                        params![id, learnt.value, learnt.display],
                    )?;
                    pinned_after = Some(learnt);
                }
                Pin::Same => {}
            }
        }
        tx.execute(
            "UPDATE accounts SET identity_refused = 0 WHERE id = ?1",
            [id],
        )?;
        let Some(generation) = self.write_tokens(&tx, id, tokens, now)? else {
            return Ok(LoginSave::Gone);
        };
        tx.commit()?;
        Ok(LoginSave::Saved {
            generation,
            identity: pinned_after,
        })
    }

    /// The generation as persisted (re-read before declaring an account dead).
    pub fn generation(&self, id: AccountId) -> Result<Option<i64>> {
        Ok(self
            .conn()
            .query_row("SELECT generation FROM accounts WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn delete_account(&self, id: AccountId) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM secrets WHERE account_id = ?1", [id])?;
        let n = tx.execute("DELETE FROM accounts WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(n > 0)
    }

    // ---- browser relogin: secrets, scripts, runs ----

    /// Stores (or replaces) an account's named secret, encrypted.
    pub fn put_secret(
        &self,
        id: AccountId,
        name: &str,
        value: &Secret,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let sealed = self.cipher.seal(value, &aad(id, &format!("secret:{name}")));
        let n = self.conn().execute(
            "INSERT INTO secrets (account_id, name, value, updated_at) SELECT ?1, ?2, ?3, ?4
             WHERE EXISTS (SELECT 1 FROM accounts WHERE id = ?1)
             ON CONFLICT (account_id, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            params![id, name, sealed, ms(now)],
        )?;
        Ok(n > 0)
    }

    pub fn delete_secret(&self, id: AccountId, name: &str) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM secrets WHERE account_id = ?1 AND name = ?2",
            params![id, name],
        )? > 0)
    }

    /// Names and update times only: secret values are never read back out
    /// through the API.
    pub fn secret_names(&self, id: AccountId) -> Result<Vec<(String, DateTime<Utc>)>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name, updated_at FROM secrets WHERE account_id = ?1 ORDER BY name")?;
        let rows = stmt.query_map([id], |r| Ok((r.get(0)?, from_ms(r.get(1)?))))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The decrypted secrets, for the browser run that fills them in.
    pub fn secrets(&self, id: AccountId) -> Result<std::collections::BTreeMap<String, Secret>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, value FROM secrets WHERE account_id = ?1")?;
        let rows = stmt.query_map([id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = std::collections::BTreeMap::new();
        for row in rows {
            let (name, sealed) = row?;
            let value = self
                .cipher
                .open(&sealed, &aad(id, &format!("secret:{name}")))?;
            out.insert(name, value);
        }
        Ok(out)
    }

    pub fn set_login_script(&self, id: AccountId, script: Option<&str>) -> Result<bool> {
        Ok(self.conn().execute(
            "UPDATE accounts SET login_script = ?2 WHERE id = ?1",
            params![id, script],
        )? > 0)
    }

    pub fn login_script(&self, id: AccountId) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT login_script FROM accounts WHERE id = ?1",
                [id],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
    }

    pub fn record_browser_run(
        &self,
        id: AccountId,
        at: DateTime<Utc>,
        outcome: &str,
        session_expires_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE accounts SET browser_last_run_at = ?2, browser_last_outcome = ?3,
                    session_expires_at = COALESCE(?4, session_expires_at) WHERE id = ?1",
            params![id, ms(at), outcome, session_expires_at.map(ms)],
        )?;
        Ok(())
    }

    /// The profile was wiped: its provider session went with it.
    pub fn forget_browser_session(&self, id: AccountId) -> Result<()> {
        self.conn().execute(
            "UPDATE accounts SET session_expires_at = NULL WHERE id = ?1",
            [id],
        )?;
        Ok(())
    }

    /// `(last run at, its outcome, provider session cookie expiry)`.
    #[allow(clippy::type_complexity)]
    pub fn browser_run(
        &self,
        id: AccountId,
    ) -> Result<Option<(Option<DateTime<Utc>>, Option<String>, Option<DateTime<Utc>>)>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT browser_last_run_at, browser_last_outcome, session_expires_at FROM accounts WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, Option<i64>>(0)?.map(from_ms),
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, Option<i64>>(2)?.map(from_ms),
                    ))
                },
            )
            .optional()?)
    }

    // ---- client keys ----

    pub fn insert_client(
        &self,
        name: &str,
        key_hash: [u8; 32],
        now: DateTime<Utc>,
    ) -> Result<ClientRecord> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO clients (name, key_hash, created_at) VALUES (?1, ?2, ?3)",
            params![name, key_hash.as_slice(), ms(now)],
        )?;
        Ok(ClientRecord {
            id: conn.last_insert_rowid(),
            name: name.into(),
            created_at: now,
            revoked_at: None,
            key_hash,
        })
    }

    pub fn list_clients(&self) -> Result<Vec<ClientRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, name, created_at, revoked_at, key_hash FROM clients ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            let hash: Vec<u8> = r.get(4)?;
            let mut key_hash = [0u8; 32];
            if hash.len() == 32 {
                key_hash.copy_from_slice(&hash);
            }
            Ok(ClientRecord {
                id: r.get(0)?,
                name: r.get(1)?,
                created_at: from_ms(r.get(2)?),
                revoked_at: r.get::<_, Option<i64>>(3)?.map(from_ms),
                key_hash,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revokes a client key; false if there is no such (unrevoked) client.
    pub fn revoke_client(&self, id: i64, now: DateTime<Utc>) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE clients SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, ms(now)],
        )?;
        Ok(n > 0)
    }

    // ---- reports and usage ----

    pub fn find_lease(&self, key: leases::LeaseKey) -> Result<Option<leases::StoredLease>> {
        leases::find(&self.conn(), key)
    }

    /// Stores a report on an open lease; false (nothing stored) when the
    /// lease is closed: released, expired, or its account removed.
    pub fn record_report(&self, report: &leases::Report) -> Result<bool> {
        leases::insert_report(&self.conn(), report)
    }

    pub fn release_lease(&self, key: leases::LeaseKey, now: DateTime<Utc>) -> Result<bool> {
        leases::release(&self.conn(), key, now)
    }

    /// Leases issued since `since`, per account (only `account`'s when
    /// given): how many, and the last one's time.
    pub fn lease_use_since(
        &self,
        since: DateTime<Utc>,
        account: Option<AccountId>,
    ) -> Result<std::collections::HashMap<AccountId, leases::LeaseUse>> {
        let conn = self.conn();
        let first = leases::first_id_since(&conn, since)?;
        let mut stmt = conn.prepare_cached(
            "SELECT account_id, COUNT(*), MAX(issued_at) FROM leases
             WHERE id >= ?1 AND (?2 IS NULL OR account_id = ?2)
             GROUP BY account_id",
        )?;
        let rows = stmt.query_map(params![first, account], |r| {
            Ok((
                r.get(0)?,
                leases::LeaseUse {
                    leases: r.get(1)?,
                    last_at: from_ms(r.get(2)?),
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The database's size on disk: the file and its WAL (`stat` only:
    /// the files are never opened outside SQLite).
    pub fn file_sizes(&self) -> (u64, u64) {
        let len = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
        (len(&self.path), len(&leases::wal_path(&self.path)))
    }

    /// Copies the WAL back into the database and empties it (at shutdown).
    pub fn truncate_wal(&self) -> Result<()> {
        leases::truncate_wal(&self.conn())?;
        Ok(())
    }

    // ---- events ----

    /// Appends an event; returns its id (monotonic: AUTOINCREMENT never
    /// reuses an id, even after pruning).
    pub fn insert_event(
        &self,
        at: DateTime<Utc>,
        kind: &str,
        account_id: Option<AccountId>,
        detail: &str,
        data: Option<&serde_json::Value>,
    ) -> Result<i64> {
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO events (at, kind, account_id, detail, data) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            ms(at),
            kind,
            account_id,
            detail,
            data.map(|d| d.to_string())
        ])?;
        Ok(conn.last_insert_rowid())
    }

    pub fn events_since(&self, after: i64, limit: usize) -> Result<Vec<EventRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, at, kind, account_id, detail, data FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit as i64], |r| {
            Ok((
                r.get(0)?,
                from_ms(r.get(1)?),
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn latest_event_id(&self) -> Result<i64> {
        Ok(self
            .conn()
            .query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?)
    }

    pub fn prune_events(&self, before: DateTime<Utc>) -> Result<usize> {
        Ok(self
            .conn()
            .execute("DELETE FROM events WHERE at < ?1", [ms(before)])?)
    }

    /// Deletes lease history older than `before` (bounded disk use).
    pub fn prune_leases(&self, before: DateTime<Utc>) -> Result<usize> {
        leases::prune(&self.conn(), before)
    }
}

/// A stored event: id, time, kind, account, detail, data (JSON text).
pub type EventRow = (
    i64,
    DateTime<Utc>,
    String,
    Option<AccountId>,
    String,
    Option<String>,
);

fn aad(id: AccountId, field: &str) -> String {
    format!("account:{id}:{field}")
}

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Bytes a WAL is cut back to when a writer starts it over after a complete
/// checkpoint (the idle checkpoint empties it: `leases::checkpoint_loop`).
pub const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Creates the data directory (0700) and the database file (0600) before
/// SQLite opens it, so the file is never readable by others even briefly.
///
/// The file is opened here only when it does not exist yet: closing *any*
/// descriptor of a file drops every POSIX lock this process holds on it, so
/// opening the database outside SQLite while a connection is open would
/// silently release that connection's locks (and let another process
/// checkpoint and delete the WAL under it).
pub(crate) fn open_connection(path: &Path, synchronous_full: bool) -> Result<Connection> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    create_parent_dir(path)?;
    if !path.exists() {
        match fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)?;
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        if synchronous_full { "FULL" } else { "NORMAL" },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Checkpoints run on their own thread (`leases::LeaseLog::start`), so
    // that no commit — a lease batch holding many requests, or an account
    // write on an async worker — ever pays for copying the WAL back.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // What a WAL file keeps after a checkpoint has reset it: a burst of
    // writes makes it grow, this gives the space back.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    Ok(conn)
}

/// The most a WAL file keeps between checkpoints (bytes).
pub(crate) const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// Creates the directory of the file at `path` (0700, with its parents) if
/// it is missing: the data directory.
pub fn create_parent_dir(path: &Path) -> Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) if !dir.exists() => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            }),
        _ => Ok(()),
    }
}

/// SQLite gives `-wal` and `-shm` the database file's mode already; this
/// makes sure of it for files left by older runs.
fn restrict_sidecar_files(path: &Path) {
    for suffix in ["-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = fs::set_permissions(PathBuf::from(p), fs::Permissions::from_mode(0o600));
    }
}

/// The fingerprint of the key a database was written with (`None`: not
/// recorded yet). Also read by backups and `doctor`.
pub(crate) fn stored_fingerprint(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT value FROM meta WHERE key = 'key_fingerprint'",
        [],
        |r| r.get(0),
    )
    .optional()
}

fn check_fingerprint(conn: &Connection, cipher: &Cipher) -> Result<()> {
    match stored_fingerprint(conn)? {
        Some(expected) if expected != cipher.fingerprint() => Err(StoreError::WrongKey {
            expected,
            actual: cipher.fingerprint().to_string(),
        }),
        Some(_) => Ok(()),
        None => {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('key_fingerprint', ?1)",
                [cipher.fingerprint()],
            )?;
            Ok(())
        }
    }
}

/// The store key file is read by the one secret-file reader.
pub use crate::secret::read_secret_file;

/// Writes a new secret file 0600 (refusing to overwrite an existing one).
pub fn write_secret_file(path: &Path, value: &Secret) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(value.expose().as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// Writes `bytes` to `path` readable by its owner only (0600, also when
/// the file existed): configs that may hold secrets, scripts, screenshots.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests;
