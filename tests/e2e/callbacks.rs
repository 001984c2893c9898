//! Portal callbacks end to end, in process: a `CallbackService` over the real `CallbackSender`
//! and each queue (memory, and Redis under a fresh key prefix) delivers to a fake portal over
//! the network. Basic auth only for the exact configured URL; retries after 500s with growing
//! gaps; a 400 is not retried; a hanging portal hits the timeout and is retried; and on Redis a
//! job survives its worker (enqueued and even claimed by one instance, delivered by the next).
//!
//! These drive the service directly until push transactions reach callbacks through the binary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;
use stepgate::config::settings::{CallbackEndpoint, CallbackSettings, RedisSettings};
use stepgate::domain::auth_type::Method;
use stepgate::domain::callback::CallbackQueue;
use stepgate::domain::clock::{Clock, SharedClock, SystemClock, Timestamp};
use stepgate::domain::transaction::{Details, Status, Transaction, TransactionId};
use stepgate::notify::callback::CallbackSender;
use stepgate::service::callbacks::{CallbackService, CallbackWorkerOptions};
use stepgate::store::callbacks::{MemoryCallbackQueue, RedisCallbackQueue};
use stepgate::store::redis::RedisStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::fakes::callback::{Answer, FakePortal};
use crate::harness::redis_url;

const USERNAME: &str = "portal-user";
const PASSWORD: &str = "s3cret-callback-password";

#[derive(Clone, Copy, Debug)]
enum Store {
    Memory,
    Redis,
}

/// A Redis key prefix of its own; its callback keys are deleted when dropped.
struct RedisPrefix(String);

impl RedisPrefix {
    fn new() -> Self {
        Self(format!("stepgate-test:{}:", uuid::Uuid::new_v4()))
    }

    fn store(&self) -> Arc<RedisStore> {
        let settings = RedisSettings {
            url: redis_url(),
            key_prefix: self.0.clone(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(5),
            mode: stepgate::config::settings::RedisMode::Standalone,
            durability: Default::default(),
        };
        let clock: SharedClock = Arc::new(SystemClock);
        Arc::new(RedisStore::new(settings, clock, Duration::from_secs(60)).unwrap())
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let Ok(client) = ::redis::Client::open(redis_url()) else {
            return;
        };
        if let Ok(mut connection) = client.get_connection() {
            let keys = [
                format!("{}{{callbacks}}:due", self.0),
                format!("{}{{callbacks}}:jobs", self.0),
            ];
            let _ = ::redis::cmd("DEL").arg(&keys).query::<i64>(&mut connection);
        }
    }
}

/// One gateway instance's callback side: the service and its running worker.
struct Instance {
    service: CallbackService,
    stop: watch::Sender<bool>,
    worker: Option<JoinHandle<()>>,
}

impl Instance {
    fn start(queue: Arc<dyn CallbackQueue>, settings: &CallbackSettings, lease: Duration) -> Self {
        let instance = Self::idle(queue, settings, lease);
        instance.run()
    }

    /// The service without its worker (a gateway about to crash).
    fn idle(queue: Arc<dyn CallbackQueue>, settings: &CallbackSettings, lease: Duration) -> Self {
        let sender = Arc::new(CallbackSender::new(settings, None, &[]).unwrap());
        let options = CallbackWorkerOptions {
            // Exact gaps, so they can be measured.
            jitter: false,
            lease,
            poll_interval: Duration::from_millis(50),
            ..CallbackWorkerOptions::new(settings.max_attempts, settings.timeout)
        };
        let clock: SharedClock = Arc::new(SystemClock);
        let (stop, _) = watch::channel(false);
        Self {
            service: CallbackService::new(queue, sender, clock, options),
            stop,
            worker: None,
        }
    }

    fn run(mut self) -> Self {
        let service = self.service.clone();
        let shutdown = self.stop.subscribe();
        self.worker = Some(tokio::spawn(async move { service.run(shutdown).await }));
        self
    }

    async fn schedule(&self, callback_uri: &str) -> TransactionId {
        let transaction = finished_push(callback_uri);
        self.service.schedule(&transaction).await.unwrap();
        transaction.id
    }

