//! Availability: which auth types a user can be authenticated with right now, for the whole
//! user, one device (API v4) or one application (API v3). A type counts as available when its
//! own method or a type of its fallback chain can start, with the same rules init applies:
//! a push method needs a device that can answer it (`PushService::push_devices`), OTP an
//! enrolled device, SMS nothing (the portal supplies the number at init).
//!
//! May import: domain, telemetry, sibling services.

use std::collections::BTreeMap;

use crate::domain::auth_type::{AuthTypes, Method};
use crate::domain::device::{Device, DeviceId};
use crate::domain::ports::StoreError;
use crate::service::devices::DeviceError;
use crate::service::push::{PushService, PushServiceError};

#[derive(Debug, thiserror::Error)]
pub enum AvailabilityError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<PushServiceError> for AvailabilityError {
    fn from(error: PushServiceError) -> Self {
        match error {
            PushServiceError::Store(error) => AvailabilityError::Store(error),
            // `push_devices` only reads the store; anything else is a store fault too.
            other => AvailabilityError::Store(StoreError::Unavailable(other.to_string())),
        }
    }
}

impl From<DeviceError> for AvailabilityError {
    fn from(error: DeviceError) -> Self {
        match error {
            DeviceError::Store(error) => AvailabilityError::Store(error),
            other => AvailabilityError::Store(StoreError::Unavailable(other.to_string())),
        }
    }
}

/// Which of the user's devices count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// All of them (the `/enabled` list).
    User,
    /// This device only (v4 `/device/{id}/enabled`).
    Device(&'a DeviceId),
    /// Devices of this application only (v3 `/application/{id}/enabled`).
    Application(&'a str),
}

/// One available type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvailableType {
    pub name: String,
    pub method: Method,
    /// Push types: whether an SMS type is in the fallback chain.
    pub sms_fallback_allowed: bool,
    /// Push types: the devices in scope that can answer a push of the type or of a push type in
    /// its chain, in chain order, each once.
    pub push_devices: Vec<Device>,
}

/// What the user's devices in scope can do: the input of `decide`.
#[derive(Debug, Clone, Default)]
pub struct Reach {
    /// Whether push may start at all through the asking API version (authorization on, and not
    /// v2/v3 while several devices per application are allowed).
    pub push_allowed: bool,
    /// Per push method, the devices in scope that can answer it.
    pub push: BTreeMap<Method, Vec<Device>>,
    /// Whether any device is in scope (OTP needs one).
    pub any_device: bool,
}

impl Reach {
    fn can_start(&self, method: Method) -> bool {
        match method {
            Method::Sms => true,
            Method::Otp => self.any_device,
            push => self.push_allowed && self.push.get(&push).is_some_and(|d| !d.is_empty()),
        }
    }
}

/// The available types, by name: pure, so the rule is tested without a store.
pub fn decide(auth_types: &AuthTypes, reach: &Reach) -> Vec<AvailableType> {
    let mut available = Vec::new();
    for auth_type in auth_types.iter() {
        // Init refuses a push type outright where push cannot start through this version
        // (v2/v3 under `multiple`), fallback or not: so does availability.
        if auth_type.method.is_push() && !reach.push_allowed {
            continue;
        }
        let chain = auth_types.fallback_chain(&auth_type.name);
        if !chain.iter().any(|link| reach.can_start(link.method)) {
            continue;
        }
        let mut push_devices: Vec<Device> = Vec::new();
        if auth_type.method.is_push() {
            for link in chain.iter().filter(|link| link.method.is_push()) {
                for device in reach.push.get(&link.method).into_iter().flatten() {
                    if !push_devices.iter().any(|seen| seen.id == device.id) {
                        push_devices.push(device.clone());
                    }
                }
            }
        }
        available.push(AvailableType {
            name: auth_type.name.clone(),
            method: auth_type.method,
            sms_fallback_allowed: auth_type.method.is_push()
                && chain.iter().skip(1).any(|link| link.method == Method::Sms),
            push_devices,
        });
    }
    available
}

#[derive(Clone)]
pub struct AvailabilityService {
    push: PushService,
    push_authorization_enabled: bool,
}

impl AvailabilityService {
    pub fn new(push: PushService, push_authorization_enabled: bool) -> Self {
        Self {
            push,
            push_authorization_enabled,
        }
    }

