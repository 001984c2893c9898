//! The device store conformance suite: one set of test bodies written against
//! `Arc<dyn DeviceStore>` and a manual clock, run on every backend (`on_memory`, `on_redis`).
//! Both must give the same outcomes as the rules of `domain::device`, and concurrency must not
//! buy a second redemption or extra PIN tries.
//!
//! The Redis run uses `STEPGATE_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/0`) with a fresh
//! key prefix per test and deletes that prefix's keys afterwards, even when the test fails. Both
//! stores decide every expiry by the injected clock, so moving it is enough.
//!
//! May import: domain, the store adapters under test.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::memory::MemoryDeviceStore;
use super::redis::RedisDeviceStore;
use crate::domain::clock::{Clock, ManualClock, SharedClock, Timestamp};
use crate::domain::code::CodeHash;
use crate::domain::device::{
    Device, DeviceId, DeviceKeys, PinCheck, PinFailure, Platform, PublicKeyBytes,
    PushEnrollmentMode, PushRegistration, PushRegistrationOutcome,
};
use crate::domain::ports::DeviceStore;
use crate::domain::transaction::TransactionId;
use crate::store::conformance::{RedisKeys, Topology, scratch_redis_store_on};

const APP: &str = "bank-app";
const USER: &str = "ann@example.com";

pub(super) struct Harness {
    store: Arc<dyn DeviceStore>,
    clock: Arc<ManualClock>,
    redis: Option<RedisKeys>,
}

pub(super) async fn memory_harness() -> Harness {
    let clock = Arc::new(ManualClock::starting_now());
    let shared: SharedClock = clock.clone();
    Harness {
        store: Arc::new(MemoryDeviceStore::new(shared)),
        clock,
        redis: None,
    }
}

pub(super) async fn redis_harness() -> Harness {
    redis_harness_on(Topology::Standalone).await
}

pub(super) async fn sentinel_harness() -> Harness {
    redis_harness_on(Topology::Sentinel).await
}

pub(super) async fn cluster_harness() -> Harness {
    redis_harness_on(Topology::Cluster).await
}

async fn redis_harness_on(topology: Topology) -> Harness {
    let clock = Arc::new(ManualClock::starting_now());
    let shared: SharedClock = clock.clone();
    let (transactions, keys) =
        scratch_redis_store_on(topology, shared.clone(), Duration::from_secs(60));
    Harness {
        store: Arc::new(RedisDeviceStore::new(Arc::new(transactions), shared)),
        clock,
        redis: Some(keys),
    }
}

fn code(n: u8) -> CodeHash {
    CodeHash::from_hex(&format!("{n:064x}")).unwrap()
}

fn key(byte: u8) -> PublicKeyBytes {
    PublicKeyBytes(vec![byte; 65])
}

fn registration(token: &str, at: Timestamp) -> PushRegistration {
    PushRegistration {
        version: "1.0".into(),
        platform: Platform::Android,
        token: token.into(),
        registered_at: at,
    }
}

impl Harness {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// A device of `user` for `application`, created now (then the clock moves on 1 ms, so
    /// devices made one after the other are ordered).
    fn device(&self, user: &str, application: &str) -> Device {
        let created_at = self.now();
        self.clock.advance(Duration::from_millis(1));
        Device {
            id: DeviceId::random(),
            user_id: user.into(),
            application: application.into(),
            name: "Ann's Pixel".into(),
            platform: Platform::Android,
            model: Some("Pixel 8".into()),
            os_version: None,
            keys: DeviceKeys {
                signing: key(1),
                encryption: key(2),
                pin: Some(key(3)),
                biometric: None,
                custom_authenticator: None,
            },
            push: None,
            created_at,
            last_used_at: None,
        }
    }

    async fn inserted(&self, user: &str, application: &str) -> Device {
        let device = self.device(user, application);
        self.store.insert_device(&device).await.unwrap();
        device
    }

    async fn register(
        &self,
        id: &DeviceId,
        token: &str,
        mode: PushEnrollmentMode,
    ) -> PushRegistrationOutcome {
        self.store
            .register_push(id, &registration(token, self.now()), mode)
            .await
            .unwrap()
    }

