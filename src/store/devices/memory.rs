//! The embedded device store: devices, enrollment codes, claims and pending lists in `HashMap`s
//! behind one std `Mutex`, so every port method is one critical section (never held across an
//! `.await`: there is none inside). Lost on restart.
//!
//! Two indexes are kept beside the devices and changed in the same critical section as them: the
//! devices of each user, and the device holding each push token. Every rule comes from
//! `domain::device` (`push_enrollment_decision`, `pin_failure`), never a copy of it. Expiry of
//! codes, claims and pending entries is decided by the injected clock; expired entries are swept
//! at most once per second of clock time, so memory stays bounded.
//!
//! May import: domain.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::clock::{SharedClock, Timestamp};
use crate::domain::code::CodeHash;
use crate::domain::device::{
    Device, DeviceId, PinCheck, PinFailure, PushEnrollmentMode, PushRegistration,
    PushRegistrationOutcome, pin_check_allowed, pin_failure, push_enrollment_decision,
};
use crate::domain::ports::{DeviceStore, StoreError};
use crate::domain::transaction::TransactionId;

/// How often (in clock time) expired codes, claims and pending entries are swept out.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest TTL kept; a zero TTL would never be readable (Redis clamps the same way).
const MIN_TTL: Duration = Duration::from_millis(1);

/// The embedded device store. Cheap to share behind an `Arc`.
pub struct MemoryDeviceStore {
    clock: SharedClock,
    state: Mutex<State>,
}

struct State {
    /// Enrollment codes by the hex of their HMAC.
    codes: HashMap<String, EnrollmentCode>,
    devices: HashMap<DeviceId, StoredDevice>,
    /// Each user's device ids.
    by_user: HashMap<String, BTreeSet<DeviceId>>,
    /// The device holding each push token.
    by_token: HashMap<String, DeviceId>,
    /// Claimed keys and when the claim ends.
    claims: HashMap<String, Timestamp>,
    /// Each device's remembered push transactions and when they expire.
    pending: HashMap<DeviceId, HashMap<TransactionId, Timestamp>>,
    /// No sweep before this time.
    next_sweep: Timestamp,
}

struct EnrollmentCode {
    user_id: String,
    expires: Timestamp,
}

struct StoredDevice {
    device: Device,
    pin_failures: u32,
}

impl MemoryDeviceStore {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            state: Mutex::new(State {
                codes: HashMap::new(),
                devices: HashMap::new(),
                by_user: HashMap::new(),
                by_token: HashMap::new(),
                claims: HashMap::new(),
                pending: HashMap::new(),
                next_sweep: Timestamp(0),
            }),
        }
    }

    /// Locks the state. Each method applies its change in full before the guard drops, so a
    /// poisoned lock still holds consistent data and is recovered.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, swept of expired entries if a sweep is due, and the current time.
    fn swept(&self) -> (MutexGuard<'_, State>, Timestamp) {
        let mut state = self.lock();
        let now = self.clock.now();
        state.sweep(now);
        (state, now)
    }
}

impl fmt::Debug for MemoryDeviceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryDeviceStore")
            .field("devices", &state.devices.len())
            .field("enrollment_codes", &state.codes.len())
            .field("claims", &state.claims.len())
            .finish_non_exhaustive()
    }
}

impl State {
    fn sweep(&mut self, now: Timestamp) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now.plus(SWEEP_INTERVAL);
        self.codes.retain(|_, code| now < code.expires);
        self.claims.retain(|_, ends| now < *ends);
        for entries in self.pending.values_mut() {
            entries.retain(|_, expires| now < *expires);
        }
        self.pending.retain(|_, entries| !entries.is_empty());
    }

    /// The user's devices, oldest first (ties by id, as Redis orders equal scores).
    fn devices_of(&self, user_id: &str) -> Vec<&Device> {
        let mut devices: Vec<&Device> = self
            .by_user
            .get(user_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.devices.get(id))
            .map(|stored| &stored.device)
            .collect();
        devices.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        devices
    }

    /// The device whose live registration holds `token`, if any.
    fn token_holder(&self, token: &str) -> Option<&DeviceId> {
        let holder = self.by_token.get(token)?;
        let holds = self
            .devices
            .get(holder)
            .and_then(|stored| stored.device.push.as_ref())
            .is_some_and(|push| push.token == token);
        holds.then_some(holder)
    }

    /// Drops the device's push registration and its token index; `false` when it had none.
    fn drop_push(&mut self, id: &DeviceId) -> bool {
        let Some(push) = self
            .devices
            .get_mut(id)
            .and_then(|stored| stored.device.push.take())
        else {
            return false;
        };
        if self.by_token.get(&push.token) == Some(id) {
            self.by_token.remove(&push.token);
        }
        true
    }

    /// Sets the device's push registration and points the token index at it.
    fn set_push(&mut self, id: &DeviceId, registration: &PushRegistration) {
        self.drop_push(id);
        if let Some(stored) = self.devices.get_mut(id) {
            stored.device.push = Some(registration.clone());
            self.by_token.insert(registration.token.clone(), id.clone());
        }
    }

    /// Removes the device with every index entry and list that belongs to it.
    fn delete(&mut self, id: &DeviceId) -> bool {
        self.drop_push(id);
        self.pending.remove(id);
        let Some(stored) = self.devices.remove(id) else {
            return false;
        };
        let user_id = &stored.device.user_id;
        if let Some(ids) = self.by_user.get_mut(user_id) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_user.remove(user_id);
            }
        }
        true
    }
}

