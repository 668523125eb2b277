//! Thin handlers: parse → call the farm → render.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::{json, with_status, Response};
use warp::Reply;

use super::error::{render, ApiError};
use super::{Access, Caller};
use crate::domain::AccountId;
use crate::farm::{AccountPatch, Farm, ReportRequest};

type Body<T> = Result<T, ApiError>;

fn id_of(what: &'static str, raw: &str) -> Result<AccountId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} with id {raw}"),
        )
    })
}

pub async fn healthz(farm: Arc<Farm>) -> Response {
    let health = farm.health();
    let status = match health.detail {
        None => StatusCode::OK,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    with_status(json(&health), status).into_response()
}

pub async fn metrics(farm: Arc<Farm>, caller: Caller) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        Ok(warp::reply::with_header(
            farm.metrics_text(),
            "content-type",
            "text/plain; version=0.0.4",
        ))
    })())
}

pub async fn credential_next(farm: Arc<Farm>, caller: Caller, query: String) -> Response {
    render(
        async {
            let who = caller.require(&farm, Access::Client)?;
            let (mut provider, mut session) = (None, None);
            for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                match k.as_ref() {
                    "provider" => provider = Some(v),
                    "session" => session = Some(v),
                    _ => {}
                }
            }
            let provider = provider
                .ok_or_else(|| ApiError::bad_request("the provider query parameter is required"))?;
            let lease = farm
                .next_credential(&provider, session.as_deref(), who)
                .await?;
            Ok(json(&lease))
        }
        .await,
    )
}

fn serde_urlencoded_pairs(query: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

pub async fn credential_report(
    farm: Arc<Farm>,
    caller: Caller,
    body: Body<ReportRequest>,
) -> Response {
    render(
        async {
            let who = caller.require(&farm, Access::Client)?;
            farm.report(body?, who).await?;
            Ok(json(&json!({"recorded": true})))
        }
        .await,
    )
}

pub async fn credential_release(lease_id: String, farm: Arc<Farm>, caller: Caller) -> Response {
    render((|| {
        let who = caller.require(&farm, Access::Client)?;
        farm.release(&lease_id, who)?;
        Ok(with_status(warp::reply(), StatusCode::NO_CONTENT))
    })())
}

pub async fn providers(farm: Arc<Farm>, caller: Caller) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        Ok(json(&farm.provider_views()))
    })())
}

pub async fn accounts_list(farm: Arc<Farm>, caller: Caller) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        Ok(json(&farm.list_accounts()?))
    })())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    provider: String,
    label: String,
    #[serde(default)]
    priority: i64,
}

pub async fn accounts_add(farm: Arc<Farm>, caller: Caller, body: Body<NewAccount>) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        let b = body?;
        let account = farm.add_account(&b.provider, &b.label, b.priority)?;
        Ok(with_status(json(&account), StatusCode::CREATED))
    })())
}

pub async fn account_get(id: String, farm: Arc<Farm>, caller: Caller) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        Ok(json(&farm.account(id_of("account", &id)?)?))
    })())
}

pub async fn account_patch(
    id: String,
    farm: Arc<Farm>,
    caller: Caller,
    body: Body<AccountPatch>,
) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        let id = id_of("account", &id)?;
        Ok(json(&farm.patch_account(id, body?)?))
    })())
}

pub async fn account_delete(id: String, farm: Arc<Farm>, caller: Caller) -> Response {
    render(
        async {
            caller.require(&farm, Access::Admin)?;
            farm.remove_account(id_of("account", &id)?).await?;
            Ok(with_status(warp::reply(), StatusCode::NO_CONTENT))
        }
        .await,
    )
}

pub async fn login_start(id: String, farm: Arc<Farm>, caller: Caller) -> Response {
    render(
        async {
            caller.require(&farm, Access::Admin)?;
            Ok(json(&farm.start_login(id_of("account", &id)?).await?))
        }
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginComplete {
    redirect_url: String,
}

pub async fn login_complete(
    id: String,
    farm: Arc<Farm>,
    caller: Caller,
    body: Body<LoginComplete>,
) -> Response {
    render(
        async {
            caller.require(&farm, Access::Admin)?;
            let id = id_of("account", &id)?;
            farm.account(id)?;
            farm.complete_login(&body?.redirect_url, Some(id)).await?;
            Ok(json(&farm.account(id)?))
        }
        .await,
    )
}

pub async fn account_refresh(id: String, farm: Arc<Farm>, caller: Caller) -> Response {
    render(
        async {
            caller.require(&farm, Access::Admin)?;
            let id = id_of("account", &id)?;
            let outcome = farm.refresh(id, None, "admin").await?;
            let mut view = serde_json::to_value(farm.account(id)?).unwrap_or_default();
            view["refresh"] = json!(format!("{outcome:?}").to_lowercase());
            Ok(json(&view))
        }
        .await,
    )
}

pub async fn script_put(
    id: String,
    farm: Arc<Farm>,
    caller: Caller,
    body: Body<String>,
) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        let id = id_of("account", &id)?;
        let script = farm.set_login_script(id, &body?)?;
        let secrets = farm.secret_names(id)?;
        let required: Vec<String> = script.required_secrets().into_iter().collect();
        let missing: Vec<&String> = required
            .iter()
            .filter(|n| !secrets.iter().any(|s| &s.name == *n))
            .collect();
        Ok(json(
            &json!({"account_id": id, "steps": script.steps.len(), "required_secrets": required, "missing_secrets": missing}),
        ))
    })())
}

