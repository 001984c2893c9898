//! The callback queue conformance suite: one set of test bodies written against
//! `Arc<dyn CallbackQueue>` and a manual clock, run on every backend (`on_memory`, `on_redis`).
//!
//! The Redis run uses `STEPGATE_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/0`) with a fresh
//! key prefix per test and deletes the keys under it afterwards, even when the test fails.
//!
//! May import: domain, the store adapters under test.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::memory::MemoryCallbackQueue;
use super::redis::RedisCallbackQueue;
use crate::domain::callback::{CallbackJob, CallbackQueue};
use crate::domain::clock::{Clock, ManualClock, Timestamp};
use crate::domain::transaction::TransactionId;
use crate::store::conformance::{RedisKeys, Topology, scratch_redis_store_on};

const LEASE: Duration = Duration::from_secs(30);

pub(super) struct Harness {
    queue: Arc<dyn CallbackQueue>,
    clock: Arc<ManualClock>,
    _redis: Option<RedisKeys>,
}

pub(super) async fn memory_harness() -> Harness {
    Harness {
        queue: Arc::new(MemoryCallbackQueue::new()),
        clock: Arc::new(ManualClock::starting_now()),
        _redis: None,
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
    let (store, keys) = scratch_redis_store_on(topology, clock.clone(), Duration::from_secs(60));
    Harness {
        queue: Arc::new(RedisCallbackQueue::new(Arc::new(store))),
        clock,
        _redis: Some(keys),
    }
}

impl Harness {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// A job due `in_` from now, enqueued.
    async fn enqueued(&self, in_: Duration) -> CallbackJob {
        let job = CallbackJob::new(
            TransactionId::random(),
            "https://portal.example/cb/é?token=a&b=\"c\"".into(),
            self.now().plus(in_),
        );
        self.queue.enqueue(&job).await.unwrap();
        job
    }

    async fn claim(&self, limit: usize) -> Vec<CallbackJob> {
        self.queue
            .claim_due(self.now(), limit, LEASE)
            .await
            .unwrap()
    }
}

// ---- the suite -----------------------------------------------------------------------------

pub(super) async fn enqueue_claim_complete(h: &Harness) {
    let job = h.enqueued(Duration::ZERO).await;
    assert_eq!(h.queue.len().await.unwrap(), 1);

    let claimed = h.claim(10).await;
    assert_eq!(claimed.len(), 1);
    let got = &claimed[0];
    assert_eq!(got.id, job.id);
    assert_eq!(got.transaction_id, job.transaction_id);
    assert_eq!(
        got.callback_uri, job.callback_uri,
        "the URI round-trips exactly"
    );
    assert_eq!(got.attempt, 0);
    assert_eq!(
        got.due_at,
        h.now().plus(LEASE),
        "a claimed job carries its lease end"
    );
    assert_eq!(h.queue.len().await.unwrap(), 1, "claimed, not removed");

    assert!(!h.queue.is_empty().await.unwrap());
    h.queue.complete(&job.id).await.unwrap();
    assert_eq!(h.queue.len().await.unwrap(), 0);
    assert!(h.queue.is_empty().await.unwrap());
    h.clock.advance(LEASE * 2);
    assert!(
        h.claim(10).await.is_empty(),
        "a completed job never comes back"
    );
    h.queue.complete(&job.id).await.unwrap();
    h.queue.complete("no-such-job").await.unwrap();
}

pub(super) async fn jobs_not_due_are_not_claimed(h: &Harness) {
    let later = h.enqueued(Duration::from_secs(5)).await;
    assert!(h.claim(10).await.is_empty());
    h.clock.advance(Duration::from_millis(4_999));
    assert!(h.claim(10).await.is_empty(), "1 ms early");
    h.clock.advance(Duration::from_millis(1));
    let claimed = h.claim(10).await;
    assert_eq!(
        claimed.iter().map(|j| &j.id).collect::<Vec<_>>(),
        [&later.id]
    );
}

pub(super) async fn claims_take_the_earliest_first_up_to_the_limit(h: &Harness) {
    let third = h.enqueued(Duration::from_millis(3)).await;
    let first = h.enqueued(Duration::from_millis(1)).await;
    let second = h.enqueued(Duration::from_millis(2)).await;
    let _not_due = h.enqueued(Duration::from_secs(60)).await;
    h.clock.advance(Duration::from_millis(3));

    let claimed = h.claim(2).await;
    assert_eq!(
        claimed.iter().map(|j| &j.id).collect::<Vec<_>>(),
        [&first.id, &second.id]
    );
    let rest = h.claim(2).await;
    assert_eq!(rest.iter().map(|j| &j.id).collect::<Vec<_>>(), [&third.id]);
    assert!(h.claim(0).await.is_empty());
    assert_eq!(h.queue.len().await.unwrap(), 4);
}

pub(super) async fn a_lease_hides_the_job_until_it_ends(h: &Harness) {
    let job = h.enqueued(Duration::ZERO).await;
    assert_eq!(h.claim(10).await.len(), 1);
    assert!(h.claim(10).await.is_empty(), "leased: not handed out twice");

    // The worker died mid-send: the job is due again when the lease ends, not before.
    h.clock.advance(LEASE - Duration::from_millis(1));
    assert!(h.claim(10).await.is_empty());
    h.clock.advance(Duration::from_millis(1));
    let again = h.claim(10).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, job.id);
    assert_eq!(again[0].attempt, 0, "a lease is not an attempt");
}

