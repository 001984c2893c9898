//! Firebase Cloud Messaging.
//!
//! HTTP v1 (`FcmV1Sender`): a service account signs an RS256 assertion `{iss: client_email,
//! scope: firebase.messaging, aud: token_uri, iat, exp: iat + 3600}` and trades it at `token_uri`
//! (OAuth2 JWT-bearer grant) for an access token, cached until 60 s before it expires. One
//! token serves every send; concurrent sends wait for one refresh instead of each fetching one.
//! Then `POST {endpoint}/v1/projects/{project_id}/messages:send` with the bearer token. Answers:
//! 2xx delivered; 404 `UNREGISTERED` and a 400 `INVALID_ARGUMENT` about the token mean the token
//! is dead (`Unregistered`); 401 drops the cached access token and tries once more; 429, 5xx and
//! timeouts are `Unavailable`; the rest `Rejected`.
//!
//! Legacy (`FcmLegacySender`): `POST legacy_endpoint` with `Authorization: key=<server key>`
//! and `{"to", "data", "priority": "high"}`; `results[0].error` `NotRegistered` or
//! `InvalidRegistration` means the token is dead.

use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use url::Url;

use super::super::NotifyError;
use super::super::outbound::{describe_failure, read_capped};
use super::{REQUEST_TIMEOUT, code_excerpt, provider_client, unix_seconds};
use crate::config::settings::{FcmLegacySettings, FcmV1Settings, OutgoingProxySettings};
use crate::domain::clock::{SharedClock, Timestamp};
use crate::domain::push::{PushError, PushMessage, PushSender, fcm_legacy_payload, fcm_v1_payload};

const PROVIDER: &str = "fcm";
const LEGACY_PROVIDER: &str = "fcm_legacy";
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime of the signed assertion (Google's maximum).
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// An access token is replaced this long before it expires.
pub const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// The claims of the OAuth2 JWT-bearer assertion.
#[derive(Debug, Serialize, Deserialize)]
pub struct AssertionClaims {
    pub iss: String,
    pub scope: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

struct AccessToken {
    value: String,
    valid_until: Timestamp,
}

/// Sends through one Firebase project with a service account (HTTP v1 API).
pub struct FcmV1Sender {
    client: reqwest::Client,
    send_url: Url,
    token_uri: Url,
    client_email: String,
    private_key_id: Option<String>,
    key: EncodingKey,
    clock: SharedClock,
    // Held across the token request on purpose: concurrent sends wait for one refresh.
    token: Mutex<Option<AccessToken>>,
}

impl std::fmt::Debug for FcmV1Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmV1Sender")
            .field("send_url", &self.send_url.as_str())
            .field("client_email", &self.client_email)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize, Default)]
struct OAuthError {
    #[serde(default)]
    error: String,
}

/// The parts of a Google API error body that classify it.
#[derive(Deserialize, Default)]
struct GoogleErrorBody {
    #[serde(default)]
    error: GoogleError,
}

#[derive(Deserialize, Default)]
struct GoogleError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<GoogleErrorDetail>,
}

#[derive(Deserialize, Default)]
struct GoogleErrorDetail {
    #[serde(default, rename = "errorCode")]
    error_code: String,
    #[serde(default, rename = "fieldViolations")]
    field_violations: Vec<FieldViolation>,
}

#[derive(Deserialize, Default)]
struct FieldViolation {
    #[serde(default)]
    field: String,
}

impl GoogleError {
    fn has_code(&self, code: &str) -> bool {
        self.status == code || self.details.iter().any(|d| d.error_code == code)
    }

    /// Whether an `INVALID_ARGUMENT` is about the registration token rather than the payload.
    fn is_about_the_token(&self) -> bool {
        self.details
            .iter()
            .flat_map(|detail| &detail.field_violations)
            .any(|violation| violation.field == "message.token")
            || self
                .message
                .to_ascii_lowercase()
                .contains("registration token")
    }

    fn code(&self) -> String {
        let code = self
            .details
            .iter()
            .map(|detail| detail.error_code.as_str())
            .find(|code| !code.is_empty())
            .unwrap_or(&self.status);
        code_excerpt(code)
    }
}

