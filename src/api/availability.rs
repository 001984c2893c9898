//! The availability endpoints of the mobile authentication API: which types a user can use,
//! `GET /oauth/api/{v4,v3}/authenticate/user/{user_id}/enabled` (with `sms_fallback_allowed` and
//! `apps_enrolled_for_push` in the shape of the version), per device (v4
//! `.../device/{device_id}/enabled`) and per application (v3 `.../application/{app_id}/enabled`)
//! as lists of type names, and v2's `.../enabled/{type}` boolean. While the feature is on they
//! always answer 200: an unknown user, device or application gets an empty list.
//!
//! May import: service, domain, config, telemetry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};

use super::client_auth::authenticate;
use super::error::{ApiError, json_response};
use crate::config::settings::{ApiClient, ApiScope};
use crate::domain::application::Applications;
use crate::domain::device::{DeviceId, PushEnrollmentMode};
use crate::service::availability::{AvailabilityError, AvailabilityService, AvailableType, Scope};

pub struct AvailabilityState {
    pub enabled: bool,
    pub clients: Vec<ApiClient>,
    pub service: AvailabilityService,
    pub applications: Applications,
    /// Under `multiple`, v2 and v3 cannot name a push target: push types are not available there.
    pub mode: PushEnrollmentMode,
}

type Shared = Arc<AvailabilityState>;

pub fn router(state: Shared) -> Router {
    Router::new()
        .route(
            "/oauth/api/v4/authenticate/user/{user_id}/enabled",
            get(list_v4),
        )
        .route(
            "/oauth/api/v3/authenticate/user/{user_id}/enabled",
            get(list_v3),
        )
        .route(
            "/oauth/api/v4/authenticate/user/{user_id}/device/{device_id}/enabled",
            get(for_device),
        )
        .route(
            "/oauth/api/v3/authenticate/user/{user_id}/application/{app_id}/enabled",
            get(for_application),
        )
        .route(
            "/oauth/api/v2/authenticate/user/{user_id}/enabled/{type}",
            get(v2_enabled),
        )
        .with_state(state)
}

impl From<AvailabilityError> for ApiError {
    fn from(error: AvailabilityError) -> Self {
        match error {
            AvailabilityError::Store(error) => ApiError::StoreUnavailable(error.to_string()),
        }
    }
}

/// Client authentication (Basic: these are GETs) and the feature switch.
fn admit(state: &AvailabilityState, headers: &HeaderMap, peer: SocketAddr) -> Result<(), ApiError> {
    authenticate(
        &state.clients,
        headers,
        &HashMap::new(),
        peer.ip(),
        ApiScope::MobileAuthentication,
    )?;
    if !state.enabled {
        return Err(ApiError::Disabled);
    }
    Ok(())
}

/// Whether v2/v3 can push in the configured enrollment mode (v4 always can).
fn legacy_allows_push(state: &AvailabilityState) -> bool {
    state.mode != PushEnrollmentMode::Multiple
}

/// The method as the availability list spells it: `PUSH_WITH_PIN`, `OTP`, `SMS`.
fn method_name(available: &AvailableType) -> String {
    available.method.as_str().to_ascii_uppercase()
}

fn app_name<'a>(state: &'a AvailabilityState, app_id: &'a str) -> &'a str {
    state
        .applications
        .get(app_id)
        .map_or(app_id, |app| app.name.as_str())
}

#[derive(Clone, Copy)]
enum Shape {
    V3,
    V4,
}

/// One entry of the `/enabled` list: push types carry the fallback flag and the enrolled
/// targets (v4: each device; v3: each application once).
fn entry(state: &AvailabilityState, available: &AvailableType, shape: Shape) -> Value {
    let mut entry = json!({"type": available.name, "method": method_name(available)});
    if !available.method.is_push() {
        return entry;
    }
    let enrolled: Vec<Value> = match shape {
        Shape::V4 => available
            .push_devices
            .iter()
            .map(|device| {
                json!({
                    "app_id": device.application,
                    "app_name": app_name(state, &device.application),
                    "device_id": device.id.as_str(),
                    "device_name": device.name,
                    "platform": device.platform.as_str(),
                })
            })
            .collect(),
        Shape::V3 => {
            let mut apps: Vec<&str> = Vec::new();
            for device in &available.push_devices {
                if !apps.contains(&device.application.as_str()) {
                    apps.push(&device.application);
                }
            }
            apps.into_iter()
                .map(|app| json!({"id": app, "name": app_name(state, app)}))
                .collect()
        }
    };
    entry["sms_fallback_allowed"] = json!(available.sms_fallback_allowed);
    entry["apps_enrolled_for_push"] = Value::Array(enrolled);
    entry
}

async fn list(
    state: &AvailabilityState,
    headers: &HeaderMap,
    peer: SocketAddr,
    user_id: &str,
    shape: Shape,
) -> Result<Response, ApiError> {
    admit(state, headers, peer)?;
    let allows_push = match shape {
        Shape::V4 => true,
        Shape::V3 => legacy_allows_push(state),
    };
    let available = state
        .service
        .available(user_id, Scope::User, allows_push)
        .await?;
    let entries: Vec<Value> = available.iter().map(|a| entry(state, a, shape)).collect();
    Ok(json_response(StatusCode::OK, &json!({"enabled": entries})))
}

async fn list_v4(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    list(&state, &headers, peer, &user_id, Shape::V4).await
}

async fn list_v3(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    list(&state, &headers, peer, &user_id, Shape::V3).await
}

fn names(available: &[AvailableType]) -> Value {
    json!({"enabled": available.iter().map(|a| a.name.as_str()).collect::<Vec<_>>()})
}

async fn for_device(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((user_id, device_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admit(&state, &headers, peer)?;
    // An id that is not one of ours names no device: the empty list, like an unknown one.
    let Ok(device_id) = device_id.to_ascii_lowercase().parse::<DeviceId>() else {
        return Ok(json_response(StatusCode::OK, &json!({"enabled": []})));
    };
    let available = state
        .service
        .available(&user_id, Scope::Device(&device_id), true)
        .await?;
    Ok(json_response(StatusCode::OK, &names(&available)))
}

async fn for_application(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((user_id, app_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admit(&state, &headers, peer)?;
    let available = state
        .service
        .available(
            &user_id,
            Scope::Application(&app_id),
            legacy_allows_push(&state),
        )
        .await?;
    Ok(json_response(StatusCode::OK, &names(&available)))
}

/// v2: whether `type` is available for the user (push through the user's single push
/// enrollment, as v2 init pushes); an unknown type is simply not available.
async fn v2_enabled(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((user_id, type_name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admit(&state, &headers, peer)?;
    let available = state
        .service
        .available(&user_id, Scope::User, legacy_allows_push(&state))
        .await?;
    let enabled = available.iter().any(|a| a.name == type_name);
    Ok(json_response(StatusCode::OK, &json!({"enabled": enabled})))
}
