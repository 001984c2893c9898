//! Push notifications: what a push provider delivers to an enrolled device (`PushMessage`), the
//! payloads APNs and FCM carry (pure builders), how a delivery can fail (`PushError`) and the
//! port the provider adapters implement (`PushSender`).
//!
//! A push carries the transaction id and, when the type shows one, the display message; never
//! the secure message or signing data. Those are not even fields of `PushMessage`: the phone
//! fetches them once over the device API (`docs/device-protocol.md`, "Push transactions").
//!
//! May import: nothing outside `domain`.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::device::Platform;

/// The notification category the reference app registers its approve/deny actions under.
pub const APNS_CATEGORY: &str = "STEPGATE_AUTH";

/// Which APNs host an iOS app version's tokens belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApnsEnvironment {
    #[default]
    Production,
    /// The sandbox: tokens of development builds.
    Development,
}

impl ApnsEnvironment {
    pub fn as_str(self) -> &'static str {
        match self {
            ApnsEnvironment::Production => "production",
            ApnsEnvironment::Development => "development",
        }
    }
}

impl fmt::Display for ApnsEnvironment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown APNs environment '{0}' (expected production or development)")]
pub struct UnknownApnsEnvironment(pub String);

impl FromStr for ApnsEnvironment {
    type Err = UnknownApnsEnvironment;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "production" => Ok(ApnsEnvironment::Production),
            "development" => Ok(ApnsEnvironment::Development),
            other => Err(UnknownApnsEnvironment(other.to_owned())),
        }
    }
}

/// One push to one device.
#[derive(Clone, PartialEq, Eq)]
pub struct PushMessage {
    /// The APNs device token or FCM registration token. A secret: never logged.
    pub token: String,
    pub platform: Platform,
    /// The `push_configs[].id` that delivers it (from the application version).
    pub push_config: String,
    /// The iOS bundle id (`apns-topic`); unused for Android.
    pub topic: Option<String>,
    /// The APNs host; unused for Android.
    pub environment: ApnsEnvironment,
    pub transaction_id: String,
    /// The display message, when the type shows one.
    pub message: Option<String>,
    /// When the transaction expires, in Unix seconds: APNs drops the push after it
    /// (`apns-expiration`), FCM gets the rest as its `ttl`.
    pub expires_at_secs: u64,
}

impl fmt::Debug for PushMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushMessage")
            .field("token", &"***")
            .field("platform", &self.platform)
            .field("push_config", &self.push_config)
            .field("topic", &self.topic)
            .field("environment", &self.environment)
            .field("transaction_id", &self.transaction_id)
            .field("message", &self.message)
            .field("expires_at_secs", &self.expires_at_secs)
            .finish()
    }
}

/// Why a push was not delivered; decides what the caller does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The provider says the token is invalid or no longer registered: drop the registration.
    #[error("the push token is not registered with the provider")]
    Unregistered,
    /// The provider could not be reached or is overloaded: retry later or fall back.
    #[error("push provider unavailable: {0}")]
    Unavailable(String),
    /// The provider refused the request (credentials, topic, payload): a configuration problem.
    #[error("push provider refused the message: {0}")]
    Rejected(String),
    /// No `push_configs` entry has this id (or it serves the other platform).
    #[error("unknown push config '{0}'")]
    UnknownConfig(String),
}

impl PushError {
    /// A bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            PushError::Unregistered => "unregistered",
            PushError::Unavailable(_) => "unavailable",
            PushError::Rejected(_) => "rejected",
            PushError::UnknownConfig(_) => "unknown_config",
        }
    }
}

/// Delivers pushes through one provider account.
#[async_trait]
pub trait PushSender: Send + Sync {
    /// A fixed provider name for metrics (`apns`, `fcm`, `fcm_legacy`).
    fn provider(&self) -> &'static str;

    async fn send(&self, message: &PushMessage) -> Result<(), PushError>;
}

/// The custom keys both providers carry: `og_transaction_id` and, when there is one,
/// `og_message` (the names the reference apps read).
fn custom_keys(message: &PushMessage) -> serde_json::Map<String, Value> {
    let mut keys = serde_json::Map::new();
    keys.insert(
        "og_transaction_id".into(),
        Value::String(message.transaction_id.clone()),
    );
    if let Some(text) = &message.message {
        keys.insert("og_message".into(), Value::String(text.clone()));
    }
    keys
}

/// The APNs JSON body: an alert in the `STEPGATE_AUTH` category (mutable, so the app's service
/// extension may decorate it) whose body is the display message (no alert text without one),
/// and the custom keys beside `aps`.
pub fn apns_payload(message: &PushMessage) -> Value {
    let mut aps = serde_json::Map::new();
    if let Some(text) = &message.message {
        aps.insert("alert".into(), json!({ "body": text }));
    }
    aps.insert("sound".into(), json!("default"));
    aps.insert("category".into(), json!(APNS_CATEGORY));
    aps.insert("mutable-content".into(), json!(1));
    let mut body = custom_keys(message);
    body.insert("aps".into(), Value::Object(aps));
    Value::Object(body)
}

