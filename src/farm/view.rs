//! Account management: the account as the API shows it, and the
//! add / change / remove operations.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{not_found_account, Farm, FarmError, Result};
use crate::domain::{Account, AccountId};
use crate::events::EventKind;

fn describe_patch(p: &AccountPatch) -> String {
    let mut parts = Vec::new();
    if let Some(l) = &p.label {
        parts.push(format!("label {l:?}"));
    }
    if let Some(pr) = p.priority {
        parts.push(format!("priority {pr}"));
    }
    if let Some(e) = p.enabled {
        parts.push(if e {
            "enabled".to_string()
        } else {
            "disabled".to_string()
        });
    }
    format!(
        "changed: {}",
        if parts.is_empty() {
            "nothing".to_string()
        } else {
            parts.join(", ")
        }
    )
}

/// The answer to `GET /healthz`.
#[derive(Debug, Serialize, PartialEq, JsonSchema)]
pub struct Health {
    /// `ok` or `degraded` (then the HTTP status is 503).
    #[schemars(schema_with = "health_status")]
    pub status: &'static str,
    pub accounts: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

fn health_status(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": ["ok", "degraded"]})
}

/// An account as shown by the admin API. Never carries a token.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Account")]
pub struct AccountView {
    pub id: AccountId,
    pub provider: String,
    pub label: String,
    /// The state shown (persisted state plus the refreshing/cooldown overlay).
    #[schemars(schema_with = "display_state")]
    pub state: crate::domain::DisplayState,
    pub priority: i64,
    pub enabled: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub cooldown_until: Option<DateTime<Utc>>,
    pub last_refresh_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_error: Option<ErrorView>,
    pub leases_24h: i64,
    pub has_refresh_token: bool,
    pub has_login_script: bool,
    /// The farm can log this account in with its own browser.
    pub browser: bool,
    pub generation: i64,
    pub created_at: DateTime<Utc>,
    /// The last rate-limit headers the proxy saw for this account.
    pub quota: Option<crate::proxy::state::Quota>,
    /// Whose tokens the account holds, pinned at its first login: every
    /// later login must yield the same `value`.
    pub identity: Option<crate::domain::identity::Identity>,
}

fn display_state(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let states: Vec<&str> = crate::domain::DisplayState::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    schemars::json_schema!({"type": "string", "enum": states})
}

impl AccountView {
    fn of(
        a: &Account,
        now: DateTime<Utc>,
        leases_24h: i64,
        browser: bool,
        quota: Option<crate::proxy::state::Quota>,
    ) -> Self {
        AccountView {
            id: a.id,
            provider: a.provider.clone(),
            label: a.label.clone(),
            state: a.display_state(now),
            priority: a.priority,
            enabled: a.enabled,
            expires_at: a.expires_at(),
            cooldown_until: a.cooldown_until.filter(|u| *u > now),
            last_refresh_at: a.last_refresh_at,
            last_used_at: a.last_used_at,
            last_error: a.last_error.as_ref().map(|e| ErrorView {
                at: e.at,
                message: e.message.clone(),
                screenshot: a
                    .last_screenshot
                    .as_ref()
                    .map(|_| format!("/api/accounts/{}/screenshot", a.id)),
            }),
            leases_24h,
            has_refresh_token: a.has_refresh_token(),
            has_login_script: a.has_login_script,
            browser,
            generation: a.generation,
            created_at: a.created_at,
            quota,
            identity: a.identity.clone(),
        }
    }
}

/// The last error, with the address of its screenshot when a browser
/// relogin failed (fetched with the admin token).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "AccountError")]
pub struct ErrorView {
    pub at: DateTime<Utc>,
    pub message: String,
    pub screenshot: Option<String>,
}

/// `PATCH /api/accounts/{id}`: only the fields present change.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountPatch {
    pub label: Option<String>,
    pub priority: Option<i64>,
    pub enabled: Option<bool>,
}

pub(crate) fn validate_label(label: &str) -> Result<()> {
    let ok = !label.trim().is_empty() && label.len() <= 100 && !label.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(FarmError::Invalid(
            "label must be 1 to 100 printable characters".into(),
        ))
    }
}

impl Farm {
    pub fn list_accounts(&self) -> Result<Vec<AccountView>> {
        let counts = self.leases_24h(None)?;
        let now = self.clock.now();
        let st = self.state();
        let browser = self.browser.is_some();
        Ok(st
            .accounts
            .values()
            .map(|a| {
                let leases = counts.get(&a.id).copied().unwrap_or(0);
                AccountView::of(a, now, leases, browser, self.proxy.quota(a.id))
            })
            .collect())
    }

    pub fn account(&self, id: AccountId) -> Result<AccountView> {
        let counts = self.leases_24h(Some(id))?;
        let now = self.clock.now();
        let browser = self.browser.is_some();
        self.with_account(id, |a| {
            let leases = counts.get(&a.id).copied().unwrap_or(0);
            AccountView::of(a, now, leases, browser, self.proxy.quota(a.id))
        })
    }

    /// Leases of the last day per account (of one account, or of all),
    /// from the counters in memory (`store::usage`).
    fn leases_24h(&self, account: Option<AccountId>) -> Result<HashMap<AccountId, i64>> {
        let tally = self.lease_log.tally();
        Ok(match account {
            Some(id) => HashMap::from([(id, tally.leases_24h(id))]),
            None => tally.all_leases_24h(),
        })
    }

