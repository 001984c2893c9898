//! The single mapping from API failures to status codes and bodies. Clients get the documented
//! generic body; the cause goes to the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Failures an API handler can end in.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound,
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "not_found", "error_description": "No such resource."})),
            )
                .into_response(),
            ApiError::StoreUnavailable(cause) => {
                tracing::error!(%cause, "store unavailable");
                let body = json!({"error": "temporarily_unavailable", "error_description": "The service is temporarily unavailable."});
                (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
            }
        }
    }
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}
