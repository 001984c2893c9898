//! The HTTP API listener (axum, run as a pingora background service): liveness and readiness
//! now; the Onegini-compatible mobile authentication API, the device API and the admin API as
//! they arrive. DTOs and the one error-to-response table (`error`) live here.
//!
//! May import: service, domain, config, telemetry.

pub mod error;
mod health;

use axum::Router;
use axum::routing::get;

use crate::service::health::Readiness;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub readiness: Readiness,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/health", get(health::live))
        .route("/ready", get(health::ready))
        .fallback(error::not_found)
        .with_state(state)
}