/// The FCM data key `content`: the custom keys as one JSON string (FCM data values are strings).
fn fcm_content(message: &PushMessage) -> String {
    Value::Object(custom_keys(message)).to_string()
}

/// Seconds from `now_secs` until the message expires; zero once it has.
pub fn seconds_left(message: &PushMessage, now_secs: u64) -> u64 {
    message.expires_at_secs.saturating_sub(now_secs)
}

/// The FCM HTTP v1 `messages:send` body: a high-priority data message that lives until the
/// transaction expires.
pub fn fcm_v1_payload(message: &PushMessage, now_secs: u64) -> Value {
    json!({
        "message": {
            "token": message.token,
            "data": { "content": fcm_content(message) },
            "android": {
                "priority": "HIGH",
                "ttl": format!("{}s", seconds_left(message, now_secs)),
            },
        }
    })
}

/// The legacy FCM (`/fcm/send`) body: the same data, high priority, the same lifetime.
pub fn fcm_legacy_payload(message: &PushMessage, now_secs: u64) -> Value {
    json!({
        "to": message.token,
        "data": { "content": fcm_content(message) },
        "priority": "high",
        "time_to_live": seconds_left(message, now_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: Option<&str>) -> PushMessage {
        PushMessage {
            token: "device-token-secret".into(),
            platform: Platform::Ios,
            push_config: "apns-main".into(),
            topic: Some("com.example.bank".into()),
            environment: ApnsEnvironment::Development,
            transaction_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
            message: text.map(str::to_owned),
            expires_at_secs: 1_700_000_300,
        }
    }

    #[test]
    fn apns_payload_carries_the_alert_and_custom_keys() {
        let payload = apns_payload(&message(Some("Approve the transfer?")));
        assert_eq!(
            payload,
            json!({
                "aps": {
                    "alert": { "body": "Approve the transfer?" },
                    "sound": "default",
                    "category": "STEPGATE_AUTH",
                    "mutable-content": 1,
                },
                "og_transaction_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
                "og_message": "Approve the transfer?",
            })
        );
    }

    #[test]
    fn apns_payload_without_a_message_has_no_alert_text() {
        let payload = apns_payload(&message(None));
        assert!(payload["aps"].get("alert").is_none(), "{payload}");
        assert!(payload.get("og_message").is_none(), "{payload}");
        assert_eq!(payload["aps"]["category"], "STEPGATE_AUTH");
        assert_eq!(
            payload["og_transaction_id"],
            "0f8fad5b-d9cb-469f-a165-70867728950e"
        );
    }

    #[test]
    fn fcm_v1_payload_holds_the_content_as_a_json_string() {
        let payload = fcm_v1_payload(&message(Some("Sign in?")), 1_700_000_000);
        let inner = &payload["message"];
        assert_eq!(inner["token"], "device-token-secret");
        assert_eq!(inner["android"], json!({"priority": "HIGH", "ttl": "300s"}));
        let content: Value =
            serde_json::from_str(inner["data"]["content"].as_str().unwrap()).unwrap();
        assert_eq!(
            content,
            json!({"og_transaction_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "og_message": "Sign in?"})
        );
        // An expired message gets no lifetime rather than a wrapped-around one.
        let late = fcm_v1_payload(&message(None), 1_800_000_000);
        assert_eq!(late["message"]["android"]["ttl"], "0s");
    }

    #[test]
    fn fcm_legacy_payload_addresses_the_token() {
        let payload = fcm_legacy_payload(&message(None), 1_700_000_100);
        assert_eq!(payload["to"], "device-token-secret");
        assert_eq!(payload["priority"], "high");
        assert_eq!(payload["time_to_live"], 200);
        let content: Value =
            serde_json::from_str(payload["data"]["content"].as_str().unwrap()).unwrap();
        assert_eq!(
            content,
            json!({"og_transaction_id": "0f8fad5b-d9cb-469f-a165-70867728950e"})
        );
    }

    #[test]
    fn debug_output_hides_the_token() {
        let shown = format!("{:?}", message(Some("m")));
        assert!(!shown.contains("device-token-secret"), "{shown}");
        assert!(shown.contains("apns-main"), "{shown}");
    }

    #[test]
    fn environments_parse() {
        assert_eq!(
            "development".parse::<ApnsEnvironment>(),
            Ok(ApnsEnvironment::Development)
        );
        assert!("sandbox".parse::<ApnsEnvironment>().is_err());
        assert_eq!(ApnsEnvironment::Production.to_string(), "production");
    }
}
