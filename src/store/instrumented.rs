//! A decorator that times every store call and records it as
//! `stepgate_store_operation_duration_seconds{backend, operation, outcome}`, so store latency is
//! measured the same way whatever the backend. It delegates everything else unchanged.
//!
//! May import: domain, telemetry.

use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::domain::clock::Timestamp;
use crate::domain::code::CodeHash;
use crate::domain::device::{
    Device, DeviceId, PinCheck, PinFailure, PushEnrollmentMode, PushRegistration,
    PushRegistrationOutcome,
};
use crate::domain::held::{HeldRequest, HeldTicket};
use crate::domain::otp::{OtpAnswer, RedeemOutcome};
use crate::domain::ports::DeviceStore;
use crate::domain::ports::Verified;
use crate::domain::ports::{
    HeldRequestStore, RateDecision, RateLimitStore, StoreError, TransactionStore,
};
use crate::domain::regulation::{Finish, FinishOutcome, ResendOutcome};
use crate::domain::transaction::{Owner, Transaction, TransactionId};
use crate::telemetry::metrics;

/// Wraps a store (memory, Redis or anything else implementing the ports) with latency metrics.
#[derive(Debug)]
pub struct Instrumented<S> {
    inner: S,
    backend: &'static str,
}

impl<S: TransactionStore> Instrumented<S> {
    /// Labels the metrics with the store's own backend name.
    pub fn new(inner: S) -> Self {
        let backend = inner.backend();
        Self { inner, backend }
    }
}

impl<S> Instrumented<S> {
    /// For a store that is not a transaction store (a rate limiter, the device store): names
    /// the backend label explicitly.
    pub fn with_backend(inner: S, backend: &'static str) -> Self {
        Self { inner, backend }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut timer = Timer {
            backend: self.backend,
            operation,
            started: Instant::now(),
            finished: false,
        };
        let result = call.await;
        timer.finish(result.is_ok());
        result
    }
}

/// Records the call when it completes, or as an error if the caller gives up on it (a timeout
/// around the store call drops the future), so slow calls never vanish from the histogram.
struct Timer {
    backend: &'static str,
    operation: &'static str,
    started: Instant,
    finished: bool,
}

impl Timer {
    fn finish(&mut self, ok: bool) {
        self.finished = true;
        self.record(ok, self.started.elapsed());
    }

    fn record(&self, ok: bool, elapsed: Duration) {
        metrics::record_store_operation(self.backend, self.operation, ok, elapsed);
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if !self.finished {
            self.record(false, self.started.elapsed());
        }
    }
}

#[async_trait]
impl<S: TransactionStore> TransactionStore for Instrumented<S> {
    fn backend(&self) -> &'static str {
        self.backend
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping()).await
    }

    async fn insert(&self, tx: &Transaction) -> Result<(), StoreError> {
        self.timed("insert", self.inner.insert(tx)).await
    }

    async fn get(&self, id: &TransactionId) -> Result<Option<Transaction>, StoreError> {
        self.timed("get", self.inner.get(id)).await
    }

    async fn verify_code(
        &self,
        id: &TransactionId,
        owner: Owner<'_>,
        candidate: &CodeHash,
    ) -> Result<Option<Verified>, StoreError> {
        self.timed("verify_code", self.inner.verify_code(id, owner, candidate))
            .await
    }

    async fn resend(
        &self,
        id: &TransactionId,
        new_code: Option<&CodeHash>,
    ) -> Result<Option<ResendOutcome>, StoreError> {
        self.timed("resend", self.inner.resend(id, new_code)).await
    }

    async fn finish(
        &self,
        id: &TransactionId,
        update: &Finish,
    ) -> Result<Option<FinishOutcome>, StoreError> {
        self.timed("finish", self.inner.finish(id, update)).await
    }

    async fn redeem_otp(
        &self,
        id: &TransactionId,
        candidate: &CodeHash,
        answer: &OtpAnswer,
    ) -> Result<Option<RedeemOutcome>, StoreError> {
        self.timed("redeem_otp", self.inner.redeem_otp(id, candidate, answer))
            .await
    }
}

#[async_trait]
impl<S: RateLimitStore> RateLimitStore for Instrumented<S> {
    async fn hit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<RateDecision, StoreError> {
        self.timed("rate_limit", self.inner.hit(key, limit, window))
            .await
    }

    async fn refund(&self, key: &str) -> Result<(), StoreError> {
        self.timed("rate_limit_refund", self.inner.refund(key))
            .await
    }
}

#[async_trait]
impl<S: HeldRequestStore> HeldRequestStore for Instrumented<S> {
    async fn hold(
        &self,
        id: &TransactionId,
        request: &HeldRequest,
        ttl: Duration,
        user_key: Option<&str>,
    ) -> Result<(), StoreError> {
        self.timed("held_hold", self.inner.hold(id, request, ttl, user_key))
            .await
    }

