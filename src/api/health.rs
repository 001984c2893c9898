//! `GET /health` (the process answers) and `GET /ready` (the store answers too).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::service::health::Readiness;

pub async fn live() -> Response {
    (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
}

pub async fn ready(State(readiness): State<Readiness>) -> Response {
    let store = readiness.check().await;
    if store.reachable {
        let body =
            json!({"status": "ready", "store": {"backend": store.backend, "reachable": true}});
        (StatusCode::OK, Json(body)).into_response()
    } else {
        tracing::warn!(
            backend = store.backend,
            error = store.error.as_deref().unwrap_or(""),
            "readiness check failed: store unreachable"
        );
        let body = json!({"status": "unavailable", "store": {"backend": store.backend, "reachable": false}});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}
