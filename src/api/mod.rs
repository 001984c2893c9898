//! The HTTP API listener (axum, run as a pingora background service): liveness and readiness
//! now; the Onegini-compatible mobile authentication API, the device API and the admin API as
//! they arrive. DTOs and the one error-to-response table (`error`) live here.
//!
//! May import: service, domain, config, telemetry.

mod client_auth;
pub mod device;
pub mod error;
mod health;
pub mod mobile_auth;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

use crate::service::health::Readiness;

/// Form bodies of this API are small; anything larger is refused before it is read.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub readiness: Readiness,
    pub mobile_auth: Arc<mobile_auth::MobileAuthState>,
    pub device: Arc<device::DeviceApiState>,
}

/// The whole API listener. Serve it with `into_make_service_with_connect_info::<SocketAddr>()`:
/// client network checks need the peer address.
pub fn router(state: ApiState) -> Router {
    let health = Router::new()
        .route("/health", get(health::live))
        .route("/ready", get(health::ready))
        .with_state(state.readiness.clone());
    health
        .merge(mobile_auth::router(state.mobile_auth))
        .merge(device::router(state.device))
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}
