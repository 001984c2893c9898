//! Scale-out benchmark, in one run:
//! 1. SMS flows per second (insert, a wrong code, the right code; 32 at a time) through the real
//!    Redis store on standalone Redis (the baseline), the Sentinel set and the Cluster that
//!    `scripts/redis-topologies` starts, with the ratio of each to standalone;
//! 2. Redis memory per pending SMS transaction (its hash and its admin index entries) and per
//!    held request (34-byte body, with its transaction), from `used_memory` before and after
//!    storing many, on the standalone server;
//! 3. Redis commands per second while N hold-mode requests wait in a real gate process (the
//!    release binary), from `INFO commandstats` over a fixed window, next to what polling every
//!    200 ms cost (N x 5 reads per second).
//!
//! Run: `scripts/with-deps cargo bench --bench scale_out` (Redis on 6379 or
//! `STEPGATE_TEST_REDIS_URL`; the topologies from `scripts/redis-topologies start`, which
//! `scripts/with-deps` runs for benches too).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use stepgate::config::settings::{
    ClusterSettings, RedisAuth, RedisDurability, RedisMode, RedisNode, RedisSettings,
    SentinelSettings,
};
use stepgate::domain::auth_type::Method;
use stepgate::domain::clock::{SharedClock, SystemClock};
use stepgate::domain::code::{CodeHasher, OneTimeCode, SecretKey};
use stepgate::domain::held::{BindingDigest, HeldMode, HeldRequest, HeldTicket, OriginalRequest};
use stepgate::domain::ports::{HeldRequestStore, TransactionStore};
use stepgate::domain::transaction::{Details, Owner, Status, Transaction, TransactionId};
use stepgate::store::redis::RedisStore;

use common::{KillOnDrop, free_port, redis_command_calls};

const FLOWS: usize = 3_000;
const CONCURRENCY: usize = 32;
const STORED: usize = 2_000;
const WAITERS: usize = 300;
const WINDOW: Duration = Duration::from_secs(10);

fn redis_url() -> String {
    std::env::var("STEPGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn node(port: u16) -> RedisNode {
    RedisNode {
        host: "127.0.0.1".into(),
        port,
    }
}

fn settings(mode: RedisMode, prefix: &str) -> RedisSettings {
    RedisSettings {
        url: redis_url(),
        key_prefix: prefix.to_owned(),
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(5),
        mode,
        durability: RedisDurability::default(),
    }
}

fn modes() -> Vec<(&'static str, RedisMode)> {
    vec![
        ("standalone", RedisMode::Standalone),
        (
            "sentinel",
            RedisMode::Sentinel(Box::new(SentinelSettings {
                master_name: "stepgate-test".into(),
                sentinels: vec![node(26390), node(26391), node(26392)],
                sentinel_auth: RedisAuth::default(),
                data_auth: RedisAuth::default(),
                db: 0,
            })),
        ),
        (
            "cluster",
            RedisMode::Cluster(ClusterSettings {
                nodes: (7100..=7105).map(node).collect(),
                data_auth: RedisAuth::default(),
            }),
        ),
    ]
}

struct Fixture {
    hasher: CodeHasher,
    code: OneTimeCode,
    clock: SharedClock,
}

impl Fixture {
    fn transaction(&self, user: &str) -> Transaction {
        let id = TransactionId::random();
        let now = self.clock.now();
        Transaction {
            evidence: None,
            id,
            auth_type: "sms_code".into(),
            method: Method::Sms,
            user_id: Some(user.into()),
            status: Status::Pending,
            created_at: now,
            expires_at: now.plus(Duration::from_secs(300)),
            finished_at: None,
            attempts: 0,
            max_attempts: 3,
            resends: 0,
            max_resends: 2,
            code_hash: Some(self.hasher.hash(&id, &self.code)),
            reason: None,
            details: Details {
                phone_number: Some("+31600000000".into()),
                client_id: Some("portal".into()),
                ..Details::default()
            },
        }
    }
}

/// SMS flows per second on one store, `CONCURRENCY` at a time.
async fn flows_per_second(store: Arc<RedisStore>, fx: Arc<Fixture>) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let (store, fx) = (store.clone(), fx.clone());
        tasks.push(tokio::spawn(async move {
            let user = format!("bench-{worker}");
            let wrong = fx.hasher.hash(&TransactionId::random(), &fx.code);
            for _ in 0..FLOWS / CONCURRENCY {
                let tx = fx.transaction(&user);
                let owner = Owner::through_proxy(&user);
                store.insert(&tx).await.expect("insert");
                store
                    .verify_code(&tx.id, owner, &wrong)
                    .await
                    .expect("verify");
                store
                    .verify_code(&tx.id, owner, &fx.hasher.hash(&tx.id, &fx.code))
                    .await
                    .expect("verify");
            }
        }));
    }
    for task in tasks {
        task.await.expect("flow task");
    }
    (FLOWS / CONCURRENCY * CONCURRENCY) as f64 / started.elapsed().as_secs_f64()
}

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("used_memory")
}

