//! Schema migrations, by `PRAGMA user_version`: migration N brings the
//! schema from version N to N+1. Append only; never edit a shipped one.

use rusqlite::Connection;

use super::{Result, StoreError};

const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the core farm.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        provider TEXT NOT NULL,
        label TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        enabled INTEGER NOT NULL DEFAULT 1,
        auth_state TEXT NOT NULL,
        access_token BLOB,
        token_type TEXT,
        expires_at INTEGER,
        issued_at INTEGER,
        refresh_token BLOB,
        generation INTEGER NOT NULL DEFAULT 0,
        cooldown_until INTEGER,
        last_refresh_at INTEGER,
        last_error TEXT,
        last_error_at INTEGER,
        last_used_at INTEGER,
        refresh_started_at INTEGER,
        created_at INTEGER NOT NULL,
        UNIQUE (provider, label)
     );
     CREATE TABLE secrets (
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value BLOB NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (account_id, name)
     );
     CREATE TABLE clients (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        key_hash BLOB NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
     );
     CREATE TABLE leases (
        id TEXT PRIMARY KEY,
        account_id INTEGER NOT NULL,
        client_id INTEGER,
        session TEXT,
        generation INTEGER NOT NULL,
        issued_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        released_at INTEGER
     );
     CREATE INDEX leases_issued ON leases (issued_at);
     CREATE INDEX leases_account ON leases (account_id, issued_at);
     CREATE TABLE reports (
        id INTEGER PRIMARY KEY,
        lease_id TEXT NOT NULL,
        account_id INTEGER NOT NULL,
        client_id INTEGER,
        outcome TEXT NOT NULL,
        retry_after_s INTEGER,
        at INTEGER NOT NULL
     );
     CREATE INDEX reports_at ON reports (at);",
    // 1 -> 2: the event log (replayable by id).
    "CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        account_id INTEGER,
        detail TEXT NOT NULL
     );
     CREATE INDEX events_at ON events (at);",
    // 2 -> 3: browser relogin — the account's login script and its last run.
    "ALTER TABLE accounts ADD COLUMN login_script TEXT;
     ALTER TABLE accounts ADD COLUMN browser_last_run_at INTEGER;
     ALTER TABLE accounts ADD COLUMN browser_last_outcome TEXT;
     ALTER TABLE accounts ADD COLUMN session_expires_at INTEGER;",
    // 3 -> 4: leases keyed by an increasing integer (plus a random tag in the
    // public id) instead of a random text key: group-committed inserts then
    // append to the same pages instead of dirtying one random page each.
    // Lease history from development builds before this is not carried over.
    "DROP TABLE leases;
     DROP TABLE reports;
     CREATE TABLE leases (
        id INTEGER PRIMARY KEY,
        tag INTEGER NOT NULL,
        account_id INTEGER NOT NULL,
        client_id INTEGER,
        session TEXT,
        generation INTEGER NOT NULL,
        issued_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        released_at INTEGER
     );
     CREATE INDEX leases_issued ON leases (issued_at);
     CREATE INDEX leases_account ON leases (account_id, issued_at);
     CREATE TABLE reports (
        id INTEGER PRIMARY KEY,
        lease INTEGER NOT NULL,
        account_id INTEGER NOT NULL,
        client_id INTEGER,
        outcome TEXT NOT NULL,
        retry_after_s INTEGER,
        at INTEGER NOT NULL
     );
     CREATE INDEX reports_at ON reports (at);
     CREATE INDEX reports_lease ON reports (lease);",
    // 4 -> 5: no secondary index on leases. Every lease insert paid for two
    // more b-trees; lease ids increase with time, so time windows are found
    // by a binary search over the primary key instead
    // (`leases::first_id_since`), and the last use is kept on the account.
    "DROP INDEX leases_issued;
     DROP INDEX leases_account;",
    // 5 -> 6: account ids are never handed out twice. Without AUTOINCREMENT
    // SQLite reuses the highest id after it is deleted, and the leases,
    // reports and events of the removed account then belonged to the new
    // one. SQLite cannot ALTER a key to AUTOINCREMENT: the table is copied.
    // `secrets` references `accounts` with ON DELETE CASCADE, so its rows
    // are set aside first (dropping `accounts` would delete them). The
    // sequence starts past every account id ever seen, also in the history.
    "CREATE TABLE secrets_kept AS SELECT account_id, name, value, updated_at FROM secrets;
     DROP TABLE secrets;
     CREATE TABLE accounts_v6 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        provider TEXT NOT NULL,
        label TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        enabled INTEGER NOT NULL DEFAULT 1,
        auth_state TEXT NOT NULL,
        access_token BLOB,
        token_type TEXT,
        expires_at INTEGER,
        issued_at INTEGER,
        refresh_token BLOB,
        generation INTEGER NOT NULL DEFAULT 0,
        cooldown_until INTEGER,
        last_refresh_at INTEGER,
        last_error TEXT,
        last_error_at INTEGER,
        last_used_at INTEGER,
        refresh_started_at INTEGER,
        created_at INTEGER NOT NULL,
        login_script TEXT,
        browser_last_run_at INTEGER,
        browser_last_outcome TEXT,
        session_expires_at INTEGER,
        UNIQUE (provider, label)
     );
     INSERT INTO accounts_v6 (id, provider, label, priority, enabled, auth_state, access_token, token_type,
            expires_at, issued_at, refresh_token, generation, cooldown_until, last_refresh_at, last_error,
            last_error_at, last_used_at, refresh_started_at, created_at, login_script, browser_last_run_at,
            browser_last_outcome, session_expires_at)
        SELECT id, provider, label, priority, enabled, auth_state, access_token, token_type,
            expires_at, issued_at, refresh_token, generation, cooldown_until, last_refresh_at, last_error,
            last_error_at, last_used_at, refresh_started_at, created_at, login_script, browser_last_run_at,
            browser_last_outcome, session_expires_at
        FROM accounts;
     DROP TABLE accounts;
     ALTER TABLE accounts_v6 RENAME TO accounts;
     CREATE TABLE secrets (
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value BLOB NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (account_id, name)
     );
     INSERT INTO secrets SELECT account_id, name, value, updated_at FROM secrets_kept;
     DROP TABLE secrets_kept;
     DELETE FROM sqlite_sequence WHERE name IN ('accounts', 'accounts_v6');
     INSERT INTO sqlite_sequence (name, seq) SELECT 'accounts', MAX(
        (SELECT COALESCE(MAX(id), 0) FROM accounts),
        (SELECT COALESCE(MAX(account_id), 0) FROM leases),
        (SELECT COALESCE(MAX(account_id), 0) FROM reports),
        (SELECT COALESCE(MAX(account_id), 0) FROM events));",
    // 6 -> 7: a proxied attempt's report says what the upstream did: its
    // status, the answer's bytes relayed, the time to its status line, and
    // how the body ended (all NULL for reports clients send).
    "ALTER TABLE reports ADD COLUMN status INTEGER;
     ALTER TABLE reports ADD COLUMN bytes INTEGER;
     ALTER TABLE reports ADD COLUMN latency_ms INTEGER;
     ALTER TABLE reports ADD COLUMN body_end TEXT;",
    // 7 -> 8: whose tokens an account holds (`domain::identity`), pinned at
    // its first login, and whether its last login was refused for another
    // identity. One provider's identity belongs to one account: the index
    // refuses a second (accounts from before have none until a login).
    "ALTER TABLE accounts ADD COLUMN identity TEXT;
     ALTER TABLE accounts ADD COLUMN identity_display TEXT;
     ALTER TABLE accounts ADD COLUMN identity_refused INTEGER NOT NULL DEFAULT 0;
     CREATE UNIQUE INDEX accounts_identity ON accounts (provider, identity)
        WHERE identity IS NOT NULL;",
    // 8 -> 9: an event's `data` (JSON: a failed canary's step and
    // screenshot, a digest's counts), replayed as it was sent.
    "ALTER TABLE events ADD COLUMN data TEXT;",
];

pub fn migrate(conn: &Connection) -> Result<()> {
    migrate_to(conn, latest())
}

/// The schema version this build writes.
pub fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// The database's schema version (0: a new, empty database).
pub fn version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Runs the migrations up to version `target` (tests build the databases
/// of older releases with it).
pub(crate) fn migrate_to(conn: &Connection, target: i64) -> Result<()> {
    let known = latest();
    let found = version(conn)?;
    if found > known {
        return Err(StoreError::TooNew { found, known });
    }
    let steps = MIGRATIONS.iter().enumerate().take(target as usize);
    for (version, sql) in steps.skip(found as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
