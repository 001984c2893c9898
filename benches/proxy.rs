//! Proxy benchmark: what putting stepgate in front of an app costs, measured in one run as ratios
//! against plain pingora and the app alone. Every round measures six paths, one after the other
//! (the order rotates each round), with the same closed-loop load: 32 concurrent clients on 32
//! keep-alive HTTP/1.1 connections, each sending its next request when the last answer is read;
//! every answer is a 1 KiB body.
//!
//! - (a) `GET /` straight to the upstream: an axum server in this process, on its own thread and
//!   runtime;
//! - (p) `GET /` through a plain pingora proxy with no filters (this bench binary, re-executed),
//!   the floor any pingora gateway pays for the extra hop;
//! - (x) `GET /` through plain pingora setting `X-Forwarded-For` and `-Proto` with pingora's own
//!   header calls: what any proxy in front of an app adds, and stepgate must;
//! - (b) `GET /` through the release `stepgate` binary (memory store): no policy matches;
//! - (c) `POST /transfer` through stepgate with a valid grant in `Stepgate-Grant`, obtained once
//!   before measuring by a real SMS step-up (challenge, code from the `file` gateway's outbox,
//!   verify);
//! - (q) `GET /` through plain pingora running stepgate's per-request pass-through work (request
//!   facts, policy decision, upstream header rewrite, metrics) through the same library
//!   functions: q/x prices that work, b/q the rest of the stepgate process.
//!
//! Prints req/s, p50, p99 and the proxy's CPU time per request (all its threads, from
//! `/proc/<pid>/task/*/schedstat`) per path per round, then medians over the rounds and the
//! medians of the per-round ratios. Every answer must be the upstream's 200 with its body;
//! anything else fails the bench.
//!
//! Timings on a shared 2-core machine move by 15% between identical processes, so a second phase
//! counts instructions: each proxy again, under valgrind's callgrind, with counters zeroed after
//! a warm-up and dumped after `COUNTED_REQUESTS` requests. Identical processes agree to 0.1%.
//! Skipped (with a note) where valgrind is not installed, or with `STEPGATE_BENCH_SKIP_CALLGRIND`.
//!
//! Run: `cargo bench --bench proxy` (no Redis needed). Load generator, upstream and proxy share
//! the machine's cores, so read the ratios rather than the absolute numbers.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::routing::{get, post};
use common::{KillOnDrop, free_port, median, process_cpu};
use pingora::http::RequestHeader;
use pingora::proxy::{ProxyHttp, Session, http_proxy_service};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};
use stepgate::domain::canonical::RouterModel;
use stepgate::domain::policy::{Decision, PolicySet};
use stepgate::proxy::facts::{self, RequestView};
use stepgate::telemetry::metrics;

// The `stepgate` binary's allocator, so the plain pingora baseline differs from it only in
// stepgate's own work.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 7;
const REQUESTS_PER_ROUND: usize = 20_000;
const WARMUP_REQUESTS: usize = 3_000;
const CONNECTIONS: usize = 32;
/// What the upstream answers on every route.
const BODY: &[u8] = &[b'.'; 1024];
const USER: &str = "bench";
const PHONE: &str = "+31612345678";
/// Set (to `listen,upstream`) in the re-executed bench binary that plays the plain pingora proxy.
const PLAIN_PINGORA_ENV: &str = "STEPGATE_BENCH_PLAIN_PINGORA";
/// How long the proxies may take to answer their first request.
const STARTUP: Duration = Duration::from_secs(60);

/// One measured path: a fixed request and the client (with its own connection pool) sending it.
struct Target {
    key: &'static str,
    label: &'static str,
    method: Method,
    url: String,
    headers: HeaderMap,
    client: reqwest::Client,
    /// The proxy process on this path, whose CPU time per request is measured.
    proxy: Option<u32>,
}

