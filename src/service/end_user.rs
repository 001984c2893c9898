//! The End User API's device management: list a user's devices, delete one, all or a
//! selection, and withdraw parts of an enrollment (the biometric key, the push registration,
//! the whole mobile authentication enrollment). Every operation touches only devices of the
//! named user: another user's device id is treated like an unknown one, and nothing changes.
//!
//! A device here is its mobile authentication enrollment (keys and push registration), so
//! withdrawing mobile authentication deletes the device: its signed requests fail from then on.
//!
//! May import: domain, telemetry, sibling services.

use crate::domain::device::{Device, DeviceId};
use crate::domain::ports::StoreError;
use crate::service::devices::{DeviceError, DeviceService};
use crate::telemetry::audit::AuditEvent;

#[derive(Debug, thiserror::Error)]
pub enum EndUserError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DeviceError> for EndUserError {
    fn from(error: DeviceError) -> Self {
        match error {
            DeviceError::Store(error) => EndUserError::Store(error),
            // The read-only device calls fail only in the store.
            other => EndUserError::Store(StoreError::Unavailable(other.to_string())),
        }
    }
}

/// What a change did: `Unchanged` for an unknown id, another user's device, or a device that
/// had nothing to withdraw (the API answers 204 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Done,
    Unchanged,
}

#[derive(Clone)]
pub struct EndUserDevices {
    devices: DeviceService,
}

impl EndUserDevices {
    pub fn new(devices: DeviceService) -> Self {
        Self { devices }
    }

    /// The configured application's display name, or its id when it is no longer configured.
    pub fn application_name<'a>(&'a self, device: &'a Device) -> &'a str {
        self.devices
            .applications()
            .get(&device.application)
            .map_or(device.application.as_str(), |app| app.name.as_str())
    }

    /// The user's devices, oldest first.
    pub async fn list(&self, user_id: &str) -> Result<Vec<Device>, EndUserError> {
        Ok(self.devices.devices_of_user(user_id).await?)
    }

    /// The device `device_id` names, when it is `user_id`'s. Ids are matched case-insensitively
    /// (the reference shows them upper case; ours are lower case).
    async fn owned(&self, user_id: &str, device_id: &str) -> Result<Option<Device>, EndUserError> {
        let Ok(id) = device_id.to_ascii_lowercase().parse::<DeviceId>() else {
            return Ok(None);
        };
        Ok(self
            .devices
            .get_device(&id)
            .await?
            .filter(|device| device.user_id == user_id))
    }

    fn audit(event: &'static str, device: &Device) {
        AuditEvent {
            event,
            user_id: Some(&device.user_id),
            detail: Some(device.id.as_str()),
            ..AuditEvent::default()
        }
        .emit();
    }

    async fn remove(&self, device: &Device, event: &'static str) -> Result<Change, EndUserError> {
        if self.devices.store().delete_device(&device.id).await? {
            Self::audit(event, device);
            Ok(Change::Done)
        } else {
            Ok(Change::Unchanged)
        }
    }

    /// Deletes the user's device: keys, push registration, pending list and PIN counter.
    pub async fn delete(&self, user_id: &str, device_id: &str) -> Result<Change, EndUserError> {
        match self.owned(user_id, device_id).await? {
            Some(device) => self.remove(&device, "DEVICE_DELETED").await,
            None => Ok(Change::Unchanged),
        }
    }

    /// Deletes each listed device of the user; returns the ids (as given) that could not be
    /// deleted because the store failed on them. Ids naming no device of the user count as
    /// deleted: there is nothing of theirs left.
    pub async fn delete_selected(&self, user_id: &str, device_ids: &[String]) -> Vec<String> {
        let mut failed = Vec::new();
        for device_id in device_ids {
            if let Err(error) = self.delete(user_id, device_id).await {
                tracing::warn!(%error, "End User API: device not deleted");
                failed.push(device_id.clone());
            }
        }
        failed
    }

    /// Deletes all of the user's devices; returns the ids the store failed on.
    pub async fn delete_all(&self, user_id: &str) -> Result<Vec<String>, EndUserError> {
        let mut failed = Vec::new();
        for device in self.list(user_id).await? {
            if let Err(error) = self.remove(&device, "DEVICE_DELETED").await {
                tracing::warn!(%error, "End User API: device not deleted");
                failed.push(device.id.to_string());
            }
        }
        Ok(failed)
    }

