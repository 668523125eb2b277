//! The API's own request and response types where the farm's answer is a
//! store record or an internal status (clients, usage, backups, events,
//! webhooks, report outcomes) or where the API composes an answer. They are
//! what `serde` puts on the wire and what `schemars` documents in
//! `/api/openapi.json` (see [`super::openapi`]), and what the CLI reads back
//! (`src/cli`): a field added to a record reaches the API only by being
//! added here, and then it is documented.
//!
//! The farm's views that exist for the API alone (`AccountView`,
//! `CredentialLease`, `LoginStarted`, `BrowserInfo`, ...) derive their
//! schemas where they are defined.

use chrono::{DateTime, Utc};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::domain::AccountId;
use crate::farm::RefreshOutcome;
use crate::farm::{AccountView, ReloginDone};
use crate::secret::Secret;
use crate::store::leases;

/// `POST /api/accounts`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    pub provider: String,
    /// 1 to 100 printable characters, unique per provider.
    pub label: String,
    /// Higher is preferred by the `priority` strategy.
    #[serde(default)]
    pub priority: i64,
}

/// `POST /api/accounts/{id}/login/complete`: one of the two.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginComplete {
    /// The full URL the provider redirected the browser to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
    /// What the provider's page showed to paste: `code#state`, or a bare code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// `PUT /api/accounts/{id}/secrets/{name}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretValue {
    /// Write-only: never shown again.
    #[schemars(with = "String")]
    pub value: Secret,
}

/// `POST /api/clients`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    /// 1 to 100 printable characters.
    pub name: String,
}

/// How a leased token fared.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// The account cools down (for `retry_after_s` when given).
    RateLimited,
    /// The token is refreshed at once.
    Unauthorized,
    Error,
}

impl From<Outcome> for leases::Outcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Ok => leases::Outcome::Ok,
            Outcome::RateLimited => leases::Outcome::RateLimited,
            Outcome::Unauthorized => leases::Outcome::Unauthorized,
            Outcome::Error => leases::Outcome::Error,
        }
    }
}

/// `POST /credential/report`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub lease_id: String,
    pub outcome: Outcome,
    /// The provider's `Retry-After`, for `rate_limited`.
    pub retry_after_s: Option<u64>,
}

impl From<Report> for crate::farm::ReportRequest {
    fn from(r: Report) -> Self {
        crate::farm::ReportRequest {
            lease_id: r.lease_id,
            outcome: r.outcome.into(),
            retry_after_s: r.retry_after_s,
        }
    }
}

/// The answer to `POST /credential/report`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Recorded {
    pub recorded: bool,
}

/// What `POST /api/accounts/{id}/refresh` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Refresh {
    /// This call obtained and stored new tokens.
    Refreshed,
    /// Another refresh finished while this one waited: no grant was sent.
    AlreadyFresh,
}

impl From<RefreshOutcome> for Refresh {
    fn from(o: RefreshOutcome) -> Self {
        match o {
            RefreshOutcome::Refreshed => Refresh::Refreshed,
            RefreshOutcome::AlreadyFresh => Refresh::AlreadyFresh,
        }
    }
}

/// The answer to `POST /api/accounts/{id}/refresh`: the account, and what
/// the call did.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Refreshed {
    #[serde(flatten)]
    pub account: AccountView,
    pub refresh: Refresh,
}

/// The answer to `POST /api/accounts/{id}/relogin`: the account, and the run.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Relogged {
    #[serde(flatten)]
    pub account: AccountView,
    pub relogin: ReloginDone,
}

/// The answer to `PUT /api/accounts/{id}/script`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ScriptAttached {
    pub account_id: AccountId,
    pub steps: usize,
    /// Secret names the script uses.
    pub required_secrets: Vec<String>,
    /// Those of them the account has no value for yet.
    pub missing_secrets: Vec<String>,
}

/// A client key as listed (the key itself is shown once, at creation).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Client {
    pub id: i64,
    pub name: String,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<crate::store::ClientRecord> for Client {
    fn from(c: crate::store::ClientRecord) -> Self {
        Client {
            id: c.id,
            name: c.name,
            created_at: c.created_at,
            revoked_at: c.revoked_at,
        }
    }
}

/// One backup file.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Backup {
    /// The file name in `backup.dir`.
    pub file: String,
    pub bytes: u64,
    pub created_at: DateTime<Utc>,
}

impl From<crate::store::backup::BackupFile> for Backup {
    fn from(b: crate::store::backup::BackupFile) -> Self {
        Backup {
            file: b.file,
            bytes: b.bytes,
            created_at: b.created_at,
        }
    }
}

