//! The admin API, on its own listener (`listen.admin`, loopback by default): recent
//! transactions, one transaction, a user's devices and transactions, one device, the audit
//! events of the last hours, and a policy reload. Every call authenticates an API client with
//! the `admin` scope (HTTP Basic, constant time, `allowed_networks` honoured). Answers are JSON;
//! errors have the OAuth shape (`error`, `error_description`). What may be shown is decided by
//! the service's summary types, which hold no secret.
//!
//! May import: service, domain, config, telemetry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::json;

use super::client_auth::authenticate;
use super::error::{self, ApiError, json_response};
use crate::config::env::EnvSource;
use crate::config::reload::{PolicyHandle, reload_now};
use crate::config::settings::{ApiClient, ApiScope};
use crate::domain::device::DeviceId;
use crate::domain::ports::StoreError;
use crate::domain::transaction::{Status, TransactionId};
use crate::service::admin::{AdminService, RecentFilter};
use crate::service::guard::AccountGuard;
use crate::telemetry::audit::AuditEvent;
use crate::telemetry::metrics;

/// The admin API takes no bodies worth the name.
const MAX_BODY_BYTES: usize = 4 * 1024;
const DEFAULT_HOURS: u64 = 24;
/// A year: further back than any retention keeps anything.
const MAX_HOURS: u64 = 24 * 366;
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// What the admin endpoints need.
pub struct AdminState {
    pub clients: Vec<ApiClient>,
    pub admin: AdminService,
    /// Account locks and push blocks (`/admin/v1/locks`).
    pub guard: AccountGuard,
    /// The policies the proxy reads, and where the config they came from lives.
    pub policies: PolicyHandle,
    pub config_source: PathBuf,
    pub env: Arc<dyn EnvSource + Send + Sync>,
}

type Shared = Arc<AdminState>;

/// How an admin call can fail. Client authentication, unknown resources and store outages
/// answer as on the main API (`ApiError`'s table); the rest is the admin API's own.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("config reload failed with {} problem(s)", .0.len())]
    Reload(Vec<String>),
}

impl From<StoreError> for AdminError {
    fn from(error: StoreError) -> Self {
        AdminError::Api(ApiError::StoreUnavailable(error.to_string()))
    }
}

fn oauth(error: &str, description: &str) -> serde_json::Value {
    json!({"error": error, "error_description": description})
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match self {
            AdminError::Api(error) => error.into_response(),
            AdminError::InvalidRequest(description) => {
                tracing::info!(%description, "admin request refused");
                json_response(
                    StatusCode::BAD_REQUEST,
                    &oauth("invalid_request", &description),
                )
            }
            AdminError::Reload(problems) => {
                let mut body = oauth(
                    "invalid_config",
                    "The configuration has problems; the previous policies stay in force.",
                );
                body["problems"] = json!(problems);
                json_response(StatusCode::UNPROCESSABLE_ENTITY, &body)
            }
        }
    }
}

/// Mounted at the root of the admin listener; everything lives under `/admin/v1`.
pub fn router(state: Shared) -> Router {
    let routes = Router::new()
        .route("/transactions", get(list_transactions))
        .route("/transactions/{transaction_id}", get(transaction))
        .route("/users/{user_id}", get(user))
        .route("/devices/{device_id}", get(device))
        .route("/events", get(events))
        .route("/reload", post(reload))
        .route("/locks", get(locks))
        .route("/locks/{user_id}", delete(unlock))
        .with_state(state);
    Router::new()
        .nest("/admin/v1", routes)
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn(super::refuse_unreadable_paths))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// The calling client, when it may use the admin API from where it calls.
fn admit<'a>(
    state: &'a AdminState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<&'a ApiClient, AdminError> {
    // Basic credentials only: these calls have no form to carry them.
    Ok(authenticate(
        &state.clients,
        headers,
        &HashMap::new(),
        peer.ip(),
        ApiScope::Admin,
    )?)
}