pub(super) async fn reschedule_records_the_attempt_and_the_new_due_time(h: &Harness) {
    let job = h.enqueued(Duration::ZERO).await;
    h.claim(10).await;
    let retry_at = h.now().plus(Duration::from_secs(2));
    h.queue.reschedule(&job.id, 1, retry_at).await.unwrap();

    h.clock.advance(Duration::from_millis(1_999));
    assert!(h.claim(10).await.is_empty(), "not before the retry time");
    h.clock.advance(Duration::from_millis(1));
    let retried = h.claim(10).await;
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].attempt, 1);
    assert_eq!(retried[0].callback_uri, job.callback_uri);
    assert_eq!(retried[0].transaction_id, job.transaction_id);

    h.queue.reschedule(&job.id, 7, h.now()).await.unwrap();
    assert_eq!(h.claim(10).await[0].attempt, 7);
}

pub(super) async fn reschedule_does_not_bring_back_a_completed_job(h: &Harness) {
    let job = h.enqueued(Duration::ZERO).await;
    h.claim(10).await;
    h.queue.complete(&job.id).await.unwrap();
    h.queue.reschedule(&job.id, 1, h.now()).await.unwrap();
    assert_eq!(h.queue.len().await.unwrap(), 0);
    assert!(h.claim(10).await.is_empty());
}

pub(super) async fn enqueue_with_the_same_id_replaces_the_job(h: &Harness) {
    let job = h.enqueued(Duration::from_secs(60)).await;
    let replacement = CallbackJob {
        due_at: h.now(),
        attempt: 2,
        ..job.clone()
    };
    h.queue.enqueue(&replacement).await.unwrap();
    assert_eq!(h.queue.len().await.unwrap(), 1);
    let claimed = h.claim(10).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].attempt, 2);
}

/// Two workers (two gateway replicas) claim 20 due jobs at the same moment, a few at a time,
/// until none is left: each job is handed out exactly once.
pub(super) async fn concurrent_claimers_get_each_job_once(h: &Harness) {
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(h.enqueued(Duration::ZERO).await.id);
    }
    let barrier = Arc::new(Barrier::new(2));
    let mut workers = JoinSet::new();
    for _ in 0..2 {
        let queue = h.queue.clone();
        let barrier = barrier.clone();
        let now = h.now();
        workers.spawn(async move {
            barrier.wait().await;
            let mut got = Vec::new();
            loop {
                let batch = queue.claim_due(now, 3, LEASE).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|job| job.id));
                tokio::task::yield_now().await;
            }
        });
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    while let Some(got) = workers.join_next().await {
        for id in got.unwrap() {
            *counts.entry(id).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), 20, "every job was claimed");
    assert!(
        counts.values().all(|&n| n == 1),
        "some job was claimed twice: {counts:?}"
    );
    for id in ids {
        assert!(counts.contains_key(&id));
    }
}

// ---- instantiation -------------------------------------------------------------------------

macro_rules! callback_queue_suite {
    ($harness:path) => {
        run_suite!($harness;
            single: [
                enqueue_claim_complete,
                jobs_not_due_are_not_claimed,
                claims_take_the_earliest_first_up_to_the_limit,
                a_lease_hides_the_job_until_it_ends,
                reschedule_records_the_attempt_and_the_new_due_time,
                reschedule_does_not_bring_back_a_completed_job,
                enqueue_with_the_same_id_replaces_the_job,
            ];
            concurrent: [
                concurrent_claimers_get_each_job_once,
            ]
        );
    };
}

mod on_memory {
    callback_queue_suite!(super::memory_harness);
}

mod on_redis {
    callback_queue_suite!(super::redis_harness);
}

mod on_sentinel {
    callback_queue_suite!(super::sentinel_harness);
}

mod on_cluster {
    callback_queue_suite!(super::cluster_harness);
}
