//! The device protocol's HTTP side (`docs/device-protocol.md`): enrollment, push registration,
//! the pending list, once-only transaction details and answers, and scanned OTP codes, under
//! `/device/v1`. Every call
//! but enrollment is verified as a signed request before anything else happens. Errors are
//! `{"error","error_description"}` with the statuses the protocol lists.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::json_response;
use crate::domain::auth_type::NumberMatching;
use crate::domain::device::{Authenticator, DeviceKeys, Platform};
use crate::domain::transaction::{Status, TransactionId};
use crate::service::devices::{DeviceError, DeviceService, EnrollRequest, SignedRequest};
use crate::service::otp::{OtpError, OtpService};
use crate::service::push::{Answer, PushService, PushServiceError};

pub struct DeviceApiState {
    pub devices: DeviceService,
    pub push: PushService,
    pub otp: OtpService,
}

type Shared = Arc<DeviceApiState>;

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/device/v1/enroll", post(enroll))
        .route(
            "/device/v1/push-registration",
            put(register_push).delete(unregister_push),
        )
        .route("/device/v1/transactions", get(pending))
        .route("/device/v1/transactions/{id}", get(details))
        .route("/device/v1/transactions/{id}/answer", post(answer))
        .route("/device/v1/otp", post(submit_otp))
        .with_state(state)
}