/// The query string's parameters, refusing any not in `allowed` (a misspelt filter must not
/// silently list everything).
fn parameters(
    query: Option<&str>,
    allowed: &[&str],
) -> Result<HashMap<String, String>, AdminError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or_default())
        .map_err(|_| AdminError::InvalidRequest("the query string is not URL-encoded".into()))?;
    let mut found = HashMap::new();
    for (name, value) in pairs {
        if !allowed.contains(&name.as_str()) {
            return Err(AdminError::InvalidRequest(format!(
                "unknown parameter '{name}' (expected one of: {})",
                allowed.join(", ")
            )));
        }
        if !value.is_empty() {
            found.insert(name, value);
        }
    }
    Ok(found)
}

/// A whole number in `1..=max`, or `default` when absent.
fn bounded(
    parameters: &HashMap<String, String>,
    name: &str,
    default: u64,
    max: u64,
) -> Result<u64, AdminError> {
    let Some(text) = parameters.get(name) else {
        return Ok(default);
    };
    text.parse::<u64>()
        .ok()
        .filter(|value| (1..=max).contains(value))
        .ok_or_else(|| {
            AdminError::InvalidRequest(format!("{name} must be a whole number from 1 to {max}"))
        })
}

fn window(parameters: &HashMap<String, String>) -> Result<Duration, AdminError> {
    let hours = bounded(parameters, "hours", DEFAULT_HOURS, MAX_HOURS)?;
    Ok(Duration::from_secs(hours * 3600))
}

fn limit(parameters: &HashMap<String, String>) -> Result<usize, AdminError> {
    let limit = bounded(parameters, "limit", DEFAULT_LIMIT as u64, MAX_LIMIT as u64)?;
    Ok(usize::try_from(limit).unwrap_or(MAX_LIMIT))
}

fn ok(body: &impl serde::Serialize) -> Response {
    match serde_json::to_value(body) {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(error) => AdminError::Api(ApiError::StoreUnavailable(format!(
            "cannot encode: {error}"
        )))
        .into_response(),
    }
}