/// One stored event (also the `data` of an SSE frame).
#[derive(Debug, Serialize, JsonSchema)]
pub struct Event {
    /// Increasing: the resume point for `Last-Event-ID` and `?since=`.
    pub id: i64,
    pub at: DateTime<Utc>,
    #[schemars(schema_with = "event_kind")]
    pub kind: &'static str,
    pub account_id: Option<AccountId>,
    /// A human sentence; never a secret.
    pub detail: String,
    /// What `detail` says, for programs; only some kinds have it.
    /// `canary_failed`: `{step, line, action, page_url, reason, screenshot}`
    /// (the step's fields `null` when the run failed before any step);
    /// `digest`: `{since, until, providers: [{provider, refreshes_ok,
    /// refreshes_failed, relogins: {cause: n}, relogins_failed,
    /// canary_failures, needs_person: [{account_id, label, reason, since,
    /// takeover}], logins_completed}]}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

fn event_kind(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "string", "enum": crate::events::EventKind::NAMES})
}

impl From<&crate::events::Event> for Event {
    fn from(e: &crate::events::Event) -> Self {
        Event {
            id: e.id,
            at: e.at,
            kind: e.kind.as_str(),
            account_id: e.account_id,
            detail: e.detail.clone(),
            data: e.data.clone(),
        }
    }
}

/// A webhook's delivery status.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Webhook {
    pub index: usize,
    /// Scheme and host only: chat services put tokens in the path and query.
    pub target: String,
    pub events: Vec<String>,
    pub delivered: u64,
    pub failed_attempts: u64,
    pub given_up: u64,
    pub dropped: u64,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

impl From<crate::webhooks::WebhookStatus> for Webhook {
    fn from(w: crate::webhooks::WebhookStatus) -> Self {
        Webhook {
            index: w.index,
            target: w.target,
            events: w.events,
            delivered: w.delivered,
            failed_attempts: w.failed_attempts,
            given_up: w.given_up,
            dropped: w.dropped,
            last_success_at: w.last_success_at,
            last_error: w.last_error,
            last_error_at: w.last_error_at,
        }
    }
}

/// `GET /api/usage`: leases and reported outcomes per account and client.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Usage {
    pub generated_at: DateTime<Utc>,
    pub per_account: Vec<UsageRow>,
    pub per_client: Vec<UsageRow>,
    /// The newest leases.
    pub recent: Vec<RecentLease>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct UsageRow {
    /// `account_id` or `client_id`; a `null` client is the admin token.
    pub id: Option<i64>,
    pub last_hour: Counts,
    pub last_day: Counts,
}

/// Leases issued and outcomes reported over a window.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Counts {
    pub leases: i64,
    pub ok: i64,
    pub rate_limited: i64,
    pub unauthorized: i64,
    pub error: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RecentLease {
    pub lease_id: String,
    pub account_id: AccountId,
    pub client_id: Option<i64>,
    pub session: Option<String>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
    /// The reported outcome (`ok`, `rate_limited`, `unauthorized`, `error`).
    pub outcome: Option<String>,
    /// What the upstream did, when the lease was an attempt of the proxy.
    pub upstream: Option<UpstreamAttempt>,
}

/// A proxied attempt as the upstream answered it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct UpstreamAttempt {
    /// The upstream's status; 0 when it never answered (connection error, timeout).
    pub status: u16,
    /// Bytes of the answer's body relayed to the client.
    pub bytes: u64,
    /// From sending the request to the upstream's status line.
    pub latency_ms: u64,
    /// `complete`, `client_gone` (the client left mid-answer),
    /// `upstream_broke` (cut or idle upstream), `not_relayed` (failed over).
    pub body_end: String,
}

impl From<leases::Usage> for Usage {
    fn from(u: leases::Usage) -> Self {
        let rows = |rows: Vec<leases::UsageRow>| {
            rows.into_iter()
                .map(|r| UsageRow {
                    id: r.id,
                    last_hour: r.last_hour.into(),
                    last_day: r.last_day.into(),
                })
                .collect()
        };
        Usage {
            generated_at: u.generated_at,
            per_account: rows(u.per_account),
            per_client: rows(u.per_client),
            recent: u
                .recent
                .into_iter()
                .map(|l| RecentLease {
                    lease_id: l.lease_id,
                    account_id: l.account_id,
                    client_id: l.client_id,
                    session: l.session,
                    issued_at: l.issued_at,
                    expires_at: l.expires_at,
                    released_at: l.released_at,
                    outcome: l.outcome,
                    upstream: l.upstream.map(|u| UpstreamAttempt {
                        status: u.status,
                        bytes: u.bytes,
                        latency_ms: u.latency_ms,
                        body_end: u.body_end.to_string(),
                    }),
                })
                .collect(),
        }
    }
}

impl From<leases::Counts> for Counts {
    fn from(c: leases::Counts) -> Self {
        Counts {
            leases: c.leases,
            ok: c.ok,
            rate_limited: c.rate_limited,
            unauthorized: c.unauthorized,
            error: c.error,
        }
    }
}