/// Failures of the device API, each with its documented status and `error` word.
#[derive(Debug, thiserror::Error)]
pub enum DeviceApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("invalid enrollment code")]
    InvalidCode,
    #[error("key enrollment is disabled")]
    EnrollmentDisabled,
    #[error("push enrollment is disabled")]
    PushEnrollmentDisabled,
    #[error("unknown application")]
    UnknownApplication,
    #[error("invalid signature")]
    InvalidSignature,
    #[error("another device holds the push registration for this application")]
    AlreadyEnrolled,
    #[error("the token is registered to another device")]
    TokenInUse,
    #[error("unknown transaction")]
    UnknownTransaction,
    #[error("the details were already fetched")]
    AlreadyFetched,
    #[error("the transaction is {0}")]
    NotPending(Status),
    #[error("wrong PIN")]
    InvalidPin { remaining: Option<u32> },
    #[error("wrong OTP code")]
    InvalidOtp { remaining: Option<u32> },
    #[error("the device was disconnected after too many wrong PINs")]
    Disconnected,
    /// The user's account is locked by the account guard: nothing is approved until it opens.
    #[error("the account is locked after too many failed authentications")]
    AccountLocked(crate::service::guard::Refused),
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl IntoResponse for DeviceApiError {
    fn into_response(self) -> Response {
        let (status, error) = match &self {
            DeviceApiError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            DeviceApiError::InvalidCode => (StatusCode::UNAUTHORIZED, "invalid_code"),
            DeviceApiError::EnrollmentDisabled => (StatusCode::FORBIDDEN, "enrollment_disabled"),
            DeviceApiError::PushEnrollmentDisabled => {
                (StatusCode::FORBIDDEN, "push_enrollment_disabled")
            }
            DeviceApiError::UnknownApplication => (StatusCode::NOT_FOUND, "unknown_application"),
            DeviceApiError::InvalidSignature => (StatusCode::UNAUTHORIZED, "invalid_signature"),
            DeviceApiError::AlreadyEnrolled => (StatusCode::CONFLICT, "already_enrolled"),
            DeviceApiError::TokenInUse => (StatusCode::CONFLICT, "token_in_use"),
            DeviceApiError::UnknownTransaction => (StatusCode::NOT_FOUND, "unknown_transaction"),
            DeviceApiError::AlreadyFetched => (StatusCode::GONE, "already_fetched"),
            DeviceApiError::NotPending(_) => (StatusCode::CONFLICT, "not_pending"),
            DeviceApiError::InvalidPin { .. } => (StatusCode::UNAUTHORIZED, "invalid_pin"),
            DeviceApiError::InvalidOtp { .. } => (StatusCode::UNAUTHORIZED, "invalid_otp"),
            DeviceApiError::Disconnected => (StatusCode::FORBIDDEN, "device_disconnected"),
            DeviceApiError::AccountLocked(refused) if !refused.is_lock_of_account() => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_requests")
            }
            DeviceApiError::AccountLocked(_) => (StatusCode::TOO_MANY_REQUESTS, "account_locked"),
            DeviceApiError::Unavailable(cause) => {
                tracing::warn!(cause = %cause, "device API: store unavailable");
                (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
            }
        };
        let description = match &self {
            DeviceApiError::Unavailable(_) => "The service is temporarily unavailable.".to_owned(),
            other => other.to_string(),
        };
        let mut body = json!({"error": error, "error_description": description});
        if let DeviceApiError::InvalidPin { remaining } | DeviceApiError::InvalidOtp { remaining } =
            self
        {
            body["remaining_attempts"] = json!(remaining);
        }
        let mut response = json_response(status, &body);
        if let DeviceApiError::AccountLocked(refused) = self
            && let Some(value) = super::error::retry_after_value(refused.retry_after)
        {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<DeviceError> for DeviceApiError {
    fn from(error: DeviceError) -> Self {
        match error {
            DeviceError::EnrollmentDisabled => DeviceApiError::EnrollmentDisabled,
            DeviceError::PushEnrollmentDisabled => DeviceApiError::PushEnrollmentDisabled,
            DeviceError::InvalidCode => DeviceApiError::InvalidCode,
            DeviceError::UnknownApplication(_) => DeviceApiError::UnknownApplication,
            DeviceError::InvalidRequest(what) => DeviceApiError::InvalidRequest(what),
            DeviceError::InvalidSignature => DeviceApiError::InvalidSignature,
            DeviceError::AlreadyEnrolled => DeviceApiError::AlreadyEnrolled,
            DeviceError::TokenInUse => DeviceApiError::TokenInUse,
            DeviceError::Store(error) => DeviceApiError::Unavailable(error.to_string()),
        }
    }
}

impl From<PushServiceError> for DeviceApiError {
    fn from(error: PushServiceError) -> Self {
        match error {
            PushServiceError::UnknownTransaction => DeviceApiError::UnknownTransaction,
            PushServiceError::AlreadyFetched => DeviceApiError::AlreadyFetched,
            PushServiceError::NotPending(status) => DeviceApiError::NotPending(status),
            PushServiceError::InvalidAnswer(what) => DeviceApiError::InvalidRequest(what),
            PushServiceError::InvalidSignature => DeviceApiError::InvalidSignature,
            PushServiceError::WrongPin { remaining } => DeviceApiError::InvalidPin { remaining },
            PushServiceError::Disconnected => DeviceApiError::Disconnected,
            PushServiceError::Store(error) => DeviceApiError::Unavailable(error.to_string()),
            PushServiceError::Blocked(refused) => DeviceApiError::AccountLocked(refused),
            other => DeviceApiError::InvalidRequest(other.to_string()),
        }
    }
}

impl From<OtpError> for DeviceApiError {
    fn from(error: OtpError) -> Self {
        match error {
            OtpError::InvalidCode(error) => DeviceApiError::InvalidRequest(error.to_string()),
            OtpError::UnknownTransaction => DeviceApiError::UnknownTransaction,
            OtpError::NotPending(status) => DeviceApiError::NotPending(status),
            OtpError::WrongCode { remaining } => DeviceApiError::InvalidOtp { remaining },
            OtpError::Blocked(refused) => DeviceApiError::AccountLocked(refused),
            OtpError::Store(error) => DeviceApiError::Unavailable(error.to_string()),
        }
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, DeviceApiError> {
    serde_json::from_slice(body).map_err(|err| {
        DeviceApiError::InvalidRequest(format!("body is not the expected JSON: {err}"))
    })
}

/// A device request whose signature verified: the device and the body it signed. Extracting it
/// checks the signature headers against the exact method, path, query and body, before the
/// handler sees anything.
struct Signed {
    device: crate::domain::device::Device,
    body: Bytes,
}

impl FromRequest<Shared> for Signed {
    type Rejection = Response;

    async fn from_request(request: Request, state: &Shared) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let body = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .ok_or(DeviceApiError::InvalidSignature)
        };
        // The routes are mounted at their full paths (not nested), so this is the path as sent.
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
        let signed = async {
            let request = SignedRequest {
                device_id: header("stepgate-device-id")?,
                timestamp: header("stepgate-timestamp")?,
                nonce: header("stepgate-nonce")?,
                signature: header("stepgate-signature")?,
                method: parts.method.as_str(),
                path_and_query,
                body: &body,
            };
            Ok::<_, DeviceApiError>(state.devices.authenticate(request).await?)
        };
        match signed.await {
            Ok(device) => Ok(Self { device, body }),
            Err(error) => Err(error.into_response()),
        }
    }
}

#[derive(Deserialize)]
struct EnrollBody {
    code: String,
    application: String,
    #[serde(default)]
    name: Option<String>,
    platform: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    os_version: Option<String>,
    keys: DeviceKeys,
    proof: String,
}

async fn enroll(State(state): State<Shared>, body: Bytes) -> Result<Response, DeviceApiError> {
    let body: EnrollBody = parse_json(&body)?;
    let platform: Platform =
        body.platform
            .parse()
            .map_err(|err: crate::domain::device::UnknownPlatform| {
                DeviceApiError::InvalidRequest(err.to_string())
            })?;
    let request = EnrollRequest {
        code: body.code,
        name: body.name.unwrap_or_else(|| format!("{} device", platform)),
        application: body.application,
        platform,
        model: body.model,
        os_version: body.os_version,
        keys: body.keys,
        proof: body.proof,
    };
    let enrolled = state.devices.enroll(request).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "device_id": enrolled.device.id,
            "user_id": enrolled.device.user_id,
            "server_public_key": URL_SAFE_NO_PAD.encode(&enrolled.server_public_key.0),
        }),
    ))
}

