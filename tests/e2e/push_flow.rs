//! Push authentication end to end: a portal drives the real gateway binary over the v4/v3 API,
//! the reference phone client (`stepgate device`, the real binary) enrolls and answers, pushes
//! reach a fake APNs over HTTP/2 + TLS (or a fake FCM), and callbacks reach a fake portal. Runs
//! on the memory store and on Redis.

use std::time::Duration;

use serde_json::Value;

use crate::device_cli::DeviceCli;
use crate::fakes::apns::FakeApns;
use crate::fakes::callback::FakePortal;
use crate::fakes::fcm::FakeFcm;
use crate::fakes::push_keys::{KEY_ID, PushKeys, TEAM_ID};
use crate::fakes::upstream::RecordingUpstream;
pub use crate::harness::Store;
use crate::harness::{Gate, client, eventually};

pub const CLIENT_ID: &str = "portal";
pub const CLIENT_SECRET: &str = "portal-secret-0123456789";
/// A client with the mobile authentication API only (no `end_user`).
pub const MA_ONLY_CLIENT_ID: &str = "portal-ma-only";
pub const MA_ONLY_CLIENT_SECRET: &str = "portal-ma-only-secret-0123";
/// The `bank-app` version for Android (delivered through FCM) in `world_with_fcm`.
/// The admin API's client (account locks and push blocks).
pub const OPS_CLIENT_ID: &str = "ops";
pub const OPS_CLIENT_SECRET: &str = "ops-secret-0123456789";
pub const ANDROID_VERSION: &str = "2.0";
pub const BUNDLE: &str = "com.example.bank";
/// APNs device tokens are 32 bytes in hex.
pub const ANN_TOKEN: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";

pub struct World {
    pub gate: Gate,
    pub apns: FakeApns,
    pub portal: FakePortal,
    /// The key files the gate reads; held so they live as long as the gate.
    #[allow(dead_code)]
    pub keys: PushKeys,
    /// The fake FCM, in `world_with_fcm` only.
    pub fcm: Option<FakeFcm>,
}

/// A gate with the push types, the `bank-app` application (PIN, max 3 wrong), a fake APNs, a
/// fake portal for callbacks, `enrollment.push.mode: mode`, and `extra` YAML appended.
pub fn world(store: Store, mode: &str, extra: &str) -> World {
    build_world(store, mode, extra, false)
}

/// `world` plus a fake FCM: `bank-app` also has version `ANDROID_VERSION` for Android, delivered
/// through the FCM HTTP v1 API with a service account whose token URL is the fake's.
pub fn world_with_fcm(store: Store, mode: &str, extra: &str) -> World {
    build_world(store, mode, extra, true)
}

