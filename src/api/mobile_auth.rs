//! The Onegini-compatible mobile authentication API (v2, v3 and v4 paths): init (push types on
//! a device (v4), an application (v3) or the single push enrollment (v2), falling back along the type's chain, and SMS), the result of push
//! transactions, SMS verify and resend, and enrollment codes for the End User API. Bodies are
//! form-encoded, answers JSON; every call first authenticates the API client.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::client_auth::{authenticate, form_fields};
use super::error::{ApiError, json_response};
use crate::config::settings::{ApiClient, ApiScope, CallbackSettings};
use crate::domain::address;
use crate::domain::auth_type::{AuthTypes, Method, NumberMatching};
use crate::domain::callback;
use crate::domain::device::PushEnrollmentMode;
use crate::domain::ports::StoreError;
use crate::domain::regulation::{ResendOutcome, VerifyOutcome};
use crate::domain::sms::normalize_phone_number;
use crate::domain::transaction::{Owner, TransactionId};
use crate::service::otp::{OtpError, OtpService, OtpStart, SecretSource};
use crate::service::push::{PushService, PushServiceError, PushStart, PushTarget};
use crate::service::sms::{SmsError, SmsService, SmsStart};
use crate::service::transactions::EngineError;

/// What the mobile authentication endpoints need.
pub struct MobileAuthState {
    pub enabled: bool,
    pub clients: Vec<ApiClient>,
    pub auth_types: AuthTypes,
    pub max_message_length: usize,
    pub sms: SmsService,
    pub push: PushService,
    pub otp: OtpService,
    pub callbacks: CallbackSettings,
    /// Where enrollment QR codes are served from (the API's public URL).
    pub public_url: url::Url,
    /// Adds the sign-in's device and location to the secure message (v4 init with
    /// `ip_address`/`user_agent`); `None` while `features.geolocation` is off.
    pub secure_context: Option<Arc<dyn crate::domain::context::SecureMessageContext>>,
    /// `api.trusted_proxies`: whose `X-Forwarded-For` names the end user.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

type Shared = Arc<MobileAuthState>;

/// Which API version a route was reached by: it decides how push targets are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiVersion {
    /// The user's single push enrollment: no target parameter.
    V2,
    V3,
    V4,
}

/// Mounted under `/oauth/api/v4`, `/oauth/api/v3` and `/oauth/api/v2`.
pub fn router(state: Shared) -> Router {
    let routes = |version: ApiVersion| {
        Router::new()
            .route("/authenticate/user", post(init))
            .route("/authenticate/transaction/{transaction_id}", get(result))
            .route("/authenticate/user/{user_id}/sms", post(verify_sms))
            .route("/authenticate/user/{user_id}/sms/resend", post(resend_sms))
            .route(
                "/authenticate/user/{user_id}/push/resend",
                post(resend_push),
            )
            .layer(Extension(version))
            .with_state(state.clone())
    };
    let enrollment = Router::new()
        .route(
            "/oauth/api/v4/users/{user_id}/enrollment-codes",
            post(create_enrollment_code),
        )
        .route(
            "/oauth/api/v4/users/{user_id}/enrollment-codes/qr.svg",
            get(enrollment_qr),
        )
        .with_state(state.clone());
    Router::new()
        .nest("/oauth/api/v4", routes(ApiVersion::V4))
        .nest("/oauth/api/v3", routes(ApiVersion::V3))
        .nest("/oauth/api/v2", routes(ApiVersion::V2))
        .merge(enrollment)
}

/// The form fields, lenient like the reference: unknown fields are ignored, the last of a
/// repeated field wins, empty values count as absent.
fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, ApiError> {
    form_fields(body).ok_or_else(|| ApiError::InvalidParameter("body is not form-encoded".into()))
}

/// A call whose client is authenticated: the form and who sent it.
struct Admitted {
    form: HashMap<String, String>,
    /// The authenticated API client: the only one that may act on the transactions it starts.
    client_id: String,
    /// The end user's address, when a trusted proxy forwarded it (`api.trusted_proxies`); a
    /// portal calling directly is no end user, so then `None`.
    client_ip: Option<IpAddr>,
}

impl Admitted {
    /// `user_id`, acting through this client.
    fn owner<'a>(&'a self, user_id: &'a str) -> Owner<'a> {
        Owner::through_client(user_id, &self.client_id)
    }
}

/// Authenticates the client and the feature switch, and returns the form.
fn admit(
    state: &MobileAuthState,
    headers: &HeaderMap,
    body: &[u8],
    peer: SocketAddr,
) -> Result<Admitted, ApiError> {
    admit_for(state, headers, body, peer, ApiScope::MobileAuthentication)
}

