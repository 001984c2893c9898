//! Applications: the phone apps devices enroll with, what each allows (PIN, fingerprint, custom
//! authenticator), how many wrong PINs it tolerates, and its versions per platform (which push
//! config delivers to them, the APNs environment and bundle id). Checked at config load.

use std::collections::BTreeMap;

use super::auth_type::Method;
use super::device::{Authenticator, Platform};
use super::push::ApnsEnvironment;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppVersion {
    pub version: String,
    pub platform: Platform,
    /// The `push_configs[].id` that delivers to this version; `None`: no push for it.
    pub push_config: Option<String>,
    pub apns_environment: ApnsEnvironment,
    /// The iOS bundle id (`apns-topic`).
    pub bundle_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    pub id: String,
    pub name: String,
    pub pin: bool,
    pub fingerprint: bool,
    pub custom_authenticator: bool,
    /// Wrong PINs in a row before the device is disconnected; 0 = unlimited.
    pub max_pin_attempts: u32,
    pub versions: Vec<AppVersion>,
}

impl Application {
    pub fn version(&self, version: &str, platform: Platform) -> Option<&AppVersion> {
        self.versions
            .iter()
            .find(|v| v.version == version && v.platform == platform)
    }

    /// Whether the application lets `method` be used at all (a PIN method needs PIN
    /// authentication enabled, and so on).
    pub fn supports(&self, method: Method) -> bool {
        match method {
            Method::Push | Method::Otp => true,
            Method::PushWithPin => self.pin,
            Method::PushWithFingerprint => self.fingerprint || self.pin,
            Method::PushWithCustomAuthenticator => self.custom_authenticator || self.pin,
            Method::Sms => false,
        }
    }
}

/// The authenticators that may answer a push of `method` (the spec: fingerprint falls back to
/// the PIN, so does the custom authenticator).
pub fn accepted_authenticators(method: Method) -> &'static [Authenticator] {
    match method {
        Method::Push => &[Authenticator::Device],
        Method::PushWithPin => &[Authenticator::Pin],
        Method::PushWithFingerprint => &[Authenticator::Biometric, Authenticator::Pin],
        Method::PushWithCustomAuthenticator => {
            &[Authenticator::CustomAuthenticator, Authenticator::Pin]
        }
        Method::Otp => &[Authenticator::Device],
        Method::Sms => &[],
    }
}

/// All configured applications by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applications {
    by_id: BTreeMap<String, Application>,
}

impl Applications {
    pub fn new(applications: Vec<Application>) -> Self {
        Self {
            by_id: applications
                .into_iter()
                .map(|app| (app.id.clone(), app))
                .collect(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Application> {
        self.by_id.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Application> {
        self.by_id.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_and_custom_authenticator_fall_back_to_the_pin() {
        assert_eq!(
            accepted_authenticators(Method::PushWithFingerprint),
            &[Authenticator::Biometric, Authenticator::Pin]
        );
        assert_eq!(
            accepted_authenticators(Method::Push),
            &[Authenticator::Device]
        );
        let app = Application {
            id: "a".into(),
            name: "A".into(),
            pin: true,
            fingerprint: false,
            custom_authenticator: false,
            max_pin_attempts: 3,
            versions: vec![],
        };
        assert!(app.supports(Method::PushWithPin));
        assert!(app.supports(Method::PushWithFingerprint));
        let no_pin = Application { pin: false, ..app };
        assert!(!no_pin.supports(Method::PushWithPin));
        assert!(!no_pin.supports(Method::PushWithFingerprint));
        assert!(no_pin.supports(Method::Push));
    }
}