    async fn wait_until_drained(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.service.backlog().await.unwrap() > 0 {
            assert!(
                Instant::now() < deadline,
                "the queue did not drain within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn shut_down(mut self) {
        self.stop.send(true).unwrap();
        if let Some(worker) = self.worker.take() {
            tokio::time::timeout(Duration::from_secs(15), worker)
                .await
                .expect("the worker stops on shutdown")
                .unwrap();
        }
    }
}

fn queue(store: Store, prefix: &RedisPrefix) -> Arc<dyn CallbackQueue> {
    match store {
        Store::Memory => Arc::new(MemoryCallbackQueue::new()),
        Store::Redis => Arc::new(RedisCallbackQueue::new(prefix.store())),
    }
}

/// Credentials for `/with-auth` only; `timeout` per request.
fn settings(portal: &FakePortal, timeout: Duration, max_attempts: u32) -> CallbackSettings {
    CallbackSettings {
        endpoints: vec![
            CallbackEndpoint {
                url: url::Url::parse(&portal.url("/with-auth")).unwrap(),
                basic_auth: Some((USERNAME.into(), PASSWORD.into())),
            },
            CallbackEndpoint {
                url: url::Url::parse(&portal.url("/listed-without-auth")).unwrap(),
                basic_auth: None,
            },
        ],
        // The fake portal is on loopback; URLs other than the two above reach it only
        // because loopback is allowed here.
        allowed_networks: vec!["127.0.0.0/8".parse().unwrap()],
        max_attempts,
        timeout,
        ..CallbackSettings::default()
    }
}

fn finished_push(callback_uri: &str) -> Transaction {
    let now = SystemClock.now();
    Transaction {
        id: TransactionId::random(),
        auth_type: "push_login".into(),
        method: Method::Push,
        user_id: Some("alice".into()),
        status: Status::Approved,
        created_at: now,
        expires_at: now.plus(Duration::from_secs(300)),
        finished_at: Some(now),
        attempts: 0,
        max_attempts: 0,
        resends: 0,
        max_resends: 0,
        code_hash: None,
        reason: None,
        evidence: None,
        details: Details {
            callback_uri: Some(callback_uri.to_owned()),
            ..Details::default()
        },
    }
}

fn basic(username: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    format!("Basic {token}")
}

/// The counter `stepgate_callbacks_total{result}` in this process.
fn callbacks_total(result: &str) -> u64 {
    let (_, body) = stepgate::telemetry::metrics::render();
    let text = String::from_utf8(body).unwrap();
    let prefix = format!("stepgate_callbacks_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |value| value.trim().parse().unwrap())
}

const LEASE: Duration = Duration::from_secs(30);

// ---- scenarios -----------------------------------------------------------------------------

async fn delivers_with_basic_auth_only_for_the_configured_url(store: Store) {
    let portal = FakePortal::start();
    let prefix = RedisPrefix::new();
    let settings = settings(&portal, Duration::from_secs(5), 10);
    let gate = Instance::start(queue(store, &prefix), &settings, LEASE);

    let with_auth = portal.url("/with-auth");
    let listed = portal.url("/listed-without-auth");
    // Not the configured URL: its query differs.
    let other_query = portal.url("/with-auth?portal_ref=42");
    let unlisted = portal.url("/elsewhere");
    let mut sent = Vec::new();
    for uri in [&with_auth, &listed, &other_query, &unlisted] {
        sent.push((uri.clone(), gate.schedule(uri).await));
    }
    let received = portal.wait_for(4, Duration::from_secs(10)).await;
    gate.wait_until_drained(Duration::from_secs(5)).await;

    for (uri, transaction_id) in &sent {
        let request = received
            .iter()
            .find(|r| r.json["transaction_id"] == transaction_id.to_string())
            .unwrap_or_else(|| panic!("no callback for {uri}: {received:#?}"));
        assert_eq!(request.method, "POST");
        let target = match &request.query {
            Some(query) => format!("{}?{query}", request.path),
            None => request.path.clone(),
        };
        assert_eq!(
            &portal.url(&target),
            uri,
            "posted to the callback_uri itself"
        );
        assert_eq!(
            request.json,
            json!({"callback_uri": uri, "transaction_id": transaction_id.to_string()}),
            "the reference body, exactly"
        );
        assert_eq!(
            request.content_type.as_deref(),
            Some("application/json;charset=UTF-8")
        );
        let expected = (uri == &with_auth).then(|| basic(USERNAME, PASSWORD));
        assert_eq!(request.authorization, expected, "{uri}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(portal.received().len(), 4, "each callback once");
    gate.shut_down().await;
}

async fn retries_after_500s_with_growing_gaps(store: Store) {
    let portal = FakePortal::start();
    portal.script([Answer::Status(500), Answer::Status(503)]);
    let prefix = RedisPrefix::new();
    let settings = settings(&portal, Duration::from_secs(5), 10);
    let retried_before = callbacks_total("retried");
    let delivered_before = callbacks_total("delivered");
    let gate = Instance::start(queue(store, &prefix), &settings, LEASE);

    let transaction_id = gate.schedule(&portal.url("/with-auth")).await;
    let received = portal.wait_for(3, Duration::from_secs(10)).await;
    gate.wait_until_drained(Duration::from_secs(5)).await;

    assert!(
        received
            .iter()
            .all(|r| r.json["transaction_id"] == transaction_id.to_string()
                && r.authorization == Some(basic(USERNAME, PASSWORD))),
        "every retry is the same callback, with its credentials: {received:#?}"
    );
    let first_gap = received[1].at - received[0].at;
    let second_gap = received[2].at - received[1].at;
    assert!(
        first_gap >= Duration::from_millis(950) && first_gap < Duration::from_millis(1_900),
        "first retry about 1 s later: {first_gap:?}"
    );
    assert!(
        second_gap >= Duration::from_millis(1_950) && second_gap < Duration::from_millis(3_500),
        "second retry about 2 s later: {second_gap:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(portal.received().len(), 3, "nothing after the 204");
    // Other tests in this process may count too, hence at least.
    assert!(callbacks_total("retried") >= retried_before + 2);
    assert!(callbacks_total("delivered") > delivered_before);
    gate.shut_down().await;
}

async fn a_400_is_not_retried(store: Store) {
    let portal = FakePortal::start();
    portal.script([Answer::Status(400)]);
    let prefix = RedisPrefix::new();
    let settings = settings(&portal, Duration::from_secs(5), 10);
    let failed_before = callbacks_total("failed");
    let gate = Instance::start(queue(store, &prefix), &settings, LEASE);

    gate.schedule(&portal.url("/listed-without-auth")).await;
    portal.wait_for(1, Duration::from_secs(10)).await;
    gate.wait_until_drained(Duration::from_secs(5)).await;
    // Longer than the first retry would wait.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(portal.received().len(), 1, "a refused callback is given up");
    assert!(callbacks_total("failed") > failed_before);
    gate.shut_down().await;
}

async fn a_hanging_portal_times_out_and_is_retried(store: Store) {
    let portal = FakePortal::start();
    portal.script([Answer::Hang(Duration::from_secs(20))]);
    let prefix = RedisPrefix::new();
    let settings = settings(&portal, Duration::from_millis(300), 10);
    let gate = Instance::start(queue(store, &prefix), &settings, LEASE);

    let transaction_id = gate.schedule(&portal.url("/with-auth")).await;
    let received = portal.wait_for(2, Duration::from_secs(10)).await;
    gate.wait_until_drained(Duration::from_secs(5)).await;
    assert_eq!(
        received[1].json["transaction_id"],
        transaction_id.to_string()
    );
    let gap = received[1].at - received[0].at;
    assert!(
        gap >= Duration::from_millis(1_250) && gap < Duration::from_secs(5),
        "the 300 ms timeout, then the 1 s backoff: {gap:?}"
    );
    gate.shut_down().await;
}

/// A restart loses none: a job enqueued by one instance (that never sends it) is delivered by
/// the next; and a job claimed by an instance that crashed before sending is delivered by the
/// next once the lease runs out, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_callbacks_survive_a_crashed_gateway() {
    let portal = FakePortal::start();
    let prefix = RedisPrefix::new();
    let settings = settings(&portal, Duration::from_secs(5), 10);
    let lease = Duration::from_secs(2);

    // The first instance enqueues two callbacks and claims one, then dies without sending.
    let first_queue: Arc<dyn CallbackQueue> = Arc::new(RedisCallbackQueue::new(prefix.store()));
    let first = Instance::idle(first_queue.clone(), &settings, lease);
    let claimed_id = first.schedule(&portal.url("/with-auth")).await;
    let claimed = first_queue
        .claim_due(SystemClock.now(), 1, lease)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].transaction_id, claimed_id);
    let crashed_at = Instant::now();
    let waiting_id = first.schedule(&portal.url("/with-auth?second")).await;
    drop(first);
    drop(first_queue);

    // A new instance on the same Redis prefix.
    let second = Instance::start(
        Arc::new(RedisCallbackQueue::new(prefix.store())),
        &settings,
        lease,
    );
    let received = portal.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(
        received[0].json["transaction_id"],
        waiting_id.to_string(),
        "the unclaimed job goes out at once"
    );
    let received = portal.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(received[1].json["transaction_id"], claimed_id.to_string());
    let redelivered_after = received[1].at - crashed_at;
    assert!(
        redelivered_after >= lease - Duration::from_millis(100),
        "not before the lease ended: {redelivered_after:?}"
    );
    second.wait_until_drained(Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(portal.received().len(), 2, "each exactly once");
    second.shut_down().await;
}

#[tokio::test]
async fn a_due_timestamp_in_the_past_is_sent_at_once() {
    // A job due long ago (a gateway that was down for a while) goes out on the first round.
    let portal = FakePortal::start();
    let queue: Arc<dyn CallbackQueue> = Arc::new(MemoryCallbackQueue::new());
    let mut job = stepgate::domain::callback::CallbackJob::new(
        TransactionId::random(),
        portal.url("/listed-without-auth"),
        Timestamp(0),
    );
    job.attempt = 3;
    queue.enqueue(&job).await.unwrap();
    let settings = settings(&portal, Duration::from_secs(5), 10);
    let gate = Instance::start(queue, &settings, LEASE);
    let received = portal.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(
        received[0].json["transaction_id"],
        job.transaction_id.to_string()
    );
    gate.wait_until_drained(Duration::from_secs(5)).await;
    gate.shut_down().await;
}

/// A callback_uri that is not a configured endpoint never reaches an internal address: the
/// fake portal on loopback hears nothing, and the job is given up at once, not retried.
async fn internal_addresses_are_never_called_back(store: Store) {
    let portal = FakePortal::start();
    let prefix = RedisPrefix::new();
    let mut settings = settings(&portal, Duration::from_secs(5), 10);
    settings.allowed_networks.clear();
    let gate = Instance::start(queue(store, &prefix), &settings, LEASE);
    let given_up = callbacks_total("failed");
    let unlisted = portal.url("/not-configured");
    gate.schedule(&unlisted).await;
    // A name that resolves to loopback: refused on the address it resolves to.
    gate.schedule(&unlisted.replace("127.0.0.1", "localhost"))
        .await;
    // A configured endpoint on the same loopback portal still gets its callback.
    let listed = gate.schedule(&portal.url("/listed-without-auth")).await;
    let received = portal.wait_for(1, Duration::from_secs(5)).await;
    gate.wait_until_drained(Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received_now = portal.received();
    assert_eq!(received_now.len(), 1, "{received_now:#?}");
    assert_eq!(received[0].json["transaction_id"], listed.to_string());
    assert!(callbacks_total("failed") >= given_up + 2);
    gate.shut_down().await;
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $name() { super::$name(super::Store::Memory).await; })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $name() { super::$name(super::Store::Redis).await; })*
        }
    };
}

on_both_stores!(
    delivers_with_basic_auth_only_for_the_configured_url,
    retries_after_500s_with_growing_gaps,
    a_400_is_not_retried,
    a_hanging_portal_times_out_and_is_retried,
    internal_addresses_are_never_called_back,
);
