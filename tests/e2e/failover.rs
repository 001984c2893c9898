//! A Redis primary killed under load, with real processes: this test starts its own Sentinel
//! set on free loopback ports (a primary with `appendonly yes` and `min-replicas-to-write 1`,
//! two replicas, three Sentinels) and a gate on it with `replicas_to_acknowledge: 1` (the
//! README's production advice). While API clients start SMS step-ups and browsers hit a
//! protected and an unprotected proxy route, the primary gets SIGKILL. Measured and asserted:
//! the unprotected route never fails; the protected route is back within 2 s of the new
//! primary's promotion (complete when it takes writes: with `min-replicas-to-write 1`, once the
//! other replica has synced with it), without restarting the gate; no transaction the gate
//! acknowledged is missing on the new primary. It runs alone (`.config/nextest.toml`).

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::Mutex;

use crate::fakes::upstream::RecordingUpstream;
use crate::harness::{GateBuilder, client, free_addr};

const MASTER: &str = "failover-test";
const CLIENT_ID: &str = "portal";
const CLIENT_SECRET: &str = "portal-secret-0123456789";
/// Load keeps running this long after the promotion.
const AFTER_PROMOTION: Duration = Duration::from_secs(4);

/// One `redis-server` (or Sentinel) process, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server(dir: &Path, args: &[String]) -> Process {
    let child = Command::new("redis-server")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (scripts/with-deps installs it)");
    Process(child)
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A primary, two replicas and three Sentinels of its own.
struct SentinelSet {
    _dir: TempDir,
    primary: u16,
    replicas: [u16; 2],
    sentinels: [u16; 3],
    data: Vec<Option<Process>>,
    _sentinel_processes: Vec<Process>,
}