    async fn ticket(&self, id: &TransactionId) -> Result<Option<HeldTicket>, StoreError> {
        self.timed("held_ticket", self.inner.ticket(id)).await
    }

    async fn take(&self, id: &TransactionId) -> Result<Option<HeldRequest>, StoreError> {
        self.timed("held_take", self.inner.take(id)).await
    }

    async fn latest_for_user(&self, user_key: &str) -> Result<Option<TransactionId>, StoreError> {
        self.timed("held_latest", self.inner.latest_for_user(user_key))
            .await
    }

    async fn set_waiter(
        &self,
        id: &TransactionId,
        lease: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.timed("held_set_waiter", self.inner.set_waiter(id, lease))
            .await
    }

    async fn has_waiter(&self, id: &TransactionId) -> Result<bool, StoreError> {
        self.timed("held_has_waiter", self.inner.has_waiter(id))
            .await
    }
}

#[async_trait]
impl<S: DeviceStore> DeviceStore for Instrumented<S> {
    async fn create_enrollment_code(
        &self,
        code_hash: &CodeHash,
        user_id: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.timed(
            "device_create_code",
            self.inner.create_enrollment_code(code_hash, user_id, ttl),
        )
        .await
    }

    async fn peek_enrollment_code(
        &self,
        code_hash: &CodeHash,
    ) -> Result<Option<String>, StoreError> {
        self.timed(
            "device_peek_code",
            self.inner.peek_enrollment_code(code_hash),
        )
        .await
    }

    async fn redeem_enrollment_code(
        &self,
        code_hash: &CodeHash,
    ) -> Result<Option<String>, StoreError> {
        self.timed(
            "device_redeem_code",
            self.inner.redeem_enrollment_code(code_hash),
        )
        .await
    }

    async fn insert_device(&self, device: &Device) -> Result<(), StoreError> {
        self.timed("device_insert", self.inner.insert_device(device))
            .await
    }

    async fn get_device(&self, id: &DeviceId) -> Result<Option<Device>, StoreError> {
        self.timed("device_get", self.inner.get_device(id)).await
    }

    async fn devices_of_user(&self, user_id: &str) -> Result<Vec<Device>, StoreError> {
        self.timed("device_list", self.inner.devices_of_user(user_id))
            .await
    }

    async fn delete_device(&self, id: &DeviceId) -> Result<bool, StoreError> {
        self.timed("device_delete", self.inner.delete_device(id))
            .await
    }

    async fn update_device(&self, device: &Device) -> Result<bool, StoreError> {
        self.timed("device_update", self.inner.update_device(device))
            .await
    }

    async fn register_push(
        &self,
        id: &DeviceId,
        registration: &PushRegistration,
        mode: PushEnrollmentMode,
    ) -> Result<PushRegistrationOutcome, StoreError> {
        self.timed(
            "device_register_push",
            self.inner.register_push(id, registration, mode),
        )
        .await
    }

    async fn drop_push(&self, id: &DeviceId) -> Result<bool, StoreError> {
        self.timed("device_drop_push", self.inner.drop_push(id))
            .await
    }

    async fn drop_push_by_token(&self, token: &str) -> Result<Option<DeviceId>, StoreError> {
        self.timed(
            "device_drop_push_by_token",
            self.inner.drop_push_by_token(token),
        )
        .await
    }

    async fn begin_pin_check(
        &self,
        id: &DeviceId,
        max_pin_attempts: u32,
    ) -> Result<PinCheck, StoreError> {
        self.timed(
            "device_pin_check",
            self.inner.begin_pin_check(id, max_pin_attempts),
        )
        .await
    }

    async fn settle_pin_failure(
        &self,
        id: &DeviceId,
        max_pin_attempts: u32,
    ) -> Result<PinFailure, StoreError> {
        self.timed(
            "device_pin_failure",
            self.inner.settle_pin_failure(id, max_pin_attempts),
        )
        .await
    }

    async fn reset_pin_failures(&self, id: &DeviceId) -> Result<u32, StoreError> {
        self.timed("device_reset_pin", self.inner.reset_pin_failures(id))
            .await
    }

    async fn claim_once(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.timed("device_claim_once", self.inner.claim_once(key, ttl))
            .await
    }

    async fn add_pending(
        &self,
        id: &DeviceId,
        transaction: &TransactionId,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        self.timed(
            "device_add_pending",
            self.inner.add_pending(id, transaction, expires_at),
        )
        .await
    }

    async fn pending(&self, id: &DeviceId) -> Result<Vec<TransactionId>, StoreError> {
        self.timed("device_pending", self.inner.pending(id)).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE.md house rules)
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::clock::{ManualClock, Timestamp};
    use crate::store::memory::MemoryStore;

    /// A store that never answers, to show that abandoned calls are still recorded.
    struct Stuck;