    async fn push_of(&self, id: &DeviceId) -> Option<PushRegistration> {
        self.store.get_device(id).await.unwrap().unwrap().push
    }

    async fn ids_of(&self, user: &str) -> Vec<DeviceId> {
        self.store
            .devices_of_user(user)
            .await
            .unwrap()
            .into_iter()
            .map(|device| device.id)
            .collect()
    }
}

fn registered(replaced: &[&DeviceId]) -> PushRegistrationOutcome {
    PushRegistrationOutcome::Registered {
        replaced: replaced.iter().map(|id| (*id).clone()).collect(),
    }
}

// ---- enrollment codes ------------------------------------------------------------------------

pub(super) async fn enrollment_code_is_single_use(h: &Harness) {
    let s = &h.store;
    s.create_enrollment_code(&code(1), USER, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(
        s.peek_enrollment_code(&code(1)).await.unwrap().as_deref(),
        Some(USER)
    );
    assert_eq!(
        s.peek_enrollment_code(&code(1)).await.unwrap().as_deref(),
        Some(USER),
        "peeking does not use the code"
    );
    assert_eq!(s.peek_enrollment_code(&code(2)).await.unwrap(), None);
    assert_eq!(s.redeem_enrollment_code(&code(2)).await.unwrap(), None);
    assert_eq!(
        s.redeem_enrollment_code(&code(1)).await.unwrap().as_deref(),
        Some(USER)
    );
    assert_eq!(s.redeem_enrollment_code(&code(1)).await.unwrap(), None);
    assert_eq!(s.peek_enrollment_code(&code(1)).await.unwrap(), None);
}

pub(super) async fn enrollment_codes_expire(h: &Harness) {
    let s = &h.store;
    s.create_enrollment_code(&code(1), USER, Duration::from_secs(600))
        .await
        .unwrap();
    s.create_enrollment_code(&code(2), "bob", Duration::from_secs(600))
        .await
        .unwrap();
    h.clock.advance(Duration::from_millis(599_999));
    assert_eq!(
        s.peek_enrollment_code(&code(1)).await.unwrap().as_deref(),
        Some(USER)
    );
    h.clock.advance(Duration::from_millis(1));
    assert_eq!(s.peek_enrollment_code(&code(1)).await.unwrap(), None);
    assert_eq!(s.redeem_enrollment_code(&code(1)).await.unwrap(), None);
    assert_eq!(s.redeem_enrollment_code(&code(2)).await.unwrap(), None);
}

pub(super) async fn concurrent_redemptions_have_one_winner(h: &Harness) {
    h.store
        .create_enrollment_code(&code(7), USER, Duration::from_secs(600))
        .await
        .unwrap();
    let racers = 50;
    let barrier = Arc::new(Barrier::new(racers));
    let mut set = JoinSet::new();
    for _ in 0..racers {
        let store = h.store.clone();
        let barrier = barrier.clone();
        set.spawn(async move {
            barrier.wait().await;
            store.redeem_enrollment_code(&code(7)).await.unwrap()
        });
    }
    let mut winners = 0;
    while let Some(joined) = set.join_next().await {
        if let Some(user) = joined.unwrap() {
            assert_eq!(user, USER);
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "{winners} redemptions got the code");
}

// ---- devices ---------------------------------------------------------------------------------

pub(super) async fn devices_round_trip_and_list_oldest_first(h: &Harness) {
    let s = &h.store;
    let mut first = h.device(USER, APP);
    first.push = Some(registration("token-first", h.now()));
    first.last_used_at = Some(h.now());
    s.insert_device(&first).await.unwrap();
    let second = h.inserted(USER, "other-app").await;
    let bobs = h.inserted("bob", APP).await;

    assert_eq!(s.get_device(&first.id).await.unwrap(), Some(first.clone()));
    assert_eq!(
        s.get_device(&second.id).await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(s.get_device(&DeviceId::random()).await.unwrap(), None);
    assert_eq!(
        s.devices_of_user(USER).await.unwrap(),
        vec![first.clone(), second.clone()]
    );
    assert_eq!(h.ids_of("bob").await, vec![bobs.id.clone()]);
    assert_eq!(h.ids_of("nobody").await, Vec::<DeviceId>::new());

    assert!(s.delete_device(&first.id).await.unwrap());
    assert!(!s.delete_device(&first.id).await.unwrap());
    assert_eq!(s.get_device(&first.id).await.unwrap(), None);
    assert_eq!(h.ids_of(USER).await, vec![second.id.clone()]);
}

pub(super) async fn update_keeps_identity_and_push(h: &Harness) {
    let s = &h.store;
    let device = h.inserted(USER, APP).await;
    assert_eq!(
        h.register(&device.id, "tok", PushEnrollmentMode::Single)
            .await,
        registered(&[])
    );
    let push = h.push_of(&device.id).await;

    let mut changed = device.clone();
    changed.keys.biometric = None;
    changed.keys.pin = None;
    changed.last_used_at = Some(h.now());
    changed.name = "renamed".into();
    changed.push = None;
    // Fields the indexes hang on are not the update's to change.
    changed.user_id = "mallory".into();
    changed.application = "another".into();
    assert!(s.update_device(&changed).await.unwrap());

    let stored = s.get_device(&device.id).await.unwrap().unwrap();
    let expected = Device {
        user_id: device.user_id.clone(),
        application: device.application.clone(),
        push,
        ..changed.clone()
    };
    assert_eq!(stored, expected);
    assert_eq!(h.ids_of(USER).await, vec![device.id.clone()]);
    assert_eq!(h.ids_of("mallory").await, Vec::<DeviceId>::new());

    let unknown = h.device(USER, APP);
    assert!(!s.update_device(&unknown).await.unwrap());
    assert_eq!(s.get_device(&unknown.id).await.unwrap(), None);
}

pub(super) async fn unknown_devices_change_nothing(h: &Harness) {
    let s = &h.store;
    let ghost = DeviceId::random();
    assert_eq!(
        h.register(&ghost, "tok", PushEnrollmentMode::Multiple)
            .await,
        PushRegistrationOutcome::UnknownDevice
    );
    assert!(!s.drop_push(&ghost).await.unwrap());
    assert_eq!(s.drop_push_by_token("tok").await.unwrap(), None);
    assert_eq!(
        wrong_pin(s.as_ref(), &ghost, 3).await,
        PinFailure::UnknownDevice
    );
    assert_eq!(s.reset_pin_failures(&ghost).await.unwrap(), 0);
    assert_eq!(s.get_device(&ghost).await.unwrap(), None);
    if let Some(redis) = &h.redis {
        assert!(redis.keys().is_empty(), "{:?}", redis.keys());
    }
}

// ---- push registration -----------------------------------------------------------------------

pub(super) async fn single_mode_refuses_a_second_device(h: &Harness) {
    let (a, b) = (h.inserted(USER, APP).await, h.inserted(USER, APP).await);
    let other_app = h.inserted(USER, "other-app").await;
    let bobs = h.inserted("bob", APP).await;
    let single = PushEnrollmentMode::Single;

    assert_eq!(h.register(&a.id, "tok-a", single).await, registered(&[]));
    assert_eq!(
        h.register(&b.id, "tok-b", single).await,
        PushRegistrationOutcome::AlreadyEnrolled(a.id.clone())
    );
    assert_eq!(h.push_of(&b.id).await, None);
    // Other applications and other users are apart.
    assert_eq!(
        h.register(&other_app.id, "tok-o", single).await,
        registered(&[])
    );
    assert_eq!(
        h.register(&bobs.id, "tok-bob", single).await,
        registered(&[])
    );
    // The holder itself may replace its own registration (a new token).
    assert_eq!(h.register(&a.id, "tok-a2", single).await, registered(&[]));
    assert_eq!(h.push_of(&a.id).await.unwrap().token, "tok-a2");
    // Its old token is free again.
    assert_eq!(h.register(&bobs.id, "tok-a", single).await, registered(&[]));

    // Once the first drops its registration, the second may register.
    assert!(h.store.drop_push(&a.id).await.unwrap());
    assert_eq!(h.register(&b.id, "tok-b", single).await, registered(&[]));
}

pub(super) async fn override_mode_drops_the_others(h: &Harness) {
    let (a, b, c) = (
        h.inserted(USER, APP).await,
        h.inserted(USER, APP).await,
        h.inserted(USER, APP).await,
    );
    let other_app = h.inserted(USER, "other-app").await;
    let multiple = PushEnrollmentMode::Multiple;
    assert_eq!(h.register(&a.id, "tok-a", multiple).await, registered(&[]));
    assert_eq!(h.register(&b.id, "tok-b", multiple).await, registered(&[]));
    assert_eq!(
        h.register(&other_app.id, "tok-o", multiple).await,
        registered(&[])
    );

    assert_eq!(
        h.register(&c.id, "tok-c", PushEnrollmentMode::Override)
            .await,
        registered(&[&a.id, &b.id])
    );
    assert_eq!(h.push_of(&a.id).await, None);
    assert_eq!(h.push_of(&b.id).await, None);
    assert_eq!(h.push_of(&c.id).await.unwrap().token, "tok-c");
    assert_eq!(h.push_of(&other_app.id).await.unwrap().token, "tok-o");
    // The dropped tokens' index entries went with them.
    assert_eq!(h.store.drop_push_by_token("tok-a").await.unwrap(), None);
    assert_eq!(
        h.register(&c.id, "tok-b", PushEnrollmentMode::Override)
            .await,
        registered(&[])
    );
    // The devices themselves (and their keys) stay.
    assert_eq!(h.ids_of(USER).await.len(), 4);
}

pub(super) async fn multiple_mode_allows_many(h: &Harness) {
    let multiple = PushEnrollmentMode::Multiple;
    let mut ids = Vec::new();
    for n in 0..3 {
        let device = h.inserted(USER, APP).await;
        assert_eq!(
            h.register(&device.id, &format!("tok-{n}"), multiple).await,
            registered(&[])
        );
        ids.push(device.id);
    }
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(h.push_of(id).await.unwrap().token, format!("tok-{n}"));
    }
    // Single mode now sees the oldest holder.
    let late = h.inserted(USER, APP).await;
    assert_eq!(
        h.register(&late.id, "tok-late", PushEnrollmentMode::Single)
            .await,
        PushRegistrationOutcome::AlreadyEnrolled(ids[0].clone())
    );
}

pub(super) async fn a_token_belongs_to_one_device(h: &Harness) {
    let a = h.inserted(USER, APP).await;
    let bobs = h.inserted("bob", APP).await;
    let multiple = PushEnrollmentMode::Multiple;
    assert_eq!(h.register(&a.id, "shared", multiple).await, registered(&[]));
    for mode in [
        PushEnrollmentMode::Single,
        PushEnrollmentMode::Override,
        PushEnrollmentMode::Multiple,
    ] {
        assert_eq!(
            h.register(&bobs.id, "shared", mode).await,
            PushRegistrationOutcome::TokenInUse,
            "{mode:?}"
        );
    }
    assert_eq!(h.push_of(&bobs.id).await, None);
    assert_eq!(h.push_of(&a.id).await.unwrap().token, "shared");
    // Registering the same token again on its own device is fine.
    assert_eq!(h.register(&a.id, "shared", multiple).await, registered(&[]));
    // Deleting the holder frees the token.
    assert!(h.store.delete_device(&a.id).await.unwrap());
    assert_eq!(
        h.register(&bobs.id, "shared", multiple).await,
        registered(&[])
    );
}

pub(super) async fn drop_push_by_token_drops_the_holder_only(h: &Harness) {
    let (a, b) = (h.inserted(USER, APP).await, h.inserted(USER, APP).await);
    let multiple = PushEnrollmentMode::Multiple;
    h.register(&a.id, "tok-a", multiple).await;
    h.register(&b.id, "tok-b", multiple).await;
    assert_eq!(
        h.store.drop_push_by_token("tok-a").await.unwrap(),
        Some(a.id.clone())
    );
    assert_eq!(h.store.drop_push_by_token("tok-a").await.unwrap(), None);
    assert_eq!(h.push_of(&a.id).await, None);
    assert_eq!(h.push_of(&b.id).await.unwrap().token, "tok-b");
    assert!(h.store.get_device(&a.id).await.unwrap().is_some());
    assert!(!h.store.drop_push(&a.id).await.unwrap());
    assert!(h.store.drop_push(&b.id).await.unwrap());
    assert_eq!(h.store.drop_push_by_token("tok-b").await.unwrap(), None);
}

// ---- PIN failures ----------------------------------------------------------------------------

pub(super) async fn pin_failures_disconnect_at_the_limit(h: &Harness) {
    let s = &h.store;
    let device = h.inserted(USER, APP).await;
    h.register(&device.id, "tok", PushEnrollmentMode::Single)
        .await;
    s.add_pending(
        &device.id,
        &TransactionId::random(),
        h.now().plus(Duration::from_secs(60)),
    )
    .await
    .unwrap();

    assert_eq!(
        wrong_pin(s.as_ref(), &device.id, 3).await,
        PinFailure::Counted {
            failures: 1,
            remaining: Some(2)
        }
    );
    assert_eq!(
        wrong_pin(s.as_ref(), &device.id, 3).await,
        PinFailure::Counted {
            failures: 2,
            remaining: Some(1)
        }
    );
    assert_eq!(
        wrong_pin(s.as_ref(), &device.id, 3).await,
        PinFailure::Disconnected { failures: 3 }
    );
    assert_eq!(s.get_device(&device.id).await.unwrap(), None);
    assert_eq!(h.ids_of(USER).await, Vec::<DeviceId>::new());
    assert_eq!(s.pending(&device.id).await.unwrap(), Vec::new());
    assert_eq!(
        wrong_pin(s.as_ref(), &device.id, 3).await,
        PinFailure::UnknownDevice
    );
    // Its token went with it.
    assert_eq!(s.drop_push_by_token("tok").await.unwrap(), None);
    let next = h.inserted(USER, APP).await;
    assert_eq!(
        h.register(&next.id, "tok", PushEnrollmentMode::Single)
            .await,
        registered(&[])
    );
    if let Some(redis) = &h.redis {
        // Only the new device, its user index and its token index remain.
        assert_eq!(redis.keys().len(), 3, "{:?}", redis.keys());
    }
}

/// A wrong PIN as the push service records it: counted before its check, settled after.
async fn wrong_pin(store: &dyn DeviceStore, id: &DeviceId, max: u32) -> PinFailure {
    match store.begin_pin_check(id, max).await.unwrap() {
        PinCheck::Allowed { .. } => store.settle_pin_failure(id, max).await.unwrap(),
        PinCheck::UnknownDevice => PinFailure::UnknownDevice,
        PinCheck::Exhausted => panic!("the limit was taken before this attempt"),
    }
}

pub(super) async fn zero_max_pin_attempts_is_unlimited(h: &Harness) {
    let device = h.inserted(USER, APP).await;
    for failures in 1..=20 {
        assert_eq!(
            wrong_pin(h.store.as_ref(), &device.id, 0).await,
            PinFailure::Counted {
                failures,
                remaining: None
            }
        );
    }
    assert!(h.store.get_device(&device.id).await.unwrap().is_some());
}

pub(super) async fn a_right_pin_resets_the_count(h: &Harness) {
    let s = &h.store;
    let device = h.inserted(USER, APP).await;
    wrong_pin(s.as_ref(), &device.id, 3).await;
    wrong_pin(s.as_ref(), &device.id, 3).await;
    assert_eq!(s.reset_pin_failures(&device.id).await.unwrap(), 2);
    assert_eq!(s.reset_pin_failures(&device.id).await.unwrap(), 0);
    assert_eq!(
        wrong_pin(s.as_ref(), &device.id, 3).await,
        PinFailure::Counted {
            failures: 1,
            remaining: Some(2)
        }
    );
    // Updating the record does not reset the count.
    assert!(s.update_device(&device).await.unwrap());
    assert_eq!(
        wrong_pin(s.as_ref(), &device.id, 3).await,
        PinFailure::Counted {
            failures: 2,
            remaining: Some(1)
        }
    );
}

pub(super) async fn concurrent_pin_failures_disconnect_once(h: &Harness) {
    let device = h.inserted(USER, APP).await;
    let racers = 100;
    let barrier = Arc::new(Barrier::new(racers));
    let mut set = JoinSet::new();
    for _ in 0..racers {
        let store = h.store.clone();
        let barrier = barrier.clone();
        let id = device.id.clone();
        set.spawn(async move {
            barrier.wait().await;
            let check = store.begin_pin_check(&id, 3).await.unwrap();
            // Every attempt that was let through is a wrong PIN here.
            let settled = match check {
                PinCheck::Allowed { .. } => Some(store.settle_pin_failure(&id, 3).await.unwrap()),
                _ => None,
            };
            (check, settled)
        });
    }
    let (mut allowed, mut exhausted, mut disconnected, mut gone) = (Vec::new(), 0, 0, 0);
    while let Some(joined) = set.join_next().await {
        let (check, settled) = joined.unwrap();
        match check {
            PinCheck::Allowed { counted } => allowed.push(counted),
            PinCheck::Exhausted => exhausted += 1,
            PinCheck::UnknownDevice => gone += 1,
        }
        match settled {
            Some(PinFailure::Disconnected { failures }) => {
                assert_eq!(failures, 3);
                disconnected += 1;
            }
            Some(PinFailure::Counted { failures, .. }) => assert!(failures < 3),
            Some(PinFailure::UnknownDevice) | None => {}
        }
    }
    allowed.sort_unstable();
    assert_eq!(
        allowed,
        vec![1, 2, 3],
        "exactly the limit is checked, each count once"
    );
    assert_eq!(exhausted + gone, racers - 3);
    assert_eq!(disconnected, 1);
    assert_eq!(h.store.get_device(&device.id).await.unwrap(), None);
}

pub(super) async fn a_right_pin_after_wrong_ones_keeps_its_check(h: &Harness) {
    let s = &h.store;
    let device = h.inserted(USER, APP).await;
    assert_eq!(
        wrong_pin(s.as_ref(), &device.id, 3).await,
        PinFailure::Counted {
            failures: 1,
            remaining: Some(2)
        }
    );
    // The check of the right PIN is counted first and reset after.
    assert_eq!(
        s.begin_pin_check(&device.id, 3).await.unwrap(),
        PinCheck::Allowed { counted: 2 }
    );
    assert_eq!(s.reset_pin_failures(&device.id).await.unwrap(), 2);
    // At the limit nothing more is checked, and the device goes with the settled failure.
    for counted in 1..=3 {
        assert_eq!(
            s.begin_pin_check(&device.id, 3).await.unwrap(),
            PinCheck::Allowed { counted }
        );
    }
    assert_eq!(
        s.begin_pin_check(&device.id, 3).await.unwrap(),
        PinCheck::Exhausted
    );
    assert_eq!(
        s.settle_pin_failure(&device.id, 3).await.unwrap(),
        PinFailure::Disconnected { failures: 3 }
    );
    assert_eq!(
        s.begin_pin_check(&device.id, 3).await.unwrap(),
        PinCheck::UnknownDevice
    );
}

// ---- claims and pending lists ----------------------------------------------------------------

pub(super) async fn claim_once_holds_for_its_ttl(h: &Harness) {
    let s = &h.store;
    let ttl = Duration::from_secs(300);
    assert!(s.claim_once("nonce:a", ttl).await.unwrap());
    assert!(!s.claim_once("nonce:a", ttl).await.unwrap());
    assert!(s.claim_once("nonce:b", ttl).await.unwrap());
    h.clock.advance(Duration::from_millis(299_999));
    assert!(!s.claim_once("nonce:a", ttl).await.unwrap());
    h.clock.advance(Duration::from_millis(1));
    assert!(s.claim_once("nonce:a", ttl).await.unwrap());
    assert!(!s.claim_once("nonce:a", ttl).await.unwrap());
}

pub(super) async fn concurrent_claims_have_one_winner(h: &Harness) {
    let racers = 40;
    let barrier = Arc::new(Barrier::new(racers));
    let mut set = JoinSet::new();
    for _ in 0..racers {
        let store = h.store.clone();
        let barrier = barrier.clone();
        set.spawn(async move {
            barrier.wait().await;
            store
                .claim_once("details:tx", Duration::from_secs(60))
                .await
                .unwrap()
        });
    }
    let mut winners = 0;
    while let Some(joined) = set.join_next().await {
        winners += usize::from(joined.unwrap());
    }
    assert_eq!(winners, 1);
}

pub(super) async fn pending_lists_keep_live_entries_soonest_first(h: &Harness) {
    let s = &h.store;
    let (device, other) = (h.inserted(USER, APP).await, h.inserted(USER, APP).await);
    let now = h.now();
    let (late, soon, middle) = (
        TransactionId::random(),
        TransactionId::random(),
        TransactionId::random(),
    );
    s.add_pending(&device.id, &late, now.plus(Duration::from_secs(300)))
        .await
        .unwrap();
    s.add_pending(&device.id, &soon, now.plus(Duration::from_secs(60)))
        .await
        .unwrap();
    s.add_pending(&device.id, &middle, now.plus(Duration::from_secs(120)))
        .await
        .unwrap();
    let others = TransactionId::random();
    s.add_pending(&other.id, &others, now.plus(Duration::from_secs(60)))
        .await
        .unwrap();
    // Already expired: never listed.
    s.add_pending(&device.id, &TransactionId::random(), now)
        .await
        .unwrap();

    assert_eq!(
        s.pending(&device.id).await.unwrap(),
        vec![soon, middle, late]
    );
    assert_eq!(s.pending(&other.id).await.unwrap(), vec![others]);
    assert_eq!(s.pending(&DeviceId::random()).await.unwrap(), Vec::new());

    h.clock.advance(Duration::from_secs(60));
    assert_eq!(s.pending(&device.id).await.unwrap(), vec![middle, late]);
    h.clock.advance(Duration::from_secs(240));
    assert_eq!(s.pending(&device.id).await.unwrap(), Vec::new());

    // Deleting a device drops its list.
    let fresh = TransactionId::random();
    s.add_pending(&other.id, &fresh, h.now().plus(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(s.delete_device(&other.id).await.unwrap());
    assert_eq!(s.pending(&other.id).await.unwrap(), Vec::new());
}

// ---- Redis only ------------------------------------------------------------------------------

pub(super) async fn keys_hold_no_secret_or_personal_data_in_clear(h: &Harness) {
    let Some(redis) = &h.redis else {
        return;
    };
    let token = "apns-token-0123456789abcdef";
    let device = h.inserted(USER, APP).await;
    h.register(&device.id, token, PushEnrollmentMode::Single)
        .await;
    h.store
        .create_enrollment_code(&code(9), USER, Duration::from_secs(60))
        .await
        .unwrap();
    let keys = redis.keys();
    assert_eq!(keys.len(), 4, "{keys:?}");
    for key in &keys {
        assert!(!key.contains(token), "{key}");
        assert!(!key.contains(USER), "{key}");
        assert!(key.starts_with(&redis.prefix), "{key}");
    }
    // The code's key holds its HMAC, never the code (which the store never sees).
    assert!(keys.iter().any(|key| key.ends_with(&code(9).to_hex())));
}

// ---- instantiation -------------------------------------------------------------------------

macro_rules! device_conformance_suite {
    ($harness:path) => {
        run_suite!($harness;
            single: [
                enrollment_code_is_single_use,
                enrollment_codes_expire,
                devices_round_trip_and_list_oldest_first,
                update_keeps_identity_and_push,
                unknown_devices_change_nothing,
                single_mode_refuses_a_second_device,
                override_mode_drops_the_others,
                multiple_mode_allows_many,
                a_token_belongs_to_one_device,
                drop_push_by_token_drops_the_holder_only,
                pin_failures_disconnect_at_the_limit,
                zero_max_pin_attempts_is_unlimited,
                a_right_pin_resets_the_count,
                a_right_pin_after_wrong_ones_keeps_its_check,
                claim_once_holds_for_its_ttl,
                pending_lists_keep_live_entries_soonest_first,
                keys_hold_no_secret_or_personal_data_in_clear,
            ];
            concurrent: [
                concurrent_redemptions_have_one_winner,
                concurrent_pin_failures_disconnect_once,
                concurrent_claims_have_one_winner,
            ]
        );
    };
}

mod on_memory {
    device_conformance_suite!(super::memory_harness);
}

mod on_redis {
    device_conformance_suite!(super::redis_harness);
}

mod on_sentinel {
    device_conformance_suite!(super::sentinel_harness);
}

mod on_cluster {
    device_conformance_suite!(super::cluster_harness);
}