#[async_trait]
impl DeviceStore for MemoryDeviceStore {
    async fn create_enrollment_code(
        &self,
        code_hash: &CodeHash,
        user_id: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let (mut state, now) = self.swept();
        state.codes.insert(
            code_hash.to_hex(),
            EnrollmentCode {
                user_id: user_id.to_owned(),
                expires: now.plus(ttl.max(MIN_TTL)),
            },
        );
        Ok(())
    }

    async fn peek_enrollment_code(
        &self,
        code_hash: &CodeHash,
    ) -> Result<Option<String>, StoreError> {
        let state = self.lock();
        let now = self.clock.now();
        Ok(state
            .codes
            .get(&code_hash.to_hex())
            .filter(|code| now < code.expires)
            .map(|code| code.user_id.clone()))
    }

    async fn redeem_enrollment_code(
        &self,
        code_hash: &CodeHash,
    ) -> Result<Option<String>, StoreError> {
        let mut state = self.lock();
        let now = self.clock.now();
        Ok(state
            .codes
            .remove(&code_hash.to_hex())
            .filter(|code| now < code.expires)
            .map(|code| code.user_id))
    }

    async fn insert_device(&self, device: &Device) -> Result<(), StoreError> {
        let device = device.clone();
        let (mut state, _) = self.swept();
        // Replacing a device replaces its indexes too (as a fresh insert would make them).
        state.delete(&device.id);
        state
            .by_user
            .entry(device.user_id.clone())
            .or_default()
            .insert(device.id.clone());
        if let Some(push) = &device.push {
            state.by_token.insert(push.token.clone(), device.id.clone());
        }
        state.devices.insert(
            device.id.clone(),
            StoredDevice {
                device,
                pin_failures: 0,
            },
        );
        Ok(())
    }

    async fn get_device(&self, id: &DeviceId) -> Result<Option<Device>, StoreError> {
        Ok(self
            .lock()
            .devices
            .get(id)
            .map(|stored| stored.device.clone()))
    }

    async fn devices_of_user(&self, user_id: &str) -> Result<Vec<Device>, StoreError> {
        let state = self.lock();
        Ok(state.devices_of(user_id).into_iter().cloned().collect())
    }

    async fn delete_device(&self, id: &DeviceId) -> Result<bool, StoreError> {
        Ok(self.lock().delete(id))
    }

