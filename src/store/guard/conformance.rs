//! The account guard store conformance suite: one set of test bodies written against
//! `Arc<dyn AccountGuardStore>` and a manual clock, run on every backend (`on_memory`,
//! `on_redis`). Both must give the outcomes of `domain::guard`, and concurrency must not buy
//! extra failures or pushes.
//!
//! The Redis run uses `STEPGATE_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/0`) with a fresh
//! key prefix per test and deletes that prefix's keys afterwards, even when the test fails.
//!
//! May import: domain, the store adapters under test.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::memory::MemoryGuardStore;
use super::redis::RedisGuardStore;
use crate::domain::clock::{Clock, ManualClock, SharedClock, Timestamp};
use crate::domain::guard::{Block, GuardOp, GuardRules, GuardVerdict};
use crate::domain::ports::{AccountGuardStore, Admission, BoundedList};
use crate::store::conformance::{RedisKeys, Topology, scratch_redis_store_on};

const RULES: GuardRules = GuardRules {
    max_failures: 5,
    lock_for: Duration::from_secs(600),
    forget_after: Duration::from_secs(3600),
    max_pushes: 3,
    push_backoff: Duration::from_secs(30),
    max_push_backoff: Duration::from_secs(120),
    report_block: Duration::from_secs(900),
    max_pending_step_ups: 0,
    max_held_requests: 0,
};

pub(super) struct Harness {
    store: Arc<dyn AccountGuardStore>,
    clock: Arc<ManualClock>,
    redis: Option<RedisKeys>,
}

pub(super) async fn memory_harness() -> Harness {
    let clock = Arc::new(ManualClock::starting_now());
    let shared: SharedClock = clock.clone();
    Harness {
        store: Arc::new(MemoryGuardStore::new(shared)),
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
    let (store, keys) = scratch_redis_store_on(topology, shared.clone(), Duration::from_secs(60));
    Harness {
        store: Arc::new(RedisGuardStore::new(Arc::new(store), shared)),
        clock,
        redis: Some(keys),
    }
}

impl Harness {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    async fn step(&self, user: &str, op: GuardOp) -> GuardVerdict {
        self.store
            .guard(&format!("key-of-{user}"), user, op, &RULES)
            .await
            .unwrap()
    }

    /// One wrong answer: begun, then settled as a failure.
    async fn fail(&self, user: &str) -> GuardVerdict {
        match self.step(user, GuardOp::BeginAttempt).await {
            GuardVerdict::Clear => self.step(user, GuardOp::Failure).await,
            refused => refused,
        }
    }

    async fn listed(&self) -> Vec<String> {
        self.store
            .guarded_users()
            .await
            .unwrap()
            .into_iter()
            .map(|user| user.user_id)
            .collect()
    }
}

/// Runs `racers` calls of `race` (given the store and the racer's number) released together
/// behind one barrier, and returns their results.
async fn at_once<T, F, Fut>(h: &Harness, racers: usize, race: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Arc<dyn AccountGuardStore>, usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(racers));
    let mut tasks = JoinSet::new();
    for n in 0..racers {
        let barrier = barrier.clone();
        let run = race(h.store.clone(), n);
        tasks.spawn(async move {
            barrier.wait().await;
            run.await
        });
    }
    let mut results = Vec::with_capacity(racers);
    while let Some(result) = tasks.join_next().await {
        results.push(result.unwrap());
    }
    results
}

pub(super) async fn failures_lock_until_time_or_an_unlock(h: &Harness) {
    for n in 1..=4 {
        assert_eq!(h.fail("ann").await, GuardVerdict::Counted { failures: n });
    }
    let until = h.now().plus(RULES.lock_for);
    assert_eq!(h.fail("ann").await, GuardVerdict::LockedNow { until });
    let locked = GuardVerdict::Blocked(Block::Locked { until });
    assert_eq!(h.step("ann", GuardOp::Check).await, locked);
    assert_eq!(h.step("ann", GuardOp::AdmitPush).await, locked);
    assert_eq!(h.fail("ann").await, locked);
    assert_eq!(h.step("bob", GuardOp::Check).await, GuardVerdict::Clear);
    assert_eq!(h.listed().await, ["ann"]);
    let listed = h.store.guarded_users().await.unwrap();
    assert_eq!(listed[0].state.locked_until, Some(until));

    h.clock.advance(RULES.lock_for);
    assert_eq!(h.step("ann", GuardOp::Check).await, GuardVerdict::Clear);
    assert!(h.listed().await.is_empty());

    for _ in 0..5 {
        h.fail("ann").await;
    }
    assert!(matches!(
        h.step("ann", GuardOp::Check).await,
        GuardVerdict::Blocked(_)
    ));
    assert_eq!(h.step("ann", GuardOp::Unlock).await, GuardVerdict::Clear);
    assert_eq!(h.step("ann", GuardOp::Check).await, GuardVerdict::Clear);
    assert!(h.listed().await.is_empty());
}