    /// Drops the biometric key: fingerprint answers stop working, the PIN still answers.
    pub async fn disable_fingerprint(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Change, EndUserError> {
        let Some(mut device) = self.owned(user_id, device_id).await? else {
            return Ok(Change::Unchanged);
        };
        if device.keys.biometric.take().is_none() {
            return Ok(Change::Unchanged);
        }
        if self.devices.store().update_device(&device).await? {
            Self::audit("FINGERPRINT_DISABLED", &device);
            Ok(Change::Done)
        } else {
            Ok(Change::Unchanged)
        }
    }

    /// Withdraws the device from every kind of mobile authentication: keys and push
    /// registration go, i.e. the device is deleted.
    pub async fn disable_mobile_authentication(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Change, EndUserError> {
        match self.owned(user_id, device_id).await? {
            Some(device) => self.remove(&device, "MOBILE_AUTHENTICATION_DISABLED").await,
            None => Ok(Change::Unchanged),
        }
    }

    /// Drops only the push registration; the keys stay (OTP and the pending list still work).
    pub async fn disable_push(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Change, EndUserError> {
        let Some(device) = self.owned(user_id, device_id).await? else {
            return Ok(Change::Unchanged);
        };
        if self.devices.store().drop_push(&device.id).await? {
            Self::audit("PUSH_AUTHENTICATION_DISABLED", &device);
            Ok(Change::Done)
        } else {
            Ok(Change::Unchanged)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::domain::application::{Application, Applications};
    use crate::domain::clock::{SharedClock, SystemClock, Timestamp};
    use crate::domain::code::SecretKey;
    use crate::domain::device::{DeviceKeys, Platform, PublicKeyBytes, PushEnrollmentMode};
    use crate::domain::ports::DeviceStore;
    use crate::service::devices::EnrollmentRules;
    use crate::store::devices::memory::MemoryDeviceStore;

    fn device(n: u8, user: &str) -> Device {
        Device {
            id: format!("{n:064x}").parse().unwrap(),
            user_id: user.into(),
            application: "bank-app".into(),
            name: format!("phone {n}"),
            platform: Platform::Android,
            model: None,
            os_version: None,
            keys: DeviceKeys {
                signing: PublicKeyBytes(vec![4; 65]),
                encryption: PublicKeyBytes(vec![4; 65]),
                pin: None,
                biometric: Some(PublicKeyBytes(vec![4; 65])),
                custom_authenticator: None,
            },
            push: None,
            created_at: Timestamp(1),
            last_used_at: None,
        }
    }

    async fn service(devices: &[Device]) -> (EndUserDevices, Arc<dyn DeviceStore>) {
        let clock: SharedClock = Arc::new(SystemClock);
        let store: Arc<dyn DeviceStore> = Arc::new(MemoryDeviceStore::new(clock.clone()));
        for device in devices {
            store.insert_device(device).await.unwrap();
        }
        let applications = Applications::new(vec![Application {
            id: "bank-app".into(),
            name: "Bank app".into(),
            pin: true,
            fingerprint: true,
            custom_authenticator: false,
            max_pin_attempts: 3,
            versions: vec![],
        }]);
        let rules = EnrollmentRules {
            enabled: true,
            code_ttl: Duration::from_secs(60),
            unique_keys_per_enrollment: false,
            push_enrollment_enabled: true,
            mode: PushEnrollmentMode::Single,
        };
        let devices = DeviceService::new(
            store.clone(),
            clock,
            SecretKey::new(vec![7; 32]),
            applications,
            rules,
        );
        (EndUserDevices::new(devices), store)
    }

    #[tokio::test]
    async fn another_users_device_is_left_alone() {
        let bobs = device(2, "bob");
        let (service, store) = service(&[device(1, "ann"), bobs.clone()]).await;
        let id = bobs.id.to_string();
        assert_eq!(service.delete("ann", &id).await.unwrap(), Change::Unchanged);
        assert_eq!(
            service.disable_fingerprint("ann", &id).await.unwrap(),
            Change::Unchanged
        );
        assert_eq!(
            service
                .disable_mobile_authentication("ann", &id)
                .await
                .unwrap(),
            Change::Unchanged
        );
        assert!(service.delete_selected("ann", &[id]).await.is_empty());
        assert_eq!(store.get_device(&bobs.id).await.unwrap(), Some(bobs));
    }

    #[tokio::test]
    async fn ids_match_in_any_case_and_fingerprint_goes_once() {
        let anns = device(0xab, "ann");
        let (service, store) = service(std::slice::from_ref(&anns)).await;
        let upper = anns.id.to_string().to_ascii_uppercase();
        assert_eq!(
            service.disable_fingerprint("ann", &upper).await.unwrap(),
            Change::Done
        );
        let stored = store.get_device(&anns.id).await.unwrap().unwrap();
        assert_eq!(stored.keys.biometric, None);
        assert_eq!(stored.keys.signing, anns.keys.signing);
        assert_eq!(
            service.disable_fingerprint("ann", &upper).await.unwrap(),
            Change::Unchanged
        );
        assert_eq!(service.application_name(&stored), "Bank app");
        assert_eq!(
            service.delete_all("ann").await.unwrap(),
            Vec::<String>::new()
        );
        assert!(service.list("ann").await.unwrap().is_empty());
    }
}
