//! The store conformance suite: one set of test bodies, written once against the ports
//! (`Arc<dyn TransactionStore>`, `Arc<dyn RateLimitStore>`, `Arc<dyn HeldRequestStore>`) and a
//! manual clock, run against every backend (`on_memory`, `on_redis`). Both must give the same
//! outcomes as `domain::regulation`, and hand out each held request exactly once.
//!
//! The Redis runs (`on_redis`, `on_sentinel`, `on_cluster`) use, with a fresh key prefix per
//! test whose keys are deleted afterwards even when the test fails:
//! - standalone: `STEPGATE_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/0`);
//! - Sentinel: `STEPGATE_TEST_REDIS_SENTINEL`, `master@host:port,...` (default the set
//!   `scripts/redis-topologies` starts: `stepgate-test@127.0.0.1:26390,...:26391,...:26392`);
//! - Cluster: `STEPGATE_TEST_REDIS_CLUSTER`, `host:port,...` (default `127.0.0.1:7100`
//!   to `7105`, from the same script).
//!
//! Redis expires held requests and rate-limit windows on its own (real) time, memory on the
//! injected clock, so the tests of those expiries move both.
//!
//! May import: domain, the store adapters under test.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::memory::MemoryStore;
use super::redis::{RedisSettings, RedisStore, held_key, held_user_key, tx_key};
use crate::config::settings::{ClusterSettings, RedisAuth, RedisMode, RedisNode, SentinelSettings};
use crate::domain::auth_type::Method;
use crate::domain::clock::{Clock, ManualClock, SharedClock, Timestamp};
use crate::domain::code::{CodeHash, CodeHasher, OneTimeCode, SecretKey};
use crate::domain::held::{BindingDigest, HeldMode, HeldRequest, HeldTicket, OriginalRequest};
use crate::domain::otp::{OtpAnswer, OtpCode, OtpHasher, RedeemOutcome};
use crate::domain::ports::{HeldRequestStore, RateLimitStore, StoreError, TransactionStore};
use crate::domain::regulation::{Finish, FinishOutcome, ResendOutcome, VerifyOutcome};
use crate::domain::transaction::{
    Details, Evidence, Owner, Reason, Status, Transaction, TransactionId,
};

/// The Redis server the tests use.
pub(crate) fn test_redis_url() -> String {
    std::env::var("STEPGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// Which of the test Redis deployments a Redis run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topology {
    Standalone,
    Sentinel,
    Cluster,
}

fn nodes(list: &str) -> Vec<RedisNode> {
    list.split(',')
        .filter_map(|node| {
            let (host, port) = node.trim().rsplit_once(':')?;
            Some(RedisNode {
                host: host.to_owned(),
                port: port.parse().ok()?,
            })
        })
        .collect()
}

/// The test Sentinel set's master name and Sentinels.
pub(crate) fn test_sentinel() -> (String, Vec<RedisNode>) {
    let spec = std::env::var("STEPGATE_TEST_REDIS_SENTINEL")
        .unwrap_or_else(|_| "stepgate-test@127.0.0.1:26390,127.0.0.1:26391,127.0.0.1:26392".into());
    let (name, list) = spec.split_once('@').unwrap_or(("stepgate-test", &spec));
    (name.to_owned(), nodes(list))
}

/// The test Cluster's nodes.
pub(crate) fn test_cluster_nodes() -> Vec<RedisNode> {
    nodes(
        &std::env::var("STEPGATE_TEST_REDIS_CLUSTER").unwrap_or_else(|_| {
            (7100..=7105)
                .map(|port| format!("127.0.0.1:{port}"))
                .collect::<Vec<_>>()
                .join(",")
        }),
    )
}

impl Topology {
    /// The store's settings for this deployment, and the plain servers the test inspects and
    /// cleans up (the Sentinel set's primary as the Sentinels name it now; every cluster node).
    fn settings(self, prefix: &str) -> (RedisSettings, Vec<String>) {
        let mut settings = RedisSettings {
            url: test_redis_url(),
            key_prefix: prefix.to_owned(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(5),
            mode: RedisMode::Standalone,
            durability: Default::default(),
        };
        let servers = match self {
            Topology::Standalone => vec![settings.url.clone()],
            Topology::Sentinel => {
                let (master_name, sentinels) = test_sentinel();
                let primary = sentinel_primary(&master_name, &sentinels);
                settings.mode = RedisMode::Sentinel(Box::new(SentinelSettings {
                    master_name,
                    sentinels,
                    sentinel_auth: RedisAuth::default(),
                    data_auth: RedisAuth::default(),
                    db: 0,
                }));
                vec![primary]
            }
            Topology::Cluster => {
                let nodes = test_cluster_nodes();
                let servers = nodes
                    .iter()
                    .map(|node| format!("redis://{node}/"))
                    .collect();
                settings.mode = RedisMode::Cluster(ClusterSettings {
                    nodes,
                    data_auth: RedisAuth::default(),
                });
                servers
            }
        };
        (settings, servers)
    }
}

/// `redis://host:port/` of the primary the Sentinels name.
fn sentinel_primary(master_name: &str, sentinels: &[RedisNode]) -> String {
    for sentinel in sentinels {
        let Ok(client) = ::redis::Client::open(format!("redis://{sentinel}/")) else {
            continue;
        };
        let Ok(mut connection) = client.get_connection() else {
            continue;
        };
        if let Ok((host, port)) = ::redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master_name)
            .query::<(String, u16)>(&mut connection)
        {
            return format!("redis://{host}:{port}/");
        }
    }
    panic!(
        "no Sentinel of {sentinels:?} names a primary for {master_name}: start them with scripts/redis-topologies"
    )
}

const RETENTION: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(300);
/// The user the sample transactions belong to.
const OWNER_ID: &str = "user-1";
/// The owner of the transactions the harness makes: `OWNER_ID` through the proxy.
const OWNER: Owner<'static> = Owner {
    user_id: OWNER_ID,
    client_id: None,
};

/// One backend under test.
pub(super) struct Harness {
    tx: Arc<dyn TransactionStore>,
    rl: Arc<dyn RateLimitStore>,
    held: Arc<dyn HeldRequestStore>,
    clock: Arc<ManualClock>,
    hasher: CodeHasher,
    redis: Option<RedisKeys>,
}

/// The Redis run's key prefix; dropping it deletes every key under the prefix.
pub(crate) struct RedisKeys {
    /// The plain servers holding the keys (several for a cluster; replicas answer with a
    /// redirect and are skipped).
    servers: Vec<::redis::Client>,
    pub(crate) prefix: String,
    pub(crate) topology: Topology,
}

/// A Redis store on the `topology` test deployment under a fresh key prefix (5 s response
/// timeout: many scripts at once on a busy 2-core machine), and the keys' guard that deletes
/// them on drop.
pub(crate) fn scratch_redis_store_on(
    topology: Topology,
    clock: SharedClock,
    retention: Duration,
) -> (RedisStore, RedisKeys) {
    let prefix = format!("stepgate-test:{}:", uuid::Uuid::new_v4());
    let (settings, servers) = topology.settings(&prefix);
    let store = RedisStore::new(settings, clock, retention).unwrap();
    let keys = RedisKeys {
        servers: servers
            .into_iter()
            .map(|url| ::redis::Client::open(url).unwrap())
            .collect(),
        prefix,
        topology,
    };
    (store, keys)
}