impl SentinelSet {
    fn start() -> SentinelSet {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = || free_addr().port();
        let (primary, replicas, sentinels) = (port(), [port(), port()], [port(), port(), port()]);
        let data_server = |port: u16, replica_of: Option<u16>| {
            let data_dir = dir.path().join(format!("data-{port}"));
            fs::create_dir_all(&data_dir).unwrap();
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--min-replicas-to-write",
                "1",
                "--min-replicas-max-lag",
                "5",
                "--dir",
            ]
            .iter()
            .map(ToString::to_string)
            .collect();
            args.push(data_dir.display().to_string());
            if let Some(primary) = replica_of {
                args.extend([
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    primary.to_string(),
                ]);
            }
            Some(redis_server(dir.path(), &args))
        };
        let mut data = vec![data_server(primary, None)];
        for replica in replicas {
            data.push(data_server(replica, Some(primary)));
        }
        for replica in replicas {
            wait_until("a replica in sync", Duration::from_secs(10), || {
                redis_cli(replica, &["INFO", "replication"]).contains("master_link_status:up")
            });
        }
        let mut sentinel_processes = Vec::new();
        for sentinel in sentinels {
            let conf = dir.path().join(format!("sentinel-{sentinel}.conf"));
            fs::write(
                &conf,
                format!(
                    "port {sentinel}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 3000\n",
                    dir = dir.path().display()
                ),
            )
            .unwrap();
            sentinel_processes.push(redis_server(
                dir.path(),
                &[conf.display().to_string(), "--sentinel".into()],
            ));
        }
        let set = SentinelSet {
            _dir: dir,
            primary,
            replicas,
            sentinels,
            data,
            _sentinel_processes: sentinel_processes,
        };
        wait_until(
            "the Sentinels know the primary, both replicas and each other",
            Duration::from_secs(20),
            || {
                set.sentinels.iter().all(|sentinel| {
                    let replicas = redis_cli(*sentinel, &["SENTINEL", "replicas", MASTER]);
                    let peers = redis_cli(*sentinel, &["SENTINEL", "sentinels", MASTER]);
                    let count = |text: &str| text.lines().filter(|line| *line == "ip").count();
                    count(&replicas) >= 2 && count(&peers) >= 2
                })
            },
        );
        set
    }

    /// The primary the Sentinels name now.
    fn named_primary(&self) -> Option<u16> {
        let answer = redis_cli(
            self.sentinels[0],
            &["SENTINEL", "get-master-addr-by-name", MASTER],
        );
        answer.lines().nth(1)?.trim().parse().ok()
    }

    fn kill_primary(&mut self) {
        if let Some(mut process) = self.data[0].take() {
            let _ = process.0.kill();
            let _ = process.0.wait();
        }
    }

    fn store_yaml(&self, prefix: &str) -> String {
        let nodes = self
            .sentinels
            .iter()
            .map(|port| format!("\"127.0.0.1:{port}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "store:\n  backend: redis\n  redis: {{ mode: sentinel, key_prefix: \"{prefix}\", connect_timeout_ms: 300, response_timeout_ms: 500, replicas_to_acknowledge: 1, replica_ack_timeout_ms: 500, sentinel: {{ master_name: {MASTER}, nodes: [{nodes}] }} }}\n"
        )
    }
}

/// What the load saw.
#[derive(Default)]
struct Seen {
    /// Transaction ids the API acknowledged (200).
    acknowledged: Vec<String>,
    api_failures: usize,
    open_ok: usize,
    open_errors: Vec<String>,
    /// Each protected request: when it was sent and whether the gate could challenge it.
    protected: Vec<(Instant, bool)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_primary_loses_nothing_acknowledged_and_the_gate_follows_the_new_one() {
    let mut set = SentinelSet::start();
    let upstream = RecordingUpstream::start();
    let prefix = format!("stepgate-failover:{}:", uuid::Uuid::new_v4());
    let gate = GateBuilder::store_yaml(set.store_yaml(&prefix))
        .yaml(&format!(
            "api_clients:
  - {{ client_id: {CLIENT_ID}, client_secret: \"{CLIENT_SECRET}\", apis: [mobile_authentication] }}
auth_types:
  - {{ name: sms_code, method: sms, ttl_seconds: 600, max_attempts: 3, default_messages: {{ en: \"Code: {{code}}\" }} }}
sms: {{ gateway: file, file: {{ path: outbox.jsonl }} }}
rate_limits:
  sms_per_user: {{ limit: 1000000, window_seconds: 60 }}
  sms_per_phone: {{ limit: 1000000, window_seconds: 60 }}
  sms_per_client_ip: {{ limit: 1000000, window_seconds: 60 }}
policies:
  - name: transfers
    match: {{ methods: [POST], paths: [\"/transfer\"] }}
    require: {{ auth_type: sms_code, freshness_seconds: 0 }}
proxy:
  upstream: {{ address: \"{upstream}\" }}
  trusted_proxies: [\"127.0.0.1/32\"]
  identity: {{ header: X-User-Id, phone_header: X-User-Phone }}
",
            upstream = upstream.address()
        ))
        .start();
    gate.wait_for_proxy();

    let seen = Arc::new(Mutex::new(Seen::default()));
    let running = Arc::new(AtomicBool::new(true));
    let mut load = Vec::new();
    // Two API clients starting SMS step-ups, each user once.
    for worker in 0..2 {
        let (seen, running, url) = (seen.clone(), running.clone(), gate.url(""));
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while running.load(Ordering::Relaxed) {
                n += 1;
                let user = format!("api-{worker}-{n}");
                let answer = client()
                    .post(format!("{url}/oauth/api/v4/authenticate/user"))
                    .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
                    .form(&[
                        ("type", "sms_code"),
                        ("user_id", user.as_str()),
                        ("phone_number", "+31612345678"),
                    ])
                    .send()
                    .await;
                let acknowledged = match answer {
                    Ok(response) if response.status() == StatusCode::OK => response
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|body| body["transaction_id"].as_str().map(str::to_owned)),
                    _ => None,
                };
                let mut seen = seen.lock().await;
                match acknowledged {
                    Some(id) => seen.acknowledged.push(id),
                    None => seen.api_failures += 1,
                }
                drop(seen);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // A browser on an unprotected route.
    {
        let (seen, running, url) = (seen.clone(), running.clone(), gate.proxy_url("/open"));
        load.push(tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                let outcome = client().get(&url).send().await;
                let mut seen = seen.lock().await;
                match outcome {
                    Ok(response) if response.status() == StatusCode::OK => seen.open_ok += 1,
                    Ok(response) => seen.open_errors.push(response.status().to_string()),
                    Err(error) => seen.open_errors.push(error.to_string()),
                }
                drop(seen);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // Protected requests: a JSON challenge (401) means the gate holds them.
    {
        let (seen, running, url) = (seen.clone(), running.clone(), gate.proxy_url("/transfer"));
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while running.load(Ordering::Relaxed) {
                n += 1;
                let sent = Instant::now();
                let outcome = client()
                    .post(&url)
                    .header("x-user-id", format!("web-{n}"))
                    .header("x-user-phone", "+31687654321")
                    .header("accept", "application/json")
                    .form(&[("amount", "10")])
                    .send()
                    .await;
                let held =
                    matches!(outcome, Ok(response) if response.status() == StatusCode::UNAUTHORIZED);
                seen.lock().await.protected.push((sent, held));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let old_primary = set.primary;
    set.kill_primary();
    let killed = Instant::now();
    let promoted = loop {
        if matches!(set.named_primary(), Some(port) if port != old_primary) {
            break Instant::now();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no Sentinel promoted a replica within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    // Promoted in full: the new primary takes writes, which with `min-replicas-to-write 1`
    // waits until the other replica has synced with it: Redis counts it among the good
    // replicas only then (a replica still loading the primary's data is connected, not good).
    let new_port = set.named_primary().unwrap();
    let good_replicas = |info: &str| -> u32 {
        info.lines()
            .find_map(|line| line.trim().strip_prefix("min_slaves_good_slaves:"))
            .and_then(|count| count.parse().ok())
            .unwrap_or(0)
    };
    let writable = loop {
        let info = redis_cli(new_port, &["INFO", "replication"]);
        if info.contains("role:master") && good_replicas(&info) >= 1 {
            break Instant::now();
        }
        assert!(
            promoted.elapsed() < Duration::from_secs(30),
            "the new primary got no replica within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    tokio::time::sleep(AFTER_PROMOTION).await;
    running.store(false, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let new_primary = set.named_primary().unwrap();
    assert!(set.replicas.contains(&new_primary));

    let seen = seen.lock().await;
    // Unprotected traffic never touches the store: not one error.
    assert!(seen.open_ok > 50, "{} unprotected requests", seen.open_ok);
    assert!(
        seen.open_errors.is_empty(),
        "unprotected errors: {:?}",
        seen.open_errors
    );
    // Protected traffic: back within 2 s of the promotion, with the same gate process.
    let last_refusal = seen
        .protected
        .iter()
        .filter(|(_, held)| !held)
        .map(|(sent, _)| *sent)
        .max();
    let unavailable_after_promotion = last_refusal.map_or(Duration::ZERO, |last| {
        last.saturating_duration_since(writable)
    });
    let held_after = seen
        .protected
        .iter()
        .filter(|(sent, held)| *held && *sent > writable + Duration::from_secs(2))
        .count();
    eprintln!(
        "failover: promoted {:?} after the kill, writable (a good replica) {:?} after that; protected route unavailable {:?} after it was writable; {} acknowledged inits, {} refused; {} unprotected requests, 0 errors",
        promoted - killed,
        writable - promoted,
        unavailable_after_promotion,
        seen.acknowledged.len(),
        seen.api_failures,
        seen.open_ok
    );
    assert!(
        unavailable_after_promotion <= Duration::from_secs(2),
        "protected route unavailable {unavailable_after_promotion:?} after the promotion"
    );
    assert!(
        held_after > 10,
        "only {held_after} protected requests held after recovery"
    );

    // Nothing acknowledged is lost: every acknowledged transaction is on the new primary.
    assert!(
        seen.acknowledged.len() > 20,
        "{} acknowledged",
        seen.acknowledged.len()
    );
    let lost: Vec<&String> = seen
        .acknowledged
        .iter()
        .filter(|id| {
            redis_cli(new_primary, &["EXISTS", &format!("{prefix}tx:{{{id}}}")]).trim() != "1"
        })
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}
