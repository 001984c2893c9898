//! Devices: enrolled phone apps, their public keys and push registrations, the applications they
//! belong to, and the enrollment rules (push enrollment modes). The cryptography of the device
//! protocol (`docs/device-protocol.md`) lives in `device_crypto`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::clock::Timestamp;

/// A device id: 32 random bytes as 64 lower-case hex characters (the reference's shape).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
        Self(hex::encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a device id (64 lower-case hex characters)")]
pub struct InvalidDeviceId;

impl FromStr for DeviceId {
    type Err = InvalidDeviceId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        (s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Self(s.to_owned()))
            .ok_or(InvalidDeviceId)
    }
}

impl TryFrom<String> for DeviceId {
    type Error = InvalidDeviceId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Ios,
    Android,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Android => "android",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown platform '{0}' (expected ios or android)")]
pub struct UnknownPlatform(pub String);

impl FromStr for Platform {
    type Err = UnknownPlatform;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ios" => Ok(Platform::Ios),
            "android" => Ok(Platform::Android),
            other => Err(UnknownPlatform(other.to_owned())),
        }
    }
}

/// A P-256 public key as sent on the wire: the SEC1 uncompressed point (65 bytes). Checked to be
/// a valid point when it is parsed (`device_crypto::parse_public_key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyBytes(#[serde(with = "base64url")] pub Vec<u8>);

/// The public keys a device enrolled. `signing` and `encryption` always; the others when the
/// application allows them and the app sent them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeys {
    pub signing: PublicKeyBytes,
    pub encryption: PublicKeyBytes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<PublicKeyBytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub biometric: Option<PublicKeyBytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_authenticator: Option<PublicKeyBytes>,
}

/// Where pushes for a device go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRegistration {
    /// The application version (its push config, APNs environment and bundle id).
    pub version: String,
    pub platform: Platform,
    /// The APNs device token or FCM registration token. Treated as a secret in logs.
    pub token: String,
    pub registered_at: Timestamp,
}

/// One enrolled app installation of one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: DeviceId,
    pub user_id: String,
    /// The configured application id.
    pub application: String,
    pub name: String,
    pub platform: Platform,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    pub keys: DeviceKeys,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushRegistration>,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Timestamp>,
}

/// Which devices of one user may hold a push registration for the same application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PushEnrollmentMode {
    /// A second device for the same application is refused.
    #[default]
    Single,
    /// A new device takes over: the others' push registrations are dropped.
    Override,
    /// Any number (API v4 only; v2 and v3 answer 404 while it is on).
    Multiple,
}

impl PushEnrollmentMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PushEnrollmentMode::Single => "single",
            PushEnrollmentMode::Override => "override",
            PushEnrollmentMode::Multiple => "multiple",
        }
    }
}

impl FromStr for PushEnrollmentMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "single" => Ok(Self::Single),
            "override" => Ok(Self::Override),
            "multiple" => Ok(Self::Multiple),
            other => Err(other.to_owned()),
        }
    }
}

/// What registering a push token came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushRegistrationOutcome {
    /// Registered; in override mode, the devices whose registrations were dropped.
    Registered {
        replaced: Vec<DeviceId>,
    },
    /// Single mode and another device of the user holds a registration for the application.
    AlreadyEnrolled(DeviceId),
    /// The token is registered to another device.
    TokenInUse,
    UnknownDevice,
}

/// The decision of `register_push` given the user's other devices of the same application that
/// hold a push registration: pure, so both stores apply the same rule inside their atomic step.
pub fn push_enrollment_decision(
    mode: PushEnrollmentMode,
    others_with_push: &[DeviceId],
) -> Result<Vec<DeviceId>, DeviceId> {
    match (mode, others_with_push.first()) {
        (PushEnrollmentMode::Single, Some(existing)) => Err(existing.clone()),
        (PushEnrollmentMode::Override, _) => Ok(others_with_push.to_vec()),
        _ => Ok(Vec::new()),
    }
}

/// Which key authorised an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Authenticator {
    /// The device's signing key alone (method `push`).
    Device,
    Pin,
    Biometric,
    CustomAuthenticator,
}

impl Authenticator {
    pub fn as_str(self) -> &'static str {
        match self {
            Authenticator::Device => "device",
            Authenticator::Pin => "pin",
            Authenticator::Biometric => "biometric",
            Authenticator::CustomAuthenticator => "custom_authenticator",
        }
    }
}

/// Whether a PIN answer may be checked at all. The attempt is counted before its check (and
/// the count settled after: reset when right, `PinFailure` when wrong), so that answers
/// arriving together can never check more PINs than the limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinCheck {
    /// Counted; check it. `counted`: the attempts counted in a row, this one included.
    Allowed {
        counted: u32,
    },
    /// The limit is taken by attempts already counted: not checked (answered as a device
    /// that is being disconnected, whatever the PIN).
    Exhausted,
    UnknownDevice,
}

/// The pure rule for starting a check: `counted` attempts are already counted in a row.
pub fn pin_check_allowed(counted: u32, max: u32) -> bool {
    max == 0 || counted < max
}

/// What a failed PIN did to the device's counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinFailure {
    /// Counted; `remaining` more wrong PINs are allowed (`None`: unlimited).
    Counted {
        failures: u32,
        remaining: Option<u32>,
    },
    /// That was the last allowed: the device is disconnected (deleted with its push registration).
    Disconnected {
        failures: u32,
    },
    UnknownDevice,
}

/// The pure PIN rule: after `failures` wrong PINs in a row, with `max` allowed (0 = unlimited).
pub fn pin_failure(failures: u32, max: u32) -> PinFailure {
    match max {
        0 => PinFailure::Counted {
            failures,
            remaining: None,
        },
        max if failures >= max => PinFailure::Disconnected { failures },
        max => PinFailure::Counted {
            failures,
            remaining: Some(max - failures),
        },
    }
}

mod base64url {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        URL_SAFE_NO_PAD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> DeviceId {
        format!("{n:064x}").parse().unwrap()
    }

    #[test]
    fn device_ids_are_64_lower_hex() {
        let random = DeviceId::random();
        assert_eq!(random.as_str().parse::<DeviceId>(), Ok(random.clone()));
        assert!("ABC".parse::<DeviceId>().is_err());
        assert!("A".repeat(64).parse::<DeviceId>().is_err());
        assert_ne!(DeviceId::random(), random);
    }

    #[test]
    fn enrollment_modes_decide_as_the_spec_says() {
        let others = [id(1)];
        assert_eq!(
            push_enrollment_decision(PushEnrollmentMode::Single, &others),
            Err(id(1))
        );
        assert_eq!(
            push_enrollment_decision(PushEnrollmentMode::Single, &[]),
            Ok(vec![])
        );
        assert_eq!(
            push_enrollment_decision(PushEnrollmentMode::Override, &others),
            Ok(vec![id(1)])
        );
        assert_eq!(
            push_enrollment_decision(PushEnrollmentMode::Multiple, &others),
            Ok(vec![])
        );
    }

    #[test]
    fn pin_failures_disconnect_at_the_limit() {
        assert_eq!(
            pin_failure(1, 3),
            PinFailure::Counted {
                failures: 1,
                remaining: Some(2)
            }
        );
        assert_eq!(pin_failure(3, 3), PinFailure::Disconnected { failures: 3 });
        assert_eq!(
            pin_failure(50, 0),
            PinFailure::Counted {
                failures: 50,
                remaining: None
            }
        );
    }
}
