//! The single mapping from API failures to status codes and bodies: the OAuth shape
//! (`error`, `error_description`) for client authentication and "no possibilities", the
//! reference's numeric shape (`error_code`, `description`) for everything else on the mobile
//! authentication API, and the End User API's own shapes (`{"error":"No devices found"}`,
//! `{"code","message","details"}`) on its device paths. Every answer
//! carries the reference's no-cache headers. Clients get the documented generic text; the cause
//! goes to the log.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::domain::canonical::Unreadable;
use crate::domain::guard::Block;

/// Failures an API handler can end in.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound,
    /// The path can be read more than one way (encoded slash or NUL, backslash, dot segments
    /// above the root...): refused on every listener, as the proxy refuses it.
    #[error("unreadable path: {0}")]
    UnreadablePath(Unreadable),
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    #[error("client authentication failed: {0}")]
    InvalidClient(&'static str),
    #[error("mobile authentication disabled")]
    Disabled,
    #[error("no authentication possibilities")]
    NoAuthenticationPossibilities,
    #[error("invalid or missing parameter: {0}")]
    InvalidParameter(String),
    #[error("message too long")]
    MessageTooLong,
    #[error("phone number missing")]
    PhoneNumberMissing,
    /// The SMS-pumping guard refuses the destination (3008).
    #[error("phone number is not an allowed SMS destination: {0}")]
    DestinationRefused(String),
    #[error("sms not sent: {0}")]
    SmsNotSent(String),
    #[error("push not sent: {0}")]
    PushNotSent(String),
    #[error("verification code invalid")]
    InvalidCode,
    #[error("invalid transaction")]
    InvalidTransaction,
    #[error("auth type not found")]
    TypeNotFound,
    #[error("resend limit reached")]
    ResendLimit,
    /// The account guard refused: locked after consecutive failures (3007), or push held back
    /// for the user (1006), until `retry_after`.
    #[error("refused by the account guard: {}", .0.block.as_str())]
    Guarded(crate::service::guard::Refused),
    #[error("rate limited by {limit}")]
    RateLimited {
        limit: &'static str,
        retry_after: Duration,
    },
    /// A mobile authentication path of a version below `api.minimum_version` (4001).
    #[error("API version below the configured minimum {minimum}")]
    VersionNotAllowed { minimum: u8 },
    /// End User API: the user has no devices (or is unknown).
    #[error("no devices found")]
    NoDevicesFound,
    /// End User API: a parameter is missing or malformed (`details` names it).
    #[error("invalid request parameter '{parameter}'")]
    EndUserInvalidRequest { parameter: &'static str },
    /// End User API: a bulk delete left these device ids in place.
    #[error("{} devices not deleted", failed.len())]
    NotAllDevicesDeleted { failed: Vec<String> },
}

/// A JSON response with the headers every mobile-authentication answer carries.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// `Retry-After` in whole seconds (rounded up, at least 1).
pub fn retry_after_value(after: Duration) -> Option<HeaderValue> {
    let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    HeaderValue::from_str(&seconds.max(1).to_string()).ok()
}

fn numeric(status: StatusCode, code: &str, description: &str) -> Response {
    json_response(
        status,
        &json!({"error_code": code, "description": description}),
    )
}

fn oauth(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::StoreUnavailable(_)
            | ApiError::SmsNotSent(_)
            | ApiError::PushNotSent(_)
            | ApiError::NotAllDevicesDeleted { .. } => {
                tracing::error!(error = %self, "request failed")
            }
            ApiError::InvalidClient(_) | ApiError::InvalidParameter(_) => {
                tracing::info!(error = %self, "request refused")
            }
            _ => tracing::debug!(error = %self, "request refused"),
        }
        match self {
            ApiError::NotFound => oauth(StatusCode::NOT_FOUND, "not_found", "No such resource."),
            ApiError::UnreadablePath(why) => oauth(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("The request could not be read: {why}."),
            ),
            ApiError::StoreUnavailable(_) => oauth(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "The service is temporarily unavailable.",
            ),
            ApiError::InvalidClient(_) => oauth(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed (e.g., unknown client, no client authentication included, or unsupported authentication method).",
            ),
            ApiError::Disabled => numeric(
                StatusCode::NOT_FOUND,
                "1000",
                "Mobile authentication disabled",
            ),
            ApiError::NoAuthenticationPossibilities => oauth(
                StatusCode::NOT_FOUND,
                "not_found",
                "No authentication possibilities for user/application or user not found.",
            ),
            ApiError::InvalidParameter(_) => numeric(
                StatusCode::BAD_REQUEST,
                "1003",
                "A request parameter is invalid or missing",
            ),
            ApiError::MessageTooLong => {
                numeric(StatusCode::BAD_REQUEST, "1005", "Message content too long")
            }
            ApiError::PhoneNumberMissing => {
                numeric(StatusCode::BAD_REQUEST, "3001", "Phone number missing")
            }
            ApiError::DestinationRefused(_) => numeric(
                StatusCode::BAD_REQUEST,
                "3008",
                "Phone number is not an allowed SMS destination",
            ),
            ApiError::SmsNotSent(_) => numeric(
                StatusCode::SERVICE_UNAVAILABLE,
                "3002",
                "Failed to send SMS",
            ),
            ApiError::PushNotSent(_) => numeric(
                StatusCode::SERVICE_UNAVAILABLE,
                "1002",
                "Failed to initiate authentication at authentication provider",
            ),
            ApiError::InvalidCode => numeric(
                StatusCode::NOT_FOUND,
                "3003",
                "Failed to authenticate, verification code invalid",
            ),
            ApiError::InvalidTransaction => {
                numeric(StatusCode::NOT_FOUND, "3004", "Invalid transaction id")
            }
            ApiError::TypeNotFound => numeric(
                StatusCode::NOT_FOUND,
                "3005",
                "Mobile authentication type not found",
            ),
            ApiError::ResendLimit => numeric(StatusCode::FORBIDDEN, "3006", "Resend limit reached"),
            ApiError::RateLimited { retry_after, .. } => {
                let mut response = oauth(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_requests",
                    "Too many requests; retry later.",
                );
                if let Some(value) = retry_after_value(retry_after) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
            ApiError::Guarded(refused) => {
                let mut response = match refused.block {
                    Block::Locked { .. } => numeric(
                        StatusCode::TOO_MANY_REQUESTS,
                        "3007",
                        "Account locked after too many failed authentications",
                    ),
                    Block::PushReported { .. } | Block::PushFatigue { .. } => numeric(
                        StatusCode::TOO_MANY_REQUESTS,
                        "1006",
                        "Push authentication temporarily held back for this user",
                    ),
                    Block::Busy { .. } => oauth(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_requests",
                        "Too many requests; retry later.",
                    ),
                    Block::TooManyPending { .. } | Block::TooManyHeld { .. } => oauth(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_pending",
                        "Too many authentications pending for this user; finish or wait for one.",
                    ),
                };
                if let Some(value) = retry_after_value(refused.retry_after) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
            ApiError::VersionNotAllowed { minimum } => numeric(
                StatusCode::NOT_FOUND,
                "4001",
                &format!(
                    "Server configuration mandates use of API version {minimum} and above for mobile authentication"
                ),
            ),
            ApiError::NoDevicesFound => {
                json_response(StatusCode::NOT_FOUND, &json!({"error": "No devices found"}))
            }
            ApiError::EndUserInvalidRequest { parameter } => json_response(
                StatusCode::BAD_REQUEST,
                &json!({
                    "code": "invalid_request",
                    "message": "One or more parameters is missing or incorrect.",
                    "details": [parameter],
                }),
            ),
            ApiError::NotAllDevicesDeleted { failed } => {
                let details: Vec<Value> = failed
                    .iter()
                    .map(|id| {
                        json!({
                            "id": id,
                            "status": {
                                "code": "device_not_deleted",
                                "message": "The device could not be deleted.",
                                "details": [],
                            },
                        })
                    })
                    .collect();
                json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({
                        "code": "not_all_devices_deleted",
                        "message": "Some of the devices could not be deleted.",
                        "details": details,
                    }),
                )
            }
        }
    }
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}