fn admit_for(
    state: &MobileAuthState,
    headers: &HeaderMap,
    body: &[u8],
    peer: SocketAddr,
    scope: ApiScope,
) -> Result<Admitted, ApiError> {
    // Credentials may be in the form, so a body that does not parse is still a client error first.
    let parsed = parse_form(body);
    let empty = HashMap::new();
    let client = authenticate(
        &state.clients,
        headers,
        parsed.as_ref().unwrap_or(&empty),
        peer.ip(),
        scope,
    )?;
    if !state.enabled {
        return Err(ApiError::Disabled);
    }
    // Only an address a trusted proxy forwarded names an end user; the proxy's own address
    // (no forwarded hop, or only trusted ones) is none.
    let client_ip = address::is_trusted(peer.ip(), &state.trusted_proxies)
        .then(|| {
            let forwarded = headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|value| value.to_str().ok());
            address::client_behind(peer.ip(), forwarded, &state.trusted_proxies)
        })
        .filter(|ip| !address::is_trusted(*ip, &state.trusted_proxies));
    Ok(Admitted {
        form: parsed?,
        client_id: client.client_id.clone(),
        client_ip,
    })
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
            SmsError::DestinationRefused(refused) => {
                ApiError::DestinationRefused(refused.to_string())
            }
            SmsError::ResendInProgress => ApiError::RateLimited {
                limit: "resend_in_progress",
                retry_after: std::time::Duration::from_secs(1),
            },
            SmsError::Engine(EngineError::UnknownTransaction) => ApiError::InvalidTransaction,
            SmsError::Engine(EngineError::Blocked(refused)) => ApiError::Guarded(refused),
            SmsError::Engine(EngineError::Store(error)) => store_error(error),
        }
    }
}

async fn init(
    State(state): State<Shared>,
    Extension(version): Extension<ApiVersion>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let admitted = admit(&state, &headers, &body, peer)?;
    let form = &admitted.form;
    let client_id = admitted.client_id.as_str();
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
    // Multiple push devices per application are a v4 feature: v2 and v3 cannot name one of
    // them, so their push types answer 404 (SMS types keep working).
    if version != ApiVersion::V4
        && state.push.devices().rules().mode == PushEnrollmentMode::Multiple
        && state
            .auth_types
            .get(type_name)
            .is_some_and(|t| t.method.is_push())
    {
        return Err(ApiError::NotFound);
    }
    // The type and its fallbacks, in order: the first that can start for this user wins
    // (a push type needs a device that can answer it and a push that goes out).
    let chain = state.auth_types.fallback_chain(type_name);
    let mut push_failure = None;
    let mut push_held_back = None;
    for auth_type in chain {
        if auth_type.method.is_push() {
            match start_push(&state, version, auth_type, form, client_id).await {
                Ok(response) => return Ok(response),
                // A locked account starts nothing; push held back for the user falls back.
                Err(PushServiceError::Blocked(refused)) if refused.is_lock() => {
                    return Err(ApiError::Guarded(refused));
                }
                Err(PushServiceError::Blocked(refused)) => {
                    push_held_back = Some(refused);
                    continue;
                }
                Err(PushServiceError::NoDevice | PushServiceError::Disabled) => continue,
                Err(PushServiceError::SendFailed(error)) => {
                    push_failure = Some(error.to_string());
                    continue;
                }
                Err(PushServiceError::MissingMessage) => {
                    return Err(ApiError::InvalidParameter(
                        "message missing and no default message".into(),
                    ));
                }
                Err(PushServiceError::Store(error)) => return Err(store_error(error)),
                Err(other) => return Err(ApiError::InvalidParameter(other.to_string())),
            }
        }
        if auth_type.method == Method::Sms {
            return start_sms(&state, auth_type, form, client_id, admitted.client_ip).await;
        }
        if auth_type.method == Method::Otp {
            return start_otp(&state, auth_type, form, client_id).await;
        }
    }
    Err(match (push_held_back, push_failure) {
        (Some(refused), _) => ApiError::Guarded(refused),
        (None, Some(cause)) => ApiError::PushNotSent(cause),
        (None, None) => ApiError::NoAuthenticationPossibilities,
    })
}