    /// The types `user_id` can use within `scope`. A device or application scope the user has
    /// no device in yields nothing (the reference: unknown user or device, empty list).
    /// `version_allows_push`: false for API versions that cannot name a push target in the
    /// configured enrollment mode.
    pub async fn available(
        &self,
        user_id: &str,
        scope: Scope<'_>,
        version_allows_push: bool,
    ) -> Result<Vec<AvailableType>, AvailabilityError> {
        let in_scope = |device: &Device| match scope {
            Scope::User => true,
            Scope::Device(id) => &device.id == id,
            Scope::Application(app) => device.application == app,
        };
        let devices = self.push.devices().devices_of_user(user_id).await?;
        let any_device = devices.iter().any(in_scope);
        if scope != Scope::User && !any_device {
            return Ok(Vec::new());
        }
        let push_allowed = self.push_authorization_enabled && version_allows_push;
        let mut push = BTreeMap::new();
        if push_allowed {
            for method in Method::ALL.into_iter().filter(|m| m.is_push()) {
                let able = self.push.push_devices(user_id, method).await?;
                push.insert(method, able.into_iter().filter(in_scope).collect());
            }
        }
        let reach = Reach {
            push_allowed,
            push,
            any_device,
        };
        Ok(decide(self.push.auth_types(), &reach))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::auth_type::AuthType;
    use crate::domain::clock::Timestamp;
    use crate::domain::device::{DeviceKeys, Platform, PublicKeyBytes};

    fn auth_type(name: &str, method: Method, fallback: Option<&str>) -> AuthType {
        AuthType {
            name: name.into(),
            method,
            ttl: Duration::from_secs(60),
            max_attempts: 0,
            max_resends: 0,
            sender_id: None,
            fallback: fallback.map(str::to_owned),
            default_messages: BTreeMap::new(),
            transaction_signing: false,
            number_matching: crate::domain::auth_type::NumberMatching::Off,
        }
    }

    fn types() -> AuthTypes {
        AuthTypes::new(vec![
            auth_type("a_pin_or_sms", Method::PushWithPin, Some("e_sms")),
            auth_type(
                "b_finger_then_push",
                Method::PushWithFingerprint,
                Some("c_push"),
            ),
            auth_type("c_push", Method::Push, None),
            auth_type("d_otp", Method::Otp, None),
            auth_type("e_sms", Method::Sms, None),
        ])
        .unwrap()
    }

    fn device(n: u8) -> Device {
        Device {
            id: format!("{n:064x}").parse().unwrap(),
            user_id: "ann".into(),
            application: "bank-app".into(),
            name: format!("phone {n}"),
            platform: Platform::Ios,
            model: None,
            os_version: None,
            keys: DeviceKeys {
                signing: PublicKeyBytes(vec![4; 65]),
                encryption: PublicKeyBytes(vec![4; 65]),
                pin: None,
                biometric: None,
                custom_authenticator: None,
            },
            push: None,
            created_at: Timestamp(0),
            last_used_at: None,
        }
    }

    fn names(available: &[AvailableType]) -> Vec<&str> {
        available.iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn without_devices_only_sms_and_types_falling_back_to_it_are_available() {
        let available = decide(
            &types(),
            &Reach {
                push_allowed: true,
                ..Reach::default()
            },
        );
        assert_eq!(names(&available), ["a_pin_or_sms", "e_sms"]);
        assert!(available[0].sms_fallback_allowed);
        assert!(available[0].push_devices.is_empty());
        assert!(
            !available[1].sms_fallback_allowed,
            "only push types carry it"
        );
    }

    #[test]
    fn a_push_fallback_counts_and_its_devices_are_listed_once() {
        let phone = device(1);
        let reach = Reach {
            push_allowed: true,
            push: BTreeMap::from([
                (Method::Push, vec![phone.clone()]),
                (Method::PushWithFingerprint, vec![]),
            ]),
            any_device: true,
        };
        let available = decide(&types(), &reach);
        assert_eq!(
            names(&available),
            [
                "a_pin_or_sms",
                "b_finger_then_push",
                "c_push",
                "d_otp",
                "e_sms"
            ]
        );
        let finger = &available[1];
        assert!(!finger.sms_fallback_allowed);
        assert_eq!(finger.push_devices, vec![phone.clone()]);
        assert!(
            available[0].push_devices.is_empty(),
            "no device answers a PIN push"
        );
    }

    #[test]
    fn push_types_are_left_out_where_the_version_cannot_push() {
        let reach = Reach {
            push_allowed: false,
            push: BTreeMap::from([(Method::Push, vec![device(1)])]),
            any_device: true,
        };
        assert_eq!(names(&decide(&types(), &reach)), ["d_otp", "e_sms"]);
    }
}