/// What a `messages:send` answer means.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Delivered,
    /// The access token was refused: fetch a new one and try once more.
    TokenRefused,
    Failed(PushError),
}

fn classify_v1(status: StatusCode, body: &[u8]) -> Answer {
    let error = serde_json::from_slice::<GoogleErrorBody>(body)
        .unwrap_or_default()
        .error;
    let shown = format!("HTTP {} {}", status.as_u16(), error.code());
    let shown = shown.trim_end();
    match status.as_u16() {
        200..=299 => Answer::Delivered,
        401 => Answer::TokenRefused,
        404 if error.has_code("UNREGISTERED") => Answer::Failed(PushError::Unregistered),
        400 if error.has_code("INVALID_ARGUMENT") && error.is_about_the_token() => {
            Answer::Failed(PushError::Unregistered)
        }
        429 | 500..=599 => Answer::Failed(PushError::Unavailable(format!(
            "FCM is unavailable: {shown}"
        ))),
        403 => Answer::Failed(PushError::Rejected(format!(
            "FCM refused the sender: {shown} (check the service account's project and permissions)"
        ))),
        300..=399 => Answer::Failed(PushError::Rejected(format!(
            "FCM answered with a redirect, which is not followed: {shown} (check endpoint)"
        ))),
        _ => Answer::Failed(PushError::Rejected(format!(
            "FCM refused the message: {shown}"
        ))),
    }
}

impl FcmV1Sender {
    pub fn new(
        settings: &FcmV1Settings,
        ca_pem: Option<&[u8]>,
        proxy: Option<&OutgoingProxySettings>,
        clock: SharedClock,
    ) -> Result<Self, NotifyError> {
        let mut send_url = settings.endpoint.clone();
        send_url
            .path_segments_mut()
            .map_err(|()| NotifyError::HttpClient {
                provider: PROVIDER,
                reason: "endpoint cannot take a path".into(),
            })?
            .pop_if_empty()
            .extend(["v1", "projects", &settings.project_id, "messages:send"]);
        Ok(Self {
            client: provider_client(PROVIDER, ca_pem, proxy, false)?,
            send_url,
            token_uri: settings.token_uri.clone(),
            client_email: settings.client_email.clone(),
            private_key_id: settings.private_key_id.clone(),
            key: settings.key.clone(),
            clock,
            token: Mutex::new(None),
        })
    }

    /// A valid access token: the cached one, or a new one from the token endpoint.
    pub async fn access_token(&self) -> Result<String, PushError> {
        let mut cached = self.token.lock().await;
        let now = self.clock.now();
        if let Some(token) = cached.as_ref()
            && now < token.valid_until
        {
            return Ok(token.value.clone());
        }
        let fresh = self.fetch_token(now).await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    /// Drops `value` if it is still the cached token (FCM refused it).
    async fn forget_token(&self, value: &str) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|token| token.value == value) {
            *cached = None;
        }
    }

    fn assertion(&self, now: Timestamp) -> Result<String, PushError> {
        let iat = now.millis() / 1000;
        let claims = AssertionClaims {
            iss: self.client_email.clone(),
            scope: SCOPE.to_owned(),
            aud: self.token_uri.as_str().to_owned(),
            iat,
            exp: iat + ASSERTION_LIFETIME_SECS,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.private_key_id.clone();
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|error| {
            PushError::Rejected(format!("cannot sign the FCM token request: {error}"))
        })
    }

    async fn fetch_token(&self, now: Timestamp) -> Result<AccessToken, PushError> {
        let assertion = self.assertion(now)?;
        let response = self
            .client
            .post(self.token_uri.clone())
            .form(&[
                ("grant_type", GRANT_TYPE),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|error| {
                PushError::Unavailable(format!(
                    "FCM token endpoint: {}",
                    describe_failure(error, REQUEST_TIMEOUT)
                ))
            })?;
        let status = response.status();
        let body = read_capped(response).await;
        if !status.is_success() {
            let code = serde_json::from_slice::<OAuthError>(&body)
                .unwrap_or_default()
                .error;
            let shown = format!("HTTP {} {}", status.as_u16(), code_excerpt(&code));
            let shown = shown.trim_end();
            return Err(
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    PushError::Unavailable(format!("FCM token endpoint is unavailable: {shown}"))
                } else {
                    PushError::Rejected(format!(
                        "the token endpoint refused the service account: {shown} (check service_account_file)"
                    ))
                },
            );
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
            PushError::Unavailable("FCM token endpoint answered without an access token".into())
        })?;
        let lifetime = Duration::from_secs(answer.expires_in).saturating_sub(TOKEN_MARGIN);
        Ok(AccessToken {
            value: answer.access_token,
            valid_until: now.plus(lifetime),
        })
    }

    async fn attempt(&self, message: &PushMessage) -> Result<Answer, PushError> {
        let token = self.access_token().await?;
        let payload = fcm_v1_payload(message, unix_seconds(&self.clock));
        let response = self
            .client
            .post(self.send_url.clone())
            .bearer_auth(&token)
            .json(&payload)
            .send()
            .await
            .map_err(|error| {
                PushError::Unavailable(format!("FCM: {}", describe_failure(error, REQUEST_TIMEOUT)))
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(Answer::Delivered);
        }
        let answer = classify_v1(status, &read_capped(response).await);
        if answer == Answer::TokenRefused {
            self.forget_token(&token).await;
        }
        Ok(answer)
    }
}