pub async fn script_get(id: String, farm: Arc<Farm>, caller: Caller) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        let id = id_of("account", &id)?;
        let text = farm.login_script_text(id)?.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("account {id} has no login script"),
            )
        })?;
        Ok(warp::reply::with_header(
            text,
            "content-type",
            "application/toml; charset=utf-8",
        ))
    })())
}

pub async fn script_delete(id: String, farm: Arc<Farm>, caller: Caller) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        farm.remove_login_script(id_of("account", &id)?)?;
        Ok(with_status(warp::reply(), StatusCode::NO_CONTENT))
    })())
}

pub async fn secrets_list(id: String, farm: Arc<Farm>, caller: Caller) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        Ok(json(&farm.secret_names(id_of("account", &id)?)?))
    })())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretBody {
    value: crate::secret::Secret,
}

pub async fn secret_put(
    id: String,
    name: String,
    farm: Arc<Farm>,
    caller: Caller,
    body: Body<SecretBody>,
) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        farm.set_secret(id_of("account", &id)?, &name, &body?.value)?;
        Ok(with_status(warp::reply(), StatusCode::NO_CONTENT))
    })())
}

pub async fn secret_delete(id: String, name: String, farm: Arc<Farm>, caller: Caller) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        farm.delete_secret(id_of("account", &id)?, &name)?;
        Ok(with_status(warp::reply(), StatusCode::NO_CONTENT))
    })())
}

pub async fn relogin(id: String, farm: Arc<Farm>, caller: Caller) -> Response {
    render(
        async {
            caller.require(&farm, Access::Admin)?;
            let id = id_of("account", &id)?;
            let done = farm.relogin(id, crate::farm::ReloginCause::Admin).await?;
            let mut view = serde_json::to_value(farm.account(id)?).unwrap_or_default();
            view["relogin"] = serde_json::to_value(&done).unwrap_or_default();
            Ok(json(&view))
        }
        .await,
    )
}

pub async fn browser_info(id: String, farm: Arc<Farm>, caller: Caller) -> Response {
    render(
        async {
            caller.require(&farm, Access::Admin)?;
            Ok(json(&farm.browser_info(id_of("account", &id)?).await?))
        }
        .await,
    )
}

pub async fn browser_reset(id: String, farm: Arc<Farm>, caller: Caller) -> Response {
    render(
        async {
            caller.require(&farm, Access::Admin)?;
            farm.reset_browser_profile(id_of("account", &id)?).await?;
            Ok(with_status(warp::reply(), StatusCode::NO_CONTENT))
        }
        .await,
    )
}

pub async fn screenshot(id: String, farm: Arc<Farm>, caller: Caller) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        let png = farm.last_screenshot(id_of("account", &id)?)?;
        Ok(warp::reply::with_header(png, "content-type", "image/png"))
    })())
}

pub async fn usage(farm: Arc<Farm>, caller: Caller) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        Ok(json(&farm.usage()?))
    })())
}

/// `?since=ID` → JSON page; otherwise an SSE stream resuming after
/// `Last-Event-ID` when given.
pub async fn events(
    farm: Arc<Farm>,
    caller: Caller,
    query: String,
    last_event_id: Option<String>,
) -> Response {
    let result = (|| {
        caller.require(&farm, Access::Admin)?;
        let q = serde_urlencoded_pairs(&query);
        let parse_id = |what: &str, v: &str| {
            v.trim().parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("{what} must be an event id (an integer)"))
            })
        };
        if let Some(since) = q.get("since") {
            let events = farm
                .events
                .since(parse_id("since", since)?, super::sse::PAGE)
                .map_err(crate::farm::FarmError::from)?;
            return Ok(json(&events).into_response());
        }
        let resume = last_event_id
            .as_deref()
            .map(|v| parse_id("Last-Event-ID", v))
            .transpose()?;
        let stream = super::sse::stream(farm.clone(), resume);
        Ok(warp::sse::reply(
            warp::sse::keep_alive()
                .interval(crate::listener::sse_keep_alive(
                    farm.config.server.idle_timeout,
                ))
                .stream(stream),
        )
        .into_response())
    })();
    render(result)
}

pub async fn webhooks(farm: Arc<Farm>, caller: Caller) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        Ok(json(&farm.webhook_status()))
    })())
}

pub async fn backups_list(farm: Arc<Farm>, caller: Caller) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        Ok(json(&farm.backups()?))
    })())
}

pub async fn backups_create(farm: Arc<Farm>, caller: Caller) -> Response {
    render(
        async {
            caller.require(&farm, Access::Admin)?;
            Ok(with_status(
                json(&farm.backup_now().await?),
                StatusCode::CREATED,
            ))
        }
        .await,
    )
}

pub async fn openapi() -> Response {
    render(Ok::<_, ApiError>(json(&*super::openapi::DOCUMENT)))
}

pub async fn clients_list(farm: Arc<Farm>, caller: Caller) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        Ok(json(&farm.list_clients()?))
    })())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewClientBody {
    name: String,
}

pub async fn clients_add(farm: Arc<Farm>, caller: Caller, body: Body<NewClientBody>) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        Ok(with_status(
            json(&farm.create_client(&body?.name)?),
            StatusCode::CREATED,
        ))
    })())
}

pub async fn clients_revoke(id: String, farm: Arc<Farm>, caller: Caller) -> Response {
    render((|| {
        caller.require(&farm, Access::Admin)?;
        farm.revoke_client(id_of("client", &id)?)?;
        Ok(with_status(warp::reply(), StatusCode::NO_CONTENT))
    })())
}