/// Checks `callback_uri` against the exact-match list when that is on.
fn check_callback(state: &MobileAuthState, uri: &str) -> Result<(), ApiError> {
    let parsed = url::Url::parse(uri)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https"))
        .ok_or_else(|| ApiError::InvalidParameter("callback_uri is not an http(s) URL".into()))?;
    let configured = state
        .callbacks
        .endpoints
        .iter()
        .any(|endpoint| endpoint.url == parsed);
    if state.callbacks.only_allow_configured && !configured {
        return Err(ApiError::InvalidParameter(
            "callback_uri is not a configured callback endpoint".into(),
        ));
    }
    // A literal internal address is refused at once; a name is checked on the addresses it
    // resolves to when the callback is sent (`notify::callback`).
    if !configured
        && callback::literal_address(&parsed)
            .is_some_and(|ip| callback::is_refused(ip, &state.callbacks.allowed_networks))
    {
        return Err(ApiError::InvalidParameter(
            "callback_uri points at an internal address".into(),
        ));
    }
    Ok(())
}

async fn start_push(
    state: &MobileAuthState,
    version: ApiVersion,
    auth_type: &crate::domain::auth_type::AuthType,
    form: &HashMap<String, String>,
    client_id: &str,
) -> Result<Response, PushServiceError> {
    // Without the push parameters the push cannot start: a type with a fallback falls back
    // (the portal may not know of any device), one without names what is missing.
    let missing = |what: &str| {
        if auth_type.fallback.is_some() {
            PushServiceError::NoDevice
        } else {
            PushServiceError::InvalidAnswer(format!("{what} missing"))
        }
    };
    let invalid = |what: &str| PushServiceError::InvalidAnswer(what.to_owned());
    let target = match version {
        ApiVersion::V4 => PushTarget::Device(
            form.get("device_id")
                .cloned()
                .ok_or_else(|| missing("device_id"))?,
        ),
        ApiVersion::V3 => PushTarget::Application(
            form.get("app_id")
                .cloned()
                .ok_or_else(|| missing("app_id"))?,
        ),
        ApiVersion::V2 => PushTarget::Any,
    };
    let user_id = form
        .get("user_id")
        .cloned()
        .ok_or_else(|| invalid("user_id missing"))?;
    let callback_uri = form
        .get("callback_uri")
        .ok_or_else(|| missing("callback_uri"))?;
    check_callback(state, callback_uri).map_err(|error| invalid(&error.to_string()))?;
    let context = secure_context(state, version, auth_type, form)
        .map_err(|error| PushServiceError::InvalidAnswer(error.to_string()))?;
    let request = PushStart {
        user_id,
        message: form.get("message").cloned(),
        secure_message: match &context {
            Some(context) => Some(context.text.clone()),
            None => form.get("secure_message").cloned(),
        },
        signing_data: form.get("signing_data").cloned(),
        callback_uri: Some(callback_uri.clone()),
        language: form
            .get("language_code")
            .map(|code| code.to_ascii_lowercase()),
        client_id: Some(client_id.to_owned()),
    };
    let started = state.push.start(auth_type, &target, request).await?;
    let tx = &started.transaction;
    if let Some(failure) = context.and_then(|context| context.geolocation_failure) {
        report_geolocation_failure(tx, &failure);
    }
    let mut body = started_body(tx);
    body["device"] =
        json!({"name": started.device.name, "platform": started.device.platform.as_str()});
    if let Some(number) = tx.details.number {
        body["number"] = json!(number);
        body["number_matching"] = json!(tx.number_matching().map(NumberMatching::as_str));
    }
    Ok(json_response(StatusCode::OK, &body))
}

async fn start_sms(
    state: &MobileAuthState,
    auth_type: &crate::domain::auth_type::AuthType,
    form: &HashMap<String, String>,
    client_id: &str,
    client_ip: Option<IpAddr>,
) -> Result<Response, ApiError> {
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
        client_id: Some(client_id.to_owned()),
        client_ip,
    };
    let tx = state.sms.start(auth_type, request).await?;
    Ok(json_response(StatusCode::OK, &started_body(&tx)))
}

