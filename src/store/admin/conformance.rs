//! The admin store conformance suite: one set of test bodies against the ports
//! (`TransactionStore` to write, `AdminStore` to read) and a manual clock, run on memory and on
//! Redis (`STEPGATE_TEST_REDIS_URL`, a fresh key prefix per test, deleted afterwards). Both must
//! list the same transactions in the same order and keep the same audit events.
//!
//! May import: domain, the store adapters under test.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::AUDIT_MAX_AGE;
use crate::domain::auth_type::Method;
use crate::domain::clock::{Clock, ManualClock, SharedClock, Timestamp};
use crate::domain::code::CodeHash;
use crate::domain::otp::{OtpAnswer, RedeemOutcome};
use crate::domain::ports::{AdminStore, AuditEntry, TransactionQuery, TransactionStore};
use crate::domain::regulation::{Finish, FinishOutcome};
use crate::domain::transaction::{Details, Status, Transaction, TransactionId};
use crate::store::conformance::{RedisKeys, Topology, scratch_redis_store_on};
use crate::store::memory::MemoryStore;

const RETENTION: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(300);

pub(super) struct Harness {
    tx: Arc<dyn TransactionStore>,
    admin: Arc<dyn AdminStore>,
    clock: Arc<ManualClock>,
    _cleanup: Option<RedisKeys>,
}