    /// Writes each account's last use to its row (by the sweep and at
    /// shutdown), so that a restart need not search the lease log for it.
    pub fn save_last_used(&self) -> Result<()> {
        let uses: Vec<_> = self
            .state()
            .accounts
            .values()
            .filter_map(|a| Some((a.id, a.last_used_at?)))
            .collect();
        Ok(self.store.store_last_used(&uses)?)
    }

    /// How many accounts there are (no I/O: for `/healthz` and logs).
    pub fn account_count(&self) -> usize {
        self.state().accounts.len()
    }

    /// `GET /healthz`: no I/O; `degraded` when the refresh scheduler has
    /// missed three of its rounds (it runs at least every
    /// `scheduler.max_sleep`), which no monitoring of the port would notice.
    pub fn health(&self) -> Health {
        self.health_at(std::time::Instant::now())
    }

    pub(crate) fn health_at(&self, now: std::time::Instant) -> Health {
        let max_sleep = self.config.scheduler.max_sleep;
        let allowed = 3 * max_sleep + std::time::Duration::from_secs(10);
        let since = self
            .metrics
            .last_scheduler_round()
            .unwrap_or_else(|| self.metrics.started());
        let quiet = now.saturating_duration_since(since);
        let detail = (quiet > allowed).then(|| {
            format!(
                "the refresh scheduler has not run for {} s (it runs at least every {} s)",
                quiet.as_secs(),
                max_sleep.as_secs()
            )
        });
        Health {
            status: if detail.is_some() { "degraded" } else { "ok" },
            accounts: self.account_count(),
            detail,
        }
    }

    pub fn add_account(&self, provider: &str, label: &str, priority: i64) -> Result<AccountView> {
        // The provider's own login script serves its new accounts too, as
        // it does the stored ones at start.
        let provider_has_script = self.provider(provider)?.config().login_script.is_some();
        validate_label(label)?;
        let mut account = self
            .store
            .insert_account(provider, label, priority, self.clock.now())
            .map_err(|e| match e {
                crate::store::StoreError::DuplicateAccount { .. } => {
                    FarmError::Conflict(e.to_string())
                }
                other => other.into(),
            })?;
        account.has_login_script = provider_has_script;
        let id = account.id;
        tracing::info!(account = id, provider, label, "account added");
        self.emit(
            EventKind::AccountAdded,
            Some(id),
            format!("{provider}/{label} added"),
        );
        self.state().accounts.insert(id, account);
        self.account(id)
    }

    pub fn patch_account(&self, id: AccountId, patch: AccountPatch) -> Result<AccountView> {
        if let Some(label) = &patch.label {
            validate_label(label)?;
        }
        let detail = describe_patch(&patch);
        self.update_account(id, |a| {
            if let Some(label) = &patch.label {
                a.label = label.clone();
            }
            if let Some(p) = patch.priority {
                a.priority = p;
            }
            if let Some(e) = patch.enabled {
                a.enabled = e;
            }
        })?;
        self.emit(EventKind::AccountUpdated, Some(id), detail);
        self.account(id)
    }

    /// Removes an account for good (the only way an account is ever
    /// deleted), with its browser profile, screenshots and lock file.
    pub async fn remove_account(&self, id: AccountId) -> Result<()> {
        // Before any file is touched: no lock file for an account that
        // does not exist.
        self.with_account(id, |_| ())?;
        if let Some(pool) = &self.browser {
            pool.remove_all(&id.to_string()).await.map_err(|e| {
                FarmError::Conflict(format!("cannot remove the account's browser profile: {e}"))
            })?;
        }
        if !self.store.delete_account(id)? {
            return Err(not_found_account(id));
        }
        let mut st = self.state();
        st.accounts.remove(&id);
        st.rotation.forget(id);
        drop(st);
        self.logins.forget_account(id);
        tracing::info!(account = id, "account removed");
        self.emit(EventKind::AccountRemoved, Some(id), "account removed");
        Ok(())
    }
}

/// A provider as the admin API shows it (never its client secret).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Provider")]
pub struct ProviderView {
    pub name: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
}

impl Farm {
    pub fn provider_views(&self) -> Vec<ProviderView> {
        self.providers
            .values()
            .map(|p| ProviderView {
                name: p.config().name.clone(),
                client_id: p.config().client_id.clone(),
                redirect_uri: p.config().redirect_uri.to_string(),
                scopes: p.config().scopes.clone(),
            })
            .collect()
    }

    pub fn usage(&self) -> Result<crate::store::leases::Usage> {
        Ok(self.lease_log.tally().usage(self.clock.now()))
    }

    /// Prometheus text: counters plus accounts by provider and state.
    pub fn render_metrics(&self) -> String {
        let now = self.clock.now();
        let mut counts: std::collections::BTreeMap<(String, &'static str), usize> =
            Default::default();
        for a in self.state().accounts.values() {
            *counts
                .entry((a.provider.clone(), a.display_state(now).as_str()))
                .or_default() += 1;
        }
        let rows: Vec<_> = counts.into_iter().map(|((p, s), n)| (p, s, n)).collect();
        let store_bytes = self.store.file_sizes();
        let mut text = self
            .metrics
            .render(&rows, self.lease_log.commits(), store_bytes);
        self.proxy.metrics.render(&mut text);
        text
    }
}