    async fn update_device(&self, device: &Device) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let Some(stored) = state.devices.get_mut(&device.id) else {
            return Ok(false);
        };
        // What identifies the device and what the indexes are built on stays as stored.
        let current = &stored.device;
        stored.device = Device {
            id: current.id.clone(),
            user_id: current.user_id.clone(),
            application: current.application.clone(),
            created_at: current.created_at,
            push: current.push.clone(),
            ..device.clone()
        };
        Ok(true)
    }

    async fn register_push(
        &self,
        id: &DeviceId,
        registration: &PushRegistration,
        mode: PushEnrollmentMode,
    ) -> Result<PushRegistrationOutcome, StoreError> {
        let mut state = self.lock();
        let Some(device) = state.devices.get(id).map(|stored| &stored.device) else {
            return Ok(PushRegistrationOutcome::UnknownDevice);
        };
        if state
            .token_holder(&registration.token)
            .is_some_and(|holder| holder != id)
        {
            return Ok(PushRegistrationOutcome::TokenInUse);
        }
        let others_with_push: Vec<DeviceId> = state
            .devices_of(&device.user_id)
            .into_iter()
            .filter(|other| {
                other.id != *id && other.application == device.application && other.push.is_some()
            })
            .map(|other| other.id.clone())
            .collect();
        match push_enrollment_decision(mode, &others_with_push) {
            Err(existing) => Ok(PushRegistrationOutcome::AlreadyEnrolled(existing)),
            Ok(replaced) => {
                for other in &replaced {
                    state.drop_push(other);
                }
                state.set_push(id, registration);
                Ok(PushRegistrationOutcome::Registered { replaced })
            }
        }
    }

    async fn drop_push(&self, id: &DeviceId) -> Result<bool, StoreError> {
        Ok(self.lock().drop_push(id))
    }

    async fn drop_push_by_token(&self, token: &str) -> Result<Option<DeviceId>, StoreError> {
        let mut state = self.lock();
        let Some(holder) = state.token_holder(token).cloned() else {
            state.by_token.remove(token);
            return Ok(None);
        };
        state.drop_push(&holder);
        Ok(Some(holder))
    }

    async fn begin_pin_check(
        &self,
        id: &DeviceId,
        max_pin_attempts: u32,
    ) -> Result<PinCheck, StoreError> {
        let mut state = self.lock();
        let Some(stored) = state.devices.get_mut(id) else {
            return Ok(PinCheck::UnknownDevice);
        };
        if !pin_check_allowed(stored.pin_failures, max_pin_attempts) {
            return Ok(PinCheck::Exhausted);
        }
        stored.pin_failures = stored.pin_failures.saturating_add(1);
        Ok(PinCheck::Allowed {
            counted: stored.pin_failures,
        })
    }

    async fn settle_pin_failure(
        &self,
        id: &DeviceId,
        max_pin_attempts: u32,
    ) -> Result<PinFailure, StoreError> {
        let mut state = self.lock();
        let Some(stored) = state.devices.get_mut(id) else {
            return Ok(PinFailure::UnknownDevice);
        };
        let outcome = pin_failure(stored.pin_failures, max_pin_attempts);
        if matches!(outcome, PinFailure::Disconnected { .. }) {
            state.delete(id);
        }
        Ok(outcome)
    }

    async fn reset_pin_failures(&self, id: &DeviceId) -> Result<u32, StoreError> {
        Ok(self
            .lock()
            .devices
            .get_mut(id)
            .map_or(0, |stored| std::mem::take(&mut stored.pin_failures)))
    }

    async fn claim_once(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let (mut state, now) = self.swept();
        if state.claims.get(key).is_some_and(|ends| now < *ends) {
            return Ok(false);
        }
        state
            .claims
            .insert(key.to_owned(), now.plus(ttl.max(MIN_TTL)));
        Ok(true)
    }

    async fn add_pending(
        &self,
        id: &DeviceId,
        transaction: &TransactionId,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        let (mut state, now) = self.swept();
        let entries = state.pending.entry(id.clone()).or_default();
        entries.insert(*transaction, expires_at);
        entries.retain(|_, expires| now < *expires);
        if entries.is_empty() {
            state.pending.remove(id);
        }
        Ok(())
    }

    async fn pending(&self, id: &DeviceId) -> Result<Vec<TransactionId>, StoreError> {
        let state = self.lock();
        let now = self.clock.now();
        let mut live: Vec<(Timestamp, String, TransactionId)> = state
            .pending
            .get(id)
            .into_iter()
            .flatten()
            .filter(|(_, expires)| now < **expires)
            .map(|(tx, expires)| (*expires, tx.to_string(), *tx))
            .collect();
        // Soonest expiry first, ties by the id's text: the order of a Redis sorted set.
        live.sort();
        Ok(live.into_iter().map(|(_, _, tx)| tx).collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE.md house rules)
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::clock::{Clock, ManualClock};

    #[tokio::test]
    async fn expired_codes_claims_and_pending_entries_are_swept() {
        let clock = Arc::new(ManualClock::new(Timestamp(1_000_000)));
        let store = MemoryDeviceStore::new(clock.clone());
        let device = DeviceId::random();
        for n in 0..50u8 {
            let hash = CodeHash::from_hex(&format!("{n:064x}")).unwrap();
            store
                .create_enrollment_code(&hash, "u", Duration::from_secs(5))
                .await
                .unwrap();
            store
                .claim_once(&format!("k{n}"), Duration::from_secs(5))
                .await
                .unwrap();
            store
                .add_pending(
                    &device,
                    &TransactionId::random(),
                    clock.now().plus(Duration::from_secs(5)),
                )
                .await
                .unwrap();
        }
        {
            let state = store.lock();
            assert_eq!(state.codes.len(), 50);
            assert_eq!(state.claims.len(), 50);
            assert_eq!(state.pending[&device].len(), 50);
        }
        clock.advance(Duration::from_secs(6));
        store
            .claim_once("another", Duration::from_secs(5))
            .await
            .unwrap();
        let state = store.lock();
        assert_eq!(state.codes.len(), 0);
        assert_eq!(state.claims.len(), 1);
        assert!(state.pending.is_empty());
    }

    #[test]
    fn debug_shows_sizes_not_contents() {
        let store = MemoryDeviceStore::new(Arc::new(ManualClock::new(Timestamp(0))));
        assert!(format!("{store:?}").contains("devices: 0"));
    }
}