#[async_trait]
impl PushSender for FcmV1Sender {
    fn provider(&self) -> &'static str {
        PROVIDER
    }

    async fn send(&self, message: &PushMessage) -> Result<(), PushError> {
        match self.attempt(message).await? {
            Answer::Delivered => Ok(()),
            Answer::Failed(error) => Err(error),
            Answer::TokenRefused => match self.attempt(message).await? {
                Answer::Delivered => Ok(()),
                Answer::Failed(error) => Err(error),
                Answer::TokenRefused => Err(PushError::Rejected(
                    "FCM refused a fresh access token (HTTP 401; check the service account's permissions)"
                        .into(),
                )),
            },
        }
    }
}

/// Sends through the legacy FCM API with a server key.
pub struct FcmLegacySender {
    client: reqwest::Client,
    endpoint: Url,
    authorization: HeaderValue,
    clock: SharedClock,
}

impl std::fmt::Debug for FcmLegacySender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmLegacySender")
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct LegacyAnswer {
    #[serde(default)]
    results: Vec<LegacyResult>,
}

#[derive(Deserialize)]
struct LegacyResult {
    error: Option<String>,
}

fn classify_legacy(status: StatusCode, body: &[u8]) -> Result<(), PushError> {
    let code = status.as_u16();
    match code {
        200 => {}
        429 | 500..=599 => {
            return Err(PushError::Unavailable(format!(
                "FCM (legacy) is unavailable: HTTP {code}"
            )));
        }
        401 | 403 => {
            return Err(PushError::Rejected(format!(
                "FCM (legacy) refused the server key: HTTP {code} (check legacy_server_key)"
            )));
        }
        _ => {
            return Err(PushError::Rejected(format!(
                "FCM (legacy) refused the message: HTTP {code}"
            )));
        }
    }
    let answer: LegacyAnswer = serde_json::from_slice(body).map_err(|_| {
        PushError::Unavailable("FCM (legacy) answered 200 without a JSON result".into())
    })?;
    match answer
        .results
        .first()
        .and_then(|result| result.error.as_deref())
    {
        None if !answer.results.is_empty() => Ok(()),
        None => Err(PushError::Unavailable(
            "FCM (legacy) answered without a result".into(),
        )),
        Some("NotRegistered" | "InvalidRegistration" | "MissingRegistration") => {
            Err(PushError::Unregistered)
        }
        Some(error @ ("Unavailable" | "InternalServerError" | "DeviceMessageRateExceeded")) => {
            Err(PushError::Unavailable(format!(
                "FCM (legacy) is unavailable: {}",
                code_excerpt(error)
            )))
        }
        Some(error) => Err(PushError::Rejected(format!(
            "FCM (legacy) refused the message: {}",
            code_excerpt(error)
        ))),
    }
}