fn build_world(store: Store, mode: &str, extra: &str, android: bool) -> World {
    let keys = PushKeys::generate();
    let apns = FakeApns::start(&keys, BUNDLE);
    let fcm = android.then(|| FakeFcm::start(&keys));
    let (android_version, fcm_config) = match &fcm {
        Some(fcm) => (
            format!(
                "\n      - {{ version: \"{ANDROID_VERSION}\", platform: android, push_config: fcm-main }}"
            ),
            format!(
                "\n  - {{ id: fcm-main, platform: android, service_account_file: \"{}\", endpoint: \"{}\" }}",
                keys.write_service_account(&fcm.token_uri()).display(),
                fcm.url()
            ),
        ),
        None => (String::new(), String::new()),
    };
    let portal = FakePortal::start();
    let callback = portal.url("/ma-callback");
    let yaml = format!(
        "api_clients:
  - {{ client_id: {CLIENT_ID}, client_secret: \"{CLIENT_SECRET}\", apis: [mobile_authentication, end_user] }}
  - {{ client_id: {MA_ONLY_CLIENT_ID}, client_secret: \"{MA_ONLY_CLIENT_SECRET}\", apis: [mobile_authentication] }}
  - {{ client_id: {OPS_CLIENT_ID}, client_secret: \"{OPS_CLIENT_SECRET}\", apis: [admin] }}
auth_types:
  - name: login_pin
    method: push_with_pin
    ttl_seconds: 60
    transaction_signing: true
    fallback: sms_code
    default_messages: {{ en: \"Approve sign-in to the bank\" }}
  - name: login_push
    method: push
    ttl_seconds: 60
    number_matching: pick
    fallback: sms_code
    default_messages: {{ en: \"Approve sign-in\" }}
  - name: login_typed
    method: push
    ttl_seconds: 60
    number_matching: true
    default_messages: {{ en: \"Approve sign-in\" }}
  - name: short_push
    method: push
    ttl_seconds: 2
    default_messages: {{ en: \"Quick\" }}
  - name: login_finger
    method: push_with_fingerprint
    ttl_seconds: 60
    max_resends: 1
    default_messages: {{ en: \"Approve with your fingerprint\" }}
  - name: sms_code
    method: sms
    default_messages: {{ en: \"Code: {{code}}\" }}
sms: {{ gateway: file, file: {{ path: outbox.jsonl }} }}
applications:
  - id: bank-app
    name: Bank app
    pin: true
    fingerprint: true
    max_pin_attempts: 3
    versions:
      - {{ version: \"1.0\", platform: ios, push_config: apns-main, apns_environment: development, bundle_id: {BUNDLE} }}{android_version}
push_configs:
  - {{ id: apns-main, platform: ios, team_id: {TEAM_ID}, key_id: {KEY_ID}, key_file: \"{key}\", endpoint: \"{endpoint}\", ca_file: \"{ca}\" }}{fcm_config}
enrollment: {{ push: {{ mode: {mode} }} }}
callbacks:
  only_allow_configured: true
  endpoints:
    - {{ url: \"{callback}\", username: portal-cb, password: \"cb-secret-0123\" }}
{extra}",
        key = keys.apns_key_file().display(),
        endpoint = apns.url(),
        ca = apns.ca_file().display(),
    );
    World {
        gate: store.builder().yaml(&yaml).start(),
        apns,
        portal,
        keys,
        fcm,
    }
}

impl World {
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let response = client()
            .post(self.gate.url(path))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(form)
            .send()
            .await
            .expect("api request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = client()
            .get(self.gate.url(path))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .send()
            .await
            .expect("api request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A phone enrolled for `user` (with PIN 1234) and registered for push with `token`.
    pub async fn phone(&self, user: &str, token: &str) -> (DeviceCli, String) {
        let (status, code) = self
            .post(&format!("/oauth/api/v4/users/{user}/enrollment-codes"), &[])
            .await;
        assert_eq!(status, 201, "enrollment code: {code}");
        let phone = DeviceCli::new(&self.gate.url(""));
        let device_id = phone.enroll(
            code["code"].as_str().unwrap(),
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
        let (exit, out, err) = phone.run(&[
            "register-push",
            "--app",
            "bank-app",
            "--version",
            "1.0",
            "--platform",
            "ios",
            "--token",
            token,
        ]);
        assert_eq!(exit, 0, "register-push: {out} {err}");
        (phone, device_id)
    }

    pub fn callback_url(&self) -> String {
        self.portal.url("/ma-callback")
    }
}

async fn push_with_pin_end_to_end(store: Store) {
    let w = world(store, "single", "");
    let (phone, device_id) = w.phone("ann", ANN_TOKEN).await;
    let callback = w.callback_url();
    let (status, init) = w
        .post(
            "/oauth/api/v4/authenticate/user",
            &[
                ("type", "login_pin"),
                ("user_id", "ann"),
                ("device_id", &device_id),
                ("callback_uri", &callback),
                ("secure_message", "Transfer EUR 100 to NL00BANK0123456789"),
                ("signing_data", "amount=100.00&to=NL00BANK0123456789"),
            ],
        )
        .await;
    assert_eq!(status, 200, "init: {init}\n{}", w.gate.log_text());
    assert_eq!(init["auth_method"], "push_with_pin");
    assert_eq!(init["device"]["name"], "Ann's iPhone");
    assert_eq!(init["device"]["platform"], "ios");
    let tx = init["transaction_id"].as_str().unwrap().to_owned();

    // The push reached APNs with the transaction id and the display message only.
    let pushes = w.apns.received();
    assert_eq!(pushes.len(), 1);
    let push = &pushes[0];
    assert_eq!(push.token, ANN_TOKEN);
    assert_eq!(push.payload["og_transaction_id"], tx.as_str());
    let raw = push.payload.to_string();
    assert!(
        !raw.contains("NL00BANK"),
        "no secure message or signing data in the push: {raw}"
    );

    let (exit, pending, err) = phone.run(&["pending"]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(pending["transactions"][0]["transaction_id"], tx.as_str());

    let (exit, shown, err) = phone.run(&["show", &tx]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(
        shown["secure_message"],
        "Transfer EUR 100 to NL00BANK0123456789"
    );
    assert_eq!(shown["signing_data"], "amount=100.00&to=NL00BANK0123456789");

    // A wrong PIN is refused and counted; the right one approves.
    let (exit, _, err) = phone.run(&["approve", &tx, "--pin", "9999"]);
    assert_ne!(exit, 0);
    assert!(err.contains("invalid_pin"), "{err}");
    let (exit, answer, err) = phone.run(&["approve", &tx, "--pin", "1234"]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "approved");

    // The callback arrives, with Basic auth, and the result says who and how.
    eventually(Duration::from_secs(10), "the callback", || async {
        !w.portal.received().is_empty()
    })
    .await;
    let calls = w.portal.received();
    assert_eq!(calls[0].json["transaction_id"], tx.as_str());
    assert_eq!(calls[0].json["callback_uri"], callback.as_str());
    assert!(
        calls[0]
            .authorization
            .as_deref()
            .unwrap_or("")
            .starts_with("Basic ")
    );

    let (status, result) = w
        .get(&format!("/oauth/api/v4/authenticate/transaction/{tx}"))
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["is_authenticated"], true);
    assert_eq!(result["user_id"], "ann");
    assert_eq!(result["authentication_method"], "push_with_pin");
    assert_eq!(result["used_authentication_attempts"], 2);
    assert_eq!(result["signature_verified"], true);
    assert!(
        result["user_public_key"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );

    // Answering again changes nothing.
    let (exit, _, err) = phone.run(&["deny", &tx]);
    assert_ne!(exit, 0);
    assert!(err.contains("not_pending"), "{err}");
}

#[tokio::test]
async fn push_with_pin_end_to_end_on_memory() {
    push_with_pin_end_to_end(Store::Memory).await;
}

#[tokio::test]
async fn push_with_pin_end_to_end_on_redis() {
    push_with_pin_end_to_end(Store::Redis).await;
}

/// The sidecar with push: a policy whose type is `push_with_pin` challenges an API client, the
/// phone approves, `complete` forwards the held POST exactly once; in hold mode the waiting
/// connection itself is forwarded when the phone approves.
#[tokio::test]
async fn the_proxy_pushes_to_the_phone_and_forwards_after_approval() {
    let upstream = RecordingUpstream::start();
    let extra = format!(
        "policies:
  - name: transfers
    match: {{ methods: [POST], paths: [\"/transfer\"] }}
    require: {{ auth_type: login_pin, freshness_seconds: 0 }}
    message: \"Approve transfer of {{form.amount}} EUR\"
  - name: held
    match: {{ methods: [POST], paths: [\"/held\"] }}
    require: {{ auth_type: login_pin, freshness_seconds: 0 }}
    mode: hold
proxy:
  upstream: {{ address: \"{}\" }}
  trusted_proxies: [\"127.0.0.1/32\", \"::1/128\"]
  identity: {{ header: X-User-Id }}
",
        upstream.address()
    );
    let w = world(Store::Memory, "single", &extra);
    w.gate.wait_for_proxy();
    let (phone, _) = w.phone("ann", ANN_TOKEN).await;

    let response = client()
        .post(w.gate.proxy_url("/transfer"))
        .header("x-user-id", "ann")
        .header("accept", "application/json")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=25")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let challenge: Value = response.json().await.unwrap();
    assert_eq!(challenge["auth_method"], "push_with_pin");
    let tx = challenge["transaction_id"].as_str().unwrap().to_owned();
    let push = w.apns.received().pop().expect("a push");
    assert_eq!(push.payload["og_transaction_id"], tx.as_str());
    assert_eq!(push.payload["og_message"], "Approve transfer of 25 EUR");

    let complete = |binding: String| {
        let url = w
            .gate
            .proxy_url(challenge["complete_uri"].as_str().unwrap());
        async move {
            client()
                .post(url)
                .header("x-user-id", "ann")
                .header("accept", "application/json")
                .header("stepgate-binding", binding)
                .send()
                .await
                .unwrap()
        }
    };
    let binding = challenge["binding_token"].as_str().unwrap().to_owned();
    // Not approved yet: nothing is forwarded.
    let early = complete(binding.clone()).await;
    assert_ne!(early.status().as_u16(), 200);
    assert!(upstream.seen_on("/transfer").is_empty());

    let (exit, _, err) = phone.run(&["approve", &tx, "--pin", "1234"]);
    assert_eq!(exit, 0, "{err}");
    let done = complete(binding.clone()).await;
    assert_eq!(done.status().as_u16(), 200);
    let again = complete(binding).await;
    assert_ne!(
        again.status().as_u16(),
        200,
        "the held request goes out once"
    );
    let seen = upstream.seen_on("/transfer");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"amount=25");

    // Hold mode: the connection waits for the phone.
    let proxy_url = w.gate.proxy_url("/held");
    let waiting = tokio::spawn(async move {
        client()
            .post(proxy_url)
            .header("x-user-id", "ann")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("amount=7")
            .send()
            .await
            .unwrap()
    });
    let mut held_tx = String::new();
    eventually(Duration::from_secs(10), "the held push", || {
        let (_, pending, _) = phone.run(&["pending"]);
        held_tx = pending["transactions"][0]["transaction_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let found = !held_tx.is_empty();
        async move { found }
    })
    .await;
    let (exit, _, err) = phone.run(&["approve", &held_tx, "--pin", "1234"]);
    assert_eq!(exit, 0, "{err}");
    let response = waiting.await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(upstream.seen_on("/held").len(), 1);
}

/// `push_with_fingerprint`: the biometric key answers, the PIN is its fallback, the device key
/// alone is not enough; the push can be sent again once (`max_resends: 1`).
#[tokio::test]
async fn fingerprint_accepts_the_biometric_key_or_the_pin_and_resends_are_counted() {
    let w = world(Store::Memory, "single", "");
    let (status, code) = w
        .post("/oauth/api/v4/users/ann/enrollment-codes", &[])
        .await;
    assert_eq!(status, 201);
    let phone = DeviceCli::new(&w.gate.url(""));
    let device_id = phone.enroll(
        code["code"].as_str().unwrap(),
        "bank-app",
        &["--pin", "1234", "--biometric", "--platform", "ios"],
    );
    let (exit, _, err) = phone.run(&[
        "register-push",
        "--app",
        "bank-app",
        "--version",
        "1.0",
        "--platform",
        "ios",
        "--token",
        ANN_TOKEN,
    ]);
    assert_eq!(exit, 0, "{err}");
    let callback = w.callback_url();
    let init = || async {
        let (status, init) = w
            .post(
                "/oauth/api/v4/authenticate/user",
                &[
                    ("type", "login_finger"),
                    ("user_id", "ann"),
                    ("device_id", &device_id),
                    ("callback_uri", &callback),
                ],
            )
            .await;
        assert_eq!(status, 200, "{init}");
        init["transaction_id"].as_str().unwrap().to_owned()
    };

    let first = init().await;
    let resend_path = "/oauth/api/v4/authenticate/user/ann/push/resend";
    let form = [("transaction_id", first.as_str())];
    assert_eq!(w.post(resend_path, &form).await.0, 204);
    let (status, refused) = w.post(resend_path, &form).await;
    assert_eq!(
        (status, refused["error_code"].as_str()),
        (403, Some("3006"))
    );
    let pushes_for_first = w
        .apns
        .received()
        .iter()
        .filter(|p| p.payload["og_transaction_id"] == first.as_str())
        .count();
    assert_eq!(pushes_for_first, 2, "the push and one resend");

    // The device key alone does not satisfy a fingerprint type.
    let (exit, _, err) = phone.run(&["approve", &first]);
    assert_ne!(exit, 0);
    assert!(err.contains("invalid_request"), "{err}");
    let (exit, answer, err) = phone.run(&["approve", &first, "--biometric"]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "approved");
    let (_, result) = w
        .get(&format!("/oauth/api/v4/authenticate/transaction/{first}"))
        .await;
    assert_eq!(result["is_authenticated"], true);
    assert_eq!(result["authentication_method"], "push_with_fingerprint");

    // The PIN is the fallback.
    let second = init().await;
    let (exit, answer, err) = phone.run(&["approve", &second, "--pin", "1234"]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "approved");
}

/// Number matching through the proxy: the challenge shows the number, a wrong pick on the
/// phone denies, the right one approves and the held request goes out.
#[tokio::test]
async fn the_proxy_shows_the_number_to_pick() {
    let upstream = RecordingUpstream::start();
    let extra = format!(
        "policies:
  - name: login
    match: {{ methods: [POST], paths: [\"/login\"] }}
    require: {{ auth_type: login_push, freshness_seconds: 0 }}
proxy:
  upstream: {{ address: \"{}\" }}
  trusted_proxies: [\"127.0.0.1/32\", \"::1/128\"]
  identity: {{ header: X-User-Id }}
",
        upstream.address()
    );
    let w = world(Store::Memory, "single", &extra);
    w.gate.wait_for_proxy();
    let (phone, _) = w.phone("ann", ANN_TOKEN).await;
    let challenge = || async {
        let response = client()
            .post(w.gate.proxy_url("/login"))
            .header("x-user-id", "ann")
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
        response.json::<Value>().await.unwrap()
    };

    let first = challenge().await;
    let number = first["number"].as_u64().expect("a number to pick") as u8;
    assert!((10..=99).contains(&number));
    let tx = first["transaction_id"].as_str().unwrap();
    let (_, shown, _) = phone.run(&["show", tx]);
    let wrong = shown["number_choices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .find(|n| *n != u64::from(number))
        .unwrap()
        .to_string();
    let (exit, answer, err) = phone.run(&["approve", tx, "--pin", "1234", "--number", &wrong]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(
        answer["status"], "failed",
        "a wrong pick fails the transaction"
    );

    let second = challenge().await;
    let tx = second["transaction_id"].as_str().unwrap();
    let (_, shown, _) = phone.run(&["show", tx]);
    let right = second["number"].as_u64().unwrap();
    assert!(
        shown["number_choices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_u64() == Some(right))
    );
    let (exit, answer, err) = phone.run(&["approve", tx, "--number", &right.to_string()]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "approved");
    let done = client()
        .post(w.gate.proxy_url(second["complete_uri"].as_str().unwrap()))
        .header("x-user-id", "ann")
        .header("accept", "application/json")
        .header(
            "stepgate-binding",
            second["binding_token"].as_str().unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(done.status().as_u16(), 200);
    assert_eq!(upstream.seen_on("/login").len(), 1);
}