async fn delete_prefix(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .unwrap_or_default();
    for chunk in keys.chunks(500) {
        let _: () = redis::cmd("DEL")
            .arg(chunk)
            .query_async(conn)
            .await
            .unwrap_or(());
    }
}

fn held_request(user: &str, now: stepgate::domain::clock::Timestamp) -> HeldRequest {
    HeldRequest {
        ticket: HeldTicket {
            bound: None,
            policy: "transfers".into(),
            user_id: user.into(),
            mode: HeldMode::Hold,
            freshness_seconds: 0,
            binding: BindingDigest::of("binding-token"),
            held_at: now,
            message: Some("Approve transfer of 10 EUR to NL91ABNA0417164300".into()),
        },
        request: OriginalRequest {
            method: "POST".into(),
            uri: "/transfer".into(),
            headers: vec![
                ("host".into(), b"bank.example".to_vec()),
                (
                    "content-type".into(),
                    b"application/x-www-form-urlencoded".to_vec(),
                ),
            ],
            body: b"amount=10&iban=NL91ABNA0417164300".to_vec(),
        },
    }
}

/// Redis memory per pending transaction, and per held request with its transaction; and the
/// parts of one pending transaction (`MEMORY USAGE` of its hash, of a one-entry user index).
async fn memory_per_entry(fx: &Fixture) -> (f64, f64, i64, i64) {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis reachable");
    // As long as the default `stepgate:` (every key carries it), unique to this run.
    let prefix = format!(
        "sg{:06x}:",
        rand_core::RngCore::next_u32(&mut rand_core::OsRng) >> 8
    );
    let store = RedisStore::new(
        settings(RedisMode::Standalone, &prefix),
        fx.clock.clone(),
        Duration::from_secs(3600),
    )
    .expect("store");
    store.ping().await.expect("ping");
    let before = used_memory(&mut conn).await;
    for n in 0..STORED {
        store
            .insert(&fx.transaction(&format!("mem-user-{n}")))
            .await
            .expect("insert");
    }
    let pending = (used_memory(&mut conn).await - before) as f64 / STORED as f64;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    let usage = |pattern: &'static str| {
        let key = keys.iter().find(|key| key.contains(pattern)).cloned();
        let client = client.clone();
        async move {
            let Some(key) = key else { return 0 };
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis");
            redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap_or(0)
        }
    };
    let (hash, user_index) = (usage("tx:{").await, usage("tx-user:{").await);
    delete_prefix(&mut conn, &prefix).await;

    let before = used_memory(&mut conn).await;
    for n in 0..STORED {
        let user = format!("held-user-{n}");
        let tx = fx.transaction(&user);
        store.insert(&tx).await.expect("insert");
        store
            .hold(
                &tx.id,
                &held_request(&user, fx.clock.now()),
                Duration::from_secs(330),
                Some(&format!("key-{n}")),
            )
            .await
            .expect("hold");
    }
    let held = (used_memory(&mut conn).await - before) as f64 / STORED as f64;
    delete_prefix(&mut conn, &prefix).await;
    (pending, held, hash, user_index)
}