impl FcmLegacySender {
    pub fn new(
        settings: &FcmLegacySettings,
        ca_pem: Option<&[u8]>,
        proxy: Option<&OutgoingProxySettings>,
        clock: SharedClock,
    ) -> Result<Self, NotifyError> {
        let mut authorization = HeaderValue::from_str(&format!("key={}", settings.server_key))
            .map_err(|_| NotifyError::HttpClient {
                provider: LEGACY_PROVIDER,
                reason: "legacy_server_key holds characters a header cannot carry".into(),
            })?;
        authorization.set_sensitive(true);
        Ok(Self {
            client: provider_client(LEGACY_PROVIDER, ca_pem, proxy, false)?,
            endpoint: settings.endpoint.clone(),
            authorization,
            clock,
        })
    }
}

#[async_trait]
impl PushSender for FcmLegacySender {
    fn provider(&self) -> &'static str {
        LEGACY_PROVIDER
    }

    async fn send(&self, message: &PushMessage) -> Result<(), PushError> {
        let payload = fcm_legacy_payload(message, unix_seconds(&self.clock));
        let response = self
            .client
            .post(self.endpoint.clone())
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .json(&payload)
            .send()
            .await
            .map_err(|error| {
                PushError::Unavailable(format!(
                    "FCM (legacy): {}",
                    describe_failure(error, REQUEST_TIMEOUT)
                ))
            })?;
        let status = response.status();
        classify_legacy(status, &read_capped(response).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_answers_are_classified() {
        let unregistered = br#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        assert_eq!(
            classify_v1(StatusCode::NOT_FOUND, unregistered),
            Answer::Failed(PushError::Unregistered)
        );
        let bad_token = br#"{"error":{"code":400,"message":"The registration token is not a valid FCM registration token","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"INVALID_ARGUMENT"}]}}"#;
        assert_eq!(
            classify_v1(StatusCode::BAD_REQUEST, bad_token),
            Answer::Failed(PushError::Unregistered)
        );
        let bad_payload = br#"{"error":{"code":400,"message":"Invalid value at 'message.android.ttl'","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"message.android.ttl"}]}]}}"#;
        assert!(matches!(
            classify_v1(StatusCode::BAD_REQUEST, bad_payload),
            Answer::Failed(PushError::Rejected(why)) if why.contains("INVALID_ARGUMENT")
        ));
        assert_eq!(
            classify_v1(StatusCode::UNAUTHORIZED, b""),
            Answer::TokenRefused
        );
        assert!(matches!(
            classify_v1(StatusCode::NOT_FOUND, b"<html>"),
            Answer::Failed(PushError::Rejected(_))
        ));
        for status in [StatusCode::TOO_MANY_REQUESTS, StatusCode::BAD_GATEWAY] {
            assert!(matches!(
                classify_v1(status, b""),
                Answer::Failed(PushError::Unavailable(_))
            ));
        }
    }

    #[test]
    fn legacy_answers_are_classified() {
        assert_eq!(
            classify_legacy(
                StatusCode::OK,
                br#"{"success":1,"results":[{"message_id":"0:1"}]}"#
            ),
            Ok(())
        );
        for error in ["NotRegistered", "InvalidRegistration"] {
            let body = format!(r#"{{"failure":1,"results":[{{"error":"{error}"}}]}}"#);
            assert_eq!(
                classify_legacy(StatusCode::OK, body.as_bytes()),
                Err(PushError::Unregistered)
            );
        }
        assert!(matches!(
            classify_legacy(StatusCode::OK, br#"{"results":[{"error":"Unavailable"}]}"#),
            Err(PushError::Unavailable(_))
        ));
        assert!(matches!(
            classify_legacy(StatusCode::OK, br#"{"results":[{"error":"MismatchSenderId"}]}"#),
            Err(PushError::Rejected(why)) if why.contains("MismatchSenderId")
        ));
        assert!(matches!(
            classify_legacy(StatusCode::UNAUTHORIZED, b""),
            Err(PushError::Rejected(why)) if why.contains("legacy_server_key")
        ));
        assert!(matches!(
            classify_legacy(StatusCode::SERVICE_UNAVAILABLE, b""),
            Err(PushError::Unavailable(_))
        ));
    }
}