/// An OTP type: no `user_id` (the phone that answers names the user), a callback, and in the
/// answer the code, the deep link that carries it and that link as an inline SVG QR code. The
/// code is shown this once: only its HMAC is stored, so no URL can serve it again.
async fn start_otp(
    state: &MobileAuthState,
    auth_type: &crate::domain::auth_type::AuthType,
    form: &HashMap<String, String>,
    client_id: &str,
) -> Result<Response, ApiError> {
    if form.contains_key("user_id") {
        return Err(ApiError::InvalidParameter(
            "user_id must be absent for an otp type".into(),
        ));
    }
    let callback_uri = form
        .get("callback_uri")
        .ok_or_else(|| ApiError::InvalidParameter("callback_uri missing".into()))?;
    check_callback(state, callback_uri)?;
    let language = form
        .get("language_code")
        .map(|code| code.to_ascii_lowercase());
    let message = form.get("message").cloned();
    if message.is_none() && auth_type.default_message(language.as_deref()).is_none() {
        return Err(ApiError::InvalidParameter(
            "message missing and no default message".into(),
        ));
    }
    let request = OtpStart {
        user_id: None,
        message,
        callback_uri: Some(callback_uri.clone()),
        language,
        client_id: Some(client_id.to_owned()),
    };
    let started = state
        .otp
        .start(auth_type, request, SecretSource::Random)
        .await
        .map_err(|error| match error {
            OtpError::Store(error) => store_error(error),
            other => ApiError::InvalidParameter(other.to_string()),
        })?;
    let deep_link = state.otp.deep_link(&started.code);
    let mut body = started_body(&started.transaction);
    body["otp"] = json!(started.code.encode());
    body["qr_svg"] = json!(crate::qr::svg(&deep_link));
    body["deep_link"] = json!(deep_link);
    Ok(json_response(StatusCode::OK, &body))
}

/// The init answer's common fields: id, the method used (after fallback) and the lifetime.
fn started_body(tx: &crate::domain::transaction::Transaction) -> serde_json::Value {
    let ttl = tx
        .expires_at
        .millis()
        .saturating_sub(tx.created_at.millis());
    json!({"transaction_id": tx.id.to_string(), "auth_method": tx.method.as_str(), "time_to_live": ttl})
}

/// The result of a push (or OTP) transaction, as the reference reports it.
async fn result(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(transaction_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let admitted = admit(&state, &headers, &[], peer)?;
    let id: TransactionId = transaction_id
        .parse()
        .map_err(|_| ApiError::InvalidTransaction)?;
    let tx = state
        .push
        .transaction(&id)
        .await
        .map_err(|error| match error {
            PushServiceError::Store(error) => store_error(error),
            _ => ApiError::InvalidTransaction,
        })?
        .filter(|tx| tx.method != Method::Sms && tx.started_by(Some(&admitted.client_id)))
        .ok_or(ApiError::InvalidTransaction)?;
    let authenticated = tx.status == crate::domain::transaction::Status::Approved;
    let mut body = json!({
        "callback_uri": tx.details.callback_uri,
        "transaction_id": tx.id.to_string(),
        "timestamp": tx.created_at.millis(),
        "user_id": tx.user_id,
        "is_authenticated": authenticated,
    });
    let evidence = tx.evidence.clone().unwrap_or_default();
    if authenticated {
        body["authentication_method"] = json!(evidence.authentication_method);
    }
    if let Some(used) = evidence.used_attempts {
        body["used_authentication_attempts"] = json!(used);
    }
    if let Some(signature) = &evidence.signature {
        body["signature"] = json!(signature);
        body["user_public_key"] = json!(evidence.user_public_key);
        body["signature_verified"] = json!(evidence.signature_verified);
    }
    if evidence.reported == Some(true) {
        body["reported"] = json!(true);
    }
    if tx.status.is_terminal() && !authenticated {
        let reason = tx
            .reason
            .unwrap_or(crate::domain::transaction::Reason::Expired);
        body["not_authenticated_reason"] =
            json!({"reason": reason.as_str(), "description": reason.description()});
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// A one-time enrollment code for a signed-in user (End User API).
async fn create_enrollment_code(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    admit_for(&state, &headers, &body, peer, ApiScope::EndUser)?;
    if user_id.trim().is_empty() || user_id.len() > 255 {
        return Err(ApiError::InvalidParameter("user_id".into()));
    }
    let code = state
        .push
        .devices()
        .create_enrollment_code(&user_id)
        .await
        .map_err(|error| match error {
            crate::service::devices::DeviceError::Store(error) => store_error(error),
            _ => ApiError::Disabled,
        })?;
    let mut qr_uri = state.public_url.clone();
    qr_uri.set_path(&format!(
        "/oauth/api/v4/users/{}/enrollment-codes/qr.svg",
        urlencode(&user_id)
    ));
    qr_uri.set_query(Some(&format!("code={}", code.code)));
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"code": code.code, "expires_in": code.expires_in.as_secs(), "qr_uri": qr_uri.as_str()}),
    ))
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[derive(serde::Deserialize)]
struct QrQuery {
    code: String,
}