/// Redis commands per second while `WAITERS` hold-mode requests wait in a real gate.
async fn commands_while_waiting() -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let (proxy, api, metrics) = (free_port(), free_port(), free_port());
    let prefix = format!("stepgate-bench-hold:{}:", uuid::Uuid::new_v4());
    let config = format!(
        "listen: {{ proxy: \"127.0.0.1:{proxy}\", api: \"127.0.0.1:{api}\", metrics: \"127.0.0.1:{metrics}\" }}
secret_key: \"bench-only-secret-0123456789abcdef0123456789\"
log: {{ level: warn }}
server: {{ threads: 1, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }}
store:
  backend: redis
  redis: {{ url: \"{url}\", key_prefix: \"{prefix}\" }}
auth_types:
  - {{ name: sms_code, method: sms, ttl_seconds: 300, default_messages: {{ en: \"Code: {{code}}\" }} }}
sms: {{ gateway: file, file: {{ path: outbox.jsonl }} }}
rate_limits:
  sms_per_user: {{ limit: 1000000, window_seconds: 60 }}
  sms_per_phone: {{ limit: 1000000, window_seconds: 60 }}
  sms_per_client_ip: {{ limit: 1000000, window_seconds: 60 }}
policies:
  - name: transfers
    match: {{ methods: [POST], paths: [\"/transfer\"] }}
    require: {{ auth_type: sms_code, freshness_seconds: 0 }}
    mode: hold
proxy:
  upstream: {{ address: \"127.0.0.1:9\" }}
  trusted_proxies: [\"127.0.0.1/32\"]
  identity: {{ header: X-User-Id, phone_header: X-User-Phone }}
",
        url = redis_url()
    );
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config).expect("config");
    let gate = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_stepgate"))
            .args(["run", "--config"])
            .arg(&path)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn stepgate"),
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("http://127.0.0.1:{api}/health"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the gate did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while std::net::TcpStream::connect(("127.0.0.1", proxy)).is_err() {
        assert!(Instant::now() < deadline, "the proxy did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut waiters = Vec::new();
    for n in 0..WAITERS {
        let (http, url) = (http.clone(), format!("http://127.0.0.1:{proxy}/transfer"));
        waiters.push(tokio::spawn(async move {
            let _ = http
                .post(url)
                .header("x-user-id", format!("waiter-{n}"))
                .header("x-user-phone", "+31600000000")
                .header("accept", "application/json")
                .body("amount=10")
                .send()
                .await;
        }));
    }
    // Every request has been held (its SMS written) before the window opens.
    let outbox = dir.path().join("outbox.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&outbox)
        .map(|text| text.lines().count())
        .unwrap_or(0)
        < WAITERS
    {
        assert!(Instant::now() < deadline, "not every request was held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis reachable");
    let total = |calls: std::collections::BTreeMap<String, u64>| -> u64 {
        calls
            .into_iter()
            .filter(|(name, _)| name != "info")
            .map(|(_, calls)| calls)
            .sum()
    };
    let before = total(redis_command_calls(&mut conn).await);
    tokio::time::sleep(WINDOW).await;
    let after = total(redis_command_calls(&mut conn).await);
    drop(gate);
    for waiter in waiters {
        waiter.abort();
    }
    delete_prefix(&mut conn, &prefix).await;
    (after - before) as f64 / WINDOW.as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let fx = Arc::new(Fixture {
            hasher: CodeHasher::new(&SecretKey::new(vec![7u8; 32])),
            code: OneTimeCode::generate(&mut rand_core::OsRng),
            clock: Arc::new(SystemClock),
        });

        println!("SMS flows per second (insert + wrong code + right code, {CONCURRENCY} at a time, {FLOWS} flows, median of 3):");
        let mut baseline = None;
        for (name, mode) in modes() {
            let mut runs = Vec::new();
            for _ in 0..3 {
                let prefix = format!("stepgate-bench-scale:{}:", uuid::Uuid::new_v4());
                let store = Arc::new(
                    RedisStore::new(settings(mode.clone(), &prefix), fx.clock.clone(), Duration::from_secs(60))
                        .expect("store"),
                );
                runs.push(flows_per_second(store, fx.clone()).await);
            }
            let rate = common::median(runs);
            let base = *baseline.get_or_insert(rate);
            println!("  {name:<10} {rate:>8.0} flows/s   {:.2}x standalone", rate / base);
        }

        let (pending, held, hash, user_index) = memory_per_entry(&fx).await;
        println!("Redis memory (used_memory delta over {STORED}, each of another user, prefix of 9 characters):");
        println!("  per pending SMS transaction (hash + admin index entries): {pending:.0} bytes");
        println!("    of which its hash {hash} bytes, its user's one-entry index {user_index} bytes (MEMORY USAGE)");
        println!("  per held request (34-byte body) with its transaction:     {held:.0} bytes");

        let rate = commands_while_waiting().await;
        let polling = WAITERS as f64 * 5.0;
        println!("Redis commands per second with {WAITERS} hold-mode requests waiting (over {WINDOW:?}):");
        println!("  {rate:.0} commands/s (polling every 200 ms read {polling:.0}/s: {:.1}x fewer)", polling / rate.max(1.0));
    });
}
