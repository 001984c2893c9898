//! SMS flow benchmark: init + verify flows per second through the real `stepgate` binary over
//! HTTP, on the Redis store with the file gateway, against the same gateway's `GET /health` as
//! the baseline measured in the same run; plus the Redis commands one flow costs.
//!
//! Run: `scripts/with-deps cargo bench --bench sms_flow` (Redis on 127.0.0.1:6379 or
//! `STEPGATE_TEST_REDIS_URL`; a throw-away key prefix). Prints per-round rates and the medians.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;
const FLOWS_PER_ROUND: usize = 1_500;
const HEALTH_PER_ROUND: usize = 3_000;
const CONCURRENCY: usize = 16;
const SECRET: &str = "portal-bench-secret-0123456789";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Codes by phone number, read from the file gateway's outbox as it grows.
struct Outbox {
    path: std::path::PathBuf,
    offset: u64,
    codes: HashMap<String, String>,
}

impl Outbox {
    fn code_for(&mut self, phone: &str) -> Option<String> {
        if let Some(code) = self.codes.remove(phone) {
            return Some(code);
        }
        let mut file = std::fs::File::open(&self.path).ok()?;
        file.seek(SeekFrom::Start(self.offset)).ok()?;
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        while reader.read_line(&mut line).ok()? > 0 {
            if !line.ends_with('\n') {
                break;
            }
            self.offset += line.len() as u64;
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                let to = value["to"].as_str().unwrap_or_default().to_owned();
                let body = value["body"].as_str().unwrap_or_default();
                let digits: String = body.chars().filter(char::is_ascii_digit).take(6).collect();
                self.codes.insert(to, digits);
            }
            line.clear();
        }
        self.codes.remove(phone)
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox_path = dir.path().join("outbox.jsonl");
    let redis_url = std::env::var("STEPGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let prefix = format!("stepgate-bench-flow:{}:", std::process::id());
    let (api, metrics, proxy) = (free_port(), free_port(), free_port());
    let config = format!(
        "listen: {{ proxy: \"127.0.0.1:{proxy}\", api: \"127.0.0.1:{api}\", metrics: \"127.0.0.1:{metrics}\" }}
secret_key: \"bench-secret-0123456789abcdef0123456789\"
log: {{ level: warn }}
store: {{ backend: redis, redis: {{ url: \"{redis_url}\", key_prefix: \"{prefix}\", response_timeout_ms: 2000 }} }}
api_clients: [ {{ client_id: portal, client_secret: \"{SECRET}\", apis: [mobile_authentication] }} ]
auth_types: [ {{ name: sms_code, method: sms, max_attempts: 3, default_messages: {{ en: \"Your code: {{code}}\" }} }} ]
sms: {{ gateway: file, file: {{ path: \"{}\" }} }}
rate_limits: {{ sms_per_user: {{ limit: 0 }}, sms_per_phone: {{ limit: 0 }} }}
",
        outbox_path.display()
    );
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .stdout(Stdio::null())
        .spawn()
        .expect("start stepgate");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::builder().pool_max_idle_per_host(CONCURRENCY).build().expect("client");
        let base = format!("http://127.0.0.1:{api}");
        for _ in 0..100 {
            if client.get(format!("{base}/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("sms flow benchmark: {ROUNDS} rounds, {CONCURRENCY} concurrent clients, release binary, Redis store, file gateway");

        let mut health_rates = Vec::new();
        let mut flow_rates = Vec::new();
        let outbox = Arc::new(Mutex::new(Outbox { path: outbox_path.clone(), offset: 0, codes: HashMap::new() }));
        let mut redis_conn = redis::Client::open(redis_url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let mut commands_per_flow = BTreeMap::new();
        for round in 0..ROUNDS {
            // Baseline: the same listener answering its cheapest request.
            let started = Instant::now();
            let mut tasks = Vec::new();
            for worker in 0..CONCURRENCY {
                let (client, url) = (client.clone(), format!("{base}/health"));
                tasks.push(tokio::spawn(async move {
                    for _ in (worker..HEALTH_PER_ROUND).step_by(CONCURRENCY) {
                        client.get(&url).send().await.expect("health").bytes().await.expect("body");
                    }
                }));
            }
            for task in tasks {
                task.await.expect("task");
            }
            let health_rate = HEALTH_PER_ROUND as f64 / started.elapsed().as_secs_f64();

            let before = common::redis_command_calls(&mut redis_conn).await;
            let started = Instant::now();
            let mut tasks = Vec::new();
            for worker in 0..CONCURRENCY {
                let (client, base, outbox) = (client.clone(), base.clone(), outbox.clone());
                tasks.push(tokio::spawn(async move {
                    for flow in (worker..FLOWS_PER_ROUND).step_by(CONCURRENCY) {
                        let phone = format!("+3161{round}{flow:07}");
                        let init: serde_json::Value = client
                            .post(format!("{base}/oauth/api/v4/authenticate/user"))
                            .basic_auth("portal", Some(SECRET))
                            .form(&[("type", "sms_code"), ("user_id", "bench"), ("phone_number", phone.as_str())])
                            .send()
                            .await
                            .expect("init")
                            .json()
                            .await
                            .expect("init json");
                        let tx = init["transaction_id"].as_str().expect("transaction id").to_owned();
                        let code = loop {
                            let found = outbox.lock().expect("outbox").code_for(&phone);
                            match found {
                                Some(code) => break code,
                                None => tokio::task::yield_now().await,
                            }
                        };
                        let status = client
                            .post(format!("{base}/oauth/api/v4/authenticate/user/bench/sms"))
                            .basic_auth("portal", Some(SECRET))
                            .form(&[("transaction_id", tx.as_str()), ("sms_code", code.as_str())])
                            .send()
                            .await
                            .expect("verify")
                            .status();
                        assert_eq!(status.as_u16(), 200, "verify");
                    }
                }));
            }
            for task in tasks {
                task.await.expect("task");
            }
            let flow_rate = FLOWS_PER_ROUND as f64 / started.elapsed().as_secs_f64();
            let after = common::redis_command_calls(&mut redis_conn).await;
            commands_per_flow = after
                .iter()
                .filter_map(|(name, calls)| {
                    let delta = calls - before.get(name).copied().unwrap_or(0) - u64::from(name == "info");
                    (delta > 0).then(|| (name.clone(), delta as f64 / FLOWS_PER_ROUND as f64))
                })
                .collect();
            println!("round {round}: /health {health_rate:>8.0} req/s   init+verify {flow_rate:>7.0} flows/s   ratio {:.3}", flow_rate / health_rate);
            health_rates.push(health_rate);
            flow_rates.push(flow_rate);
        }
        let (health, flows) = (median(health_rates), median(flow_rates));
        println!("median: /health {health:.0} req/s, init+verify {flows:.0} flows/s ({:.0} API requests/s), flows per /health request {:.3}", flows * 2.0, flows / health);
        println!("redis commands per flow (last round):");
        for (name, per_flow) in &commands_per_flow {
            let origin = if name.starts_with("eval") { "sent by the gateway" } else { "inside scripts, or reads" };
            println!("  {name:<10} {per_flow:>6.2}  ({origin})");
        }
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut redis_conn).await.unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: () = redis::cmd("DEL").arg(chunk).query_async(&mut redis_conn).await.unwrap_or(());
        }
    });
    let _ = child.kill();
    let _ = child.wait();
}