pub(super) async fn a_success_or_a_quiet_period_resets_the_count(h: &Harness) {
    for _ in 0..4 {
        h.fail("ann").await;
    }
    assert_eq!(h.step("ann", GuardOp::Success).await, GuardVerdict::Clear);
    assert_eq!(h.fail("ann").await, GuardVerdict::Counted { failures: 1 });
    h.clock.advance(RULES.forget_after);
    assert_eq!(h.fail("ann").await, GuardVerdict::Counted { failures: 1 });
}

pub(super) async fn a_refund_gives_back_a_begun_attempt(h: &Harness) {
    for _ in 0..4 {
        h.fail("ann").await;
    }
    assert_eq!(
        h.step("ann", GuardOp::BeginAttempt).await,
        GuardVerdict::Clear
    );
    assert!(matches!(
        h.step("ann", GuardOp::BeginAttempt).await,
        GuardVerdict::Blocked(Block::Busy { .. })
    ));
    assert_eq!(h.step("ann", GuardOp::Refund).await, GuardVerdict::Clear);
    assert_eq!(h.step("ann", GuardOp::Check).await, GuardVerdict::Clear);
    assert_eq!(
        h.fail("ann").await,
        GuardVerdict::LockedNow {
            until: h.now().plus(RULES.lock_for)
        }
    );
}

pub(super) async fn pushes_beyond_the_cap_back_off_and_a_report_blocks_push(h: &Harness) {
    for _ in 0..3 {
        assert_eq!(h.step("ann", GuardOp::AdmitPush).await, GuardVerdict::Clear);
    }
    let until = h.now().plus(RULES.push_backoff);
    assert_eq!(
        h.step("ann", GuardOp::AdmitPush).await,
        GuardVerdict::Blocked(Block::PushFatigue { until })
    );
    h.clock.advance(RULES.push_backoff);
    assert_eq!(h.step("ann", GuardOp::AdmitPush).await, GuardVerdict::Clear);
    assert_eq!(
        h.step("ann", GuardOp::AdmitPush).await,
        GuardVerdict::Blocked(Block::PushFatigue {
            until: h.now().plus(RULES.push_backoff * 2)
        })
    );
    assert!(h.listed().await.is_empty(), "fatigue is no lock");
    h.step("ann", GuardOp::Success).await;
    assert_eq!(h.step("ann", GuardOp::AdmitPush).await, GuardVerdict::Clear);

    let until = h.now().plus(RULES.report_block);
    assert_eq!(
        h.step("ann", GuardOp::Report).await,
        GuardVerdict::Reported { until }
    );
    assert_eq!(
        h.step("ann", GuardOp::AdmitPush).await,
        GuardVerdict::Blocked(Block::PushReported { until })
    );
    assert_eq!(h.step("ann", GuardOp::Check).await, GuardVerdict::Clear);
    assert_eq!(h.listed().await, ["ann"]);
    h.clock.advance(RULES.report_block);
    assert_eq!(h.step("ann", GuardOp::AdmitPush).await, GuardVerdict::Clear);
    assert!(h.listed().await.is_empty());
}

pub(super) async fn the_list_is_soonest_to_open_first(h: &Harness) {
    for _ in 0..5 {
        h.fail("late").await;
    }
    h.clock.advance(Duration::from_secs(1));
    h.step("reported", GuardOp::Report).await;
    h.clock.advance(Duration::from_secs(1));
    for _ in 0..5 {
        h.fail("early").await;
    }
    // late: +600 s from t0; early: +602 s; reported: +901 s.
    assert_eq!(h.listed().await, ["late", "early", "reported"]);
}

pub(super) async fn keys_hold_no_user_id(h: &Harness) {
    let Some(redis) = &h.redis else {
        return;
    };
    for _ in 0..5 {
        for op in [GuardOp::BeginAttempt, GuardOp::Failure] {
            h.store
                .guard("0f1e2d3c", "ann@example.com", op, &RULES)
                .await
                .unwrap();
        }
    }
    let keys = redis.keys();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|key| !key.contains("ann")), "{keys:?}");
}

