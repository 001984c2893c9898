//! Apple Push Notification service over HTTP/2 with token authentication: each request carries
//! `authorization: bearer <ES256 JWT {iss: team_id, iat}, kid: key_id>` signed with the team's
//! `.p8` key. Apple refuses tokens older than an hour and throttles re-signing more often than
//! every 20 minutes, so one token is reused for 40 minutes, then re-signed.
//!
//! `POST {base}/3/device/{token}` with `apns-topic` (the bundle id), `apns-push-type: alert`,
//! `apns-priority: 10` and `apns-expiration`; the base is the configured `endpoint` or Apple's
//! production or sandbox host by the app version's environment. Answers: 200 delivered;
//! `BadDeviceToken` (400) and 410 mean the token is dead (`Unregistered`); 403 is refused
//! credentials or topic (`Rejected`; an expired provider token is re-signed and tried once more);
//! 429, 5xx and timeouts are `Unavailable`.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use url::Url;

use super::super::NotifyError;
use super::super::outbound::{describe_failure, read_capped};
use super::{REQUEST_TIMEOUT, code_excerpt, provider_client};
use crate::config::settings::{ApnsSettings, OutgoingProxySettings};
use crate::domain::clock::{SharedClock, Timestamp};
use crate::domain::push::{ApnsEnvironment, PushError, PushMessage, PushSender, apns_payload};

const PROVIDER: &str = "apns";
pub const PRODUCTION_HOST: &str = "https://api.push.apple.com";
pub const SANDBOX_HOST: &str = "https://api.sandbox.push.apple.com";

/// How long one provider token is used before it is re-signed (Apple: between 20 and 60 min).
pub const TOKEN_REFRESH: Duration = Duration::from_secs(40 * 60);

#[derive(Debug, Serialize, Deserialize)]
pub struct ProviderClaims {
    pub iss: String,
    pub iat: u64,
}

struct ProviderToken {
    jwt: String,
    issued_at: Timestamp,
}

/// Sends through one APNs auth key.
pub struct ApnsSender {
    client: reqwest::Client,
    /// `None`: Apple's host by the message's environment.
    endpoint: Option<Url>,
    team_id: String,
    key_id: String,
    key: EncodingKey,
    clock: SharedClock,
    // A plain mutex: it is never held across an await, and signing is fast.
    token: Mutex<Option<ProviderToken>>,
}

impl std::fmt::Debug for ApnsSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsSender")
            .field("team_id", &self.team_id)
            .field("key_id", &self.key_id)
            .field("endpoint", &self.endpoint.as_ref().map(Url::as_str))
            .finish_non_exhaustive()
    }
}

/// What an answer means.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Delivered,
    /// The provider token expired: re-sign and try once more.
    TokenExpired,
    Failed(PushError),
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    reason: String,
}

fn classify(status: StatusCode, reason: &str) -> Answer {
    let shown = format!("HTTP {} {}", status.as_u16(), code_excerpt(reason));
    let shown = shown.trim_end();
    match (status.as_u16(), reason) {
        (200..=299, _) => Answer::Delivered,
        (410, _) | (400, "BadDeviceToken") => Answer::Failed(PushError::Unregistered),
        (403, "ExpiredProviderToken") => Answer::TokenExpired,
        (403, _) => Answer::Failed(PushError::Rejected(format!(
            "APNs refused the credentials or topic: {shown} (check team_id, key_id, key_file and the bundle id)"
        ))),
        (429, _) | (500..=599, _) => Answer::Failed(PushError::Unavailable(format!(
            "APNs is unavailable: {shown}"
        ))),
        (300..=399, _) => Answer::Failed(PushError::Rejected(format!(
            "APNs answered with a redirect, which is not followed: {shown} (check endpoint)"
        ))),
        _ => Answer::Failed(PushError::Rejected(format!(
            "APNs refused the push: {shown}"
        ))),
    }
}