    #[async_trait]
    impl RateLimitStore for Stuck {
        async fn hit(&self, _: &str, _: u32, _: Duration) -> Result<RateDecision, StoreError> {
            std::future::pending().await
        }

        async fn refund(&self, _: &str) -> Result<(), StoreError> {
            std::future::pending().await
        }
    }

    fn sample_count(text: &str, backend: &str, operation: &str, outcome: &str) -> u64 {
        let needle = format!(
            "stepgate_store_operation_duration_seconds_count{{backend=\"{backend}\",operation=\"{operation}\",outcome=\"{outcome}\"}} "
        );
        text.lines()
            .find_map(|line| line.strip_prefix(&needle))
            .map_or(0, |n| n.trim().parse().unwrap())
    }

    fn rendered() -> String {
        String::from_utf8(metrics::render().1).unwrap()
    }

    #[tokio::test]
    async fn every_call_is_delegated_and_timed() {
        metrics::register_all();
        let clock = Arc::new(ManualClock::new(Timestamp(1_000)));
        let store = Instrumented::new(MemoryStore::new(clock, Duration::from_secs(1)));
        assert_eq!(store.backend(), "memory");
        let before = rendered();

        store.ping().await.unwrap();
        let missing = TransactionId::random();
        assert_eq!(store.get(&missing).await.unwrap(), None);
        assert_eq!(store.resend(&missing, None).await.unwrap(), None);
        let decision = store.hit("k", 1, Duration::from_secs(1)).await.unwrap();
        assert!(decision.allowed);

        let after = rendered();
        for operation in ["ping", "get", "resend", "rate_limit"] {
            let grew = sample_count(&after, "memory", operation, "ok")
                - sample_count(&before, "memory", operation, "ok");
            assert!(grew >= 1, "{operation} not recorded:\n{after}");
        }
    }

    #[tokio::test]
    async fn held_request_calls_are_delegated_and_timed() {
        use crate::domain::held::{BindingDigest, HeldMode, OriginalRequest};

        metrics::register_all();
        let clock = Arc::new(ManualClock::new(Timestamp(1_000)));
        let store = Instrumented::new(MemoryStore::new(clock, Duration::from_secs(1)));
        let held = HeldRequest {
            ticket: HeldTicket {
                bound: None,
                policy: "transfers".into(),
                user_id: "u1".into(),
                mode: HeldMode::Hold,
                freshness_seconds: 60,
                binding: BindingDigest::of("t"),
                held_at: Timestamp(1_000),
                message: None,
            },
            request: OriginalRequest {
                method: "POST".into(),
                uri: "/transfer".into(),
                headers: vec![("x-raw".into(), vec![0xff])],
                body: b"amount=1".to_vec(),
            },
        };
        let id = TransactionId::random();
        let before = rendered();

        store
            .hold(&id, &held, Duration::from_secs(60), Some("user-key"))
            .await
            .unwrap();
        assert_eq!(store.ticket(&id).await.unwrap(), Some(held.ticket.clone()));
        assert_eq!(store.latest_for_user("user-key").await.unwrap(), Some(id));
        assert_eq!(store.take(&id).await.unwrap(), Some(held));

        let after = rendered();
        for operation in ["held_hold", "held_ticket", "held_take", "held_latest"] {
            let grew = sample_count(&after, "memory", operation, "ok")
                - sample_count(&before, "memory", operation, "ok");
            assert!(grew >= 1, "{operation} not recorded:\n{after}");
        }
    }

    #[tokio::test]
    async fn device_store_calls_are_delegated_and_timed() {
        use crate::store::devices::MemoryDeviceStore;

        metrics::register_all();
        let clock = Arc::new(ManualClock::new(Timestamp(1_000)));
        let store = Instrumented::with_backend(MemoryDeviceStore::new(clock), "memory");
        let before = rendered();

        let ghost = DeviceId::random();
        assert_eq!(store.get_device(&ghost).await.unwrap(), None);
        assert!(store.claim_once("k", Duration::from_secs(1)).await.unwrap());
        assert_eq!(
            store.settle_pin_failure(&ghost, 3).await.unwrap(),
            PinFailure::UnknownDevice
        );

        let after = rendered();
        for operation in ["device_get", "device_claim_once", "device_pin_failure"] {
            let grew = sample_count(&after, "memory", operation, "ok")
                - sample_count(&before, "memory", operation, "ok");
            assert!(grew >= 1, "{operation} not recorded:\n{after}");
        }
    }

    #[tokio::test]
    async fn abandoned_calls_are_recorded_as_errors() {
        metrics::register_all();
        let store = Instrumented::with_backend(Stuck, "stuck-test");
        let gave_up = tokio::time::timeout(
            Duration::from_millis(10),
            store.hit("k", 1, Duration::from_secs(1)),
        )
        .await;
        assert!(gave_up.is_err());
        assert_eq!(
            sample_count(&rendered(), "stuck-test", "rate_limit", "error"),
            1
        );
    }
}
