//! The HTTP API listener (axum, run as a pingora background service): liveness and readiness;
//! the Onegini-compatible mobile authentication API (init, results, SMS, availability) for v2,
//! v3 and v4 behind the `api.minimum_version` gate; the End User API's device endpoints; the
//! device protocol. DTOs and the one error-to-response table (`error`) live here.
//!
//! May import: service, domain, config, telemetry.

pub mod admin;
pub mod availability;
mod client_auth;
pub mod device;
pub mod end_user;
pub mod error;
mod health;
pub mod mobile_auth;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::settings::ApiScope;
use crate::domain::canonical::{RouterModel, canonical_path};
use crate::service::health::Readiness;

/// Form bodies of this API are small; anything larger is refused before it is read.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub readiness: Readiness,
    pub mobile_auth: Arc<mobile_auth::MobileAuthState>,
    pub device: Arc<device::DeviceApiState>,
    pub availability: Arc<availability::AvailabilityState>,
    pub end_user: Arc<end_user::EndUserState>,
    /// `api.minimum_version`: mobile authentication paths of older versions answer 4001.
    pub minimum_api_version: u8,
}

/// The whole API listener. Serve it with `into_make_service_with_connect_info::<SocketAddr>()`:
/// client network checks need the peer address.
pub fn router(state: ApiState) -> Router {
    let health = Router::new()
        .route("/health", get(health::live))
        .route("/ready", get(health::ready))
        .with_state(state.readiness.clone());
    let gate = Arc::new(VersionGate {
        minimum: state.minimum_api_version,
        mobile_auth: state.mobile_auth.clone(),
    });
    health
        .merge(mobile_auth::router(state.mobile_auth))
        .merge(availability::router(state.availability))
        .merge(device::router(state.device))
        .merge(end_user::router(state.end_user))
        .fallback(error::not_found)
        .layer(middleware::from_fn_with_state(gate, version_gate))
        .layer(middleware::from_fn(refuse_unreadable_paths))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// Refuses with 400 a path that can be read more than one way, with the proxy's rules
/// (`domain::canonical`): the API routes paths literally, so such a path could only ever be a
/// 404 here, but a front proxy or the app may read it otherwise, and every listener of the
/// gate answers it the same way.
pub async fn refuse_unreadable_paths(request: Request, next: Next) -> Response {
    match canonical_path(request.uri().path(), &RouterModel::default()) {
        Ok(_) => next.run(request).await,
        Err(why) => error::ApiError::UnreadablePath(why).into_response(),
    }
}

/// What the version gate needs: the minimum, and the clients and switch of the API it guards.
struct VersionGate {
    minimum: u8,
    mobile_auth: Arc<mobile_auth::MobileAuthState>,
}

/// The version of a mobile authentication path, `/oauth/api/v{N}/authenticate/...`.
fn mobile_auth_version(path: &str) -> Option<u8> {
    let rest = path.strip_prefix("/oauth/api/v")?;
    let (number, rest) = rest.split_once('/')?;
    if !rest.starts_with("authenticate/") && rest != "authenticate" {
        return None;
    }
    number.parse().ok()
}

/// Answers every mobile authentication path of a version below `api.minimum_version` with
/// error 4001, after the client has authenticated (so the answer tells strangers nothing) and
/// the feature switch (1000 first, as on every other path).
async fn version_gate(
    State(gate): State<Arc<VersionGate>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let Some(version) = mobile_auth_version(request.uri().path()) else {
        return next.run(request).await;
    };
    if version >= gate.minimum {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    // The request ends here, so its body is read only for form credentials; the body limit
    // is the same as the handlers'.
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .unwrap_or_default();
    let form = client_auth::form_fields(&body).unwrap_or_default();
    let refusal = match client_auth::authenticate(
        &gate.mobile_auth.clients,
        &parts.headers,
        &form,
        peer.ip(),
        ApiScope::MobileAuthentication,
    ) {
        Err(error) => error,
        Ok(_) if !gate.mobile_auth.enabled => error::ApiError::Disabled,
        Ok(_) => error::ApiError::VersionNotAllowed {
            minimum: gate.minimum,
        },
    };
    refusal.into_response()
}

#[cfg(test)]
mod tests {
    use super::mobile_auth_version;

    #[test]
    fn only_authenticate_paths_carry_a_mobile_auth_version() {
        assert_eq!(
            mobile_auth_version("/oauth/api/v2/authenticate/user"),
            Some(2)
        );
        assert_eq!(
            mobile_auth_version("/oauth/api/v3/authenticate/user/ann/enabled"),
            Some(3)
        );
        assert_eq!(mobile_auth_version("/oauth/api/v3/users/ann/devices"), None);
        assert_eq!(mobile_auth_version("/oauth/api/v3/authenticated"), None);
        assert_eq!(mobile_auth_version("/device/v1/enroll"), None);
        assert_eq!(mobile_auth_version("/oauth/api/vx/authenticate/user"), None);
    }
}
