//! The admin API end to end, on memory and on Redis: a portal runs SMS transactions through the
//! mobile authentication API and a phone enrolls, then ops read them back on the admin
//! listener (lists, filters, one transaction, a user, a device, the audit events of the last
//! hour) without a secret in any answer, only with admin credentials, and reload the policies
//! (a broken file answers 422 and the proxy keeps the old rules).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use stepgate::domain::code::{CodeHasher, SecretKey};
use stepgate::domain::transaction::TransactionId;

use crate::device_cli::DeviceCli;
use crate::fakes::upstream::RecordingUpstream;
use crate::harness::{Gate, GateBuilder, SECRET, client, eventually, redis_url};

const PORTAL: (&str, &str) = ("portal", "portal-secret-0123456789");
const OPS: (&str, &str) = ("ops", "ops-secret-0123456789abc");
const OPS_ELSEWHERE: (&str, &str) = ("ops-elsewhere", "ops-elsewhere-secret-0123");
const END_USER: (&str, &str) = ("enduser", "enduser-secret-0123456789");
const ANN: (&str, &str) = ("ann", "+31612345678");
const BOB: (&str, &str) = ("bob", "+31687654321");
const MESSAGE: &str = "Transfer 4711 EUR to NL91ABNA0417164300, code {code}";

const ONE_RULE: &str =
    "policies:\n  - name: closed\n    match: { paths: [\"/closed/**\"] }\n    action: deny\n";
const TWO_RULES: &str = "policies:\n  - name: closed\n    match: { paths: [\"/closed/**\"] }\n    action: deny\n  - name: reports\n    match: { paths: [\"/reports\"] }\n    action: deny\n";
const BROKEN_RULES: &str = "policies:\n  - name: reports\n    match: { paths: [\"/reports\"] }\n    require: { auth_type: no_such_type }\n";