pub(super) async fn concurrent_failures_lock_exactly_once(h: &Harness) {
    let outcomes = at_once(h, 50, |store, _| async move {
        let begun = store
            .guard("key-of-ann", "ann", GuardOp::BeginAttempt, &RULES)
            .await
            .unwrap();
        if begun != GuardVerdict::Clear {
            return (begun, None);
        }
        let settled = store
            .guard("key-of-ann", "ann", GuardOp::Failure, &RULES)
            .await
            .unwrap();
        (begun, Some(settled))
    })
    .await;
    let mut checked = 0;
    let mut refused = 0;
    let mut locked_now = 0;
    for outcome in outcomes {
        match outcome {
            (GuardVerdict::Clear, Some(settled)) => {
                checked += 1;
                if matches!(settled, GuardVerdict::LockedNow { .. }) {
                    locked_now += 1;
                }
            }
            (GuardVerdict::Blocked(Block::Locked { .. } | Block::Busy { .. }), None) => {
                refused += 1
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((checked, refused, locked_now), (5, 45, 1));
    assert!(matches!(
        h.step("ann", GuardOp::Check).await,
        GuardVerdict::Blocked(Block::Locked { .. })
    ));
}

pub(super) async fn concurrent_pushes_stop_at_the_cap(h: &Harness) {
    let verdicts = at_once(h, 40, |store, _| async move {
        store
            .guard("key-of-ann", "ann", GuardOp::AdmitPush, &RULES)
            .await
            .unwrap()
    })
    .await;
    let sent = verdicts
        .iter()
        .filter(|verdict| **verdict == GuardVerdict::Clear)
        .count();
    assert_eq!(sent, 3);
}

pub(super) async fn bounded_lists_admit_up_to_the_bound(h: &Harness) {
    let admit = |entry: &'static str, seconds: u64, remove: Vec<String>| {
        let until = h.now().plus(Duration::from_secs(seconds));
        async move {
            h.store
                .admit_entry(
                    "key-of-ann",
                    BoundedList::HeldRequests,
                    entry,
                    until,
                    2,
                    &remove,
                )
                .await
                .unwrap()
        }
    };
    let t0 = h.now();
    assert_eq!(admit("a", 60, vec![]).await, Admission::Admitted);
    assert_eq!(admit("b", 30, vec![]).await, Admission::Admitted);
    assert_eq!(
        admit("c", 60, vec![]).await,
        Admission::Full {
            live: vec![
                ("b".into(), t0.plus(Duration::from_secs(30))),
                ("a".into(), t0.plus(Duration::from_secs(60))),
            ]
        }
    );
    // Another list and another user have room of their own.
    assert_eq!(
        h.store
            .admit_entry(
                "key-of-ann",
                BoundedList::PendingStepUps,
                "c",
                t0.plus(Duration::from_secs(9)),
                2,
                &[]
            )
            .await
            .unwrap(),
        Admission::Admitted
    );
    assert_eq!(
        h.store
            .admit_entry(
                "key-of-bob",
                BoundedList::HeldRequests,
                "c",
                t0.plus(Duration::from_secs(9)),
                2,
                &[]
            )
            .await
            .unwrap(),
        Admission::Admitted
    );
    // An entry found ended makes room; so does time, and a removal.
    assert_eq!(admit("c", 60, vec!["a".into()]).await, Admission::Admitted);
    h.clock.advance(Duration::from_secs(30));
    assert_eq!(admit("d", 60, vec![]).await, Admission::Admitted);
    h.store
        .remove_entry("key-of-ann", BoundedList::HeldRequests, "d")
        .await
        .unwrap();
    assert_eq!(admit("e", 60, vec![]).await, Admission::Admitted);
    assert!(matches!(
        admit("f", 60, vec![]).await,
        Admission::Full { .. }
    ));
    // Zero is unbounded.
    for n in 0..10 {
        let entry = format!("free-{n}");
        assert_eq!(
            h.store
                .admit_entry(
                    "key-of-cy",
                    BoundedList::HeldRequests,
                    &entry,
                    h.now().plus(Duration::from_secs(5)),
                    0,
                    &[]
                )
                .await
                .unwrap(),
            Admission::Admitted
        );
    }
}

pub(super) async fn concurrent_admissions_stop_at_the_bound(h: &Harness) {
    let until = h.now().plus(Duration::from_secs(60));
    let admissions = at_once(h, 40, |store, n| async move {
        store
            .admit_entry(
                "key-of-ann",
                BoundedList::PendingStepUps,
                &format!("tx-{n}"),
                until,
                3,
                &[],
            )
            .await
            .unwrap()
    })
    .await;
    let admitted = admissions
        .iter()
        .filter(|admission| **admission == Admission::Admitted)
        .count();
    assert_eq!(admitted, 3);
}

macro_rules! guard_conformance_suite {
    ($harness:path) => {
        run_suite!($harness;
            single: [
                failures_lock_until_time_or_an_unlock,
                a_success_or_a_quiet_period_resets_the_count,
                a_refund_gives_back_a_begun_attempt,
                pushes_beyond_the_cap_back_off_and_a_report_blocks_push,
                the_list_is_soonest_to_open_first,
                keys_hold_no_user_id,
                bounded_lists_admit_up_to_the_bound,
            ];
            concurrent: [
                concurrent_failures_lock_exactly_once,
                concurrent_pushes_stop_at_the_cap,
                concurrent_admissions_stop_at_the_bound,
            ]
        );
    };
}

mod on_memory {
    guard_conformance_suite!(super::memory_harness);
}

mod on_redis {
    guard_conformance_suite!(super::redis_harness);
}

mod on_sentinel {
    guard_conformance_suite!(super::sentinel_harness);
}

mod on_cluster {
    guard_conformance_suite!(super::cluster_harness);
}
