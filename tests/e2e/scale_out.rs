//! Several gates, one state: three gate processes share one key prefix on the Redis Sentinel set
//! and on the Redis Cluster that `scripts/redis-topologies` starts (`STEPGATE_TEST_REDIS_SENTINEL`
//! and `STEPGATE_TEST_REDIS_CLUSTER` point elsewhere). Every flow starts on one gate and finishes
//! on another: an SMS code verified on a second gate and spent for a third, a held proxy request
//! released by a code given to another gate's proxy (it reaches the app once), a push approved
//! through another gate's device API, an OTP scanned through another gate. Every gate runs a
//! callback worker on the shared queue, and each callback still arrives exactly once.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::device_cli::DeviceCli;
use crate::fakes::callback::FakePortal;
use crate::fakes::upstream::RecordingUpstream;
use crate::harness::{Gate, GateBuilder, client};
use crate::proxy::codes;

const CLIENT_ID: &str = "portal";
const CLIENT_SECRET: &str = "portal-secret-0123456789";
const API: &str = "/oauth/api/v4";
const GATES: usize = 3;

#[derive(Clone, Copy, Debug)]
enum Topology {
    Sentinel,
    Cluster,
}

fn node_list(var: &str, default: &str) -> String {
    let list = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    let list = list
        .split_once('@')
        .map_or(list.as_str(), |(_, nodes)| nodes);
    list.split(',')
        .map(|node| format!("\"{}\"", node.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `store:` section every gate of one run shares (one key prefix per run).
fn store_yaml(topology: Topology) -> String {
    let prefix = format!("stepgate-e2e-scale:{}:", uuid::Uuid::new_v4());
    let mode = match topology {
        Topology::Sentinel => {
            let spec = std::env::var("STEPGATE_TEST_REDIS_SENTINEL").unwrap_or_default();
            let master = spec
                .split_once('@')
                .map_or("stepgate-test", |(name, _)| name);
            format!(
                "mode: sentinel, sentinel: {{ master_name: {master}, nodes: [{}] }}",
                node_list(
                    "STEPGATE_TEST_REDIS_SENTINEL",
                    "127.0.0.1:26390,127.0.0.1:26391,127.0.0.1:26392"
                )
            )
        }
        Topology::Cluster => format!(
            "mode: cluster, cluster: {{ nodes: [{}] }}",
            node_list(
                "STEPGATE_TEST_REDIS_CLUSTER",
                "127.0.0.1:7100,127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103,127.0.0.1:7104,127.0.0.1:7105"
            )
        ),
    };
    format!(
        "store:\n  backend: redis\n  redis: {{ {mode}, key_prefix: \"{prefix}\", connect_timeout_ms: 1000, response_timeout_ms: 1000 }}\n"
    )
}

struct World {
    gates: Vec<Gate>,
    portal: FakePortal,
    upstream: RecordingUpstream,
}

fn world(topology: Topology) -> World {
    let portal = FakePortal::start();
    let upstream = RecordingUpstream::start();
    let yaml = format!(
        "api_clients:
  - {{ client_id: {CLIENT_ID}, client_secret: \"{CLIENT_SECRET}\", apis: [mobile_authentication, end_user] }}
auth_types:
  - {{ name: sms_code, method: sms, ttl_seconds: 120, max_attempts: 3, max_resends: 1, default_messages: {{ en: \"Code: {{code}}\" }} }}
  - {{ name: confirm_push, method: push, ttl_seconds: 120, default_messages: {{ en: \"Approve the payment\" }} }}
  - {{ name: qr_login, method: otp, ttl_seconds: 120, max_attempts: 3, default_messages: {{ en: \"Sign in\" }} }}
sms: {{ gateway: file, file: {{ path: outbox.jsonl }} }}
push_configs:
  - {{ id: console-push, platform: android, provider: console }}
applications:
  - id: bank-app
    name: Bank app
    versions:
      - {{ version: \"1.0\", platform: android, push_config: console-push }}
callbacks:
  only_allow_configured: true
  endpoints:
    - {{ url: \"{callback}\", username: portal-cb, password: \"cb-secret-0123\" }}
policies:
  - name: transfers
    match: {{ methods: [POST], paths: [\"/transfer\"] }}
    require: {{ auth_type: sms_code, freshness_seconds: 0 }}
    message: \"Approve transfer of {{form.amount}} EUR\"
  - name: held-transfers
    match: {{ methods: [POST], paths: [\"/held-transfer\"] }}
    require: {{ auth_type: sms_code, freshness_seconds: 0 }}
    mode: hold
proxy:
  upstream: {{ address: \"{upstream}\" }}
  trusted_proxies: [\"127.0.0.1/32\"]
  identity: {{ header: X-User-Id, phone_header: X-User-Phone }}
{store}",
        callback = portal.url("/cb"),
        upstream = upstream.address(),
        store = store_yaml(topology),
    );
    let gates = (0..GATES)
        .map(|_| {
            let gate = GateBuilder::store_yaml("").yaml(&yaml).start();
            gate.wait_for_proxy();
            gate
        })
        .collect();
    World {
        gates,
        portal,
        upstream,
    }
}

impl World {
    async fn post(&self, gate: usize, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let response = client()
            .post(self.gates[gate].url(&format!("{API}{path}")))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(form)
            .send()
            .await
            .expect("api request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn result(&self, gate: usize, tx: &str) -> Value {
        let response = client()
            .get(self.gates[gate].url(&format!("{API}/authenticate/transaction/{tx}")))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .send()
            .await
            .expect("result request");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("result JSON")
    }

    async fn init(&self, gate: usize, form: &[(&str, &str)]) -> String {
        let callback = self.portal.url("/cb");
        let mut form = form.to_vec();
        form.push(("callback_uri", &callback));
        let (status, init) = self.post(gate, "/authenticate/user", &form).await;
        assert_eq!(status, 200, "init: {init}\n{}", self.gates[gate].log_text());
        init["transaction_id"].as_str().unwrap().to_owned()
    }

    /// A phone enrolled for `user` with a code from `code_gate`, talking to `api_gate`.
    async fn phone(&self, user: &str, code_gate: usize, api_gate: usize) -> (DeviceCli, String) {
        let (status, code) = self
            .post(code_gate, &format!("/users/{user}/enrollment-codes"), &[])
            .await;
        assert_eq!(status, 201, "enrollment code: {code}");
        let phone = DeviceCli::new(&self.gates[api_gate].url(""));
        let device = phone.enroll(code["code"].as_str().unwrap(), "bank-app", &[]);
        let (exit, out, err) = phone.run(&[
            "register-push",
            "--version",
            "1.0",
            "--token",
            &format!("token-{user}"),
        ]);
        assert_eq!(exit, 0, "register-push: {out} {err}");
        (phone, device)
    }
}

async fn flows_start_on_one_gate_and_finish_on_another(topology: Topology) {
    let w = world(topology);
    // The transactions that call the portal back (push and OTP; SMS answers at verify).
    let mut started = Vec::new();

    // SMS: started on gate 0 (its outbox has the code), verified on gate 1, read on gate 2.
    let sms = w
        .init(
            0,
            &[
                ("type", "sms_code"),
                ("user_id", "ann"),
                ("phone_number", "+31612345678"),
            ],
        )
        .await;
    let code = codes(&w.gates[0]).pop().expect("the SMS on gate 0");
    let (status, body) = w
        .post(
            1,
            "/authenticate/user/ann/sms",
            &[("transaction_id", &sms), ("sms_code", &code)],
        )
        .await;
    assert_eq!(status, 200, "verify on gate 1: {body}");
    // Gate 2 sees it done: the same code again is refused there.
    let (status, body) = w
        .post(
            2,
            "/authenticate/user/ann/sms",
            &[("transaction_id", &sms), ("sms_code", &code)],
        )
        .await;
    assert_ne!(status, 200, "a second verify on gate 2: {body}");

    // A held proxy request: challenged by gate 0's proxy, released by gate 1's, once.
    let response = client()
        .post(w.gates[0].proxy_url("/transfer"))
        .header("x-user-id", "bob")
        .header("x-user-phone", "+31687654321")
        .header("accept", "application/json")
        .form(&[("amount", "10")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge: Value = response.json().await.unwrap();
    let code = codes(&w.gates[0]).pop().expect("the proxy's SMS on gate 0");
    let released = client()
        .post(w.gates[1].proxy_url(challenge["verify_uri"].as_str().unwrap()))
        .header("x-user-id", "bob")
        .header("x-user-phone", "+31687654321")
        .header(
            "stepgate-binding",
            challenge["binding_token"].as_str().unwrap(),
        )
        .form(&[("sms_code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        released.status(),
        StatusCode::OK,
        "{}",
        w.gates[1].log_text()
    );
    assert_eq!(w.upstream.seen_on("/transfer").len(), 1);

    // Hold mode: the request waits on gate 0; the code goes to gate 1. Gate 0 learns of the
    // approval from gate 1's signal (its own safety read comes only every 5 s).
    let waiting = {
        let url = w.gates[0].proxy_url("/held-transfer");
        tokio::spawn(async move {
            let response = client()
                .post(url)
                .header("x-user-id", "dan")
                .header("x-user-phone", "+31611111111")
                .header("accept", "application/json")
                .form(&[("amount", "20")])
                .send()
                .await
                .unwrap();
            (response.status(), std::time::Instant::now())
        })
    };
    let pending: Value = {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let response = client()
                .get(w.gates[1].proxy_url("/.stepgate/pending"))
                .header("x-user-id", "dan")
                .header("x-user-phone", "+31611111111")
                .header("accept", "application/json")
                .send()
                .await
                .unwrap();
            if response.status() == StatusCode::OK {
                break response.json().await.unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no pending request on gate 1"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let code = codes(&w.gates[0])
        .pop()
        .expect("the hold-mode SMS on gate 0");
    let verified = client()
        .post(w.gates[1].proxy_url(pending["verify_uri"].as_str().unwrap()))
        .header("x-user-id", "dan")
        .header("x-user-phone", "+31611111111")
        .header("accept", "application/json")
        .json(&serde_json::json!({ "sms_code": code }))
        .send()
        .await
        .unwrap();
    let approved_at = std::time::Instant::now();
    assert_eq!(
        verified.status(),
        StatusCode::OK,
        "{}",
        w.gates[1].log_text()
    );
    let (status, answered_at) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{}", w.gates[0].log_text());
    let woken_after = answered_at.saturating_duration_since(approved_at);
    assert!(
        woken_after < Duration::from_secs(2),
        "gate 0 answered {woken_after:?} after gate 1's approval"
    );
    assert_eq!(w.upstream.seen_on("/held-transfer").len(), 1);

    // Push: the phone enrolled with gate 1's code through gate 2; the push starts on gate 0
    // and is approved through gate 2.
    let (phone, device) = w.phone("cas", 1, 2).await;
    let push = w
        .init(
            0,
            &[
                ("type", "confirm_push"),
                ("user_id", "cas"),
                ("device_id", &device),
            ],
        )
        .await;
    let (exit, answer, err) = phone.run(&["approve", &push]);
    assert_eq!(exit, 0, "approve through gate 2: {err}");
    assert_eq!(answer["status"], "approved");
    assert_eq!(w.result(1, &push).await["is_authenticated"], true);
    started.push(push);

    // OTP: the login starts on gate 1; the phone (talking to gate 2) scans it; gate 0 answers
    // the portal.
    let (status, init) = w
        .post(
            1,
            "/authenticate/user",
            &[("type", "qr_login"), ("callback_uri", &w.portal.url("/cb"))],
        )
        .await;
    assert_eq!(status, 200, "otp init: {init}");
    let otp = init["transaction_id"].as_str().unwrap().to_owned();
    let (exit, answer, err) = phone.run(&["otp", init["otp"].as_str().unwrap()]);
    assert_eq!(exit, 0, "otp through gate 2: {err}");
    assert_eq!(answer["status"], "approved");
    let result = w.result(0, &otp).await;
    assert_eq!(result["is_authenticated"], true, "{result}");
    assert_eq!(result["user_id"], "cas");
    started.push(otp);

    // Callbacks: three workers share the queue; each transaction is called back once.
    let calls = w
        .portal
        .wait_for(started.len(), Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let calls = if w.portal.received().len() > calls.len() {
        w.portal.received()
    } else {
        calls
    };
    let mut called: Vec<String> = calls
        .iter()
        .map(|call| call.json["transaction_id"].as_str().unwrap().to_owned())
        .collect();
    called.sort();
    started.sort();
    assert_eq!(called, started, "one callback per transaction");
}

#[tokio::test]
async fn on_sentinel_flows_start_on_one_gate_and_finish_on_another() {
    flows_start_on_one_gate_and_finish_on_another(Topology::Sentinel).await;
}

#[tokio::test]
async fn on_cluster_flows_start_on_one_gate_and_finish_on_another() {
    flows_start_on_one_gate_and_finish_on_another(Topology::Cluster).await;
}
