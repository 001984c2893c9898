//! The Onegini-compatible mobile authentication API (v3 and v4 paths): init, SMS verify and SMS
//! resend. Bodies are form-encoded, answers JSON; every call first authenticates the API client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use super::client_auth::authenticate;
use super::error::{ApiError, json_response};
use crate::config::settings::{ApiClient, ApiScope};
use crate::domain::auth_type::{AuthTypes, Method};
use crate::domain::ports::StoreError;
use crate::domain::regulation::{ResendOutcome, VerifyOutcome};
use crate::domain::sms::normalize_phone_number;
use crate::domain::transaction::TransactionId;
use crate::service::sms::{SmsError, SmsService, SmsStart};
use crate::service::transactions::EngineError;

/// What the mobile authentication endpoints need.
pub struct MobileAuthState {
    pub enabled: bool,
    pub clients: Vec<ApiClient>,
    pub auth_types: AuthTypes,
    pub max_message_length: usize,
    pub sms: SmsService,
}

type Shared = Arc<MobileAuthState>;

/// Mounted under `/oauth/api/v4` and `/oauth/api/v3`.
pub fn router(state: Shared) -> Router {
    let routes = Router::new()
        .route("/authenticate/user", post(init))
        .route("/authenticate/user/{user_id}/sms", post(verify_sms))
        .route("/authenticate/user/{user_id}/sms/resend", post(resend_sms))
        .with_state(state);
    Router::new()
        .nest("/oauth/api/v4", routes.clone())
        .nest("/oauth/api/v3", routes)
}

/// The form fields, lenient like the reference: unknown fields are ignored, the last of a
/// repeated field wins, empty values count as absent.
fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|_| ApiError::InvalidParameter("body is not form-encoded".into()))?;
    Ok(pairs
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .collect())
}

/// Authenticates the client and the feature switch, and returns the form.
fn admit(
    state: &MobileAuthState,
    headers: &HeaderMap,
    body: &[u8],
    peer: SocketAddr,
) -> Result<HashMap<String, String>, ApiError> {
    // Credentials may be in the form, so a body that does not parse is still a client error first.
    let parsed = parse_form(body);
    let empty = HashMap::new();
    authenticate(
        &state.clients,
        headers,
        parsed.as_ref().unwrap_or(&empty),
        peer.ip(),
        ApiScope::MobileAuthentication,
    )?;
    if !state.enabled {
        return Err(ApiError::Disabled);
    }
    parsed
}

fn store_error(error: StoreError) -> ApiError {
    ApiError::StoreUnavailable(error.to_string())
}

impl From<SmsError> for ApiError {
    fn from(error: SmsError) -> Self {
        match error {
            SmsError::RateLimited { limit, retry_after } => {
                ApiError::RateLimited { limit, retry_after }
            }
            SmsError::MissingMessage => {
                ApiError::InvalidParameter("message missing and no default message".into())
            }
            SmsError::SendFailed(cause) => ApiError::SmsNotSent(cause.to_string()),
            SmsError::Engine(EngineError::UnknownTransaction) => ApiError::InvalidTransaction,
            SmsError::Engine(EngineError::Store(error)) => store_error(error),
        }
    }
}

async fn init(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let form = admit(&state, &headers, &body, peer)?;
    let type_name = form
        .get("type")
        .ok_or_else(|| ApiError::InvalidParameter("type missing".into()))?;
    if state.auth_types.get(type_name).is_none() {
        return Err(ApiError::TypeNotFound);
    }
    if let Some(message) = form.get("message")
        && message.chars().count() > state.max_message_length
    {
        return Err(ApiError::MessageTooLong);
    }
    // Push types fall back along their chain when they cannot start; no phone is enrolled for
    // push yet, so the first SMS type in the chain is the one that can.
    let chain = state.auth_types.fallback_chain(type_name);
    let auth_type = chain
        .iter()
        .find(|t| t.method == Method::Sms)
        .ok_or(ApiError::NoAuthenticationPossibilities)?;

    let user_id = form
        .get("user_id")
        .ok_or_else(|| ApiError::InvalidParameter("user_id missing".into()))?;
    let phone = form
        .get("phone_number")
        .ok_or(ApiError::PhoneNumberMissing)?;
    let phone = normalize_phone_number(phone)
        .ok_or_else(|| ApiError::InvalidParameter("phone_number is not +E.164".into()))?;
    let request = SmsStart {
        user_id: user_id.clone(),
        phone_number: phone,
        message: form.get("message").cloned(),
        language: form
            .get("language_code")
            .map(|code| code.to_ascii_lowercase()),
    };
    let tx = state.sms.start(auth_type, request).await?;
    let ttl = tx
        .expires_at
        .millis()
        .saturating_sub(tx.created_at.millis());
    let body = json!({"transaction_id": tx.id.to_string(), "auth_method": tx.method.as_str(), "time_to_live": ttl});
    Ok(json_response(StatusCode::OK, &body))
}

fn transaction_id(form: &HashMap<String, String>) -> Result<TransactionId, ApiError> {
    let text = form
        .get("transaction_id")
        .ok_or_else(|| ApiError::InvalidParameter("transaction_id missing".into()))?;
    // A malformed id names no transaction: the same answer as an unknown one.
    text.parse().map_err(|_| ApiError::InvalidTransaction)
}

async fn verify_sms(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let form = admit(&state, &headers, &body, peer)?;
    let id = transaction_id(&form)?;
    let code = form.get("sms_code").map(String::as_str).unwrap_or_default();
    match state.sms.verify(&id, &user_id, code).await? {
        VerifyOutcome::Approved { .. } => Ok(json_response(
            StatusCode::OK,
            &json!({"transaction_id": id.to_string()}),
        )),
        VerifyOutcome::WrongCode { .. } | VerifyOutcome::Exhausted { .. } => {
            Err(ApiError::InvalidCode)
        }
        VerifyOutcome::Expired | VerifyOutcome::NotPending(_) | VerifyOutcome::NoCode => {
            Err(ApiError::InvalidTransaction)
        }
    }
}

async fn resend_sms(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let form = admit(&state, &headers, &body, peer)?;
    let id = transaction_id(&form)?;
    match state.sms.resend(&id, &user_id).await? {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(ResendOutcome::Disabled | ResendOutcome::LimitReached) => Err(ApiError::ResendLimit),
        Err(
            ResendOutcome::Expired | ResendOutcome::NotPending(_) | ResendOutcome::Resent { .. },
        ) => Err(ApiError::InvalidTransaction),
    }
}