impl Target {
    fn new(
        key: &'static str,
        label: &'static str,
        method: Method,
        url: String,
        headers: HeaderMap,
        proxy: Option<u32>,
    ) -> Arc<Self> {
        Arc::new(Self {
            key,
            label,
            method,
            url,
            headers,
            client: client(),
            proxy,
        })
    }

    /// One request; `Err` names what was wrong with the answer.
    async fn send(&self) -> Result<(), String> {
        let response = self
            .client
            .request(self.method.clone(), &self.url)
            .headers(self.headers.clone())
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("body failed: {e}"))?;
        if status != reqwest::StatusCode::OK {
            return Err(format!("status {status}"));
        }
        if body.as_ref() != BODY {
            return Err(format!(
                "200 with a {}-byte body that is not the upstream's",
                body.len()
            ));
        }
        Ok(())
    }
}

/// One path's numbers in one round.
#[derive(Clone, Copy)]
struct Sample {
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// The proxy's CPU time per request, µs (all its threads).
    cpu: Option<f64>,
}

/// Sends `requests` requests over `CONNECTIONS` concurrent clients. Panics, naming the answers,
/// if any request did not get the upstream's 200 and body.
async fn measure(target: &Arc<Target>, requests: usize) -> Sample {
    let cpu_before = target.proxy.and_then(process_cpu);
    let started = Instant::now();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|worker| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(requests / CONNECTIONS + 1);
                let mut failures = BTreeMap::<String, usize>::new();
                for _ in (worker..requests).step_by(CONNECTIONS) {
                    let sent = Instant::now();
                    match target.send().await {
                        Ok(()) => latencies.push(sent.elapsed()),
                        Err(what) => *failures.entry(what).or_default() += 1,
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(requests);
    let mut failures = BTreeMap::<String, usize>::new();
    for worker in workers {
        let (worker_latencies, worker_failures) = worker.await.expect("load worker");
        latencies.extend(worker_latencies);
        for (what, count) in worker_failures {
            *failures.entry(what).or_default() += count;
        }
    }
    let elapsed = started.elapsed();
    let cpu_after = target.proxy.and_then(process_cpu);
    if !failures.is_empty() {
        panic!(
            "({}) {}: {} of {requests} requests did not get the upstream's 200 and body: {failures:#?}",
            target.key,
            target.label,
            failures.values().sum::<usize>()
        );
    }
    latencies.sort_unstable();
    Sample {
        rate: requests as f64 / elapsed.as_secs_f64(),
        p50: latencies[latencies.len() / 2],
        p99: latencies[latencies.len() * 99 / 100],
        cpu: cpu_before
            .zip(cpu_after)
            .map(|(before, after)| micros(after.saturating_sub(before)) / requests as f64),
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .expect("client")
}

fn user_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-user-id", HeaderValue::from_static(USER));
    headers.insert("x-user-phone", HeaderValue::from_static(PHONE));
    headers
}

/// The app behind the proxies: `GET /` and `POST /transfer` answer `BODY`. Runs on its own
/// thread with a single-threaded runtime for the life of the process.
fn start_upstream() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("upstream bind");
    listener
        .set_nonblocking(true)
        .expect("upstream non-blocking");
    let address = listener.local_addr().expect("upstream address");
    std::thread::Builder::new()
        .name("upstream".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("upstream runtime");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("upstream listener");
                let app = axum::Router::new()
                    .route("/", get(answer))
                    .route("/transfer", post(answer));
                axum::serve(listener, app).await.expect("upstream serve");
            });
        })
        .expect("upstream thread");
    address
}

async fn answer() -> &'static [u8] {
    BODY
}

