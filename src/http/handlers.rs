//! Thin handlers: parse → call the farm → render. Each takes its route's
//! guard ([`Admin`], [`Principal`] or [`Anyone`]) last: the router's auth
//! filter made it, so a handler runs only for a caller its route admits.

use std::collections::HashMap;
use std::sync::Arc;

use warp::http::StatusCode;
use warp::reply::{json, with_status, Response};
use warp::Reply;

use super::auth::{Admin, Anyone};
use super::error::{render, ApiError};
use super::types;
use crate::domain::AccountId;
use crate::farm::{AccountPatch, Farm, Principal};

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

pub async fn healthz(farm: Arc<Farm>, _: Anyone) -> Response {
    let health = farm.health();
    let status = match health.detail {
        None => StatusCode::OK,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    with_status(json(&health), status).into_response()
}

pub async fn metrics(farm: Arc<Farm>, _: Admin) -> Response {
    warp::reply::with_header(
        farm.render_metrics(),
        "content-type",
        "text/plain; version=0.0.4",
    )
    .into_response()
}

pub async fn credential_next(farm: Arc<Farm>, query: String, who: Principal) -> Response {
    render(
        async {
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
    body: Body<types::Report>,
    who: Principal,
) -> Response {
    render(
        async {
            farm.report(body?.into(), who).await?;
            Ok(json(&types::Recorded { recorded: true }))
        }
        .await,
    )
}

pub async fn credential_release(lease_id: String, farm: Arc<Farm>, who: Principal) -> Response {
    render(
        async {
            farm.release(&lease_id, who).await?;
            Ok(with_status(warp::reply(), StatusCode::NO_CONTENT))
        }
        .await,
    )
}

pub async fn providers(farm: Arc<Farm>, _: Admin) -> Response {
    json(&farm.provider_views()).into_response()
}

pub async fn accounts_list(farm: Arc<Farm>, _: Admin) -> Response {
    render(farm.list_accounts().map(|a| json(&a)).map_err(Into::into))
}

pub async fn accounts_add(farm: Arc<Farm>, body: Body<types::NewAccount>, _: Admin) -> Response {
    render((|| {
        let b = body?;
        let account = farm.add_account(&b.provider, &b.label, b.priority)?;
        Ok(with_status(json(&account), StatusCode::CREATED))
    })())
}

pub async fn account_get(id: String, farm: Arc<Farm>, _: Admin) -> Response {
    render((|| Ok(json(&farm.account(id_of("account", &id)?)?)))())
}

pub async fn account_patch(
    id: String,
    farm: Arc<Farm>,
    body: Body<AccountPatch>,
    _: Admin,
) -> Response {
    render((|| {
        let id = id_of("account", &id)?;
        Ok(json(&farm.patch_account(id, body?)?))
    })())
}

pub async fn account_delete(id: String, farm: Arc<Farm>, _: Admin) -> Response {
    render(
        async {
            farm.remove_account(id_of("account", &id)?).await?;
            Ok(with_status(warp::reply(), StatusCode::NO_CONTENT))
        }
        .await,
    )
}

pub async fn login_start(id: String, farm: Arc<Farm>, _: Admin) -> Response {
    render(async { Ok(json(&farm.start_login(id_of("account", &id)?).await?)) }.await)
}

pub async fn login_complete(
    id: String,
    farm: Arc<Farm>,
    body: Body<types::LoginComplete>,
    _: Admin,
) -> Response {
    render(
        async {
            let id = id_of("account", &id)?;
            farm.account(id)?;
            let body = body?;
            // Redeems the code: the client hanging up must not cancel it.
            detached(&farm, move |farm| async move {
                match body {
                    types::LoginComplete {
                        redirect_url: Some(url),
                        code: None,
                    } => farm.complete_login(&url, Some(id)).await.map(drop),
                    types::LoginComplete {
                        redirect_url: None,
                        code: Some(code),
                    } => farm.complete_login_with_code(&code, id).await.map(drop),
                    _ => Err(crate::farm::FarmError::Invalid(
                        "give either redirect_url or code".into(),
                    )),
                }
            })
            .await?;
            Ok(json(&farm.account(id)?))
        }
        .await,
    )
}

/// Runs `work` in a task of its own, so that it finishes even when the
/// client goes away (hyper then drops the handler's future). For handlers
/// that spend something at the provider (a refresh token, a login code).
async fn detached<T, F, Fut>(farm: &Arc<Farm>, work: F) -> Result<T, ApiError>
where
    F: FnOnce(Arc<Farm>) -> Fut,
    Fut: std::future::Future<Output = crate::farm::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    match tokio::spawn(work(farm.clone())).await {
        Ok(done) => Ok(done?),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(ApiError::new(
            warp::http::StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the farm is stopping",
        )),
    }
}

pub async fn account_refresh(id: String, farm: Arc<Farm>, _: Admin) -> Response {
    render(
        async {
            let id = id_of("account", &id)?;
            // Spends the refresh token: the client hanging up must not
            // cancel it between the grant and storing its answer.
            let outcome = detached(&farm, move |farm| async move {
                farm.refresh(id, None, "admin").await
            })
            .await?;
            Ok(json(&types::Refreshed {
                account: farm.account(id)?,
                refresh: outcome.into(),
            }))
        }
        .await,
    )
}

pub async fn script_put(id: String, farm: Arc<Farm>, body: Body<String>, _: Admin) -> Response {
    render((|| {
        let id = id_of("account", &id)?;
        let script = farm.set_login_script(id, &body?)?;
        let secrets = farm.secret_names(id)?;
        let required: Vec<String> = script.required_secrets().into_iter().collect();
        let missing = required
            .iter()
            .filter(|n| !secrets.iter().any(|s| &s.name == *n))
            .cloned()
            .collect();
        Ok(json(&types::ScriptAttached {
            account_id: id,
            steps: script.steps.len(),
            required_secrets: required,
            missing_secrets: missing,
        }))
    })())
}

pub async fn script_get(id: String, farm: Arc<Farm>, _: Admin) -> Response {
    render((|| {
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

pub async fn script_delete(id: String, farm: Arc<Farm>, _: Admin) -> Response {
    render((|| {
        farm.remove_login_script(id_of("account", &id)?)?;
        Ok(with_status(warp::reply(), StatusCode::NO_CONTENT))
    })())
}

pub async fn secrets_list(id: String, farm: Arc<Farm>, _: Admin) -> Response {
    render((|| Ok(json(&farm.secret_names(id_of("account", &id)?)?)))())
}

pub async fn secret_put(
    id: String,
    name: String,
    farm: Arc<Farm>,
    body: Body<types::SecretValue>,
    _: Admin,
) -> Response {
    render((|| {
        farm.set_secret(id_of("account", &id)?, &name, &body?.value)?;
        Ok(with_status(warp::reply(), StatusCode::NO_CONTENT))
    })())
}

pub async fn secret_delete(id: String, name: String, farm: Arc<Farm>, _: Admin) -> Response {
    render((|| {
        farm.delete_secret(id_of("account", &id)?, &name)?;
        Ok(with_status(warp::reply(), StatusCode::NO_CONTENT))
    })())
}

pub async fn relogin(id: String, farm: Arc<Farm>, _: Admin) -> Response {
    relogin_for(id, farm, crate::farm::ReloginCause::Admin).await
}

/// `POST /api/accounts/{id}/script/prove`: a relogin on a throwaway profile.
pub async fn script_prove(id: String, farm: Arc<Farm>, _: Admin) -> Response {
    relogin_for(id, farm, crate::farm::ReloginCause::Proof).await
}

async fn relogin_for(id: String, farm: Arc<Farm>, cause: crate::farm::ReloginCause) -> Response {
    render(
        async {
            let id = id_of("account", &id)?;
            let done = farm.relogin(id, cause).await?;
            Ok(json(&types::Relogged {
                account: farm.account(id)?,
                relogin: done,
            }))
        }
        .await,
    )
}

pub async fn browser_info(id: String, farm: Arc<Farm>, _: Admin) -> Response {
    render(async { Ok(json(&farm.browser_info(id_of("account", &id)?).await?)) }.await)
}

pub async fn browser_reset(id: String, farm: Arc<Farm>, _: Admin) -> Response {
    render(
        async {
            farm.reset_browser_profile(id_of("account", &id)?).await?;
            Ok(with_status(warp::reply(), StatusCode::NO_CONTENT))
        }
        .await,
    )
}

pub async fn remote_open(
    id: String,
    farm: Arc<Farm>,
    body: Body<crate::farm::RemoteRequest>,
    _: Admin,
) -> Response {
    render(
        async {
            let id = id_of("account", &id)?;
            let started = farm.open_remote_browser(id, body?).await?;
            Ok(with_status(json(&started), StatusCode::CREATED))
        }
        .await,
    )
}

pub async fn remote_close(id: String, farm: Arc<Farm>, _: Admin) -> Response {
    render(
        async {
            farm.close_remote_browser(id_of("account", &id)?).await?;
            Ok(with_status(warp::reply(), StatusCode::NO_CONTENT))
        }
        .await,
    )
}

pub async fn screenshot(id: String, farm: Arc<Farm>, _: Admin) -> Response {
    render((|| {
        let png = farm.last_screenshot(id_of("account", &id)?)?;
        Ok(warp::reply::with_header(png, "content-type", "image/png"))
    })())
}

pub async fn usage(farm: Arc<Farm>, _: Admin) -> Response {
    render((|| Ok(json(&types::Usage::from(farm.usage()?))))())
}

/// `?since=ID` → JSON page; otherwise an SSE stream resuming after
/// `Last-Event-ID` when given.
pub async fn events(
    farm: Arc<Farm>,
    query: String,
    last_event_id: Option<String>,
    _: Admin,
) -> Response {
    let result = (|| {
        let q = serde_urlencoded_pairs(&query);
        let parse_id = |what: &str, v: &str| {
            v.trim().parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("{what} must be an event id (an integer)"))
            })
        };
        if let Some(since) = q.get("since") {
            let events: Vec<types::Event> = farm
                .replay_events(parse_id("since", since)?, super::sse::PAGE)?
                .iter()
                .map(types::Event::from)
                .collect();
            return Ok(json(&events).into_response());
        }
        let resume = last_event_id
            .as_deref()
            .map(|v| parse_id("Last-Event-ID", v))
            .transpose()?;
        let stream = super::sse::stream(farm.clone(), resume);
        Ok(warp::sse::reply(
            warp::sse::keep_alive()
                .interval(super::sse::keep_alive(farm.idle_timeout()))
                .stream(stream),
        )
        .into_response())
    })();
    render(result)
}

pub async fn webhooks(farm: Arc<Farm>, _: Admin) -> Response {
    let all: Vec<types::Webhook> = farm
        .webhook_status()
        .into_iter()
        .map(types::Webhook::from)
        .collect();
    json(&all).into_response()
}

pub async fn backups_list(farm: Arc<Farm>, _: Admin) -> Response {
    render((|| {
        let all: Vec<types::Backup> = farm.backups()?.into_iter().map(Into::into).collect();
        Ok(json(&all))
    })())
}

pub async fn backups_create(farm: Arc<Farm>, _: Admin) -> Response {
    render(
        async {
            let made = types::Backup::from(farm.backup_now().await?);
            Ok(with_status(json(&made), StatusCode::CREATED))
        }
        .await,
    )
}

pub async fn openapi(_: Arc<Farm>, _: Anyone) -> Response {
    json(&*super::openapi::DOCUMENT).into_response()
}

pub async fn clients_list(farm: Arc<Farm>, _: Admin) -> Response {
    render((|| {
        let all: Vec<types::Client> = farm.list_clients()?.into_iter().map(Into::into).collect();
        Ok(json(&all))
    })())
}

pub async fn clients_add(farm: Arc<Farm>, body: Body<types::NewClient>, _: Admin) -> Response {
    render((|| {
        Ok(with_status(
            json(&farm.create_client(&body?.name)?),
            StatusCode::CREATED,
        ))
    })())
}

pub async fn clients_revoke(id: String, farm: Arc<Farm>, _: Admin) -> Response {
    render((|| {
        farm.revoke_client(id_of("client", &id)?)?;
        Ok(with_status(warp::reply(), StatusCode::NO_CONTENT))
    })())
}