pub(super) async fn memory_harness() -> Harness {
    let clock = Arc::new(ManualClock::starting_now());
    let shared: SharedClock = clock.clone();
    let store = Arc::new(MemoryStore::new(shared, RETENTION));
    Harness {
        tx: store.clone(),
        admin: store,
        clock,
        _cleanup: None,
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
    let (store, keys) = scratch_redis_store_on(topology, clock.clone(), RETENTION);
    let store = Arc::new(store);
    Harness {
        tx: store.clone(),
        admin: store,
        clock,
        _cleanup: Some(keys),
    }
}

impl Harness {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn transaction(&self, user: Option<&str>, ttl: Duration) -> Transaction {
        let now = self.now();
        Transaction {
            evidence: None,
            id: TransactionId::random(),
            auth_type: "sms_code".into(),
            method: Method::Sms,
            user_id: user.map(str::to_owned),
            status: Status::Pending,
            created_at: now,
            expires_at: now.plus(ttl),
            finished_at: None,
            attempts: 0,
            max_attempts: 3,
            resends: 0,
            max_resends: 1,
            code_hash: None,
            reason: None,
            details: Details::default(),
        }
    }

    /// Inserts a fresh pending transaction of `user` created now.
    async fn insert(&self, user: Option<&str>) -> Transaction {
        let tx = self.transaction(user, TTL);
        self.tx.insert(&tx).await.unwrap();
        tx
    }

    async fn list(&self, query: TransactionQuery) -> Vec<TransactionId> {
        self.admin
            .recent_transactions(&query)
            .await
            .unwrap()
            .into_iter()
            .map(|tx| tx.id)
            .collect()
    }

    fn query(&self, since: Timestamp) -> TransactionQuery {
        TransactionQuery {
            since,
            user_id: None,
            status: None,
            limit: 100,
        }
    }
}

fn ids(txs: &[&Transaction]) -> Vec<TransactionId> {
    txs.iter().map(|tx| tx.id).collect()
}

pub(super) async fn listed_newest_first_within_the_window_and_the_limit(h: &Harness) {
    let start = h.now();
    let mut inserted = Vec::new();
    for _ in 0..5 {
        inserted.push(h.insert(Some("ann")).await);
        h.clock.advance(Duration::from_secs(1));
    }
    let newest_first: Vec<&Transaction> = inserted.iter().rev().collect();
    assert_eq!(h.list(h.query(start)).await, ids(&newest_first));
    // The window starts at `since`, inclusive.
    let since = inserted[1].created_at;
    assert_eq!(h.list(h.query(since)).await, ids(&newest_first[..4]));
    let limited = TransactionQuery {
        limit: 2,
        ..h.query(start)
    };
    assert_eq!(h.list(limited).await, ids(&newest_first[..2]));
    // What comes back is the whole transaction, as stored.
    let listed = h.admin.recent_transactions(&h.query(since)).await.unwrap();
    assert_eq!(listed[0], inserted[4]);
}

pub(super) async fn user_filter_keeps_users_apart(h: &Harness) {
    let start = h.now();
    let ann_first = h.insert(Some("ann")).await;
    h.clock.advance(Duration::from_millis(10));
    let bob = h.insert(Some("bob")).await;
    h.clock.advance(Duration::from_millis(10));
    let anonymous = h.insert(None).await;
    h.clock.advance(Duration::from_millis(10));
    let ann_second = h.insert(Some("ann")).await;
    let of = |user: &str| TransactionQuery {
        user_id: Some(user.to_owned()),
        ..h.query(start)
    };
    assert_eq!(h.list(of("ann")).await, ids(&[&ann_second, &ann_first]));
    assert_eq!(h.list(of("bob")).await, ids(&[&bob]));
    assert_eq!(h.list(of("nobody")).await, Vec::<TransactionId>::new());
    assert_eq!(
        h.list(h.query(start)).await,
        ids(&[&ann_second, &anonymous, &bob, &ann_first])
    );
}

pub(super) async fn status_filter_sees_the_effective_status(h: &Harness) {
    let start = h.now();
    let short = h.transaction(Some("ann"), Duration::from_secs(5));
    h.tx.insert(&short).await.unwrap();
    let approved = h.insert(Some("ann")).await;
    let finish = Finish {
        status: Status::Approved,
        reason: None,
        user_id: None,
        evidence: None,
    };
    assert_eq!(
        h.tx.finish(&approved.id, &finish).await.unwrap(),
        Some(FinishOutcome::Finished)
    );
    let pending = h.insert(Some("ann")).await;
    // `short` is past its expiry but nothing wrote that down: it reads as expired.
    h.clock.advance(Duration::from_secs(6));
    let with = |status: Status| TransactionQuery {
        status: Some(status),
        ..h.query(start)
    };
    assert_eq!(h.list(with(Status::Pending)).await, ids(&[&pending]));
    assert_eq!(h.list(with(Status::Expired)).await, ids(&[&short]));
    assert_eq!(h.list(with(Status::Approved)).await, ids(&[&approved]));
    assert_eq!(
        h.list(with(Status::Denied)).await,
        Vec::<TransactionId>::new()
    );
    let listed = h
        .admin
        .recent_transactions(&with(Status::Approved))
        .await
        .unwrap();
    assert_eq!(listed[0].status, Status::Approved);
    assert!(listed[0].finished_at.is_some());
}

pub(super) async fn evicted_transactions_leave_the_listing(h: &Harness) {
    let start = h.now();
    let gone = h.transaction(Some("ann"), Duration::from_secs(5));
    h.tx.insert(&gone).await.unwrap();
    h.clock.advance(Duration::from_secs(5) + RETENTION);
    assert_eq!(h.list(h.query(start)).await, Vec::<TransactionId>::new());
    let user = TransactionQuery {
        user_id: Some("ann".into()),
        ..h.query(start)
    };
    assert_eq!(h.list(user.clone()).await, Vec::<TransactionId>::new());
    let fresh = h.insert(Some("ann")).await;
    assert_eq!(h.list(user).await, ids(&[&fresh]));
}

pub(super) async fn an_id_stored_again_after_eviction_is_listed_once(h: &Harness) {
    let start = h.now();
    let first = h.transaction(Some("ann"), Duration::from_secs(5));
    h.tx.insert(&first).await.unwrap();
    h.clock.advance(Duration::from_secs(5) + RETENTION);
    let mut again = h.transaction(Some("ann"), TTL);
    again.id = first.id;
    h.tx.insert(&again).await.unwrap();
    let listed = h.admin.recent_transactions(&h.query(start)).await.unwrap();
    assert_eq!(listed, vec![again]);
}

pub(super) async fn a_user_linked_when_it_finishes_is_listed_under_that_user(h: &Harness) {
    let start = h.now();
    let otp = h.insert(None).await;
    let link = Finish {
        status: Status::Approved,
        reason: None,
        user_id: Some("scanner".into()),
        evidence: None,
    };
    assert_eq!(
        h.tx.finish(&otp.id, &link).await.unwrap(),
        Some(FinishOutcome::Finished)
    );
    let of_scanner = TransactionQuery {
        user_id: Some("scanner".into()),
        ..h.query(start)
    };
    let listed = h.admin.recent_transactions(&of_scanner).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, otp.id);
    assert_eq!(listed[0].user_id.as_deref(), Some("scanner"));
}

pub(super) async fn a_redeemed_otp_is_listed_under_the_phones_user(h: &Harness) {
    let start = h.now();
    let code = CodeHash::from_hex(&"cd".repeat(32)).unwrap();
    let mut otp = h.transaction(None, TTL);
    otp.method = Method::Otp;
    otp.code_hash = Some(code);
    h.tx.insert(&otp).await.unwrap();
    let answer = OtpAnswer {
        user_id: "scanner".into(),
        approve: true,
        evidence: None,
    };
    let redeemed = h.tx.redeem_otp(&otp.id, &code, &answer).await.unwrap();
    assert!(
        matches!(redeemed, Some(RedeemOutcome::Finished { .. })),
        "{redeemed:?}"
    );
    let of_scanner = TransactionQuery {
        user_id: Some("scanner".into()),
        ..h.query(start)
    };
    assert_eq!(h.list(of_scanner).await, ids(&[&otp]));
}