/// A gateway with one policy, on `/transfer`, demanding an SMS code; identity from headers.
fn stepgate_config(
    outbox: &Path,
    upstream: SocketAddr,
    proxy: u16,
    api: u16,
    metrics: u16,
) -> String {
    format!(
        "listen: {{ proxy: \"127.0.0.1:{proxy}\", api: \"127.0.0.1:{api}\", metrics: \"127.0.0.1:{metrics}\" }}
secret_key: \"bench-secret-0123456789abcdef0123456789\"
server: {{ threads: 1 }}
log: {{ level: warn }}
store: {{ backend: memory }}
sms: {{ gateway: file, file: {{ path: \"{outbox}\" }} }}
auth_types:
  - {{ name: sms_code, method: sms, ttl_seconds: 300, max_attempts: 3, default_messages: {{ en: \"Code: {{code}}\" }} }}
policies:
  - {{ name: transfers, match: {{ paths: [\"/transfer\"] }}, require: {{ auth_type: sms_code, freshness_seconds: 3600 }} }}
proxy:
  upstream: {{ address: \"{upstream}\" }}
  identity: {{ header: X-User-Id, phone_header: X-User-Phone, allow_untrusted_headers: true }}
",
        outbox = outbox.display()
    )
}

/// Waits until `url` answers with the upstream's body through `process`; panics if the process
/// exits or `STARTUP` passes first.
async fn wait_until_proxying(url: &str, process: &mut KillOnDrop, what: &str) {
    let client = client();
    let deadline = Instant::now() + STARTUP;
    loop {
        let last = match client.get(url).send().await {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(body) if status == reqwest::StatusCode::OK && body.as_ref() == BODY => {
                        return;
                    }
                    Ok(body) => format!("status {status}, {}-byte body", body.len()),
                    Err(e) => format!("status {status}, body failed: {e}"),
                }
            }
            Err(e) => e.to_string(),
        };
        if let Ok(Some(status)) = process.0.try_wait() {
            panic!("{what} exited ({status}) before proxying {url}; last: {last}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not proxy {url} within {STARTUP:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The newest 6-digit code sent to `phone` by the `file` gateway.
fn code_in_outbox(outbox: &Path, phone: &str) -> Option<String> {
    let text = std::fs::read_to_string(outbox).ok()?;
    text.lines().rev().find_map(|line| {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        if value["to"].as_str()? != phone {
            return None;
        }
        value["body"]
            .as_str()?
            .split(|c: char| !c.is_ascii_digit())
            .find(|part| part.len() == 6)
            .map(str::to_owned)
    })
}

/// Does one SMS step-up on `/transfer` as an API client and returns the grant token.
async fn obtain_grant(proxy: &str, outbox: &Path) -> String {
    let client = client();
    let response = client
        .post(format!("{proxy}/transfer"))
        .headers(user_headers())
        .header("accept", "application/json")
        .send()
        .await
        .expect("challenge request");
    let status = response.status();
    let text = response.text().await.expect("challenge body");
    assert_eq!(
        status.as_u16(),
        401,
        "POST /transfer without a grant: {text}"
    );
    let challenge: serde_json::Value = serde_json::from_str(&text).expect("challenge JSON");
    let verify_uri = challenge["verify_uri"]
        .as_str()
        .expect("verify_uri in the challenge");
    let binding = challenge["binding_token"]
        .as_str()
        .expect("binding_token in the challenge");

    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(code) = code_in_outbox(outbox, PHONE) {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "no SMS code in {}",
            outbox.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let response = client
        .post(format!("{proxy}{verify_uri}"))
        .headers(user_headers())
        .header("stepgate-binding", binding)
        .form(&[("sms_code", code.as_str())])
        .send()
        .await
        .expect("verify request");
    let status = response.status();
    let grant = response
        .headers()
        .get("stepgate-grant")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = response.bytes().await.expect("verify body");
    assert_eq!(
        status.as_u16(),
        200,
        "verify: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        body.as_ref(),
        BODY,
        "verify forwards the held POST /transfer to the upstream"
    );
    grant.expect("a Stepgate-Grant header on the verify answer")
}

/// The plain pingora baseline: forwards everything to the upstream, no filters (path p).
/// `Forwarded` (path x) also sets `X-Forwarded-For` and `-Proto` the way any pingora proxy
/// in front of an app would, with pingora's own header calls. `Hooks` (path q) runs stepgate's
/// per-request work on a pass-through request instead, through the same library functions:
/// request facts, an (empty) policy decision, the upstream header rewrite (which sets those
/// headers too) and the two metrics. q against x prices stepgate's own work; b against q the
/// rest of the stepgate process.
struct PlainProxy {
    peer: HttpPeer,
    mode: PlainMode,
    policies: PolicySet,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PlainMode {
    Plain,
    Forwarded,
    Hooks,
}

#[async_trait]
impl ProxyHttp for PlainProxy {
    type CTX = Option<(Instant, Option<std::net::IpAddr>)>;

    fn new_ctx(&self) -> Self::CTX {
        None
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<bool> {
        if self.mode != PlainMode::Hooks {
            return Ok(false);
        }
        let arrived = Instant::now();
        let peer = session
            .client_addr()
            .and_then(|addr| addr.as_inet())
            .map(|addr| addr.ip());
        let req = session.req_header();
        let _scheme = facts::scheme(peer, req, &[], false);
        let client_ip = facts::client_ip(peer, req, &[]);
        let model = RouterModel::default();
        let view = RequestView::read(req, client_ip, &model, &self.policies)
            .map_err(|_| pingora::Error::new(pingora::ErrorType::InvalidHTTPHeader))?;
        assert!(matches!(
            view.decide(&self.policies).decision,
            Decision::Allow
        ));
        *ctx = Some((arrived, peer));
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        if self.mode == PlainMode::Forwarded {
            if let Some(peer) = session.client_addr().and_then(|addr| addr.as_inet()) {
                upstream_request.insert_header("X-Forwarded-For", peer.ip().to_string())?;
            }
            upstream_request.insert_header("X-Forwarded-Proto", "http")?;
        }
        if let Some((arrived, peer)) = ctx {
            facts::prepare_upstream(upstream_request, *peer, "http", &[])?;
            metrics::proxy_added_latency("allow", arrived.elapsed());
        }
        Ok(())
    }

    async fn logging(
        &self,
        _session: &mut Session,
        _error: Option<&pingora::Error>,
        ctx: &mut Self::CTX,
    ) {
        if ctx.is_some() {
            metrics::proxy_request("none", "allow");
        }
    }
}

/// The `PLAIN_PINGORA_ENV` value for a plain pingora proxy on `port`; `mode` is empty, `hooks`
/// or `forwarded` (see `PlainMode`).
fn plain_spec(port: u16, upstream: SocketAddr, mode: &str) -> String {
    format!("127.0.0.1:{port},{upstream},{mode}")
}

/// The bench binary re-executed as a plain pingora proxy.
fn start_plain_pingora(port: u16, upstream: SocketAddr, mode: &str) -> KillOnDrop {
    KillOnDrop(
        Command::new(std::env::current_exe().expect("bench binary"))
            .env(PLAIN_PINGORA_ENV, plain_spec(port, upstream, mode))
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start plain pingora ({mode:?}): {e}")),
    )
}

/// Runs the plain pingora proxy (`spec` is `listen,upstream[,mode]`) with the same server settings and
/// peer options as stepgate's proxy; never returns.
fn run_plain_pingora(spec: &str) -> ! {
    let mut parts = spec.split(',');
    let listen = parts.next().expect("listen");
    let upstream: SocketAddr = parts
        .next()
        .expect("upstream")
        .parse()
        .expect("upstream address");
    let mode = match parts.next() {
        Some("hooks") => PlainMode::Hooks,
        Some("forwarded") => PlainMode::Forwarded,
        _ => PlainMode::Plain,
    };
    let mut peer = HttpPeer::new(upstream, false, String::new());
    peer.options.connection_timeout = Some(Duration::from_secs(5));
    peer.options.read_timeout = Some(Duration::from_secs(60));
    let conf = ServerConf {
        threads: 1,
        upgrade_sock: format!("/tmp/stepgate-bench-upgrade-{}.sock", std::process::id()),
        pid_file: format!("/tmp/stepgate-bench-{}.pid", std::process::id()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let proxy = PlainProxy {
        peer,
        mode,
        policies: PolicySet::default(),
    };
    let mut service = http_proxy_service(&server.configuration, proxy);
    service.add_tcp(listen);
    server.add_service(service);
    server.run_forever()
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn main() {
    if let Ok(spec) = std::env::var(PLAIN_PINGORA_ENV) {
        run_plain_pingora(&spec);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = dir.path().join("outbox.jsonl");
    let upstream = start_upstream();
    let (proxy, api, metrics, plain) = (free_port(), free_port(), free_port(), free_port());
    let (hooked, forwarding) = (free_port(), free_port());
    let config_path = dir.path().join("config.yaml");
    std::fs::write(
        &config_path,
        stepgate_config(&outbox, upstream, proxy, api, metrics),
    )
    .expect("write config");
    let mut stepgate = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_stepgate"))
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .spawn()
            .expect("start stepgate"),
    );
    let mut plain_pingora = start_plain_pingora(plain, upstream, "");
    let mut hooked_pingora = start_plain_pingora(hooked, upstream, "hooks");
    let mut forwarding_pingora = start_plain_pingora(forwarding, upstream, "forwarded");

    // The load generator gets one thread: with the upstream's thread and one proxy worker that
    // is all two cores can hold.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let direct = format!("http://{upstream}");
        let stepgate_base = format!("http://127.0.0.1:{proxy}");
        let plain_base = format!("http://127.0.0.1:{plain}");
        let hooked_base = format!("http://127.0.0.1:{hooked}");
        let forwarding_base = format!("http://127.0.0.1:{forwarding}");
        wait_until_proxying(&format!("{stepgate_base}/"), &mut stepgate, "stepgate").await;
        wait_until_proxying(&format!("{plain_base}/"), &mut plain_pingora, "plain pingora").await;
        wait_until_proxying(&format!("{hooked_base}/"), &mut hooked_pingora, "plain pingora with hooks").await;
        wait_until_proxying(&format!("{forwarding_base}/"), &mut forwarding_pingora, "plain pingora setting X-Forwarded-*").await;
        let grant = obtain_grant(&stepgate_base, &outbox).await;

        let mut granted = user_headers();
        granted.insert("stepgate-grant", HeaderValue::from_str(&grant).expect("grant is a header value"));
        let (stepgate_pid, plain_pid, hooked_pid, forwarding_pid) =
            (stepgate.0.id(), plain_pingora.0.id(), hooked_pingora.0.id(), forwarding_pingora.0.id());
        let targets = [
            Target::new("a", "direct GET /", Method::GET, format!("{direct}/"), user_headers(), None),
            Target::new("p", "plain pingora GET /", Method::GET, format!("{plain_base}/"), user_headers(), Some(plain_pid)),
            Target::new("b", "stepgate GET / (no policy)", Method::GET, format!("{stepgate_base}/"), user_headers(), Some(stepgate_pid)),
            Target::new("c", "stepgate POST /transfer + grant", Method::POST, format!("{stepgate_base}/transfer"), granted.clone(), Some(stepgate_pid)),
            Target::new("q", "plain pingora + stepgate's hooks GET /", Method::GET, format!("{hooked_base}/"), user_headers(), Some(hooked_pid)),
            Target::new("x", "plain pingora + X-Forwarded-* GET /", Method::GET, format!("{forwarding_base}/"), user_headers(), Some(forwarding_pid)),
        ];
        let (a, p, b, c, q, x) = (0, 1, 2, 3, 4, 5);
        if std::env::var_os(ONLY_CALLGRIND_ENV).is_none() {
        println!(
            "proxy benchmark: {ROUNDS} rounds x {REQUESTS_PER_ROUND} requests per path, {CONNECTIONS} keep-alive \
             connections, {} B answers; release stepgate (memory store, 1 worker thread)",
            BODY.len()
        );
        for target in &targets {
            measure(target, WARMUP_REQUESTS).await;
        }

        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); targets.len()];
        for round in 0..ROUNDS {
            let mut this_round = vec![None; targets.len()];
            for offset in 0..targets.len() {
                let index = (round + offset) % targets.len();
                this_round[index] = Some(measure(&targets[index], REQUESTS_PER_ROUND).await);
            }
            println!("round {}", round + 1);
            for (index, sample) in this_round.into_iter().enumerate() {
                let sample = sample.expect("every path measured");
                let target = &targets[index];
                println!(
                    "  ({}) {:<40} {:>8.0} req/s   p50 {:>6.0} µs   p99 {:>6.0} µs   proxy CPU {}",
                    target.key,
                    target.label,
                    sample.rate,
                    micros(sample.p50),
                    micros(sample.p99),
                    sample.cpu.map_or("-".to_owned(), |cpu| format!("{cpu:.1} µs/request"))
                );
                samples[index].push(sample);
            }
            let rate = |index: usize| samples[index][round].rate;
            let cpu = |index: usize| samples[index][round].cpu.unwrap_or(f64::NAN);
            println!(
                "  req/s: b/a {:.3}  b/p {:.3}  b/x {:.3}  c/p {:.3}   CPU per request: b/p {:.3}  b/x {:.3}  c/p {:.3}  q/x {:.3}",
                rate(b) / rate(a),
                rate(b) / rate(p),
                rate(b) / rate(x),
                rate(c) / rate(p),
                cpu(b) / cpu(p),
                cpu(b) / cpu(x),
                cpu(c) / cpu(p),
                cpu(q) / cpu(x)
            );
        }

        // Ratios and differences are taken within each round (the paths ran seconds apart),
        // then their median over the rounds.
        let per_round = |index: usize, base: usize, f: &dyn Fn(&Sample, &Sample) -> f64| {
            median(samples[index].iter().zip(&samples[base]).map(|(s, b)| f(s, b)).collect())
        };
        let rate_ratio = |s: &Sample, b: &Sample| s.rate / b.rate;
        let cpu_ratio = |s: &Sample, b: &Sample| s.cpu.zip(b.cpu).map_or(f64::NAN, |(s, b)| s / b);
        let cpu_delta = |s: &Sample, b: &Sample| s.cpu.zip(b.cpu).map_or(f64::NAN, |(s, b)| s - b);
        let p50_delta = |s: &Sample, b: &Sample| micros(s.p50) - micros(b.p50);

        println!();
        println!("medians over {ROUNDS} rounds (ratios and differences: medians of the per-round values)");
        println!("| path | req/s | p50 | p99 | proxy CPU per request | req/s vs (a) | req/s vs (p) | CPU per request vs (p) |");
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        for (index, target) in targets.iter().enumerate() {
            let rates = samples[index].iter().map(|s| s.rate).collect();
            let p50s = samples[index].iter().map(|s| micros(s.p50)).collect();
            let p99s = samples[index].iter().map(|s| micros(s.p99)).collect();
            let cpus: Vec<f64> = samples[index].iter().filter_map(|s| s.cpu).collect();
            let (cpu, vs_plain) = if cpus.is_empty() || index == a {
                ("—".to_owned(), "—".to_owned())
            } else {
                (
                    format!("{:.1} µs", median(cpus)),
                    format!("{:.3}x", per_round(index, p, &cpu_ratio)),
                )
            };
            let rate_vs_plain = if index == a {
                "—".to_owned()
            } else {
                format!("{:.3}x", per_round(index, p, &rate_ratio))
            };
            println!(
                "| ({}) {} | {:.0} | {:.0} µs | {:.0} µs | {cpu} | {:.3}x | {rate_vs_plain} | {vs_plain} |",
                target.key,
                target.label,
                median(rates),
                median(p50s),
                median(p99s),
                per_round(index, a, &rate_ratio),
            );
        }
        println!();
        println!(
            "stepgate vs plain pingora, CPU per request: b/p {:.3} ({:+.1} µs)   b/x {:.3} ({:+.1} µs)   c/p {:.3} ({:+.1} µs)",
            per_round(b, p, &cpu_ratio),
            per_round(b, p, &cpu_delta),
            per_round(b, x, &cpu_ratio),
            per_round(b, x, &cpu_delta),
            per_round(c, p, &cpu_ratio),
            per_round(c, p, &cpu_delta)
        );
        println!(
            "stepgate vs plain pingora, throughput: b/p {:.3}   b/x {:.3}   c/p {:.3}   (p50 {:+.0} / {:+.0} µs)",
            per_round(b, p, &rate_ratio),
            per_round(b, x, &rate_ratio),
            per_round(c, p, &rate_ratio),
            per_round(b, p, &p50_delta),
            per_round(c, p, &p50_delta)
        );
        println!(
            "CPU per request: X-Forwarded-* x/p {:.3}; stepgate's own work q/x {:.3}; the rest of the stepgate process b/q {:.3}",
            per_round(x, p, &cpu_ratio),
            per_round(q, x, &cpu_ratio),
            per_round(b, q, &cpu_ratio)
        );
        }

        if std::env::var_os(SKIP_CALLGRIND_ENV).is_some() {
            return;
        }
        if !callgrind_usable() {
            println!("\ninstruction counts skipped: valgrind's callgrind is not installed (apt-get install valgrind)");
            return;
        }
        // The same paths again, each proxy now under callgrind (fresh ports; the grant stays
        // valid, since the second stepgate has the same secret and policy).
        let counted_config = dir.path().join("counted.yaml");
        let counted_port = free_port();
        std::fs::write(
            &counted_config,
            stepgate_config(&outbox, upstream, counted_port, free_port(), free_port()),
        )
        .expect("write config");
        let bench_exe = std::env::current_exe().expect("bench binary");
        let plain = |key, label, mode| {
            let port = free_port();
            let target = Target::new(key, label, Method::GET, format!("http://127.0.0.1:{port}/"), user_headers(), None);
            Counted { program: bench_exe.clone(), args: Vec::new(), plain_spec: Some(plain_spec(port, upstream, mode)), target }
        };
        let stepgate_args = vec!["run".to_owned(), "--config".to_owned(), counted_config.display().to_string()];
        let stepgate = |key, label, method, path, headers| Counted {
            program: env!("CARGO_BIN_EXE_stepgate").into(),
            args: stepgate_args.clone(),
            plain_spec: None,
            target: Target::new(key, label, method, format!("http://127.0.0.1:{counted_port}{path}"), headers, None),
        };
        let counted = [
            plain("p", "plain pingora GET /", ""),
            plain("x", "plain pingora + X-Forwarded-* GET /", "forwarded"),
            plain("q", "plain pingora + stepgate's hooks GET /", "hooks"),
            stepgate("b", "stepgate GET / (no policy)", Method::GET, "/", user_headers()),
            stepgate("c", "stepgate POST /transfer + grant", Method::POST, "/transfer", granted.clone()),
        ];
        println!();
        println!(
            "instructions per request, counted by callgrind over {COUNTED_REQUESTS} requests per path \
             (deterministic: identical processes agree to 0.1%, where timings above vary by 15%)"
        );
        let mut counts = Vec::new();
        for path in &counted {
            let dumps = std::env::var_os(CALLGRIND_DIR_ENV)
                .map_or_else(|| dir.path().to_path_buf(), std::path::PathBuf::from);
            counts.push(count_instructions(path, &dumps).await);
        }
        println!("| path | instructions per request | vs plain pingora (p) |");
        println!("| --- | --- | --- |");
        for (path, count) in counted.iter().zip(&counts) {
            println!("| ({}) {} | {count:.0} | {:.3}x |", path.target.key, path.target.label, count / counts[0]);
        }
        let (cp, cx, cq, cb, cc) = (counts[0], counts[1], counts[2], counts[3], counts[4]);
        println!(
            "instructions per request: b/p {:.3} ({:+.0})   b/x {:.3} ({:+.0})   c/p {:.3} ({:+.0})",
            cb / cp,
            cb - cp,
            cb / cx,
            cb - cx,
            cc / cp,
            cc - cp
        );
        println!(
            "of which X-Forwarded-* x/p {:.3} ({:+.0}); stepgate's own work q/x {:.3} ({:+.0}); the rest of the stepgate process b/q {:.3} ({:+.0})",
            cx / cp,
            cx - cp,
            cq / cx,
            cq - cx,
            cb / cq,
            cb - cq
        );
    });
}

/// Set to skip the callgrind phase (it takes about a minute per path).
const SKIP_CALLGRIND_ENV: &str = "STEPGATE_BENCH_SKIP_CALLGRIND";
/// Set to skip the timing phase (to iterate on instruction counts).
const ONLY_CALLGRIND_ENV: &str = "STEPGATE_BENCH_ONLY_CALLGRIND";
/// A folder to keep the callgrind dumps in (`callgrind.<path>.out.1`, for `callgrind_annotate`);
/// by default they go with the bench's temporary folder.
const CALLGRIND_DIR_ENV: &str = "STEPGATE_BENCH_CALLGRIND_DIR";
/// Requests counted per path under callgrind (after a warm-up).
const COUNTED_REQUESTS: usize = 2_000;

/// A path whose proxy runs under callgrind.
struct Counted {
    program: std::path::PathBuf,
    args: Vec<String>,
    /// For the plain pingora proxies: their `PLAIN_PINGORA_ENV`.
    plain_spec: Option<String>,
    target: Arc<Target>,
}

fn callgrind_usable() -> bool {
    ["valgrind", "callgrind_control"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    })
}

/// Starts the path's proxy under callgrind, warms it up, zeroes the counters, sends
/// `COUNTED_REQUESTS` requests, dumps, and returns the instructions per request.
async fn count_instructions(path: &Counted, dir: &Path) -> f64 {
    let out = dir.join(format!("callgrind.{}.out", path.target.key));
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&path.program)
        .args(&path.args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(spec) = &path.plain_spec {
        command.env(PLAIN_PINGORA_ENV, spec);
    }
    let mut process = KillOnDrop(command.spawn().expect("start valgrind"));
    // `GET /` passes on every path's proxy; the counted request itself may need a grant.
    let root = format!(
        "http://{}/",
        path.target.url.split('/').nth(2).unwrap_or_default()
    );
    wait_until_proxying(&root, &mut process, path.target.label).await;
    measure(&path.target, 200).await;
    let pid = process.0.id();
    callgrind_control(pid, "--zero", &path.target).await;
    measure(&path.target, COUNTED_REQUESTS).await;
    // Requests sent while the dump was pending are counted too.
    let pokes = callgrind_control(pid, "--dump", &path.target).await;
    drop(process);
    let dump = std::fs::read_to_string(dir.join(format!("callgrind.{}.out.1", path.target.key)))
        .expect("callgrind dump");
    let instructions: f64 = dump
        .lines()
        .find_map(|line| line.strip_prefix("summary: "))
        .and_then(|total| total.trim().parse().ok())
        .expect("a summary line in the callgrind dump");
    instructions / (COUNTED_REQUESTS + pokes) as f64
}

/// Runs `callgrind_control ACTION PID`. Callgrind takes the command when the process next runs,
/// so requests are sent until it has; returns how many.
async fn callgrind_control(pid: u32, action: &str, target: &Arc<Target>) -> usize {
    let mut control = KillOnDrop(
        Command::new("callgrind_control")
            .arg(action)
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start callgrind_control"),
    );
    let mut pokes = 0;
    loop {
        match control.0.try_wait() {
            Ok(Some(status)) => {
                assert!(
                    status.success(),
                    "callgrind_control {action} failed: {status}"
                );
                return pokes;
            }
            Ok(None) => {}
            Err(error) => panic!("callgrind_control {action}: {error}"),
        }
        target
            .send()
            .await
            .expect("a request during callgrind_control");
        pokes += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