#[derive(Deserialize)]
struct PushRegistrationBody {
    application: String,
    version: String,
    platform: String,
    token: String,
}

async fn register_push(
    State(state): State<Shared>,
    Signed { device, body }: Signed,
) -> Result<Response, DeviceApiError> {
    let body: PushRegistrationBody = parse_json(&body)?;
    let platform: Platform =
        body.platform
            .parse()
            .map_err(|err: crate::domain::device::UnknownPlatform| {
                DeviceApiError::InvalidRequest(err.to_string())
            })?;
    let replaced = state
        .devices
        .register_push(
            &device,
            &body.application,
            &body.version,
            platform,
            &body.token,
        )
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"registered": true, "replaced_device_ids": replaced}),
    ))
}

async fn unregister_push(
    State(state): State<Shared>,
    Signed { device, .. }: Signed,
) -> Result<Response, DeviceApiError> {
    state.devices.drop_push(&device).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn transaction_summary(tx: &crate::domain::transaction::Transaction) -> Value {
    json!({
        "transaction_id": tx.id.to_string(),
        "auth_method": tx.method.as_str(),
        "message": tx.details.message,
        "expires_at": tx.expires_at.millis(),
    })
}

async fn pending(
    State(state): State<Shared>,
    Signed { device, .. }: Signed,
) -> Result<Response, DeviceApiError> {
    let pending = state.push.pending(&device).await?;
    let list: Vec<Value> = pending.iter().map(transaction_summary).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"transactions": list}),
    ))
}

fn transaction_id(text: &str) -> Result<TransactionId, DeviceApiError> {
    text.parse().map_err(|_| DeviceApiError::UnknownTransaction)
}

async fn details(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Signed { device, .. }: Signed,
) -> Result<Response, DeviceApiError> {
    let details = state.push.details(&device, &transaction_id(&id)?).await?;
    let mut answer = transaction_summary(&details.transaction);
    answer["number_choices"] = json!(details.number_choices);
    answer["number_matching"] = json!(
        details
            .transaction
            .number_matching()
            .map(NumberMatching::as_str)
    );
    answer["encrypted"] = json!(details.sealed);
    Ok(json_response(StatusCode::OK, &answer))
}

#[derive(Deserialize)]
struct AnswerBody {
    decision: String,
    #[serde(default)]
    number: Option<u8>,
    #[serde(default)]
    authenticator: Option<Authenticator>,
    #[serde(default)]
    authenticator_signature: Option<String>,
    #[serde(default)]
    signing_signature: Option<String>,
    /// With `deny`: "this wasn't me".
    #[serde(default)]
    report: bool,
}

async fn answer(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Signed { device, body }: Signed,
) -> Result<Response, DeviceApiError> {
    let body: AnswerBody = parse_json(&body)?;
    let approve = match body.decision.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return Err(DeviceApiError::InvalidRequest(format!(
                "decision '{other}' (expected approve or deny)"
            )));
        }
    };
    let id = transaction_id(&id)?;
    let status = state
        .push
        .answer(
            &device,
            &id,
            Answer {
                approve,
                report: body.report,
                number: body.number,
                authenticator: body.authenticator.unwrap_or(Authenticator::Device),
                authenticator_signature: body.authenticator_signature,
                signing_signature: body.signing_signature,
            },
        )
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"transaction_id": id.to_string(), "status": status.as_str()}),
    ))
}

#[derive(Deserialize)]
struct OtpBody {
    /// The scanned code, or the deep link that carried it.
    otp: String,
    decision: String,
}

/// The phone submits a scanned OTP code, signed: the transaction is linked to the device's user
/// and approved or denied.
async fn submit_otp(
    State(state): State<Shared>,
    Signed { device, body }: Signed,
) -> Result<Response, DeviceApiError> {
    let body: OtpBody = parse_json(&body)?;
    let approve = match body.decision.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return Err(DeviceApiError::InvalidRequest(format!(
                "decision '{other}' (expected approve or deny)"
            )));
        }
    };
    let submitted = state.otp.submit(&device, &body.otp, approve).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "transaction_id": submitted.transaction_id.to_string(),
            "status": submitted.status.as_str(),
            "message": submitted.message,
        }),
    ))
}