pub(super) async fn a_status_filter_finds_a_match_behind_many_others(h: &Harness) {
    // More than one page of the Redis reader's index walk (200) lies before the match.
    let start = h.now();
    let wanted = h.insert(Some("ann")).await;
    for _ in 0..250 {
        h.clock.advance(Duration::from_millis(1));
        h.insert(Some("ann")).await;
    }
    let finish = Finish {
        status: Status::Denied,
        reason: None,
        user_id: None,
        evidence: None,
    };
    h.tx.finish(&wanted.id, &finish).await.unwrap();
    let denied = TransactionQuery {
        status: Some(Status::Denied),
        limit: 5,
        ..h.query(start)
    };
    assert_eq!(h.list(denied).await, ids(&[&wanted]));
}

pub(super) async fn audit_events_come_back_newest_first_since_and_limited(h: &Harness) {
    let start = h.now();
    let entry = |n: u32, at: Timestamp| AuditEntry {
        at,
        event: format!(r#"{{"event":"E{n}","detail":"with spaces and \"quotes\""}}"#),
    };
    let mut written = Vec::new();
    for n in 0..5 {
        written.push(entry(n, h.now()));
        h.clock.advance(Duration::from_millis(100));
    }
    // Written in two batches, the second out of order.
    h.admin.append_audit(&written[..2]).await.unwrap();
    h.admin
        .append_audit(&[written[4].clone(), written[2].clone(), written[3].clone()])
        .await
        .unwrap();
    let newest_first: Vec<AuditEntry> = written.iter().rev().cloned().collect();
    assert_eq!(h.admin.audit_since(start, 100).await.unwrap(), newest_first);
    assert_eq!(
        h.admin.audit_since(written[3].at, 100).await.unwrap(),
        newest_first[..2]
    );
    assert_eq!(
        h.admin.audit_since(start, 3).await.unwrap(),
        newest_first[..3]
    );
    h.admin.append_audit(&[]).await.unwrap();
    assert_eq!(h.admin.audit_since(h.now(), 10).await.unwrap(), Vec::new());
}

pub(super) async fn identical_audit_events_are_all_kept(h: &Harness) {
    let at = h.now();
    let same = AuditEntry {
        at,
        event: r#"{"event":"SAME"}"#.into(),
    };
    h.admin
        .append_audit(&[same.clone(), same.clone()])
        .await
        .unwrap();
    h.admin
        .append_audit(std::slice::from_ref(&same))
        .await
        .unwrap();
    assert_eq!(h.admin.audit_since(at, 10).await.unwrap(), vec![same; 3]);
}

pub(super) async fn old_audit_events_are_trimmed(h: &Harness) {
    let old = AuditEntry {
        at: h.now(),
        event: r#"{"event":"OLD"}"#.into(),
    };
    h.admin.append_audit(&[old]).await.unwrap();
    h.clock.advance(AUDIT_MAX_AGE + Duration::from_secs(1));
    let new = AuditEntry {
        at: h.now(),
        event: r#"{"event":"NEW"}"#.into(),
    };
    h.admin
        .append_audit(std::slice::from_ref(&new))
        .await
        .unwrap();
    assert_eq!(
        h.admin.audit_since(Timestamp(0), 10).await.unwrap(),
        vec![new]
    );
}

pub(super) async fn concurrent_inserts_are_all_indexed(h: &Harness) {
    const WRITERS: usize = 40;
    let start = h.now();
    let barrier = Arc::new(Barrier::new(WRITERS));
    let mut writers = JoinSet::new();
    for n in 0..WRITERS {
        let tx = h.transaction(Some(if n % 2 == 0 { "even" } else { "odd" }), TTL);
        let (store, barrier) = (h.tx.clone(), barrier.clone());
        writers.spawn(async move {
            barrier.wait().await;
            store.insert(&tx).await.map(|()| tx.id)
        });
    }
    let mut written = Vec::new();
    while let Some(joined) = writers.join_next().await {
        written.push(joined.unwrap().unwrap());
    }
    let mut listed = h.list(h.query(start)).await;
    listed.sort();
    written.sort();
    assert_eq!(listed, written);
    let even = TransactionQuery {
        user_id: Some("even".into()),
        ..h.query(start)
    };
    assert_eq!(h.list(even).await.len(), WRITERS / 2);
}

macro_rules! admin_suite {
    ($harness:path) => {
        run_suite!($harness;
            single: [
                listed_newest_first_within_the_window_and_the_limit,
                user_filter_keeps_users_apart,
                status_filter_sees_the_effective_status,
                evicted_transactions_leave_the_listing,
                an_id_stored_again_after_eviction_is_listed_once,
                a_user_linked_when_it_finishes_is_listed_under_that_user,
                a_redeemed_otp_is_listed_under_the_phones_user,
                a_status_filter_finds_a_match_behind_many_others,
                audit_events_come_back_newest_first_since_and_limited,
                identical_audit_events_are_all_kept,
                old_audit_events_are_trimmed,
            ];
            concurrent: [
                concurrent_inserts_are_all_indexed,
            ]
        );
    };
}

mod on_memory {
    admin_suite!(super::memory_harness);
}

mod on_redis {
    admin_suite!(super::redis_harness);
}

mod on_sentinel {
    admin_suite!(super::sentinel_harness);
}

mod on_cluster {
    admin_suite!(super::cluster_harness);
}