impl RedisKeys {
    fn connections(&self) -> impl Iterator<Item = ::redis::Connection> + '_ {
        self.servers
            .iter()
            .filter_map(|client| client.get_connection().ok())
    }

    /// Every key under the prefix (a cluster's replicas list their primary's keys too: once).
    pub(crate) fn keys(&self) -> Vec<String> {
        let mut keys = std::collections::BTreeSet::new();
        for mut connection in self.connections() {
            let found: Vec<String> = ::redis::cmd("KEYS")
                .arg(format!("{}*", self.prefix))
                .query(&mut connection)
                .unwrap();
            keys.extend(found);
        }
        keys.into_iter().collect()
    }

    /// The key's remaining time to live, in ms (PTTL), from the server that holds its slot.
    fn pttl(&self, key: &str) -> i64 {
        self.connections()
            .find_map(|mut connection| {
                ::redis::cmd("PTTL")
                    .arg(key)
                    .query::<i64>(&mut connection)
                    .ok()
            })
            .unwrap_or_else(|| panic!("no server answers PTTL {key}"))
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let pattern = format!("{}*", self.prefix);
        for mut connection in self.connections() {
            let mut cursor: u64 = 0;
            loop {
                let Ok((next, keys)) = ::redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query::<(u64, Vec<String>)>(&mut connection)
                else {
                    break;
                };
                // One key per DEL: a cluster node refuses keys of several slots in one command
                // (and a replica refuses them all, which is fine: its primary deletes them).
                for key in keys {
                    let _ = ::redis::cmd("DEL").arg(&key).query::<i64>(&mut connection);
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
    }
}

pub(super) async fn memory_harness() -> Harness {
    let clock = Arc::new(ManualClock::starting_now());
    let shared: SharedClock = clock.clone();
    let store = Arc::new(MemoryStore::new(shared, RETENTION));
    Harness {
        tx: store.clone(),
        rl: store.clone(),
        held: store,
        clock,
        hasher: hasher(),
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
    let (store, keys) = scratch_redis_store_on(topology, clock.clone(), RETENTION);
    let store = Arc::new(store);
    Harness {
        tx: store.clone(),
        rl: store.clone(),
        held: store,
        clock,
        hasher: hasher(),
        redis: Some(keys),
    }
}

fn hasher() -> CodeHasher {
    CodeHasher::new(&SecretKey::new(vec![42u8; 32]))
}

impl Harness {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Another store of the same backend: on Redis the same server under another key prefix.
    async fn sibling(&self) -> Harness {
        if let Some(keys) = &self.redis {
            redis_harness_on(keys.topology).await
        } else {
            memory_harness().await
        }
    }

    /// A held POST with a non-UTF-8 header value and `body`.
    fn held_request(&self, user_id: &str, body: Vec<u8>) -> HeldRequest {
        HeldRequest {
            ticket: HeldTicket {
                bound: None,
                policy: "transfers".into(),
                user_id: user_id.into(),
                mode: HeldMode::Hold,
                freshness_seconds: 300,
                binding: BindingDigest::of("binding-token"),
                held_at: self.now(),
                message: Some("Approve the transfer of €100 to \"NL00 BANK\"?".into()),
            },
            request: OriginalRequest {
                method: "POST".into(),
                uri: "/transfer?to=NL00%20BANK&amount=100".into(),
                headers: vec![
                    ("host".into(), b"bank.example".to_vec()),
                    ("x-raw".into(), vec![0xff, 0xfe, 0x00, b'a', 0x80]),
                    ("x-raw".into(), b"second value, same name".to_vec()),
                ],
                body,
            },
        }
    }

    async fn hold(&self, id: &TransactionId, held: &HeldRequest, user_key: Option<&str>) {
        self.held.hold(id, held, TTL, user_key).await.unwrap();
    }

    fn code(&self, id: &TransactionId, digits: &str) -> CodeHash {
        self.hasher.hash(id, &OneTimeCode::parse(digits).unwrap())
    }

    /// A pending SMS transaction whose code is 111111.
    fn sms(&self, max_attempts: u32, max_resends: u32) -> Transaction {
        let id = TransactionId::random();
        let now = self.now();
        Transaction {
            evidence: None,
            id,
            auth_type: "sms_login".into(),
            method: Method::Sms,
            user_id: Some("user-1".into()),
            status: Status::Pending,
            created_at: now,
            expires_at: now.plus(TTL),
            finished_at: None,
            attempts: 0,
            max_attempts,
            resends: 0,
            max_resends,
            code_hash: Some(self.code(&id, "111111")),
            reason: None,
            details: Details::default(),
        }
    }

    /// A pending push transaction: no code.
    fn push(&self) -> Transaction {
        Transaction {
            auth_type: "push_login".into(),
            method: Method::Push,
            code_hash: None,
            ..self.sms(0, 0)
        }
    }

    async fn inserted(&self, tx: Transaction) -> Transaction {
        self.tx.insert(&tx).await.unwrap();
        tx
    }

    async fn stored(&self, id: &TransactionId) -> Transaction {
        self.tx
            .get(id)
            .await
            .unwrap()
            .expect("transaction is stored")
    }

    /// Verifies as the owner of the sample transactions.
    async fn verify(&self, id: &TransactionId, digits: &str) -> VerifyOutcome {
        let candidate = self.code(id, digits);
        self.tx
            .verify_code(id, OWNER, &candidate)
            .await
            .unwrap()
            .unwrap()
            .outcome
    }
}

fn finish(status: Status, reason: Option<Reason>, user_id: Option<&str>) -> Finish {
    Finish {
        evidence: None,
        status,
        reason,
        user_id: user_id.map(str::to_owned),
    }
}

// ---- the suite -----------------------------------------------------------------------------

pub(super) async fn round_trip_keeps_every_field(h: &Harness) {
    let now = h.now();
    let id = TransactionId::random();
    let full = Transaction {
        evidence: None,
        id,
        auth_type: "sms_fallback".into(),
        method: Method::PushWithPin,
        user_id: Some("ümlaut user \"quoted\"".into()),
        status: Status::Denied,
        created_at: Timestamp(now.millis() - 1_234),
        expires_at: now.plus(Duration::from_millis(98_765)),
        finished_at: Some(Timestamp(now.millis() - 10)),
        attempts: 2,
        max_attempts: 5,
        resends: 1,
        max_resends: 3,
        code_hash: Some(h.code(&id, "654321")),
        reason: Some(Reason::NotAccepted),
        details: Details {
            callback_uri: Some("https://portal.example/callback?x=1&y=2".into()),
            message: Some("Sign in to Bank?".into()),
            secure_message: Some("Transfer €100 to NL00 BANK 0123 4567 89\nline two".into()),
            language: Some("nl".into()),
            phone_number: Some("+31600000000".into()),
            sender_id: Some("Bank".into()),
            device_id: Some("ab".repeat(32)),
            application: Some("bank-app".into()),
            signing_data: Some("{\"amount\":\"100.00\"}".into()),
            number: Some(47),
            number_typed: true,
            client_id: Some("portal".into()),
        },
    };
    h.tx.insert(&full).await.unwrap();
    assert_eq!(h.stored(&id).await, full);

    // And the sparse shape: every optional part absent.
    let sparse = Transaction {
        user_id: None,
        code_hash: None,
        reason: None,
        finished_at: None,
        details: Details::default(),
        method: Method::Otp,
        ..h.sms(0, 0)
    };
    h.tx.insert(&sparse).await.unwrap();
    assert_eq!(h.stored(&sparse.id).await, sparse);

    // An empty user id is a user id, not its absence.
    let empty_user = Transaction {
        user_id: Some(String::new()),
        ..h.sms(0, 0)
    };
    h.tx.insert(&empty_user).await.unwrap();
    assert_eq!(h.stored(&empty_user.id).await, empty_user);
}

pub(super) async fn duplicate_insert_is_refused(h: &Harness) {
    let tx = h.inserted(h.sms(3, 0)).await;
    let again = Transaction {
        auth_type: "other".into(),
        ..tx.clone()
    };
    assert_eq!(
        h.tx.insert(&again).await,
        Err(StoreError::AlreadyExists(tx.id))
    );
    assert_eq!(h.stored(&tx.id).await, tx, "the first one is untouched");
}

pub(super) async fn missing_ids_are_none(h: &Harness) {
    let id = TransactionId::random();
    let candidate = h.code(&id, "111111");
    assert_eq!(h.tx.get(&id).await.unwrap(), None);
    assert_eq!(
        h.tx.verify_code(&id, OWNER, &candidate).await.unwrap(),
        None
    );
    assert_eq!(h.tx.resend(&id, Some(&candidate)).await.unwrap(), None);
    let deny = finish(Status::Denied, Some(Reason::NotAccepted), None);
    assert_eq!(h.tx.finish(&id, &deny).await.unwrap(), None);
    assert_eq!(h.tx.get(&id).await.unwrap(), None, "nothing was created");
}

pub(super) async fn right_code_approves_once(h: &Harness) {
    let tx = h.inserted(h.sms(3, 0)).await;
    h.clock.advance(Duration::from_secs(5));
    assert_eq!(
        h.verify(&tx.id, "111111").await,
        VerifyOutcome::Approved { attempts: 1 }
    );
    let stored = h.stored(&tx.id).await;
    assert_eq!(stored.status, Status::Approved);
    assert_eq!(stored.attempts, 1);
    assert_eq!(stored.finished_at, Some(h.now()));
    assert_eq!(stored.reason, None);
    assert_eq!(
        h.verify(&tx.id, "111111").await,
        VerifyOutcome::NotPending(Status::Approved)
    );
    assert_eq!(
        h.stored(&tx.id).await.attempts,
        1,
        "refusals are not counted"
    );
}

pub(super) async fn wrong_codes_count_and_the_last_one_exhausts(h: &Harness) {
    let tx = h.inserted(h.sms(3, 0)).await;
    assert_eq!(
        h.verify(&tx.id, "222222").await,
        VerifyOutcome::WrongCode {
            attempts: 1,
            remaining: Some(2)
        }
    );
    assert_eq!(h.stored(&tx.id).await.attempts, 1);
    assert_eq!(
        h.verify(&tx.id, "333333").await,
        VerifyOutcome::WrongCode {
            attempts: 2,
            remaining: Some(1)
        }
    );
    h.clock.advance(Duration::from_millis(7));
    assert_eq!(
        h.verify(&tx.id, "444444").await,
        VerifyOutcome::Exhausted { attempts: 3 }
    );
    let stored = h.stored(&tx.id).await;
    assert_eq!(stored.status, Status::Failed);
    assert_eq!(stored.reason, Some(Reason::AttemptsExhausted));
    assert_eq!(stored.finished_at, Some(h.now()));
    assert_eq!(
        h.verify(&tx.id, "111111").await,
        VerifyOutcome::NotPending(Status::Failed),
        "even the right code is refused once exhausted"
    );
    assert_eq!(h.stored(&tx.id).await.attempts, 3);
}

pub(super) async fn a_single_allowed_attempt_exhausts_at_once(h: &Harness) {
    let tx = h.inserted(h.sms(1, 0)).await;
    assert_eq!(
        h.verify(&tx.id, "999999").await,
        VerifyOutcome::Exhausted { attempts: 1 }
    );
}

pub(super) async fn zero_max_attempts_is_unlimited_until_expiry(h: &Harness) {
    let tx = h.inserted(h.sms(0, 0)).await;
    for n in 1..=25 {
        assert_eq!(
            h.verify(&tx.id, "222222").await,
            VerifyOutcome::WrongCode {
                attempts: n,
                remaining: None
            }
        );
    }
    assert_eq!(
        h.verify(&tx.id, "111111").await,
        VerifyOutcome::Approved { attempts: 26 }
    );

    let late = h.inserted(h.sms(0, 0)).await;
    h.clock.advance(TTL);
    assert_eq!(h.verify(&late.id, "222222").await, VerifyOutcome::Expired);
}

pub(super) async fn expiry_ends_verify_resend_and_finish(h: &Harness) {
    let by_verify = h.inserted(h.sms(3, 2)).await;
    let by_resend = h.inserted(h.sms(3, 2)).await;
    let by_finish = h.inserted(h.push()).await;

    // One millisecond before expiry everything still works.
    h.clock.advance(TTL - Duration::from_millis(1));
    assert!(matches!(
        h.verify(&by_verify.id, "222222").await,
        VerifyOutcome::WrongCode { attempts: 1, .. }
    ));
    h.clock.advance(Duration::from_millis(1));
    let expired_at = h.now();

    assert_eq!(
        h.verify(&by_verify.id, "111111").await,
        VerifyOutcome::Expired,
        "expiry wins over a right code"
    );
    let new_code = h.code(&by_resend.id, "555555");
    assert_eq!(
        h.tx.resend(&by_resend.id, Some(&new_code)).await.unwrap(),
        Some(ResendOutcome::Expired)
    );
    let approve = finish(Status::Approved, None, Some("user-2"));
    assert_eq!(
        h.tx.finish(&by_finish.id, &approve).await.unwrap(),
        Some(FinishOutcome::Expired)
    );

    for (tx, attempts) in [(&by_verify, 1), (&by_resend, 0), (&by_finish, 0)] {
        let stored = h.stored(&tx.id).await;
        assert_eq!(stored.status, Status::Expired);
        assert_eq!(stored.reason, Some(Reason::Expired));
        assert_eq!(stored.finished_at, Some(expired_at));
        assert_eq!(
            stored.attempts, attempts,
            "the expiring call is not counted"
        );
        assert_eq!(stored.resends, 0);
        assert_eq!(stored.user_id.as_deref(), Some("user-1"));
        assert_eq!(
            stored.code_hash, tx.code_hash,
            "an expired resend keeps the code"
        );
    }
    h.clock.advance(Duration::from_secs(1));
    assert_eq!(
        h.verify(&by_verify.id, "111111").await,
        VerifyOutcome::NotPending(Status::Expired)
    );
    assert_eq!(
        h.tx.resend(&by_resend.id, None).await.unwrap(),
        Some(ResendOutcome::NotPending(Status::Expired))
    );
    assert_eq!(
        h.tx.finish(&by_finish.id, &approve).await.unwrap(),
        Some(FinishOutcome::NotPending(Status::Expired))
    );
    assert_eq!(
        h.stored(&by_finish.id).await.finished_at,
        Some(expired_at),
        "a refused call leaves the record alone"
    );
}

pub(super) async fn resends_are_bounded_and_replace_the_code(h: &Harness) {
    let tx = h.inserted(h.sms(5, 2)).await;
    let second = h.code(&tx.id, "222222");
    assert_eq!(
        h.tx.resend(&tx.id, Some(&second)).await.unwrap(),
        Some(ResendOutcome::Resent { resends: 1 })
    );
    let stored = h.stored(&tx.id).await;
    assert_eq!(stored.resends, 1);
    assert_eq!(stored.code_hash, Some(second));
    // A resend without a new code (e.g. a push re-sent) counts but keeps the code.
    assert_eq!(
        h.tx.resend(&tx.id, None).await.unwrap(),
        Some(ResendOutcome::Resent { resends: 2 })
    );
    assert_eq!(h.stored(&tx.id).await.code_hash, Some(second));
    let third = h.code(&tx.id, "333333");
    assert_eq!(
        h.tx.resend(&tx.id, Some(&third)).await.unwrap(),
        Some(ResendOutcome::LimitReached)
    );
    let stored = h.stored(&tx.id).await;
    assert_eq!(stored.resends, 2);
    assert_eq!(
        stored.code_hash,
        Some(second),
        "a refused resend keeps the code"
    );

    assert!(
        matches!(
            h.verify(&tx.id, "111111").await,
            VerifyOutcome::WrongCode { attempts: 1, .. }
        ),
        "the replaced code stops working"
    );
    assert_eq!(
        h.verify(&tx.id, "222222").await,
        VerifyOutcome::Approved { attempts: 2 }
    );
    assert_eq!(
        h.tx.resend(&tx.id, None).await.unwrap(),
        Some(ResendOutcome::NotPending(Status::Approved))
    );
}

pub(super) async fn resend_is_refused_when_disabled(h: &Harness) {
    let tx = h.inserted(h.sms(3, 0)).await;
    let other = h.code(&tx.id, "222222");
    assert_eq!(
        h.tx.resend(&tx.id, Some(&other)).await.unwrap(),
        Some(ResendOutcome::Disabled)
    );
    let stored = h.stored(&tx.id).await;
    assert_eq!(stored.resends, 0);
    assert_eq!(stored.code_hash, tx.code_hash);
}

pub(super) async fn finish_is_a_compare_and_set_from_pending(h: &Harness) {
    let tx = h.inserted(h.push()).await;
    h.clock.advance(Duration::from_millis(3));
    let deny = finish(Status::Denied, Some(Reason::NotAccepted), None);
    assert_eq!(
        h.tx.finish(&tx.id, &deny).await.unwrap(),
        Some(FinishOutcome::Finished)
    );
    let denied_at = h.now();
    h.clock.advance(Duration::from_millis(3));
    let approve = finish(Status::Approved, None, Some("intruder"));
    assert_eq!(
        h.tx.finish(&tx.id, &approve).await.unwrap(),
        Some(FinishOutcome::NotPending(Status::Denied))
    );
    let stored = h.stored(&tx.id).await;
    assert_eq!(stored.status, Status::Denied);
    assert_eq!(stored.reason, Some(Reason::NotAccepted));
    assert_eq!(stored.finished_at, Some(denied_at));
    assert_eq!(stored.user_id.as_deref(), Some("user-1"));

    // Pending is not a terminal state: nothing moves.
    let other = h.inserted(h.push()).await;
    let to_pending = finish(Status::Pending, None, None);
    assert_eq!(
        h.tx.finish(&other.id, &to_pending).await.unwrap(),
        Some(FinishOutcome::NotPending(Status::Pending))
    );
    assert_eq!(h.stored(&other.id).await, other);
}

pub(super) async fn finish_links_the_user_and_keeps_it_otherwise(h: &Harness) {
    let otp = Transaction {
        method: Method::Otp,
        user_id: None,
        code_hash: None,
        ..h.push()
    };
    h.tx.insert(&otp).await.unwrap();
    let approve = finish(Status::Approved, None, Some("phone-user"));
    assert_eq!(
        h.tx.finish(&otp.id, &approve).await.unwrap(),
        Some(FinishOutcome::Finished)
    );
    let stored = h.stored(&otp.id).await;
    assert_eq!(stored.status, Status::Approved);
    assert_eq!(stored.user_id.as_deref(), Some("phone-user"));
    assert_eq!(stored.reason, None);

    // No user in the update: the stored one stays.
    let push = h.inserted(h.push()).await;
    let fail = finish(Status::Failed, Some(Reason::FailedToSend), None);
    assert_eq!(
        h.tx.finish(&push.id, &fail).await.unwrap(),
        Some(FinishOutcome::Finished)
    );
    let stored = h.stored(&push.id).await;
    assert_eq!(stored.user_id.as_deref(), Some("user-1"));
    assert_eq!(stored.reason, Some(Reason::FailedToSend));
    assert_eq!(stored.evidence, None);

    // The evidence of an answer is kept with the final state.
    let signed = h.inserted(h.push()).await;
    let evidence = Evidence {
        authentication_method: Some("push_with_pin".into()),
        authenticator: Some("pin".into()),
        used_attempts: Some(2),
        signature: Some("c2ln".into()),
        user_public_key: Some(
            "-----BEGIN PUBLIC KEY-----\nAA==\n-----END PUBLIC KEY-----\n".into(),
        ),
        signature_verified: Some(true),
        reported: None,
    };
    let approve = Finish {
        evidence: Some(evidence.clone()),
        ..finish(Status::Approved, None, None)
    };
    assert_eq!(
        h.tx.finish(&signed.id, &approve).await.unwrap(),
        Some(FinishOutcome::Finished)
    );
    assert_eq!(h.stored(&signed.id).await.evidence, Some(evidence));
}

pub(super) async fn verify_answers_only_the_owner_and_names_the_transaction(h: &Harness) {
    let tx = h.inserted(h.sms(3, 0)).await;
    let right = h.code(&tx.id, "111111");
    assert_eq!(
        h.tx.verify_code(&tx.id, Owner::through_proxy("someone-else"), &right)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        h.tx.verify_code(&tx.id, Owner::through_proxy(""), &right)
            .await
            .unwrap(),
        None
    );
    // The right user through an API client that did not start it is a stranger too.
    assert_eq!(
        h.tx.verify_code(&tx.id, Owner::through_client(OWNER_ID, "portal"), &right)
            .await
            .unwrap(),
        None
    );
    let stored = h.stored(&tx.id).await;
    assert_eq!(
        (stored.attempts, stored.status),
        (0, Status::Pending),
        "a stranger's guess counts nothing"
    );
    let verified =
        h.tx.verify_code(&tx.id, OWNER, &right)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(verified.outcome, VerifyOutcome::Approved { attempts: 1 });
    assert_eq!(
        (verified.auth_type.as_str(), verified.method),
        (tx.auth_type.as_str(), Method::Sms)
    );

    // Past its lifetime, a stranger's guess does not even record the expiry.
    let late = h.inserted(h.sms(3, 0)).await;
    h.clock.advance(TTL); // past the lifetime, within the retention
    let guess = h.code(&late.id, "111111");
    assert_eq!(
        h.tx.verify_code(&late.id, Owner::through_proxy("someone-else"), &guess)
            .await
            .unwrap(),
        None
    );
    assert_eq!(h.stored(&late.id).await.status, Status::Pending);
    assert_eq!(h.verify(&late.id, "111111").await, VerifyOutcome::Expired);

    // An API client's transaction answers to that client only: not to the proxy, not to
    // another client, even with the right user and the right code.
    let mut started_by_portal = h.sms(3, 0);
    started_by_portal.details.client_id = Some("portal".into());
    let portal_tx = h.inserted(started_by_portal).await;
    let right = h.code(&portal_tx.id, "111111");
    for stranger in [OWNER, Owner::through_client(OWNER_ID, "other-portal")] {
        assert_eq!(
            h.tx.verify_code(&portal_tx.id, stranger, &right)
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(h.stored(&portal_tx.id).await.attempts, 0);
    let verified =
        h.tx.verify_code(
            &portal_tx.id,
            Owner::through_client(OWNER_ID, "portal"),
            &right,
        )
        .await
        .unwrap()
        .map(|verified| verified.outcome);
    assert_eq!(verified, Some(VerifyOutcome::Approved { attempts: 1 }));
}

pub(super) async fn verify_without_a_code_counts_nothing(h: &Harness) {
    let tx = h.inserted(h.push()).await;
    assert_eq!(h.verify(&tx.id, "111111").await, VerifyOutcome::NoCode);
    let stored = h.stored(&tx.id).await;
    assert_eq!(stored.attempts, 0);
    assert_eq!(stored.status, Status::Pending);

    // An OTP holds a code hash, but it is not typed back: guessing it as an SMS code is
    // refused without counting, even with the right hash.
    let otp = h
        .inserted(Transaction {
            method: Method::Otp,
            ..h.sms(3, 0)
        })
        .await;
    assert_eq!(h.verify(&otp.id, "111111").await, VerifyOutcome::NoCode);
    let stored = h.stored(&otp.id).await;
    assert_eq!(stored.attempts, 0);
    assert_eq!(stored.status, Status::Pending);
}

pub(super) async fn rate_limit_counts_per_window_and_resets(h: &Harness) {
    // Redis windows run on Redis's own (real) time, memory windows on the injected clock, so the
    // test moves both. One second leaves room for a busy machine between the first four hits.
    let window = Duration::from_secs(1);
    for n in 1..=3 {
        let decision = h.rl.hit("login:abc", 3, window).await.unwrap();
        assert!(decision.allowed, "hit {n}");
        assert_eq!(decision.count, n);
        assert!(decision.retry_after <= window);
    }
    let refused = h.rl.hit("login:abc", 3, window).await.unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.count, 4);
    assert!(refused.retry_after > Duration::ZERO);
    assert!(refused.retry_after <= window);

    let other = h.rl.hit("login:def", 3, window).await.unwrap();
    assert!(other.allowed, "keys are counted apart");
    assert_eq!(other.count, 1);

    tokio::time::sleep(window + Duration::from_millis(100)).await;
    h.clock.advance(window + Duration::from_millis(100));
    let fresh = h.rl.hit("login:abc", 3, window).await.unwrap();
    assert!(fresh.allowed, "a new window starts");
    assert_eq!(fresh.count, 1);

    let none_allowed = h.rl.hit("zero", 0, window).await.unwrap();
    assert!(!none_allowed.allowed);
}

pub(super) async fn a_refund_gives_back_one_hit_and_never_goes_below_zero(h: &Harness) {
    let window = Duration::from_secs(60);
    for _ in 0..2 {
        h.rl.hit("sms:ip:x", 2, window).await.unwrap();
    }
    assert!(!h.rl.hit("sms:ip:x", 2, window).await.unwrap().allowed);
    h.rl.refund("sms:ip:x").await.unwrap();
    h.rl.refund("sms:ip:x").await.unwrap();
    let again = h.rl.hit("sms:ip:x", 2, window).await.unwrap();
    assert_eq!((again.allowed, again.count), (true, 2));
    for _ in 0..5 {
        h.rl.refund("sms:ip:never-hit").await.unwrap();
    }
    let first = h.rl.hit("sms:ip:never-hit", 2, window).await.unwrap();
    assert_eq!(first.count, 1, "refunds of an unknown key count nothing");
}

pub(super) async fn entries_are_evicted_after_expiry_plus_retention(h: &Harness) {
    let tx = h.inserted(h.sms(3, 1)).await;
    if let Some(redis) = &h.redis {
        // The key carries (expires_at - now) + retention, from the injected clock.
        let expected = (TTL + RETENTION).as_millis() as i64;
        let pttl = redis.pttl(&tx_key(&redis.prefix, &tx.id));
        assert!(
            pttl <= expected && pttl > expected - 5_000,
            "PTTL {pttl} ms, expected about {expected} ms"
        );
    }
    // Finished and past expiry: still readable during the retention.
    let deny = finish(Status::Denied, Some(Reason::NotAccepted), None);
    h.tx.finish(&tx.id, &deny).await.unwrap();
    h.clock.advance(TTL + RETENTION - Duration::from_millis(1));
    assert_eq!(h.stored(&tx.id).await.status, Status::Denied);

    h.clock.advance(Duration::from_millis(1));
    assert_eq!(h.tx.get(&tx.id).await.unwrap(), None);
    let candidate = h.code(&tx.id, "111111");
    assert_eq!(
        h.tx.verify_code(&tx.id, OWNER, &candidate).await.unwrap(),
        None
    );
    assert_eq!(h.tx.resend(&tx.id, None).await.unwrap(), None);
    assert_eq!(h.tx.finish(&tx.id, &deny).await.unwrap(), None);
    // The id is free again (it never is in practice: ids are random).
    let reused = Transaction {
        id: tx.id,
        ..h.sms(3, 1)
    };
    h.tx.insert(&reused).await.unwrap();
}

pub(super) async fn concurrent_wrong_guesses_cannot_buy_extra_tries(h: &Harness) {
    const GUESSES: usize = 200;
    let tx = h.inserted(h.sms(3, 0)).await;
    let wrong = h.code(&tx.id, "222222");
    let start = Arc::new(Barrier::new(GUESSES));
    let mut guesses = JoinSet::new();
    for _ in 0..GUESSES {
        let (store, start, id) = (h.tx.clone(), start.clone(), tx.id);
        guesses.spawn(async move {
            start.wait().await;
            store.verify_code(&id, OWNER, &wrong).await
        });
    }
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    while let Some(joined) = guesses.join_next().await {
        let outcome = joined.unwrap().unwrap().unwrap();
        let name = match outcome.outcome {
            VerifyOutcome::WrongCode { .. } => "wrong_code".to_owned(),
            VerifyOutcome::Exhausted { attempts } => {
                assert_eq!(attempts, 3);
                "exhausted".to_owned()
            }
            other => format!("{other:?}"),
        };
        *outcomes.entry(name).or_default() += 1;
    }
    let expected: HashMap<String, usize> = [
        ("wrong_code".to_owned(), 2),
        ("exhausted".to_owned(), 1),
        (
            format!("{:?}", VerifyOutcome::NotPending(Status::Failed)),
            GUESSES - 3,
        ),
    ]
    .into();
    assert_eq!(outcomes, expected);
    let stored = h.stored(&tx.id).await;
    assert_eq!(stored.attempts, 3);
    assert_eq!(stored.status, Status::Failed);
    assert_eq!(
        h.verify(&tx.id, "111111").await,
        VerifyOutcome::NotPending(Status::Failed)
    );
}

pub(super) async fn concurrent_finishes_have_one_winner(h: &Harness) {
    const RACERS: usize = 50;
    let tx = h.inserted(h.push()).await;
    let start = Arc::new(Barrier::new(RACERS));
    let mut racers = JoinSet::new();
    for n in 0..RACERS {
        let (store, start, id) = (h.tx.clone(), start.clone(), tx.id);
        racers.spawn(async move {
            let status = if n % 2 == 0 {
                Status::Approved
            } else {
                Status::Denied
            };
            let update = finish(status, None, Some(&format!("racer-{n}")));
            start.wait().await;
            (n, store.finish(&id, &update).await.unwrap().unwrap())
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = racers.join_next().await {
        let (n, outcome) = joined.unwrap();
        match outcome {
            FinishOutcome::Finished => winners.push(n),
            FinishOutcome::NotPending(Status::Approved | Status::Denied) => {}
            other => panic!("racer {n}: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let stored = h.stored(&tx.id).await;
    let winner = winners[0];
    assert_eq!(stored.user_id, Some(format!("racer-{winner}")));
}

pub(super) async fn held_request_round_trips_byte_for_byte(h: &Harness) {
    // Every byte value, a NUL and 0xff at the edges, several MiB.
    let mut large: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|n| (n % 256) as u8).collect();
    large[0] = 0x00;
    *large.last_mut().unwrap() = 0xff;
    let bodies = [
        large,
        Vec::new(),
        vec![0x00],
        vec![0xff, 0x00, 0xff],
        "ümlaut \"quoted\" {json}".as_bytes().to_vec(),
    ];
    for body in bodies {
        let id = TransactionId::random();
        let held = h.held_request("user-1", body);
        h.hold(&id, &held, None).await;
        assert_eq!(h.held.ticket(&id).await.unwrap(), Some(held.ticket.clone()));
        let taken = h
            .held
            .take(&id)
            .await
            .unwrap()
            .expect("held request is stored");
        assert_eq!(taken.request.body.len(), held.request.body.len());
        assert!(taken.request.body == held.request.body, "body differs");
        assert_eq!(taken, held);
    }

    // A challenge-mode ticket with no grant, and a request without headers.
    let id = TransactionId::random();
    let mut sparse = h.held_request("", Vec::new());
    sparse.ticket.mode = HeldMode::Challenge;
    sparse.ticket.freshness_seconds = 0;
    sparse.ticket.message = None;
    sparse.request.method = "GET".into();
    sparse.request.headers.clear();
    h.hold(&id, &sparse, None).await;
    assert_eq!(h.held.take(&id).await.unwrap(), Some(sparse));
}

pub(super) async fn held_request_is_taken_once(h: &Harness) {
    let id = TransactionId::random();
    let held = h.held_request("user-1", b"amount=100".to_vec());
    h.hold(&id, &held, Some("key-1")).await;
    assert_eq!(h.held.take(&id).await.unwrap(), Some(held));
    assert_eq!(h.held.take(&id).await.unwrap(), None, "second take");
    assert_eq!(h.held.ticket(&id).await.unwrap(), None, "ticket after take");
    assert_eq!(h.held.latest_for_user("key-1").await.unwrap(), None);
}

pub(super) async fn missing_held_requests_are_none(h: &Harness) {
    let id = TransactionId::random();
    assert_eq!(h.held.ticket(&id).await.unwrap(), None);
    assert_eq!(h.held.take(&id).await.unwrap(), None);
    assert_eq!(h.held.latest_for_user("nobody").await.unwrap(), None);
    // A transaction of the same id is not a held request.
    let tx = h.inserted(h.push()).await;
    assert_eq!(h.held.ticket(&tx.id).await.unwrap(), None);
    assert_eq!(h.held.take(&tx.id).await.unwrap(), None);
    assert_eq!(h.stored(&tx.id).await, tx);
}

pub(super) async fn a_waiter_lease_is_set_renewed_cleared_and_runs_out(h: &Harness) {
    let lease = Duration::from_millis(300);
    let id = TransactionId::random();
    let other = TransactionId::random();
    assert!(!h.held.has_waiter(&id).await.unwrap());
    h.held.set_waiter(&id, Some(lease)).await.unwrap();
    assert!(h.held.has_waiter(&id).await.unwrap());
    assert!(!h.held.has_waiter(&other).await.unwrap());
    h.held.set_waiter(&id, None).await.unwrap();
    assert!(!h.held.has_waiter(&id).await.unwrap());
    // Not renewed: it runs out by itself (a gate that stopped waiting without saying so).
    h.held.set_waiter(&id, Some(lease)).await.unwrap();
    if let Some(redis) = &h.redis {
        let pttl = redis.pttl(&super::redis::waiter_key(&redis.prefix, &id));
        assert!(pttl > 0 && pttl <= 300, "PTTL {pttl} ms");
        tokio::time::sleep(lease + Duration::from_millis(100)).await;
    } else {
        h.clock.advance(lease);
    }
    assert!(!h.held.has_waiter(&id).await.unwrap());
}

pub(super) async fn held_requests_expire_with_their_ttl(h: &Harness) {
    let ttl = Duration::from_millis(300);
    let id = TransactionId::random();
    let taken_late = TransactionId::random();
    let held = h.held_request("user-1", vec![0xff; 64]);
    h.held.hold(&id, &held, ttl, Some("key-exp")).await.unwrap();
    h.held.hold(&taken_late, &held, ttl, None).await.unwrap();
    if let Some(redis) = &h.redis {
        for key in [
            held_key(&redis.prefix, &id),
            held_user_key(&redis.prefix, "key-exp"),
        ] {
            let pttl = redis.pttl(&key);
            assert!(pttl > 0 && pttl <= 300, "{key}: PTTL {pttl} ms");
        }
    } else {
        // The injected clock is the only time the memory store knows.
        h.clock.advance(ttl - Duration::from_millis(1));
    }
    assert_eq!(h.held.ticket(&id).await.unwrap(), Some(held.ticket.clone()));
    assert_eq!(h.held.latest_for_user("key-exp").await.unwrap(), Some(id));

    if h.redis.is_some() {
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    } else {
        h.clock.advance(Duration::from_millis(1));
    }
    assert_eq!(h.held.ticket(&id).await.unwrap(), None);
    assert_eq!(h.held.latest_for_user("key-exp").await.unwrap(), None);
    assert_eq!(h.held.take(&taken_late).await.unwrap(), None);
    assert_eq!(h.held.take(&id).await.unwrap(), None);
    if let Some(redis) = &h.redis {
        // Gone from Redis, not merely hidden.
        assert_eq!(redis.pttl(&held_key(&redis.prefix, &id)), -2);
        assert_eq!(redis.pttl(&held_user_key(&redis.prefix, "key-exp")), -2);
    }
}

pub(super) async fn latest_for_user_follows_the_newest_hold(h: &Harness) {
    let first = TransactionId::random();
    let second = TransactionId::random();
    let unindexed = TransactionId::random();
    h.hold(
        &first,
        &h.held_request("user-1", b"1".to_vec()),
        Some("key-a"),
    )
    .await;
    assert_eq!(h.held.latest_for_user("key-a").await.unwrap(), Some(first));
    h.hold(
        &second,
        &h.held_request("user-1", b"2".to_vec()),
        Some("key-a"),
    )
    .await;
    assert_eq!(h.held.latest_for_user("key-a").await.unwrap(), Some(second));
    // A hold without a user key leaves the index alone.
    h.hold(&unindexed, &h.held_request("user-1", b"3".to_vec()), None)
        .await;
    assert_eq!(h.held.latest_for_user("key-a").await.unwrap(), Some(second));

    // Taken: the index no longer answers, even though an older request is still held.
    assert!(h.held.take(&second).await.unwrap().is_some());
    assert_eq!(h.held.latest_for_user("key-a").await.unwrap(), None);
    assert!(h.held.ticket(&first).await.unwrap().is_some());
}

pub(super) async fn latest_for_user_keeps_users_apart(h: &Harness) {
    let alice = TransactionId::random();
    let bob = TransactionId::random();
    h.hold(
        &alice,
        &h.held_request("alice", b"a".to_vec()),
        Some("key-alice"),
    )
    .await;
    h.hold(&bob, &h.held_request("bob", b"b".to_vec()), Some("key-bob"))
        .await;
    assert_eq!(
        h.held.latest_for_user("key-alice").await.unwrap(),
        Some(alice)
    );
    assert_eq!(h.held.latest_for_user("key-bob").await.unwrap(), Some(bob));
    assert_eq!(h.held.latest_for_user("key-carol").await.unwrap(), None);
    assert_eq!(
        h.held.latest_for_user("key-").await.unwrap(),
        None,
        "no prefix match"
    );

    assert!(h.held.take(&alice).await.unwrap().is_some());
    assert_eq!(h.held.latest_for_user("key-alice").await.unwrap(), None);
    assert_eq!(h.held.latest_for_user("key-bob").await.unwrap(), Some(bob));
    assert_eq!(h.held.ticket(&bob).await.unwrap().unwrap().user_id, "bob");
}

pub(super) async fn held_requests_are_isolated_by_key_prefix(h: &Harness) {
    let other = h.sibling().await;
    let id = TransactionId::random();
    let mine = h.held_request("user-1", b"mine".to_vec());
    let theirs = other.held_request("user-2", b"theirs".to_vec());
    let only_mine = TransactionId::random();
    h.hold(&id, &mine, Some("shared-key")).await;
    h.hold(&only_mine, &mine, None).await;
    other.hold(&id, &theirs, Some("shared-key")).await;

    assert_eq!(h.held.ticket(&id).await.unwrap(), Some(mine.ticket.clone()));
    assert_eq!(
        other.held.ticket(&id).await.unwrap(),
        Some(theirs.ticket.clone())
    );
    assert_eq!(other.held.ticket(&only_mine).await.unwrap(), None);
    assert_eq!(other.held.take(&only_mine).await.unwrap(), None);
    assert_eq!(h.held.take(&id).await.unwrap(), Some(mine));
    assert_eq!(h.held.latest_for_user("shared-key").await.unwrap(), None);
    assert_eq!(
        other.held.latest_for_user("shared-key").await.unwrap(),
        Some(id)
    );
    assert_eq!(other.held.take(&id).await.unwrap(), Some(theirs));
    assert!(h.held.ticket(&only_mine).await.unwrap().is_some());
}

pub(super) async fn concurrent_takes_have_one_winner(h: &Harness) {
    const RACERS: usize = 50;
    let id = TransactionId::random();
    let held = h.held_request("user-1", vec![0xab; 64 * 1024]);
    h.hold(&id, &held, Some("key-race")).await;
    let start = Arc::new(Barrier::new(RACERS));
    let mut racers = JoinSet::new();
    for _ in 0..RACERS {
        let (store, start) = (h.held.clone(), start.clone());
        racers.spawn(async move {
            start.wait().await;
            store.take(&id).await
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = racers.join_next().await {
        if let Some(taken) = joined.unwrap().unwrap() {
            winners.push(taken);
        }
    }
    assert_eq!(winners.len(), 1, "{} takes got the request", winners.len());
    assert!(winners[0] == held, "the winner got the request intact");
    assert_eq!(h.held.ticket(&id).await.unwrap(), None);
}

// ---- OTP redemption ------------------------------------------------------------------------

impl Harness {
    /// A pending OTP transaction (bound to `user` when given) and its code.
    fn otp(&self, user: Option<&str>, max_attempts: u32) -> (Transaction, OtpCode) {
        let sample = self.sms(max_attempts, 0);
        let code = OtpCode::generate(sample.id, &mut rand_core::OsRng);
        let tx = Transaction {
            auth_type: "qr_login".into(),
            method: Method::Otp,
            user_id: user.map(str::to_owned),
            code_hash: Some(code.hash(&otp_hasher())),
            ..sample
        };
        (tx, code)
    }

    async fn redeem(
        &self,
        id: &TransactionId,
        code: &OtpCode,
        user: &str,
        approve: bool,
    ) -> Option<RedeemOutcome> {
        self.tx
            .redeem_otp(id, &code.hash(&otp_hasher()), &otp_answer(user, approve))
            .await
            .unwrap()
    }
}

fn otp_hasher() -> OtpHasher {
    OtpHasher::new(&SecretKey::new(vec![42u8; 32]))
}

fn otp_answer(user: &str, approve: bool) -> OtpAnswer {
    OtpAnswer {
        user_id: user.to_owned(),
        approve,
        evidence: Some(Evidence {
            authentication_method: Some("otp".into()),
            authenticator: Some("device".into()),
            ..Evidence::default()
        }),
    }
}

pub(super) async fn otp_redeem_links_the_user_and_finishes_once(h: &Harness) {
    let (tx, code) = h.otp(None, 3);
    let tx = h.inserted(tx).await;
    h.clock.advance(Duration::from_secs(5));
    assert_eq!(
        h.redeem(&tx.id, &code, "ann", true).await,
        Some(RedeemOutcome::Finished {
            status: Status::Approved,
            attempts: 1
        })
    );
    let stored = h.stored(&tx.id).await;
    assert_eq!(stored.status, Status::Approved);
    assert_eq!(stored.user_id.as_deref(), Some("ann"));
    assert_eq!(stored.reason, None);
    assert_eq!(stored.finished_at, Some(h.now()));
    assert_eq!(stored.evidence, otp_answer("ann", true).evidence);
    // Single use: the same code again changes nothing; once linked, the transaction is ann's
    // and another phone sees no transaction at all.
    assert_eq!(
        h.redeem(&tx.id, &code, "ann", false).await,
        Some(RedeemOutcome::NotPending(Status::Approved))
    );
    assert_eq!(h.redeem(&tx.id, &code, "bob", true).await, None);
    assert_eq!(h.stored(&tx.id).await, stored);

    // A deny with the right code denies, and still names who answered.
    let (denied, code) = h.otp(None, 3);
    let denied = h.inserted(denied).await;
    assert_eq!(
        h.redeem(&denied.id, &code, "ann", false).await,
        Some(RedeemOutcome::Finished {
            status: Status::Denied,
            attempts: 1
        })
    );
    let stored = h.stored(&denied.id).await;
    assert_eq!(
        (stored.status, stored.reason, stored.user_id.as_deref()),
        (Status::Denied, Some(Reason::NotAccepted), Some("ann"))
    );
}

pub(super) async fn otp_redeem_counts_wrong_codes_and_exhausts(h: &Harness) {
    let (tx, code) = h.otp(None, 2);
    let tx = h.inserted(tx).await;
    let wrong = OtpCode::generate(tx.id, &mut rand_core::OsRng);
    assert_eq!(
        h.redeem(&tx.id, &wrong, "ann", true).await,
        Some(RedeemOutcome::WrongCode {
            attempts: 1,
            remaining: Some(1)
        })
    );
    assert_eq!(
        h.stored(&tx.id).await.user_id,
        None,
        "a wrong code links nobody"
    );
    assert_eq!(
        h.redeem(&tx.id, &wrong, "ann", true).await,
        Some(RedeemOutcome::Exhausted { attempts: 2 })
    );
    assert_eq!(
        h.redeem(&tx.id, &code, "ann", true).await,
        Some(RedeemOutcome::NotPending(Status::Failed))
    );
    let stored = h.stored(&tx.id).await;
    assert_eq!(
        (
            stored.status,
            stored.reason,
            stored.attempts,
            stored.user_id
        ),
        (Status::Failed, Some(Reason::AttemptsExhausted), 2, None)
    );

    // Unlimited attempts until expiry, and expiry wins over the right code.
    let (unlimited, code) = h.otp(None, 0);
    let unlimited = h.inserted(unlimited).await;
    let wrong = OtpCode::generate(unlimited.id, &mut rand_core::OsRng);
    assert_eq!(
        h.redeem(&unlimited.id, &wrong, "ann", true).await,
        Some(RedeemOutcome::WrongCode {
            attempts: 1,
            remaining: None
        })
    );
    h.clock.advance(TTL);
    assert_eq!(
        h.redeem(&unlimited.id, &code, "ann", true).await,
        Some(RedeemOutcome::Expired)
    );
    let stored = h.stored(&unlimited.id).await;
    assert_eq!(
        (
            stored.status,
            stored.reason,
            stored.attempts,
            stored.user_id
        ),
        (Status::Expired, Some(Reason::Expired), 1, None)
    );
}

pub(super) async fn otp_redeem_touches_only_unbound_or_own_otp_transactions(h: &Harness) {
    // Bound to ann: bob's phone sees an unknown transaction, and nothing is counted.
    let (bound, code) = h.otp(Some("ann"), 3);
    let bound = h.inserted(bound).await;
    assert_eq!(h.redeem(&bound.id, &code, "bob", true).await, None);
    assert_eq!(h.stored(&bound.id).await, bound);
    assert!(matches!(
        h.redeem(&bound.id, &code, "ann", true).await,
        Some(RedeemOutcome::Finished { .. })
    ));

    // Not an OTP transaction: missing, untouched, even with a hash that would match.
    let (otp_shaped, code) = h.otp(Some(OWNER_ID), 3);
    let sms = h
        .inserted(Transaction {
            method: Method::Sms,
            ..otp_shaped
        })
        .await;
    assert_eq!(h.redeem(&sms.id, &code, OWNER_ID, true).await, None);
    assert_eq!(h.stored(&sms.id).await, sms);

    // No transaction at all.
    let nowhere = OtpCode::generate(TransactionId::random(), &mut rand_core::OsRng);
    assert_eq!(
        h.redeem(&nowhere.transaction_id(), &nowhere, "ann", true)
            .await,
        None
    );
    assert_eq!(h.tx.get(&nowhere.transaction_id()).await.unwrap(), None);
}

pub(super) async fn concurrent_otp_redeems_have_one_winner(h: &Harness) {
    const RACERS: usize = 50;
    let (tx, code) = h.otp(None, 0);
    let tx = h.inserted(tx).await;
    let candidate = code.hash(&otp_hasher());
    let start = Arc::new(Barrier::new(RACERS));
    let mut racers = JoinSet::new();
    for n in 0..RACERS {
        let (store, start, id) = (h.tx.clone(), start.clone(), tx.id);
        racers.spawn(async move {
            let answer = otp_answer(&format!("racer-{n}"), n % 2 == 0);
            start.wait().await;
            (n, store.redeem_otp(&id, &candidate, &answer).await.unwrap())
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = racers.join_next().await {
        let (n, outcome) = joined.unwrap();
        match outcome {
            Some(RedeemOutcome::Finished { attempts: 1, .. }) => winners.push(n),
            // The losers find it finished, or already linked to the winner.
            Some(RedeemOutcome::NotPending(Status::Approved | Status::Denied)) | None => {}
            other => panic!("racer {n}: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let stored = h.stored(&tx.id).await;
    assert_eq!(stored.user_id, Some(format!("racer-{}", winners[0])));
    assert_eq!(stored.attempts, 1);
}

// ---- instantiation -------------------------------------------------------------------------

macro_rules! conformance_suite {
    ($harness:path) => {
        run_suite!($harness;
            single: [
                round_trip_keeps_every_field,
                duplicate_insert_is_refused,
                missing_ids_are_none,
                right_code_approves_once,
                wrong_codes_count_and_the_last_one_exhausts,
                a_single_allowed_attempt_exhausts_at_once,
                zero_max_attempts_is_unlimited_until_expiry,
                expiry_ends_verify_resend_and_finish,
                resends_are_bounded_and_replace_the_code,
                resend_is_refused_when_disabled,
                finish_is_a_compare_and_set_from_pending,
                finish_links_the_user_and_keeps_it_otherwise,
                verify_without_a_code_counts_nothing,
                verify_answers_only_the_owner_and_names_the_transaction,
                rate_limit_counts_per_window_and_resets,
                a_refund_gives_back_one_hit_and_never_goes_below_zero,
                entries_are_evicted_after_expiry_plus_retention,
                held_request_round_trips_byte_for_byte,
                held_request_is_taken_once,
                missing_held_requests_are_none,
                held_requests_expire_with_their_ttl,
                a_waiter_lease_is_set_renewed_cleared_and_runs_out,
                latest_for_user_follows_the_newest_hold,
                latest_for_user_keeps_users_apart,
                held_requests_are_isolated_by_key_prefix,
                otp_redeem_links_the_user_and_finishes_once,
                otp_redeem_counts_wrong_codes_and_exhausts,
                otp_redeem_touches_only_unbound_or_own_otp_transactions,
            ];
            concurrent: [
                concurrent_wrong_guesses_cannot_buy_extra_tries,
                concurrent_finishes_have_one_winner,
                concurrent_takes_have_one_winner,
                concurrent_otp_redeems_have_one_winner,
            ]
        );
    };
}

mod on_memory {
    conformance_suite!(super::memory_harness);
}

mod on_redis {
    conformance_suite!(super::redis_harness);
}

mod on_sentinel {
    conformance_suite!(super::sentinel_harness);
}

mod on_cluster {
    conformance_suite!(super::cluster_harness);
}
