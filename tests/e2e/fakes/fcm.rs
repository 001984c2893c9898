//! A fake Firebase Cloud Messaging, over plain HTTP: Google's OAuth2 token endpoint
//! (`POST /token`, JWT-bearer grant: the RS256 assertion is verified with the service account's
//! public key, with `iss`, `scope` and `aud` checked) answering
//! `{"access_token","expires_in":3600,"token_type":"Bearer"}`; the HTTP v1 send endpoint
//! (`POST /v1/projects/{project}/messages:send`, bearer checked against the tokens it issued,
//! Google's error bodies); and the legacy endpoint (`POST /fcm/send` with `Authorization: key=`).
//! It records every accepted message and can be told to answer 404 `UNREGISTERED` (legacy:
//! `NotRegistered`) for a token, to forget the tokens it issued (the next send gets 401), or to
//! answer 503 for the next N sends.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::Form;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Server;
use super::push_keys::{CLIENT_EMAIL, PRIVATE_KEY_ID, PROJECT_ID, PushKeys};

pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
pub const LEGACY_SERVER_KEY: &str = "AAAAstepgate:fake-legacy-server-key";

/// Which API a recorded message came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V1,
    Legacy,
}

/// One message the fake accepted: the whole JSON body as sent.
#[derive(Debug, Clone)]
pub struct FcmMessage {
    pub api: Api,
    /// The registration token addressed (`message.token` or `to`).
    pub token: String,
    pub body: Value,
}

#[derive(Default)]
struct Behaviour {
    accepted: Vec<FcmMessage>,
    token_calls: usize,
    sends: usize,
    issued: HashSet<String>,
    unregistered: HashSet<String>,
    unavailable_for: usize,
}

struct Config {
    key: DecodingKey,
    /// The `aud` an assertion must carry: this fake's token URL.
    token_uri: Mutex<String>,
}

type Shared = Arc<(Config, Mutex<Behaviour>)>;

pub struct FakeFcm {
    shared: Shared,
    server: Server,
}

impl FakeFcm {
    /// Accepts assertions signed with `keys`' service account.
    pub fn start(keys: &PushKeys) -> Self {
        let public = std::fs::read(keys.service_account_public_key()).expect("rsa public key");
        let config = Config {
            key: DecodingKey::from_rsa_pem(&public).expect("RSA public key"),
            token_uri: Mutex::new(String::new()),
        };
        let shared: Shared = Arc::new((config, Mutex::new(Behaviour::default())));
        let router = Router::new()
            .route("/token", post(token))
            .route("/v1/projects/{project}/{send}", post(send_v1))
            .route("/fcm/send", post(send_legacy))
            .with_state(shared.clone());
        let server = Server::start(router);
        *shared.0.token_uri.lock().unwrap() = format!("{}/token", server.url());
        Self { shared, server }
    }

    /// `http://127.0.0.1:port`, for `push_configs[].endpoint`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// For the service account's `token_uri` (or `push_configs[].token_uri`).
    pub fn token_uri(&self) -> String {
        format!("{}/token", self.server.url())
    }

    /// For `push_configs[].legacy_endpoint`.
    pub fn legacy_url(&self) -> String {
        format!("{}/fcm/send", self.server.url())
    }

    /// Every accepted message, oldest first.
    pub fn received(&self) -> Vec<FcmMessage> {
        self.lock().accepted.clone()
    }

    /// Token requests received, granted or not.
    pub fn token_calls(&self) -> usize {
        self.lock().token_calls
    }

    /// Send requests received (both APIs), accepted or not.
    pub fn sends(&self) -> usize {
        self.lock().sends
    }

    /// From now on `token` is not registered: 404 `UNREGISTERED` (legacy: `NotRegistered`).
    pub fn unregister(&self, token: &str) {
        self.lock().unregistered.insert(token.to_owned());
    }

    /// Forgets every access token issued so far: the next send with one answers 401.
    pub fn revoke_access_tokens(&self) {
        self.lock().issued.clear();
    }

    /// The next `n` sends answer 503.
    pub fn fail_next(&self, n: usize) {
        self.lock().unavailable_for = n;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Behaviour> {
        self.shared.1.lock().expect("fake fcm state")
    }
}

fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: String,
    assertion: String,
}

#[derive(Deserialize)]
struct AssertionClaims {
    scope: String,
    iat: u64,
    exp: u64,
}

