//! Devices: one-time enrollment codes for portals, key enrollment of phone apps, verification of
//! every signed device request (timestamp window, single-use nonce, signature), push
//! registration under the enrollment mode, and the End User views of a user's devices.
//! The protocol is `docs/device-protocol.md`.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::application::Applications;
use crate::domain::clock::SharedClock;
use crate::domain::code::SecretKey;
use crate::domain::device::{
    Device, DeviceId, DeviceKeys, Platform, PublicKeyBytes, PushEnrollmentMode, PushRegistration,
    PushRegistrationOutcome,
};
use crate::domain::device_crypto::{self, PrivateKey};
use crate::domain::ports::{DeviceStore, StoreError};
use crate::telemetry::audit::AuditEvent;

/// How far a request's timestamp may be from our clock.
pub const TIMESTAMP_WINDOW: Duration = Duration::from_secs(120);
/// How long a nonce is remembered: longer than the window on both sides, so a replay within
/// the window is always caught.
pub const NONCE_MEMORY: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("key enrollment is disabled")]
    EnrollmentDisabled,
    #[error("push enrollment is disabled")]
    PushEnrollmentDisabled,
    /// Unknown, used or expired: one answer for all.
    #[error("invalid enrollment code")]
    InvalidCode,
    #[error("unknown application '{0}'")]
    UnknownApplication(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Unknown device, stale timestamp, replayed nonce or bad signature: one answer for all.
    #[error("invalid signature")]
    InvalidSignature,
    #[error("another device of this user holds the push registration for this application")]
    AlreadyEnrolled,
    #[error("the push token is registered to another device")]
    TokenInUse,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A fresh enrollment code for a portal to show.
#[derive(Debug)]
pub struct EnrollmentCode {
    pub code: String,
    pub expires_in: Duration,
}

/// What the phone sends to enroll.
#[derive(Debug, Clone)]
pub struct EnrollRequest {
    pub code: String,
    pub application: String,
    pub name: String,
    pub platform: Platform,
    pub model: Option<String>,
    pub os_version: Option<String>,
    pub keys: DeviceKeys,
    pub proof: String,
}

#[derive(Debug)]
pub struct Enrolled {
    pub device: Device,
    pub server_public_key: PublicKeyBytes,
}

/// The parts of a signed request the signature covers, as received.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub device_id: &'a str,
    pub timestamp: &'a str,
    pub nonce: &'a str,
    pub signature: &'a str,
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub body: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnrollmentRules {
    pub enabled: bool,
    pub code_ttl: Duration,
    pub unique_keys_per_enrollment: bool,
    pub push_enrollment_enabled: bool,
    pub mode: PushEnrollmentMode,
}

#[derive(Clone)]
pub struct DeviceService {
    store: Arc<dyn DeviceStore>,
    clock: SharedClock,
    secret: SecretKey,
    applications: Applications,
    rules: EnrollmentRules,
}

impl DeviceService {
    pub fn new(
        store: Arc<dyn DeviceStore>,
        clock: SharedClock,
        secret: SecretKey,
        applications: Applications,
        rules: EnrollmentRules,
    ) -> Self {
        Self {
            store,
            clock,
            secret,
            applications,
            rules,
        }
    }

    pub fn applications(&self) -> &Applications {
        &self.applications
    }

    pub fn rules(&self) -> EnrollmentRules {
        self.rules
    }

    pub fn store(&self) -> &Arc<dyn DeviceStore> {
        &self.store
    }

    /// A one-time code that lets a phone enroll for `user_id`.
    pub async fn create_enrollment_code(
        &self,
        user_id: &str,
    ) -> Result<EnrollmentCode, DeviceError> {
        if !self.rules.enabled {
            return Err(DeviceError::EnrollmentDisabled);
        }
        let code = device_crypto::generate_enrollment_code();
        let hash = device_crypto::enrollment_code_hash(&self.secret, &code);
        self.store
            .create_enrollment_code(&hash, user_id, self.rules.code_ttl)
            .await?;
        AuditEvent {
            event: "ENROLLMENT_INITIALIZED",
            user_id: Some(user_id),
            ..AuditEvent::default()
        }
        .emit();
        Ok(EnrollmentCode {
            code,
            expires_in: self.rules.code_ttl,
        })
    }

    /// Whether `code` is a live enrollment code of `user_id` (for the QR endpoint).
    pub async fn code_is_live(&self, user_id: &str, code: &str) -> Result<bool, DeviceError> {
        let Some(code) = device_crypto::normalize_enrollment_code(code) else {
            return Ok(false);
        };
        let hash = device_crypto::enrollment_code_hash(&self.secret, &code);
        Ok(self.store.peek_enrollment_code(&hash).await?.as_deref() == Some(user_id))
    }

    /// The server key pair for a device: shared, or its own with unique keys per enrollment.
    pub fn server_key(&self, device: &DeviceId) -> PrivateKey {
        let scope = self.rules.unique_keys_per_enrollment.then_some(device);
        PrivateKey(device_crypto::server_secret(&self.secret, scope))
    }

    fn server_public_key(&self, device: &DeviceId) -> PublicKeyBytes {
        let scope = self.rules.unique_keys_per_enrollment.then_some(device);
        device_crypto::server_public_key(&self.secret, scope)
    }

    /// Checks the keys and the proof first (so a malformed request does not burn the code),
    /// then redeems the code and stores the device.
    pub async fn enroll(&self, request: EnrollRequest) -> Result<Enrolled, DeviceError> {
        if !self.rules.enabled {
            return Err(DeviceError::EnrollmentDisabled);
        }
        let application = self
            .applications
            .get(&request.application)
            .ok_or_else(|| DeviceError::UnknownApplication(request.application.clone()))?;
        let keys = &request.keys;
        let invalid = |what: &str| DeviceError::InvalidRequest(what.to_owned());
        for (name, key) in [
            ("signing", Some(&keys.signing)),
            ("encryption", Some(&keys.encryption)),
            ("pin", keys.pin.as_ref()),
            ("biometric", keys.biometric.as_ref()),
            ("custom_authenticator", keys.custom_authenticator.as_ref()),
        ] {
            if let Some(key) = key
                && device_crypto::parse_public_key(key).is_err()
            {
                return Err(invalid(&format!("keys.{name} is not a P-256 public key")));
            }
        }
        if application.pin && keys.pin.is_none() {
            return Err(invalid("keys.pin is required: the application uses a PIN"));
        }
        if keys.biometric.is_some() && !application.fingerprint {
            return Err(invalid(
                "keys.biometric: the application does not allow fingerprints",
            ));
        }
        if keys.custom_authenticator.is_some() && !application.custom_authenticator {
            return Err(invalid(
                "keys.custom_authenticator: the application does not allow one",
            ));
        }
        let name = request.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(invalid("name must be 1 to 100 characters"));
        }
        let code = device_crypto::normalize_enrollment_code(&request.code)
            .ok_or(DeviceError::InvalidCode)?;
        if device_crypto::verify(
            &keys.signing,
            device_crypto::enroll_statement(&code).as_bytes(),
            &request.proof,
        )
        .is_err()
        {
            return Err(invalid("proof does not verify with keys.signing"));
        }
        let hash = device_crypto::enrollment_code_hash(&self.secret, &code);
        let user_id = self
            .store
            .redeem_enrollment_code(&hash)
            .await?
            .ok_or(DeviceError::InvalidCode)?;
        let device = Device {
            id: DeviceId::random(),
            user_id,
            application: application.id.clone(),
            name: name.to_owned(),
            platform: request.platform,
            model: request.model.filter(|m| !m.trim().is_empty()),
            os_version: request.os_version.filter(|v| !v.trim().is_empty()),
            keys: request.keys,
            push: None,
            created_at: self.clock.now(),
            last_used_at: None,
        };
        self.store.insert_device(&device).await?;
        AuditEvent {
            event: "KEY_ENROLLMENT_SUCCESS",
            user_id: Some(&device.user_id),
            detail: Some(device.id.as_str()),
            ..AuditEvent::default()
        }
        .emit();
        let server_public_key = self.server_public_key(&device.id);
        Ok(Enrolled {
            device,
            server_public_key,
        })
    }

    /// Verifies a signed device request and returns its device. Every failure is the same
    /// `InvalidSignature`, so a caller learns nothing about which check failed; the cause is
    /// logged at debug level.
    pub async fn authenticate(&self, request: SignedRequest<'_>) -> Result<Device, DeviceError> {
        let reject = |why: &str| {
            tracing::debug!(cause = why, "device request refused");
            DeviceError::InvalidSignature
        };
        let id: DeviceId = request.device_id.parse().map_err(|_| reject("device id"))?;
        let timestamp: u64 = request.timestamp.parse().map_err(|_| reject("timestamp"))?;
        let now = self.clock.now().millis();
        let window = TIMESTAMP_WINDOW.as_millis() as u64;
        if timestamp.abs_diff(now) > window {
            return Err(reject("timestamp outside the window"));
        }
        if request.nonce.len() < 16 || request.nonce.len() > 64 {
            return Err(reject("nonce length"));
        }
        let device = self
            .store
            .get_device(&id)
            .await?
            .ok_or_else(|| reject("unknown device"))?;
        let canonical = device_crypto::canonical_request(
            request.method,
            request.path_and_query,
            timestamp,
            request.nonce,
            request.body,
        );
        device_crypto::verify(
            &device.keys.signing,
            canonical.as_bytes(),
            request.signature,
        )
        .map_err(|_| reject("signature"))?;
        // Only a correctly signed request may use up a nonce, so nobody can burn another
        // device's nonces.
        let nonce_key = format!("nonce:{}:{}", id, request.nonce);
        if !self.store.claim_once(&nonce_key, NONCE_MEMORY).await? {
            return Err(reject("replayed nonce"));
        }
        Ok(device)
    }

    /// Registers the device's push token for an application version.
    pub async fn register_push(
        &self,
        device: &Device,
        application: &str,
        version: &str,
        platform: Platform,
        token: &str,
    ) -> Result<Vec<DeviceId>, DeviceError> {
        if !self.rules.push_enrollment_enabled {
            return Err(DeviceError::PushEnrollmentDisabled);
        }
        if application != device.application {
            return Err(DeviceError::InvalidRequest(format!(
                "the device is enrolled for application '{}', not '{application}'",
                device.application
            )));
        }
        let app = self
            .applications
            .get(application)
            .ok_or_else(|| DeviceError::UnknownApplication(application.to_owned()))?;
        let app_version = app.version(version, platform).ok_or_else(|| {
            DeviceError::InvalidRequest(format!(
                "application '{application}' has no version '{version}' for {platform}"
            ))
        })?;
        if app_version.push_config.is_none() {
            return Err(DeviceError::InvalidRequest(format!(
                "version '{version}' for {platform} has no push config"
            )));
        }
        let token = token.trim();
        if token.is_empty() || token.len() > 4096 {
            return Err(DeviceError::InvalidRequest(
                "token must be 1 to 4096 characters".into(),
            ));
        }
        let registration = PushRegistration {
            version: version.to_owned(),
            platform,
            token: token.to_owned(),
            registered_at: self.clock.now(),
        };
        let outcome = self
            .store
            .register_push(&device.id, &registration, self.rules.mode)
            .await?;
        let event = |name: &'static str| AuditEvent {
            event: name,
            user_id: Some(&device.user_id),
            detail: Some(device.id.as_str()),
            ..AuditEvent::default()
        };
        match outcome {
            PushRegistrationOutcome::Registered { replaced } => {
                if !replaced.is_empty() {
                    event("PUSH_ENROLLMENT_DROP_EXISTING_PUSH_ENROLLMENT").emit();
                }
                event("PUSH_ENROLLMENT_SUCCESS").emit();
                Ok(replaced)
            }
            PushRegistrationOutcome::AlreadyEnrolled(_) => {
                event("PUSH_ENROLLMENT_USER_ALREADY_ENROLLED").emit();
                Err(DeviceError::AlreadyEnrolled)
            }
            PushRegistrationOutcome::TokenInUse => {
                event("PUSH_ENROLLMENT_EXISTING_PUSH_TOKEN").emit();
                Err(DeviceError::TokenInUse)
            }
            PushRegistrationOutcome::UnknownDevice => Err(DeviceError::InvalidSignature),
        }
    }

    pub async fn drop_push(&self, device: &Device) -> Result<bool, DeviceError> {
        Ok(self.store.drop_push(&device.id).await?)
    }

    pub async fn devices_of_user(&self, user_id: &str) -> Result<Vec<Device>, DeviceError> {
        Ok(self.store.devices_of_user(user_id).await?)
    }

    pub async fn get_device(&self, id: &DeviceId) -> Result<Option<Device>, DeviceError> {
        Ok(self.store.get_device(id).await?)
    }
}