async fn list_transactions(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, AdminError> {
    admit(&state, &headers, peer)?;
    let parameters = parameters(query.as_deref(), &["hours", "user_id", "status", "limit"])?;
    let status = parameters
        .get("status")
        .map(|text| text.parse::<Status>())
        .transpose()
        .map_err(|_| {
            AdminError::InvalidRequest(
                "status must be one of pending, approved, denied, expired, failed".into(),
            )
        })?;
    let filter = RecentFilter {
        window: window(&parameters)?,
        user_id: parameters.get("user_id").cloned(),
        status,
        limit: limit(&parameters)?,
    };
    let transactions = state.admin.recent(filter).await?;
    Ok(ok(&json!({ "transactions": transactions })))
}

async fn transaction(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(transaction_id): Path<String>,
) -> Result<Response, AdminError> {
    admit(&state, &headers, peer)?;
    let id: TransactionId = transaction_id.parse().map_err(|_| ApiError::NotFound)?;
    let found = state.admin.transaction(&id).await?;
    Ok(ok(&found.ok_or(ApiError::NotFound)?))
}

async fn user(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, AdminError> {
    admit(&state, &headers, peer)?;
    let parameters = parameters(query.as_deref(), &["hours", "limit"])?;
    let summary = state
        .admin
        .user(&user_id, window(&parameters)?, limit(&parameters)?)
        .await?;
    Ok(ok(&summary))
}

async fn device(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(device_id): Path<String>,
) -> Result<Response, AdminError> {
    admit(&state, &headers, peer)?;
    let id: DeviceId = device_id.parse().map_err(|_| ApiError::NotFound)?;
    let found = state.admin.device(&id).await?;
    Ok(ok(&found.ok_or(ApiError::NotFound)?))
}

async fn events(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, AdminError> {
    admit(&state, &headers, peer)?;
    let parameters = parameters(query.as_deref(), &["hours", "limit"])?;
    let events = state
        .admin
        .events(window(&parameters)?, limit(&parameters)?)
        .await?;
    Ok(ok(&json!({ "events": events })))
}

/// Users whose account is locked (consecutive failures) or whose push is blocked by a "this
/// wasn't me" report, soonest to open first.
async fn locks(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    admit(&state, &headers, peer)?;
    let users = state.guard.guarded_users().await?;
    let locks: Vec<serde_json::Value> = users
        .iter()
        .map(|user| {
            json!({
                "user_id": user.user_id,
                "locked_until": user.state.locked_until.map(|at| at.millis()),
                "push_blocked_until": user.state.push_blocked_until.map(|at| at.millis()),
            })
        })
        .collect();
    Ok(ok(&json!({ "locks": locks })))
}

/// Lifts the user's lock and push block and clears the counts (204 whether or not there was
/// one).
async fn unlock(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    let client_id = admit(&state, &headers, peer)?.client_id.clone();
    if user_id.is_empty() || user_id.len() > 255 {
        return Err(AdminError::InvalidRequest("user_id".into()));
    }
    state.guard.unlock(&user_id, &client_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Reloads the config's policies now, as SIGHUP does, and says how it went.
async fn reload(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    let client_id = admit(&state, &headers, peer)?.client_id.clone();
    let (policies, source, env) = (
        state.policies.clone(),
        state.config_source.clone(),
        state.env.clone(),
    );
    // Loading reads files and resolves the upstream's name: off the async threads.
    let loaded = tokio::task::spawn_blocking(move || reload_now(&policies, &source, &*env))
        .await
        .map_err(|error| AdminError::Reload(vec![format!("the reload did not finish: {error}")]))?;
    metrics::policy_reload(loaded.as_ref().ok().copied());
    let (event, detail) = match &loaded {
        Ok(rules) => ("CONFIG_RELOADED", format!("{rules} rules")),
        Err(error) => (
            "CONFIG_RELOAD_FAILED",
            format!("{} problem(s)", error.issues().len().max(1)),
        ),
    };
    AuditEvent {
        event,
        client_id: Some(&client_id),
        detail: Some(&detail),
        ..AuditEvent::default()
    }
    .emit();
    match loaded {
        Ok(rules) => {
            tracing::info!(client_id, rules, "policies reloaded through the admin API");
            Ok(ok(&json!({"reloaded": true, "rules": rules})))
        }
        Err(error) => {
            let problems = match error.issues() {
                [] => vec![error.to_string()],
                issues => issues.iter().map(ToString::to_string).collect(),
            };
            Err(AdminError::Reload(problems))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE.md house rules)
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_by_name_and_range() {
        let allowed = ["hours", "limit"];
        let found = parameters(Some("hours=2&limit="), &allowed).unwrap();
        assert_eq!(window(&found).unwrap(), Duration::from_secs(7200));
        assert_eq!(limit(&found).unwrap(), DEFAULT_LIMIT);
        assert!(matches!(
            parameters(Some("user=ann"), &allowed),
            Err(AdminError::InvalidRequest(_))
        ));
        for bad in ["hours=0", "hours=-1", "hours=1.5", "hours=9000"] {
            let found = parameters(Some(bad), &allowed).unwrap();
            assert!(window(&found).is_err(), "{bad}");
        }
        let found = parameters(Some("limit=1001"), &allowed).unwrap();
        assert!(limit(&found).is_err());
        let found = parameters(None, &allowed).unwrap();
        assert_eq!(window(&found).unwrap(), Duration::from_secs(24 * 3600));
    }

    #[tokio::test]
    async fn reload_problems_are_listed_with_the_oauth_shape() {
        let response = AdminError::Reload(vec!["a.yaml:1:1: bad".into()]).into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "invalid_config");
        assert!(body["error_description"].is_string());
        assert_eq!(body["problems"], json!(["a.yaml:1:1: bad"]));
    }
}