/// APNs device tokens are hexadecimal; anything else could not name a device (and must not
/// reach the URL path).
fn valid_device_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= 200 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ApnsSender {
    pub fn new(
        settings: &ApnsSettings,
        ca_pem: Option<&[u8]>,
        proxy: Option<&OutgoingProxySettings>,
        clock: SharedClock,
    ) -> Result<Self, NotifyError> {
        Ok(Self {
            client: provider_client(PROVIDER, ca_pem, proxy, true)?,
            endpoint: settings.endpoint.clone(),
            team_id: settings.team_id.clone(),
            key_id: settings.key_id.clone(),
            key: settings.key.clone(),
            clock,
            token: Mutex::new(None),
        })
    }

    /// The current provider token, signed anew when the cached one is 40 minutes old (or the
    /// clock went back).
    pub fn provider_token(&self) -> Result<String, PushError> {
        let now = self.clock.now();
        let mut cached = self.token.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(token) = cached.as_ref()
            && token.issued_at <= now
            && now < token.issued_at.plus(TOKEN_REFRESH)
        {
            return Ok(token.jwt.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = ProviderClaims {
            iss: self.team_id.clone(),
            iat: now.millis() / 1000,
        };
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|error| {
            PushError::Rejected(format!("cannot sign the APNs provider token: {error}"))
        })?;
        *cached = Some(ProviderToken {
            jwt: jwt.clone(),
            issued_at: now,
        });
        Ok(jwt)
    }

    /// Drops `jwt` if it is still the cached one (Apple called it expired).
    fn forget_token(&self, jwt: &str) {
        let mut cached = self.token.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.as_ref().is_some_and(|token| token.jwt == jwt) {
            *cached = None;
        }
    }

    fn device_url(&self, environment: ApnsEnvironment, token: &str) -> String {
        let base = match (&self.endpoint, environment) {
            (Some(endpoint), _) => endpoint.as_str(),
            (None, ApnsEnvironment::Production) => PRODUCTION_HOST,
            (None, ApnsEnvironment::Development) => SANDBOX_HOST,
        };
        format!("{}/3/device/{token}", base.trim_end_matches('/'))
    }

    async fn attempt(&self, message: &PushMessage, topic: &str) -> Result<Answer, PushError> {
        let jwt = self.provider_token()?;
        let response = self
            .client
            .post(self.device_url(message.environment, &message.token))
            .bearer_auth(&jwt)
            .header("apns-topic", topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-expiration", message.expires_at_secs.to_string())
            .json(&apns_payload(message))
            .send()
            .await
            .map_err(|error| {
                PushError::Unavailable(format!(
                    "APNs: {}",
                    describe_failure(error, REQUEST_TIMEOUT)
                ))
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(Answer::Delivered);
        }
        let body = read_capped(response).await;
        let reason = serde_json::from_slice::<ErrorBody>(&body)
            .unwrap_or_default()
            .reason;
        let answer = classify(status, &reason);
        if answer == Answer::TokenExpired {
            self.forget_token(&jwt);
        }
        Ok(answer)
    }
}

#[async_trait]
impl PushSender for ApnsSender {
    fn provider(&self) -> &'static str {
        PROVIDER
    }

    async fn send(&self, message: &PushMessage) -> Result<(), PushError> {
        if !valid_device_token(&message.token) {
            return Err(PushError::Unregistered);
        }
        let Some(topic) = message.topic.as_deref().filter(|topic| !topic.is_empty()) else {
            return Err(PushError::Rejected(
                "no bundle id for apns-topic (expected the application version's bundle_id)".into(),
            ));
        };
        match self.attempt(message, topic).await? {
            Answer::Delivered => Ok(()),
            Answer::Failed(error) => Err(error),
            Answer::TokenExpired => match self.attempt(message, topic).await? {
                Answer::Delivered => Ok(()),
                Answer::Failed(error) => Err(error),
                Answer::TokenExpired => Err(PushError::Rejected(
                    "APNs called a freshly signed provider token expired (check the server clock)"
                        .into(),
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use jsonwebtoken::{DecodingKey, Validation};
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    use super::*;
    use crate::domain::clock::ManualClock;

    fn sender(clock: Arc<ManualClock>) -> (ApnsSender, DecodingKey) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let public = secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let settings = ApnsSettings {
            team_id: "TEAM123456".into(),
            key_id: "KEY1234567".into(),
            key_file: "AuthKey.p8".into(),
            key: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            endpoint: None,
        };
        let sender = ApnsSender::new(&settings, None, None, clock).unwrap();
        (sender, DecodingKey::from_ec_pem(public.as_bytes()).unwrap())
    }

    #[test]
    fn the_provider_token_is_reused_for_forty_minutes_then_re_signed() {
        let clock = Arc::new(ManualClock::new(Timestamp(1_700_000_000_000)));
        let (sender, public) = sender(clock.clone());
        let first = sender.provider_token().unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_required_spec_claims::<&str>(&[]);
        validation.validate_exp = false;
        let decoded = jsonwebtoken::decode::<ProviderClaims>(&first, &public, &validation).unwrap();
        assert_eq!(decoded.claims.iss, "TEAM123456");
        assert_eq!(decoded.claims.iat, 1_700_000_000);
        assert_eq!(decoded.header.kid.as_deref(), Some("KEY1234567"));

        clock.advance(Duration::from_secs(39 * 60 + 59));
        assert_eq!(sender.provider_token().unwrap(), first);

        clock.advance(Duration::from_secs(1));
        let second = sender.provider_token().unwrap();
        assert_ne!(second, first);
        let decoded =
            jsonwebtoken::decode::<ProviderClaims>(&second, &public, &validation).unwrap();
        assert_eq!(decoded.claims.iat, 1_700_000_000 + 40 * 60);

        // An expired-token answer drops exactly that token.
        sender.forget_token(&first);
        assert_eq!(sender.provider_token().unwrap(), second);
        sender.forget_token(&second);
        clock.advance(Duration::from_secs(1));
        assert_ne!(sender.provider_token().unwrap(), second);
    }

    #[test]
    fn urls_follow_the_environment_unless_an_endpoint_is_set() {
        let clock = Arc::new(ManualClock::starting_now());
        let (mut sender, _) = sender(clock);
        assert_eq!(
            sender.device_url(ApnsEnvironment::Production, "ab12"),
            "https://api.push.apple.com/3/device/ab12"
        );
        assert_eq!(
            sender.device_url(ApnsEnvironment::Development, "ab12"),
            "https://api.sandbox.push.apple.com/3/device/ab12"
        );
        sender.endpoint = Some(Url::parse("https://127.0.0.1:8443/").unwrap());
        assert_eq!(
            sender.device_url(ApnsEnvironment::Production, "ab12"),
            "https://127.0.0.1:8443/3/device/ab12"
        );
        assert!(!valid_device_token("../../x"));
        assert!(valid_device_token("0123abcDEF"));
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(classify(StatusCode::OK, ""), Answer::Delivered);
        assert_eq!(
            classify(StatusCode::GONE, "Unregistered"),
            Answer::Failed(PushError::Unregistered)
        );
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, "BadDeviceToken"),
            Answer::Failed(PushError::Unregistered)
        );
        assert_eq!(
            classify(StatusCode::FORBIDDEN, "ExpiredProviderToken"),
            Answer::TokenExpired
        );
        assert!(matches!(
            classify(StatusCode::FORBIDDEN, "InvalidProviderToken"),
            Answer::Failed(PushError::Rejected(why)) if why.contains("InvalidProviderToken")
        ));
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, "DeviceTokenNotForTopic"),
            Answer::Failed(PushError::Rejected(_))
        ));
        for status in [
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            assert!(matches!(
                classify(status, "TooManyRequests"),
                Answer::Failed(PushError::Unavailable(_))
            ));
        }
        assert!(matches!(
            classify(StatusCode::MOVED_PERMANENTLY, ""),
            Answer::Failed(PushError::Rejected(why)) if why.contains("redirect")
        ));
    }
}
