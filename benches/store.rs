//! Store benchmark: latency of each atomic store operation on the memory and Redis stores, with
//! a raw Redis `PING` over the same kind of connection as the baseline measured in the same run,
//! and the number of Redis commands one SMS flow (insert, wrong code, right code) costs.
//!
//! Run: `scripts/with-deps cargo bench --bench store` (uses Redis on 127.0.0.1:6379 or
//! `STEPGATE_TEST_REDIS_URL`, under a throw-away key prefix). Prints medians and p99 in µs and the
//! ratio of each Redis operation to one PING round trip.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use stepgate::domain::auth_type::Method;
use stepgate::domain::clock::{SharedClock, SystemClock};
use stepgate::domain::code::{CodeHasher, OneTimeCode, SecretKey};
use stepgate::domain::ports::TransactionStore;
use stepgate::domain::transaction::{Details, Owner, Status, Transaction, TransactionId};
use stepgate::store::memory::MemoryStore;
use stepgate::store::redis::{RedisSettings, RedisStore};

const ROUNDS: usize = 3;
const PER_ROUND: usize = 2_000;

struct Fixture {
    hasher: CodeHasher,
    code: OneTimeCode,
    clock: SharedClock,
}

impl Fixture {
    fn transaction(&self) -> Transaction {
        let id = TransactionId::random();
        let now = self.clock.now();
        Transaction {
            evidence: None,
            id,
            auth_type: "sms_code".into(),
            method: Method::Sms,
            user_id: Some("bench-user".into()),
            status: Status::Pending,
            created_at: now,
            expires_at: now.plus(Duration::from_secs(300)),
            finished_at: None,
            attempts: 0,
            max_attempts: 0,
            resends: 0,
            max_resends: 3,
            code_hash: Some(self.hasher.hash(&id, &self.code)),
            reason: None,
            details: Details {
                phone_number: Some("+31600000000".into()),
                ..Details::default()
            },
        }
    }
}

fn summary(name: &str, mut samples: Vec<Duration>, baseline: Option<f64>) -> f64 {
    samples.sort();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let median = micros(samples[samples.len() / 2]);
    let p99 = micros(samples[samples.len() * 99 / 100]);
    let ratio = baseline
        .map(|b| format!("{:>6.2}x PING", median / b))
        .unwrap_or_default();
    println!("{name:<28} median {median:>8.1} µs   p99 {p99:>8.1} µs   {ratio}");
    median
}

async fn measure<F, Fut>(mut op: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(ROUNDS * PER_ROUND);
    for _ in 0..ROUNDS {
        for _ in 0..PER_ROUND {
            let start = Instant::now();
            op().await;
            samples.push(start.elapsed());
        }
    }
    samples
}

async fn bench_store(
    label: &str,
    store: Arc<dyn TransactionStore>,
    fx: &Fixture,
    baseline: Option<f64>,
) {
    let wrong = OneTimeCode::parse("000000").unwrap_or_else(|| unreachable!());
    let mut pool: Vec<Transaction> = Vec::new();
    let inserts = measure(|| {
        let tx = fx.transaction();
        pool.push(tx.clone());
        let store = store.clone();
        async move { store.insert(&tx).await.expect("insert") }
    })
    .await;
    summary(&format!("{label} insert"), inserts, baseline);
    let mut i = 0;
    let gets = measure(|| {
        let id = pool[i % pool.len()].id;
        i += 1;
        let store = store.clone();
        async move {
            store.get(&id).await.expect("get");
        }
    })
    .await;
    summary(&format!("{label} get"), gets, baseline);
    let mut i = 0;
    let verifies = measure(|| {
        let id = pool[i % pool.len()].id;
        i += 1;
        let candidate = fx.hasher.hash(&id, &wrong);
        let store = store.clone();
        async move {
            store
                .verify_code(&id, Owner::through_proxy("bench-user"), &candidate)
                .await
                .expect("verify");
        }
    })
    .await;
    summary(&format!("{label} verify_code (wrong)"), verifies, baseline);
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let clock: SharedClock = Arc::new(SystemClock);
        let fx = Fixture {
            hasher: CodeHasher::new(&SecretKey::new(vec![3u8; 32])),
            code: OneTimeCode::parse("424242").unwrap_or_else(|| unreachable!()),
            clock: clock.clone(),
        };
        let url = std::env::var("STEPGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
        let prefix = format!("stepgate-bench:{}:", std::process::id());
        println!("store benchmark: {ROUNDS} x {PER_ROUND} sequential operations each, one connection, {url}");

        let client = redis::Client::open(url.as_str()).expect("redis url");
        let mut conn = client.get_multiplexed_async_connection().await.expect("redis reachable");
        let pings = measure(|| {
            let mut conn = conn.clone();
            async move {
                let _: String = redis::cmd("PING").query_async(&mut conn).await.expect("ping");
            }
        })
        .await;
        let ping = summary("redis PING (baseline)", pings, None);

        let memory: Arc<dyn TransactionStore> = Arc::new(MemoryStore::new(clock.clone(), Duration::from_secs(60)));
        bench_store("memory", memory, &fx, Some(ping)).await;

        let settings = RedisSettings {
            url: url.clone(),
            key_prefix: prefix.clone(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
            mode: stepgate::config::settings::RedisMode::Standalone,
            durability: Default::default(),
        };
        let redis_store: Arc<dyn TransactionStore> =
            Arc::new(RedisStore::new(settings, clock.clone(), Duration::from_secs(60)).expect("redis store"));
        bench_store("redis", redis_store.clone(), &fx, Some(ping)).await;

        // Commands per SMS flow: insert, one wrong code, the right code. Counted from Redis's own
        // statistics, minus the INFO call that reads them.
        let flows = 200u64;
        let before = common::redis_command_calls(&mut conn).await;
        for _ in 0..flows {
            let tx = fx.transaction();
            redis_store.insert(&tx).await.expect("insert");
            let wrong = fx.hasher.hash(&tx.id, &OneTimeCode::parse("000000").unwrap_or_else(|| unreachable!()));
            redis_store.verify_code(&tx.id, Owner::through_proxy("bench-user"), &wrong).await.expect("verify");
            redis_store.verify_code(&tx.id, Owner::through_proxy("bench-user"), &fx.hasher.hash(&tx.id, &fx.code)).await.expect("verify");
        }
        let after = common::redis_command_calls(&mut conn).await;
        println!("redis commands per SMS flow (insert + wrong code + right code), over {flows} flows:");
        for (name, calls) in &after {
            let delta = calls - before.get(name).copied().unwrap_or(0) - u64::from(name == "info");
            if delta > 0 {
                let origin = if name.starts_with("eval") { "sent by the gateway" } else { "inside the scripts" };
                println!("  {name:<10} {:>6.2}  ({origin})", delta as f64 / flows as f64);
            }
        }

        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: () = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await.unwrap_or(());
        }
    });
}