async fn token(State(shared): State<Shared>, Form(request): Form<TokenRequest>) -> Response {
    let (config, behaviour) = &*shared;
    behaviour.lock().expect("fake fcm state").token_calls += 1;
    if request.grant_type != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        return oauth_error("unsupported_grant_type", "Invalid grant_type");
    }
    let header = match jsonwebtoken::decode_header(&request.assertion) {
        Ok(header) => header,
        Err(_) => return oauth_error("invalid_grant", "Invalid JWT Signature."),
    };
    if header.alg != Algorithm::RS256 || header.kid.as_deref() != Some(PRIVATE_KEY_ID) {
        return oauth_error("invalid_grant", "Invalid JWT Signature.");
    }
    let audience = config.token_uri.lock().expect("token uri").clone();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[&audience]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    let claims =
        match jsonwebtoken::decode::<AssertionClaims>(&request.assertion, &config.key, &validation)
        {
            Ok(data) => data.claims,
            Err(error) => return oauth_error("invalid_grant", &format!("Invalid JWT: {error}")),
        };
    if claims.scope != SCOPE {
        return oauth_error(
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        );
    }
    if claims.exp <= claims.iat || claims.exp - claims.iat > 3600 {
        return oauth_error(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.",
        );
    }
    let mut state = behaviour.lock().expect("fake fcm state");
    let access_token = format!("ya29.fake-{}-{}", state.token_calls, uuid::Uuid::new_v4());
    state.issued.insert(access_token.clone());
    (
        StatusCode::OK,
        axum::Json(json!({
            "access_token": access_token,
            "expires_in": 3600,
            "token_type": "Bearer",
        })),
    )
        .into_response()
}

fn google_error(
    status: StatusCode,
    google_status: &str,
    message: &str,
    fcm_code: Option<&str>,
) -> Response {
    let mut error = json!({
        "code": status.as_u16(),
        "message": message,
        "status": google_status,
    });
    if let Some(code) = fcm_code {
        error["details"] = json!([{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": code,
        }]);
    }
    (status, axum::Json(json!({ "error": error }))).into_response()
}

async fn send_v1(
    State(shared): State<Shared>,
    Path((project, send)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, behaviour) = &*shared;
    let mut state = behaviour.lock().expect("fake fcm state");
    state.sends += 1;
    if send != "messages:send" {
        return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Unknown method", None);
    }
    let bearer = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if !bearer.is_some_and(|token| state.issued.contains(token)) {
        return google_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            None,
        );
    }
    if project != PROJECT_ID {
        return google_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Permission 'cloudmessaging.messages.create' denied on resource",
            Some("SENDER_ID_MISMATCH"),
        );
    }
    if state.unavailable_for > 0 {
        state.unavailable_for -= 1;
        return google_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "The service is currently unavailable.",
            Some("UNAVAILABLE"),
        );
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(_) => {
            return google_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "Invalid JSON payload received.",
                Some("INVALID_ARGUMENT"),
            );
        }
    };
    let Some(token) = body["message"]["token"].as_str().map(str::to_owned) else {
        return google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "Recipient of the message is not set.",
            Some("INVALID_ARGUMENT"),
        );
    };
    let data_ok = body["message"]["data"]
        .as_object()
        .is_some_and(|data| data.values().all(Value::is_string));
    if !data_ok {
        return google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "Invalid value at 'message.data': data values must be strings",
            Some("INVALID_ARGUMENT"),
        );
    }
    if token.is_empty() || token.contains(char::is_whitespace) {
        return google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
            Some("INVALID_ARGUMENT"),
        );
    }
    if state.unregistered.contains(&token) {
        return google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Requested entity was not found.",
            Some("UNREGISTERED"),
        );
    }
    let id = state.accepted.len() + 1;
    state.accepted.push(FcmMessage {
        api: Api::V1,
        token,
        body,
    });
    (
        StatusCode::OK,
        axum::Json(json!({ "name": format!("projects/{PROJECT_ID}/messages/0:{id}") })),
    )
        .into_response()
}

async fn send_legacy(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (_, behaviour) = &*shared;
    let mut state = behaviour.lock().expect("fake fcm state");
    state.sends += 1;
    let authorized = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        == Some(&format!("key={LEGACY_SERVER_KEY}"));
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            "<HTML><TITLE>Unauthorized</TITLE></HTML>",
        )
            .into_response();
    }
    if state.unavailable_for > 0 {
        state.unavailable_for -= 1;
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "JSON_PARSING_ERROR").into_response();
    };
    let token = body["to"].as_str().unwrap_or_default().to_owned();
    let result = if token.is_empty() {
        json!({ "error": "MissingRegistration" })
    } else if state.unregistered.contains(&token) {
        json!({ "error": "NotRegistered" })
    } else {
        let id = state.accepted.len() + 1;
        state.accepted.push(FcmMessage {
            api: Api::Legacy,
            token,
            body,
        });
        json!({ "message_id": format!("0:{id}%stepgate") })
    };
    let failed = result.get("error").is_some();
    (
        StatusCode::OK,
        axum::Json(json!({
            "multicast_id": 108,
            "success": u8::from(!failed),
            "failure": u8::from(failed),
            "canonical_ids": 0,
            "results": [result],
        })),
    )
        .into_response()
}
