//! The End User API's device endpoints (scope `end_user`), v4 with camelCase device objects
//! under `/oauth/api/v4/users/{userId}/devices` and v3 with snake_case ones under
//! `/oauth/api/v3/users/...`: list, delete one, delete all, bulk delete (JSON
//! `{"delete":[ids]}`), and `disableFingerprint`, `disableMobileAuthentication`,
//! `disablePushAuthentication` on one device. Changes answer 204 whatever they found (the
//! reference: "independent of the execution result"); only a store failure says otherwise.
//! Bad client credentials get the same OAuth `invalid_client` answer as the rest of the API.
//! These paths are not switched off by `features.mobile_authentication` (devices can always be
//! cleaned up) nor by `api.minimum_version` (that governs the mobile authentication API).
//!
//! May import: service, domain, config, telemetry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::client_auth::{authenticate, form_fields};
use super::error::{ApiError, json_response};
use crate::config::settings::{ApiClient, ApiScope};
use crate::domain::device::Device;
use crate::service::end_user::{EndUserDevices, EndUserError};

pub struct EndUserState {
    pub clients: Vec<ApiClient>,
    pub devices: EndUserDevices,
}

type Shared = Arc<EndUserState>;

/// The version decides the device object's field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// snake_case, without `model` and `osVersion`.
    V3,
    /// camelCase.
    V4,
}

pub fn router(state: Shared) -> Router {
    let routes = |shape: Shape| {
        Router::new()
            .route(
                "/users/{user_id}/devices",
                get(list).delete(delete_all).post(bulk_delete),
            )
            .route("/users/{user_id}/devices/{device_id}", delete(delete_one))
            .route(
                "/users/{user_id}/devices/{device_id}/disableFingerprint",
                post(disable_fingerprint),
            )
            .route(
                "/users/{user_id}/devices/{device_id}/disableMobileAuthentication",
                post(disable_mobile_authentication),
            )
            .route(
                "/users/{user_id}/devices/{device_id}/disablePushAuthentication",
                post(disable_push_authentication),
            )
            .layer(Extension(shape))
            .with_state(state.clone())
    };
    Router::new()
        .nest("/oauth/api/v4", routes(Shape::V4))
        .nest("/oauth/api/v3", routes(Shape::V3))
}

impl From<EndUserError> for ApiError {
    fn from(error: EndUserError) -> Self {
        match error {
            EndUserError::Store(error) => ApiError::StoreUnavailable(error.to_string()),
        }
    }
}

/// Authenticates the client for the End User API: Basic, or `client_id`/`client_secret` in a
/// form body.
fn admit(
    state: &EndUserState,
    headers: &HeaderMap,
    body: &[u8],
    peer: SocketAddr,
) -> Result<(), ApiError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let form = if is_form {
        form_fields(body).unwrap_or_default()
    } else {
        HashMap::new()
    };
    authenticate(&state.clients, headers, &form, peer.ip(), ApiScope::EndUser)?;
    Ok(())
}

/// The reference's 204: no body, not cacheable.
fn no_content() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// The access token types the device holds: `DEFAULT` always, then one per extra authenticator.
fn token_types(device: &Device) -> Vec<&'static str> {
    let mut types = vec!["DEFAULT"];
    if device.keys.biometric.is_some() {
        types.push("FINGER_PRINT");
    }
    if device.keys.custom_authenticator.is_some() {
        types.push("CUSTOM_AUTHENTICATOR");
    }
    types
}

fn device_object(state: &EndUserState, device: &Device, shape: Shape) -> Value {
    let created = device.created_at.millis();
    let last_login = device.last_used_at.map_or(created, |t| t.millis());
    let application = state.devices.application_name(device);
    // A listed device is enrolled for mobile authentication: withdrawing that deletes it.
    match shape {
        Shape::V4 => {
            let mut object = json!({
                "id": device.id.as_str(),
                "name": device.name,
                "application": application,
                "platform": device.platform.as_str(),
                "createdAt": created,
                "lastLogin": last_login,
                "tokenTypes": token_types(device),
                "mobileAuthenticationEnabled": true,
                "pushAuthenticationEnabled": device.push.is_some(),
            });
            if let Some(model) = &device.model {
                object["model"] = json!(model);
            }
            if let Some(os_version) = &device.os_version {
                object["osVersion"] = json!(os_version);
            }
            object
        }
        Shape::V3 => json!({
            "id": device.id.as_str(),
            "name": device.name,
            "application": application,
            "platform": device.platform.as_str(),
            "created_at": created,
            "last_login": last_login,
            "token_types": token_types(device),
            "mobile_authentication_enabled": true,
            "push_authentication_enabled": device.push.is_some(),
        }),
    }
}

async fn list(
    State(state): State<Shared>,
    Extension(shape): Extension<Shape>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admit(&state, &headers, &[], peer)?;
    let devices = state.devices.list(&user_id).await?;
    if devices.is_empty() {
        return Err(ApiError::NoDevicesFound);
    }
    let objects: Vec<Value> = devices
        .iter()
        .map(|device| device_object(&state, device, shape))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({"devices": objects})))
}

async fn delete_all(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    admit(&state, &headers, &body, peer)?;
    let failed = state.devices.delete_all(&user_id).await?;
    if failed.is_empty() {
        Ok(no_content())
    } else {
        Err(ApiError::NotAllDevicesDeleted { failed })
    }
}

#[derive(Deserialize)]
struct BulkDelete {
    delete: Vec<String>,
}

async fn bulk_delete(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    admit(&state, &headers, &body, peer)?;
    let request: BulkDelete =
        serde_json::from_slice(&body).map_err(|_| ApiError::EndUserInvalidRequest {
            parameter: "delete",
        })?;
    let failed = state
        .devices
        .delete_selected(&user_id, &request.delete)
        .await;
    if failed.is_empty() {
        Ok(no_content())
    } else {
        Err(ApiError::NotAllDevicesDeleted { failed })
    }
}

async fn delete_one(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((user_id, device_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    admit(&state, &headers, &body, peer)?;
    state.devices.delete(&user_id, &device_id).await?;
    Ok(no_content())
}

async fn disable_fingerprint(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((user_id, device_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    admit(&state, &headers, &body, peer)?;
    state
        .devices
        .disable_fingerprint(&user_id, &device_id)
        .await?;
    Ok(no_content())
}

async fn disable_mobile_authentication(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((user_id, device_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    admit(&state, &headers, &body, peer)?;
    state
        .devices
        .disable_mobile_authentication(&user_id, &device_id)
        .await?;
    Ok(no_content())
}

async fn disable_push_authentication(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((user_id, device_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    admit(&state, &headers, &body, peer)?;
    state.devices.disable_push(&user_id, &device_id).await?;
    Ok(no_content())
}