/// The QR code (SVG) of a live enrollment code: `stepgate://enroll?code=CODE`.
async fn enrollment_qr(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(user_id): Path<String>,
    Query(query): Query<QrQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admit_for(&state, &headers, &[], peer, ApiScope::EndUser)?;
    let live = state
        .push
        .devices()
        .code_is_live(&user_id, &query.code)
        .await
        .map_err(|error| match error {
            crate::service::devices::DeviceError::Store(error) => store_error(error),
            _ => ApiError::NotFound,
        })?;
    if !live {
        return Err(ApiError::NotFound);
    }
    let svg = crate::qr::svg(&format!("stepgate://enroll?code={}", query.code))
        .ok_or(ApiError::NotFound)?;
    let mut response = (StatusCode::OK, svg).into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("image/svg+xml"),
    );
    headers.insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
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
    let admitted = admit(&state, &headers, &body, peer)?;
    let id = transaction_id(&admitted.form)?;
    let code = admitted
        .form
        .get("sms_code")
        .map(String::as_str)
        .unwrap_or_default();
    match state
        .sms
        .verify(&id, admitted.owner(&user_id), code)
        .await?
    {
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
    let admitted = admit(&state, &headers, &body, peer)?;
    let id = transaction_id(&admitted.form)?;
    match state
        .sms
        .resend(&id, admitted.owner(&user_id), admitted.client_ip)
        .await?
    {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(ResendOutcome::Disabled | ResendOutcome::LimitReached) => Err(ApiError::ResendLimit),
        Err(
            ResendOutcome::Expired | ResendOutcome::NotPending(_) | ResendOutcome::Resent { .. },
        ) => Err(ApiError::InvalidTransaction),
    }
}

/// Sends a push again (ours: the reference documents `max_resends` for push but no endpoint).
async fn resend_push(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let admitted = admit(&state, &headers, &body, peer)?;
    let id = transaction_id(&admitted.form)?;
    match state.push.resend(&id, admitted.owner(&user_id)).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(PushServiceError::ResendRefused(
            ResendOutcome::Disabled | ResendOutcome::LimitReached,
        )) => Err(ApiError::ResendLimit),
        Err(PushServiceError::SendFailed(error)) => Err(ApiError::PushNotSent(error.to_string())),
        Err(PushServiceError::Store(error)) => Err(store_error(error)),
        Err(_) => Err(ApiError::InvalidTransaction),
    }
}

/// The secure message with the sign-in's context, when it applies: a v4 init (v2 and v3 have
/// no `ip_address`/`user_agent`), `features.geolocation` on, and either field given. The base
/// is `secure_message`, else `message`, else the type's default message. An `ip_address` that
/// is not an address is a parameter error (1003); a lookup that fails only leaves the location
/// out.
fn secure_context(
    state: &MobileAuthState,
    version: ApiVersion,
    auth_type: &crate::domain::auth_type::AuthType,
    form: &HashMap<String, String>,
) -> Result<Option<crate::domain::context::EnrichedMessage>, ApiError> {
    if version != ApiVersion::V4 {
        return Ok(None);
    }
    let ip = form
        .get("ip_address")
        .map(|text| {
            text.trim()
                .parse::<std::net::IpAddr>()
                .map_err(|_| ApiError::InvalidParameter("ip_address is not an IP address".into()))
        })
        .transpose()?;
    let user_agent = form.get("user_agent").map(String::as_str);
    let Some(context) = &state.secure_context else {
        return Ok(None);
    };
    if ip.is_none() && user_agent.is_none() {
        return Ok(None);
    }
    let language = form
        .get("language_code")
        .map(|code| code.to_ascii_lowercase());
    let base = form
        .get("secure_message")
        .or_else(|| form.get("message"))
        .map(String::as_str)
        .or_else(|| auth_type.default_message(language.as_deref()));
    Ok(base.map(|base| context.build(base, ip, user_agent, language.as_deref())))
}

/// The reference logs an event when geolocation fails; the sign-in goes on without a location.
fn report_geolocation_failure(
    tx: &crate::domain::transaction::Transaction,
    failure: &crate::domain::context::GeolocationFailure,
) {
    tracing::info!(
        transaction_id = %tx.id,
        reason = %failure,
        "geolocation lookup failed; location left out of the secure message"
    );
    let transaction_id = tx.id.to_string();
    crate::telemetry::audit::AuditEvent {
        event: "GEOLOCATION_LOOKUP_FAILED",
        transaction_id: Some(&transaction_id),
        auth_type: Some(&tx.auth_type),
        method: Some(tx.method.as_str()),
        detail: Some(failure.as_str()),
        ..crate::telemetry::audit::AuditEvent::default()
    }
    .emit();
}