fn yaml(upstream: &RecordingUpstream) -> String {
    format!(
        "api_clients:
  - {{ client_id: {portal}, client_secret: \"{portal_secret}\", apis: [mobile_authentication, end_user] }}
  - {{ client_id: {ops}, client_secret: \"{ops_secret}\", apis: [admin] }}
  - {{ client_id: {elsewhere}, client_secret: \"{elsewhere_secret}\", apis: [admin], allowed_networks: [\"10.0.0.0/8\"] }}
  - {{ client_id: {end_user}, client_secret: \"{end_user_secret}\", apis: [end_user] }}
auth_types:
  - {{ name: sms_code, method: sms, ttl_seconds: 300, max_attempts: 3, max_resends: 1, default_messages: {{ en: \"Code: {{code}}\" }} }}
sms: {{ gateway: file, file: {{ path: outbox.jsonl }} }}
rate_limits:
  sms_per_user: {{ limit: 100, window_seconds: 60 }}
  sms_per_phone: {{ limit: 100, window_seconds: 60 }}
applications:
  - {{ id: bank-app, name: Bank app, pin: true }}
proxy:
  upstream: {{ address: \"{upstream}\" }}
  policy_files: [\"rules/*.yaml\"]
",
        portal = PORTAL.0,
        portal_secret = PORTAL.1,
        ops = OPS.0,
        ops_secret = OPS.1,
        elsewhere = OPS_ELSEWHERE.0,
        elsewhere_secret = OPS_ELSEWHERE.1,
        end_user = END_USER.0,
        end_user_secret = END_USER.1,
        upstream = upstream.address(),
    )
}

fn start(builder: GateBuilder, upstream: &RecordingUpstream) -> Gate {
    let gate = builder
        .file("rules/extra.yaml", ONE_RULE)
        .yaml(&yaml(upstream))
        .start();
    gate.wait_for_proxy();
    gate
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// A GET on the admin listener as `who`; the raw text too, for "never in the answer" checks.
async fn admin_get(gate: &Gate, path: &str, who: (&str, &str)) -> (StatusCode, Value, String) {
    let response = client()
        .get(gate.admin_url(path))
        .basic_auth(who.0, Some(who.1))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, body, text)
}

async fn ops_get(gate: &Gate, path: &str) -> (Value, String) {
    let (status, body, text) = admin_get(gate, path, OPS).await;
    assert_eq!(status, StatusCode::OK, "{path}: {text}");
    (body, text)
}

async fn reload(gate: &Gate) -> (StatusCode, Value) {
    json_of(
        client()
            .post(gate.admin_url("/admin/v1/reload"))
            .basic_auth(OPS.0, Some(OPS.1))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn portal_post(gate: &Gate, path: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    json_of(
        client()
            .post(gate.url(path))
            .basic_auth(PORTAL.0, Some(PORTAL.1))
            .form(form)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn start_sms(gate: &Gate, (user, phone): (&str, &str)) -> String {
    let (status, body) = portal_post(
        gate,
        "/oauth/api/v4/authenticate/user",
        &[
            ("type", "sms_code"),
            ("user_id", user),
            ("phone_number", phone),
            ("message", MESSAGE),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["transaction_id"].as_str().unwrap().to_owned()
}

/// The code of the newest SMS in the file gateway's outbox.
fn last_code(gate: &Gate) -> String {
    let text = std::fs::read_to_string(gate.dir().join("outbox.jsonl")).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let body = last["body"].as_str().unwrap();
    let code: String = body
        .rsplit(|c: char| !c.is_ascii_digit())
        .find(|part| part.len() == 6)
        .unwrap()
        .to_owned();
    code
}

fn ids(list: &Value) -> Vec<&str> {
    list["transactions"]
        .as_array()
        .unwrap_or_else(|| panic!("no transactions in {list}"))
        .iter()
        .map(|tx| tx["id"].as_str().unwrap())
        .collect()
}

async fn proxied_status(gate: &Gate, path: &str) -> StatusCode {
    client()
        .get(gate.proxy_url(path))
        .send()
        .await
        .unwrap()
        .status()
}

async fn ops_can_see_what_happened(builder: GateBuilder) {
    let upstream = RecordingUpstream::start();
    let gate = start(builder, &upstream);

    // Ann approves with the right code; Bob's stays pending.
    let ann_tx = start_sms(&gate, ANN).await;
    let code = last_code(&gate);
    let (status, body) = portal_post(
        &gate,
        &format!("/oauth/api/v4/authenticate/user/{}/sms", ANN.0),
        &[("transaction_id", &ann_tx), ("sms_code", &code)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let bob_tx = start_sms(&gate, BOB).await;
    let code_hash = CodeHasher::new(&SecretKey::new(SECRET.as_bytes().to_vec()))
        .hash_input(&ann_tx.parse::<TransactionId>().unwrap(), &code)
        .to_hex();
    let never_shown = |text: &str| {
        for secret in [
            code_hash.as_str(),
            ANN.1,
            BOB.1,
            "Transfer 4711 EUR",
            "NL91ABNA0417164300",
        ] {
            assert!(!text.contains(secret), "{secret} is in the answer: {text}");
        }
    };

    // Everything of the last day, newest first.
    let (all, text) = ops_get(&gate, "/admin/v1/transactions").await;
    never_shown(&text);
    assert_eq!(ids(&all), [bob_tx.as_str(), ann_tx.as_str()], "{all}");
    let ann = &all["transactions"][1];
    assert_eq!(ann["type"], "sms_code");
    assert_eq!(ann["method"], "sms");
    assert_eq!(ann["status"], "approved");
    assert_eq!(ann["user_id"], ANN.0);
    assert_eq!(ann["attempts"], 1);
    assert_eq!(ann["phone"], "+31*******78");
    assert_eq!(ann["client_id"], "portal", "{ann}");
    let mut fields: Vec<&str> = ann
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "application",
            "attempts",
            "authenticator",
            "callback_uri",
            "client_id",
            "created_at",
            "device_id",
            "expires_at",
            "finished_at",
            "id",
            "max_attempts",
            "max_resends",
            "method",
            "phone",
            "reason",
            "resends",
            "status",
            "type",
            "user_id",
        ],
        "no field beyond the documented ones"
    );
    assert!(ann["finished_at"].as_u64().unwrap() >= ann["created_at"].as_u64().unwrap());
    assert_eq!(
        ann["expires_at"].as_u64().unwrap() - ann["created_at"].as_u64().unwrap(),
        300_000
    );
    assert_eq!(all["transactions"][0]["status"], "pending");

    // Filters: by user, by status, both, and the limit.
    let (by_user, _) = ops_get(&gate, "/admin/v1/transactions?user_id=ann&hours=1").await;
    assert_eq!(ids(&by_user), [ann_tx.as_str()]);
    let (pending, _) = ops_get(&gate, "/admin/v1/transactions?status=pending").await;
    assert_eq!(ids(&pending), [bob_tx.as_str()]);
    let (approved, _) = ops_get(&gate, "/admin/v1/transactions?status=approved").await;
    assert_eq!(ids(&approved), [ann_tx.as_str()]);
    let (none, _) = ops_get(&gate, "/admin/v1/transactions?user_id=ann&status=pending").await;
    assert!(ids(&none).is_empty(), "{none}");
    let (limited, _) = ops_get(&gate, "/admin/v1/transactions?limit=1").await;
    assert_eq!(ids(&limited), [bob_tx.as_str()]);
    for bad in ["status=done", "hours=0", "limit=1001", "user=ann"] {
        let (status, body, _) =
            admin_get(&gate, &format!("/admin/v1/transactions?{bad}"), OPS).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_request", "{bad}");
        assert!(body["error_description"].is_string());
    }

    // One transaction.
    let (one, text) = ops_get(&gate, &format!("/admin/v1/transactions/{ann_tx}")).await;
    never_shown(&text);
    assert_eq!(&one, ann);
    for missing in [TransactionId::random().to_string(), "not-an-id".to_owned()] {
        let (status, body, _) =
            admin_get(&gate, &format!("/admin/v1/transactions/{missing}"), OPS).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "not_found");
    }

    // A phone enrolls for Ann: the user and the device show it, without its keys.
    let (status, enrollment) = portal_post(
        &gate,
        &format!("/oauth/api/v4/users/{}/enrollment-codes", ANN.0),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{enrollment}");
    let phone = DeviceCli::new(&gate.url(""));
    let device_id = phone.enroll(
        enrollment["code"].as_str().unwrap(),
        "bank-app",
        &[
            "--pin",
            "1234",
            "--platform",
            "ios",
            "--name",
            "Ann's iPhone",
        ],
    );
    let (user, text) = ops_get(&gate, "/admin/v1/users/ann").await;
    never_shown(&text);
    assert_eq!(user["user_id"], ANN.0);
    assert_eq!(ids(&user), [ann_tx.as_str()]);
    let device = &user["devices"][0];
    assert_eq!(device["id"], device_id.as_str());
    assert_eq!(device["name"], "Ann's iPhone");
    assert_eq!(device["platform"], "ios");
    assert_eq!(device["application"], "bank-app");
    assert_eq!(
        device["keys"],
        serde_json::json!(["signing", "encryption", "pin"])
    );
    assert_eq!(device["push_registered"], false);
    let (one_device, text) = ops_get(&gate, &format!("/admin/v1/devices/{device_id}")).await;
    assert_eq!(&one_device, device);
    // Exactly these fields: nothing else (keys, push token) can be in there.
    let mut fields: Vec<&str> = device
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "application",
            "created_at",
            "id",
            "keys",
            "last_used_at",
            "model",
            "name",
            "os_version",
            "platform",
            "push_registered",
            "push_registered_at",
            "push_version",
            "user_id",
        ],
        "{text}"
    );
    let (nobody, _) = ops_get(&gate, "/admin/v1/users/nobody").await;
    assert_eq!(nobody["devices"], serde_json::json!([]));
    assert_eq!(nobody["transactions"], serde_json::json!([]));
    let (status, _, _) =
        admin_get(&gate, &format!("/admin/v1/devices/{}", "0".repeat(64)), OPS).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The audit events of the last hour, newest first, as the log has them.
    eventually(
        Duration::from_secs(10),
        "the audit events are stored",
        || async {
            let (events, _) = ops_get(&gate, "/admin/v1/events?hours=1").await;
            events["events"].as_array().is_some_and(|list| {
                list.iter()
                    .any(|event| event["event"] == "ENROLLMENT_INITIALIZED")
            })
        },
    )
    .await;
    let (events, text) = ops_get(&gate, "/admin/v1/events?hours=1").await;
    never_shown(&text);
    let list = events["events"].as_array().unwrap();
    let sent = list
        .iter()
        .find(|event| {
            event["event"] == "SMS_AUTH_INIT_MESSAGE_SENT"
                && event["transaction_id"] == ann_tx.as_str()
        })
        .unwrap_or_else(|| panic!("no SMS_AUTH_INIT_MESSAGE_SENT for {ann_tx} in {events}"));
    assert_eq!(sent["user_id"], ANN.0);
    assert_eq!(sent["phone"], "+31*******78");
    assert_eq!(sent["auth_type"], "sms_code");
    let times: Vec<u64> = list
        .iter()
        .map(|event| event["at"].as_u64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|pair| pair[0] >= pair[1]),
        "newest first: {times:?}"
    );
    let (limited, _) = ops_get(&gate, "/admin/v1/events?hours=1&limit=1").await;
    assert_eq!(limited["events"].as_array().unwrap().len(), 1);

    // Only admin clients, from where they are allowed, on the admin listener only.
    for who in [
        PORTAL,
        END_USER,
        OPS_ELSEWHERE,
        (OPS.0, "wrong-secret-0123456789"),
    ] {
        let (status, body, _) = admin_get(&gate, "/admin/v1/transactions", who).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{}: {body}", who.0);
        assert_eq!(body["error"], "invalid_client");
    }
    let (status, body) = json_of(
        client()
            .get(gate.admin_url("/admin/v1/transactions"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::UNAUTHORIZED, &Value::from("invalid_client"))
    );
    let (status, _) = json_of(
        client()
            .get(gate.url("/admin/v1/transactions"))
            .basic_auth(OPS.0, Some(OPS.1))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not on the API listener");
    let (status, _) = json_of(
        client()
            .post(gate.admin_url("/oauth/api/v4/authenticate/user"))
            .basic_auth(PORTAL.0, Some(PORTAL.1))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the portal API is not on the admin listener"
    );

    // Reload: a new rule is in force at once; a broken file is refused and the rules stay.
    assert_eq!(
        proxied_status(&gate, "/closed/x").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(proxied_status(&gate, "/reports").await, StatusCode::OK);
    let rules = gate.dir().join("rules/extra.yaml");
    std::fs::write(&rules, TWO_RULES).unwrap();
    let (status, body) = reload(&gate).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, serde_json::json!({"reloaded": true, "rules": 2}));
    assert_eq!(
        proxied_status(&gate, "/reports").await,
        StatusCode::FORBIDDEN
    );

    std::fs::write(&rules, BROKEN_RULES).unwrap();
    let (status, body) = reload(&gate).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "invalid_config");
    let problems = body["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|problem| problem.as_str().unwrap().contains("no_such_type")),
        "{body}"
    );
    assert_eq!(
        proxied_status(&gate, "/reports").await,
        StatusCode::FORBIDDEN,
        "a broken file keeps the old rules"
    );
    assert_eq!(
        proxied_status(&gate, "/closed/x").await,
        StatusCode::FORBIDDEN
    );
    let (status, body) = json_of(
        client()
            .post(gate.admin_url("/admin/v1/reload"))
            .basic_auth(PORTAL.0, Some(PORTAL.1))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    eventually(Duration::from_secs(10), "reloads are audited", || async {
        let (events, _) = ops_get(&gate, "/admin/v1/events?hours=1").await;
        let names: Vec<&str> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|event| event["event"].as_str())
            .collect();
        names.contains(&"CONFIG_RELOADED") && names.contains(&"CONFIG_RELOAD_FAILED")
    })
    .await;
}

#[tokio::test]
async fn ops_can_see_what_happened_on_memory() {
    ops_can_see_what_happened(GateBuilder::memory()).await;
}

#[tokio::test]
async fn ops_can_see_what_happened_on_redis() {
    ops_can_see_what_happened(GateBuilder::redis(redis_url())).await;
}

#[tokio::test]
async fn without_an_admin_client_the_admin_listener_is_not_bound() {
    let upstream = RecordingUpstream::start();
    let gate = GateBuilder::memory()
        .yaml(&format!(
            "proxy:\n  upstream: {{ address: \"{}\" }}\n",
            upstream.address()
        ))
        .start();
    gate.wait_for_proxy();
    assert!(
        std::net::TcpStream::connect(gate.admin).is_err(),
        "nothing listens on {}",
        gate.admin
    );
    assert!(
        gate.log_text().contains("admin API off"),
        "{}",
        gate.log_text()
    );
}
