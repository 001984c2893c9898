//! The push authentication matrix, end to end against the real gateway binary (issue #5, item 8
//! and "Done when"): deny, expiry, PIN lockout, the three push enrollment modes and token reuse,
//! API v3, fallback to SMS (no device, APNs down, token unregistered), signed-request abuse
//! (replay, stale timestamp, wrong key, changed body, unknown device), number matching, once-only
//! details, FCM delivery, and the edges of the result and enrollment-code APIs. Built on
//! `push_flow::world` (gate, fake APNs/FCM, fake portal) and the reference phone client.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::SigningKey;
use p256::pkcs8::DecodePrivateKey;
use rand_core::{OsRng, RngCore};
use serde_json::{Value, json};
use stepgate::domain::device_crypto;

use crate::device_cli::DeviceCli;
use crate::fakes::fcm::Api;
use crate::harness::client;
use crate::push_flow::{
    ANDROID_VERSION, ANN_TOKEN, CLIENT_ID, CLIENT_SECRET, MA_ONLY_CLIENT_ID, MA_ONLY_CLIENT_SECRET,
    Store, World, world, world_with_fcm,
};

const INIT_V4: &str = "/oauth/api/v4/authenticate/user";
const INIT_V3: &str = "/oauth/api/v3/authenticate/user";
/// A second APNs token (32 bytes in hex), for Ann's second phone.
const ANN2_TOKEN: &str = "a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2";
const BOB_TOKEN: &str = "b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1";
const FCM_TOKEN: &str = "fcm-token:APA91bH_stepgate_push_cases_0123456789";
const PHONE: &str = "+31612345678";
const SECURE_MESSAGE: &str = "Transfer EUR 100 to NL00BANK0123456789";
const SIGNING_DATA: &str = "amount=100.00&to=NL00BANK0123456789";

fn result_v4(tx: &str) -> String {
    format!("/oauth/api/v4/authenticate/transaction/{tx}")
}

fn tx_id(init: &Value) -> String {
    init["transaction_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no transaction_id in {init}"))
        .to_owned()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A v4 init of `auth_type` for `user` on `device_id` with the configured callback, plus `extra`.
async fn push_init(
    w: &World,
    auth_type: &str,
    user: &str,
    device_id: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let callback = w.callback_url();
    let mut form = vec![
        ("type", auth_type),
        ("user_id", user),
        ("device_id", device_id),
        ("callback_uri", callback.as_str()),
    ];
    form.extend_from_slice(extra);
    w.post(INIT_V4, &form).await
}

/// A phone enrolled for `user` (PIN 1234) on `platform`, without a push registration.
async fn enrolled_phone(w: &World, user: &str, platform: &str) -> (DeviceCli, String) {
    let (status, code) = w
        .post(&format!("/oauth/api/v4/users/{user}/enrollment-codes"), &[])
        .await;
    assert_eq!(status, 201, "enrollment code: {code}");
    let phone = DeviceCli::new(&w.gate.url(""));
    let device_id = phone.enroll(
        code["code"].as_str().unwrap(),
        "bank-app",
        &["--pin", "1234", "--platform", platform],
    );
    (phone, device_id)
}

/// `stepgate device register-push` for `bank-app`.
fn register(phone: &DeviceCli, version: &str, platform: &str, token: &str) -> (i32, Value, String) {
    phone.run(&[
        "register-push",
        "--app",
        "bank-app",
        "--version",
        version,
        "--platform",
        platform,
        "--token",
        token,
    ])
}

/// The SMS messages in the gate's file outbox, oldest first.
fn outbox(w: &World) -> Vec<Value> {
    let text = std::fs::read_to_string(w.gate.dir().join("outbox.jsonl")).unwrap_or_default();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Asserts a refused result/init answer in the reference's numeric shape.
fn assert_error_code(status: u16, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error_code"], code, "{body}");
}

fn assert_not_authenticated(result: &Value, reason: &str) {
    assert_eq!(result["is_authenticated"], false, "{result}");
    assert_eq!(
        result["not_authenticated_reason"]["reason"], reason,
        "{result}"
    );
    assert!(
        result.get("authentication_method").is_none(),
        "no method without authentication: {result}"
    );
}

// ---- raw signed device requests ---------------------------------------------------------------

/// The four signature headers of one device request.
#[derive(Clone)]
struct SignedHeaders {
    device_id: String,
    timestamp: String,
    nonce: String,
    signature: String,
}

/// A device as a hand-written client: its id and signing key, read from the phone's state.
struct RawDevice {
    id: String,
    key: SigningKey,
}

impl RawDevice {
    fn of(phone: &DeviceCli, device_id: &str) -> Self {
        let pem = std::fs::read_to_string(phone.state_dir().join("signing.key")).unwrap();
        let secret = p256::SecretKey::from_pkcs8_pem(&pem).unwrap();
        Self {
            id: device_id.to_owned(),
            key: SigningKey::from(&secret),
        }
    }

    /// Signs as `docs/device-protocol.md` says, with a fresh nonce.
    fn sign(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        timestamp: u64,
    ) -> SignedHeaders {
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let canonical =
            device_crypto::canonical_request(method, path_and_query, timestamp, &nonce, body);
        SignedHeaders {
            device_id: self.id.clone(),
            timestamp: timestamp.to_string(),
            nonce,
            signature: device_crypto::sign(&self.key, canonical.as_bytes()),
        }
    }
}

/// Sends `body` to `path_and_query` with `headers`: status and JSON answer.
async fn send_signed(
    w: &World,
    method: reqwest::Method,
    path_and_query: &str,
    headers: &SignedHeaders,
    body: &[u8],
) -> (u16, Value) {
    let response = client()
        .request(method, w.gate.url(path_and_query))
        .header("stepgate-device-id", &headers.device_id)
        .header("stepgate-timestamp", &headers.timestamp)
        .header("stepgate-nonce", &headers.nonce)
        .header("stepgate-signature", &headers.signature)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A signed `GET` with a fresh nonce and timestamp.
async fn signed_get(w: &World, device: &RawDevice, path: &str) -> (u16, Value) {
    let headers = device.sign("GET", path, b"", now_ms());
    send_signed(w, reqwest::Method::GET, path, &headers, b"").await
}

// ---- 1. deny ----------------------------------------------------------------------------------

async fn deny_is_not_accepted_and_calls_back(store: Store) {
    let w = world(store, "single", "");
    let (phone, device_id) = w.phone("ann", ANN_TOKEN).await;
    let (status, init) = push_init(&w, "login_pin", "ann", &device_id, &[]).await;
    assert_eq!(status, 200, "{init}");
    let tx = tx_id(&init);

    let (exit, answer, err) = phone.run(&["deny", &tx]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "denied");

    let calls = w.portal.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(calls[0].json["transaction_id"], tx.as_str());
    assert_eq!(calls[0].json["callback_uri"], w.callback_url().as_str());

    let (status, result) = w.get(&result_v4(&tx)).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["user_id"], "ann");
    assert_not_authenticated(&result, "not_accepted");

    let (exit, pending, err) = phone.run(&["pending"]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(pending["transactions"], json!([]));
}

#[tokio::test]
async fn deny_is_not_accepted_and_calls_back_on_memory() {
    deny_is_not_accepted_and_calls_back(Store::Memory).await;
}

#[tokio::test]
async fn deny_is_not_accepted_and_calls_back_on_redis() {
    deny_is_not_accepted_and_calls_back(Store::Redis).await;
}

// ---- 2. expiry --------------------------------------------------------------------------------

async fn an_unanswered_push_expires_and_cannot_be_approved_later(store: Store) {
    let w = world(store, "single", "");
    let (phone, device_id) = w.phone("ann", ANN_TOKEN).await;
    let started = Instant::now();
    let (status, init) = push_init(&w, "short_push", "ann", &device_id, &[]).await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["auth_method"], "push");
    let ttl = init["time_to_live"].as_u64().unwrap();
    assert_eq!(ttl, 2000, "{init}");
    let tx = tx_id(&init);

    // Pending while it lives; past its time nothing answers it.
    let (status, result) = w.get(&result_v4(&tx)).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["is_authenticated"], false);
    assert!(result.get("not_authenticated_reason").is_none(), "{result}");
    let past_expiry = Duration::from_millis(ttl + 300);
    tokio::time::sleep(past_expiry.saturating_sub(started.elapsed())).await;

    let (exit, out, err) = phone.run(&["approve", &tx]);
    assert_ne!(exit, 0, "{out}");
    assert!(err.contains("not_pending"), "{err}");
    let (exit, pending, err) = phone.run(&["pending"]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(pending["transactions"], json!([]));

    let (status, result) = w.get(&result_v4(&tx)).await;
    assert_eq!(status, 200, "{result}");
    assert_not_authenticated(&result, "expired");
}

#[tokio::test]
async fn an_unanswered_push_expires_and_cannot_be_approved_later_on_memory() {
    an_unanswered_push_expires_and_cannot_be_approved_later(Store::Memory).await;
}

#[tokio::test]
async fn an_unanswered_push_expires_and_cannot_be_approved_later_on_redis() {
    an_unanswered_push_expires_and_cannot_be_approved_later(Store::Redis).await;
}

// ---- 3. PIN lockout ---------------------------------------------------------------------------

/// Ann's phone (PIN 1234) and a started `login_pin` push to it.
async fn pin_push(store: Store) -> (World, DeviceCli, String, String) {
    let w = world(store, "single", "");
    let (phone, device_id) = w.phone("ann", ANN_TOKEN).await;
    let (status, init) = push_init(
        &w,
        "login_pin",
        "ann",
        &device_id,
        &[("phone_number", PHONE)],
    )
    .await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["auth_method"], "push_with_pin");
    let tx = tx_id(&init);
    (w, phone, device_id, tx)
}

async fn three_wrong_pins_disconnect_the_device(store: Store) {
    let (w, phone, device_id, tx) = pin_push(store).await;

    for remaining in [2, 1] {
        let (exit, out, err) = phone.run(&["approve", &tx, "--pin", "0000"]);
        assert_eq!((exit, out), (1, Value::Null), "{err}");
        assert!(err.contains("HTTP 401 invalid_pin"), "{err}");
        assert!(
            err.contains(&format!("\"remaining_attempts\":{remaining}")),
            "{err}"
        );
    }
    let (exit, _, err) = phone.run(&["approve", &tx, "--pin", "0000"]);
    assert_eq!(exit, 1);
    assert!(err.contains("HTTP 403 device_disconnected"), "{err}");

    // The transaction failed with the reason for a wrong answer, and the portal hears of it.
    let calls = w.portal.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(calls[0].json["transaction_id"], tx.as_str());
    let (status, result) = w.get(&result_v4(&tx)).await;
    assert_eq!(status, 200, "{result}");
    assert_not_authenticated(&result, "invalid_answer");
    assert_eq!(result["used_authentication_attempts"], 3, "{result}");

    // The right PIN is too late now.
    let (exit, _, _) = phone.run(&["approve", &tx, "--pin", "1234"]);
    assert_ne!(exit, 0);

    // The device is gone: no push for it any more, and its signature opens nothing.
    let pushes_before = w.apns.requests();
    let (status, init) = push_init(
        &w,
        "login_pin",
        "ann",
        &device_id,
        &[("phone_number", PHONE)],
    )
    .await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["auth_method"], "sms", "{init}");
    assert_eq!(w.apns.requests(), pushes_before);
    let sent = outbox(&w);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["to"], PHONE);

    let (exit, _, err) = phone.run(&["pending"]);
    assert_ne!(exit, 0);
    assert!(err.contains("invalid_signature"), "{err}");
}

#[tokio::test]
async fn three_wrong_pins_disconnect_the_device_on_memory() {
    three_wrong_pins_disconnect_the_device(Store::Memory).await;
}

#[tokio::test]
async fn three_wrong_pins_disconnect_the_device_on_redis() {
    three_wrong_pins_disconnect_the_device(Store::Redis).await;
}

/// 100 PIN answers at once, one of them right, with one attempt left: one PIN is checked and
/// no more. Every other answer is the same as a wrong PIN at the limit (or, once the device is
/// gone, the same as any unknown device), so the answers reveal nothing about the PIN.
async fn a_burst_of_pin_answers_checks_no_more_than_the_limit(store: Store) {
    let (w, phone, _, tx) = pin_push(store).await;
    for _ in 0..2 {
        let (exit, _, err) = phone.run(&["approve", &tx, "--pin", "0000"]);
        assert_eq!(exit, 1);
        assert!(err.contains("HTTP 401 invalid_pin"), "{err}");
    }

    let pins: Vec<String> = (0..100)
        .map(|i| {
            if i == 50 {
                "1234".to_owned()
            } else {
                format!("9{i:03}")
            }
        })
        .collect();
    let answers: Vec<(i32, String)> = std::thread::scope(|scope| {
        let runs: Vec<_> = pins
            .iter()
            .map(|pin| {
                let phone = &phone;
                let tx = &tx;
                scope.spawn(move || {
                    let (exit, _, err) = phone.run(&["approve", tx, "--pin", pin]);
                    (exit, err)
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    let (mut approved, mut disconnected, mut gone) = (0, 0, 0);
    for (exit, err) in &answers {
        if *exit == 0 {
            approved += 1;
        } else if err.contains("HTTP 403 device_disconnected") {
            disconnected += 1;
        } else if err.contains("invalid_signature")
            || err.contains("HTTP 409 not_pending")
            || err.contains("HTTP 503 temporarily_unavailable")
            || err.contains("HTTP 429 too_many_requests")
            || err.contains("HTTP 429 account_locked")
        {
            // The device is gone, the transaction ended, the store was too busy to answer in
            // time (fails closed), or the account guard already counts the user's remaining
            // attempts in flight (or has locked the account): the same for every PIN.
            gone += 1;
        } else {
            panic!("an answer that tells a checked PIN apart: {err}");
        }
    }
    assert!(approved <= 1, "{answers:?}");
    assert_eq!(approved + disconnected + gone, 100);

    // The transaction ended once: approved by the one check, or failed on the third wrong PIN.
    let (status, result) = w.get(&result_v4(&tx)).await;
    assert_eq!(status, 200, "{result}");
    if approved == 1 {
        assert_eq!(result["is_authenticated"], true, "{result}");
    } else {
        assert_not_authenticated(&result, "invalid_answer");
        assert_eq!(result["used_authentication_attempts"], 3, "{result}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pin_answers_checks_no_more_than_the_limit_on_memory() {
    a_burst_of_pin_answers_checks_no_more_than_the_limit(Store::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pin_answers_checks_no_more_than_the_limit_on_redis() {
    a_burst_of_pin_answers_checks_no_more_than_the_limit(Store::Redis).await;
}

// ---- 4. enrollment modes ----------------------------------------------------------------------

#[tokio::test]
async fn single_mode_refuses_a_second_phone_and_a_token_in_use() {
    let w = world(Store::Memory, "single", "");
    let (_first, first_id) = w.phone("ann", ANN_TOKEN).await;

    let (second, second_id) = enrolled_phone(&w, "ann", "ios").await;
    let (exit, out, err) = register(&second, "1.0", "ios", ANN2_TOKEN);
    assert_ne!(exit, 0, "{out}");
    assert_eq!(out, Value::Null);
    assert!(err.contains("HTTP 409 already_enrolled"), "{err}");

    // Another user's phone cannot take Ann's token.
    let (bob, _) = enrolled_phone(&w, "bob", "ios").await;
    let (exit, _, err) = register(&bob, "1.0", "ios", ANN_TOKEN);
    assert_ne!(exit, 0);
    assert!(err.contains("HTTP 409 token_in_use"), "{err}");

    // Ann's first phone keeps its registration; the second one has none.
    let (status, init) = push_init(&w, "short_push", "ann", &first_id, &[]).await;
    assert_eq!(status, 200, "{init}");
    let pushes = w.apns.received();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].token, ANN_TOKEN);
    let (status, body) = push_init(&w, "short_push", "ann", &second_id, &[]).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn override_mode_moves_the_push_registration_to_the_new_phone() {
    let w = world(Store::Memory, "override", "");
    let (_first, first_id) = w.phone("ann", ANN_TOKEN).await;
    let (second, second_id) = enrolled_phone(&w, "ann", "ios").await;
    let (exit, out, err) = register(&second, "1.0", "ios", ANN2_TOKEN);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(out["registered"], true);
    assert_eq!(out["replaced_device_ids"], json!([first_id]));

    // The first phone no longer gets pushes: without a fallback there is nothing to start,
    // with one it is SMS.
    let (status, body) = push_init(&w, "short_push", "ann", &first_id, &[]).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "not_found");
    let (status, init) = push_init(
        &w,
        "login_pin",
        "ann",
        &first_id,
        &[("phone_number", PHONE)],
    )
    .await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["auth_method"], "sms");
    assert!(w.apns.received().is_empty());

    let (status, init) = push_init(&w, "login_pin", "ann", &second_id, &[]).await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["auth_method"], "push_with_pin");
    let pushes = w.apns.received();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].token, ANN2_TOKEN);
    assert_eq!(
        pushes[0].payload["og_transaction_id"],
        tx_id(&init).as_str()
    );
}

#[tokio::test]
async fn multiple_mode_keeps_both_phones_for_v4_and_closes_v3() {
    let w = world(Store::Memory, "multiple", "");
    let (first, first_id) = w.phone("ann", ANN_TOKEN).await;
    let (second, second_id) = enrolled_phone(&w, "ann", "ios").await;
    let (exit, out, err) = register(&second, "1.0", "ios", ANN2_TOKEN);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(out["replaced_device_ids"], json!([]));

    let (status, init) = push_init(&w, "login_push", "ann", &first_id, &[]).await;
    assert_eq!(status, 200, "{init}");
    let first_tx = tx_id(&init);
    let (status, init) = push_init(&w, "login_push", "ann", &second_id, &[]).await;
    assert_eq!(status, 200, "{init}");
    let second_tx = tx_id(&init);
    let tokens: Vec<String> = w.apns.received().into_iter().map(|p| p.token).collect();
    assert_eq!(tokens, [ANN_TOKEN, ANN2_TOKEN]);

    // Each phone sees only its own transaction.
    for (phone, tx) in [(&first, &first_tx), (&second, &second_tx)] {
        let (exit, pending, err) = phone.run(&["pending"]);
        assert_eq!(exit, 0, "{err}");
        let ids: Vec<&str> = pending["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["transaction_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [tx.as_str()]);
    }

    // v3 cannot say which phone: a push type answers 404 there.
    let callback = w.callback_url();
    let (status, body) = w
        .post(
            INIT_V3,
            &[
                ("type", "login_push"),
                ("user_id", "ann"),
                ("app_id", "bank-app"),
                ("callback_uri", &callback),
            ],
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "not_found");
    assert_eq!(w.apns.received().len(), 2);

    // Multiple phones, but still one device per token.
    let (third, _) = enrolled_phone(&w, "ann", "ios").await;
    let (exit, _, err) = register(&third, "1.0", "ios", ANN_TOKEN);
    assert_ne!(exit, 0);
    assert!(err.contains("HTTP 409 token_in_use"), "{err}");
}

#[tokio::test]
async fn push_enrollment_and_push_authorization_can_each_be_switched_off() {
    // `world` puts the mode inside `enrollment.push`, so the switches ride along with it.
    let w = world(Store::Memory, "single, authorization_enabled: false", "");
    let (_phone, device_id) = w.phone("ann", ANN_TOKEN).await;
    let (status, init) = push_init(
        &w,
        "login_pin",
        "ann",
        &device_id,
        &[("phone_number", PHONE)],
    )
    .await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["auth_method"], "sms", "{init}");
    let (status, body) = push_init(&w, "short_push", "ann", &device_id, &[]).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(w.apns.requests(), 0);

    let w = world(Store::Memory, "single, enrollment_enabled: false", "");
    let (phone, _) = enrolled_phone(&w, "ann", "ios").await;
    let (exit, out, err) = register(&phone, "1.0", "ios", ANN_TOKEN);
    assert_eq!((exit, out), (1, Value::Null), "{err}");
    assert!(err.contains("HTTP 403 push_enrollment_disabled"), "{err}");
}

// ---- 5. API v3 --------------------------------------------------------------------------------

#[tokio::test]
async fn v3_pushes_to_the_users_phone_of_the_application() {
    let w = world(Store::Memory, "single", "");
    let (phone, _) = w.phone("ann", ANN_TOKEN).await;
    let callback = w.callback_url();
    let (status, init) = w
        .post(
            INIT_V3,
            &[
                ("type", "login_pin"),
                ("user_id", "ann"),
                ("app_id", "bank-app"),
                ("callback_uri", &callback),
            ],
        )
        .await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["auth_method"], "push_with_pin");
    assert_eq!(init["device"]["name"], "Ann's iPhone");
    let tx = tx_id(&init);
    let pushes = w.apns.received();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].token, ANN_TOKEN);
    assert_eq!(pushes[0].payload["og_transaction_id"], tx.as_str());

    let (exit, answer, err) = phone.run(&["approve", &tx, "--pin", "1234"]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "approved");
    w.portal.wait_for(1, Duration::from_secs(10)).await;
    let (status, result) = w
        .get(&format!("/oauth/api/v3/authenticate/transaction/{tx}"))
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["is_authenticated"], true, "{result}");
    assert_eq!(result["authentication_method"], "push_with_pin");
    assert_eq!(result["user_id"], "ann");

    // An application the user has no phone for: nothing to push to.
    let (status, body) = w
        .post(
            INIT_V3,
            &[
                ("type", "short_push"),
                ("user_id", "ann"),
                ("app_id", "other-app"),
                ("callback_uri", &callback),
            ],
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "not_found");
}

// ---- 6. fallback ------------------------------------------------------------------------------

#[tokio::test]
async fn push_falls_back_to_sms_without_a_device_or_when_apns_fails() {
    let w = world(Store::Memory, "single", "");

    // Carl has no phone: the type's fallback sends an SMS.
    let nobodys_device = "c".repeat(64);
    let (status, init) = push_init(
        &w,
        "login_pin",
        "carl",
        &nobodys_device,
        &[("phone_number", PHONE)],
    )
    .await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["auth_method"], "sms");
    assert!(init.get("device").is_none(), "{init}");
    let sent = outbox(&w);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["to"], PHONE);
    assert!(
        sent[0]["body"].as_str().unwrap().starts_with("Code: "),
        "{sent:?}"
    );
    // A portal that knows of no device may leave `device_id` out: a type with a fallback falls
    // back, one without names the missing parameter.
    let callback = w.callback_url();
    let (status, init) = w
        .post(
            INIT_V4,
            &[
                ("type", "login_pin"),
                ("user_id", "carl"),
                ("callback_uri", &callback),
                ("phone_number", PHONE),
            ],
        )
        .await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["auth_method"], "sms");
    assert_eq!(outbox(&w).len(), 2);
    let (status, body) = w
        .post(
            INIT_V4,
            &[
                ("type", "short_push"),
                ("user_id", "carl"),
                ("callback_uri", &callback),
            ],
        )
        .await;
    assert_error_code(status, &body, 400, "1003");

    // APNs is down for one request: SMS instead, and the registration stays.
    let (_ann, ann_id) = w.phone("ann", ANN_TOKEN).await;
    w.apns.fail_next(1);
    let (status, init) =
        push_init(&w, "login_pin", "ann", &ann_id, &[("phone_number", PHONE)]).await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["auth_method"], "sms");
    assert_eq!(w.apns.requests(), 1);
    assert_eq!(outbox(&w).len(), 3);
    let (status, init) =
        push_init(&w, "login_pin", "ann", &ann_id, &[("phone_number", PHONE)]).await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["auth_method"], "push_with_pin");
    assert_eq!(w.apns.received().len(), 1);
    // Without a fallback an APNs failure is the provider error.
    w.apns.fail_next(1);
    let (status, body) = push_init(&w, "short_push", "ann", &ann_id, &[]).await;
    assert_error_code(status, &body, 503, "1002");

    // APNs says Bob's token is dead: SMS instead, and the registration is dropped.
    let (bob, bob_id) = w.phone("bob", BOB_TOKEN).await;
    w.apns.unregister(BOB_TOKEN);
    let (status, init) =
        push_init(&w, "login_pin", "bob", &bob_id, &[("phone_number", PHONE)]).await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["auth_method"], "sms");
    let requests = w.apns.requests();
    // No push is attempted any more: the chain goes straight to SMS, which needs a number...
    let (status, body) = push_init(&w, "login_pin", "bob", &bob_id, &[]).await;
    assert_error_code(status, &body, 400, "3001");
    // ...and a type without a fallback has nothing to start.
    let (status, body) = push_init(&w, "short_push", "bob", &bob_id, &[]).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "not_found");
    assert_eq!(w.apns.requests(), requests);
    // Only the push registration went: the device itself still signs in.
    let (exit, _, err) = bob.run(&["pending"]);
    assert_eq!(exit, 0, "{err}");
}

// ---- 7. signed-request abuse ------------------------------------------------------------------

#[tokio::test]
async fn replayed_stale_forged_and_altered_device_requests_are_refused_alike() {
    let w = world(Store::Memory, "single", "");
    let (phone, device_id) = w.phone("ann", ANN_TOKEN).await;
    let device = RawDevice::of(&phone, &device_id);
    let path = "/device/v1/transactions";

    let fresh = device.sign("GET", path, b"", now_ms());
    let (status, body) = send_signed(&w, reqwest::Method::GET, path, &fresh, b"").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["transactions"].is_array(), "{body}");
    // A minute old is within the window.
    let (status, body) = send_signed(
        &w,
        reqwest::Method::GET,
        path,
        &device.sign("GET", path, b"", now_ms() - 60_000),
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // The same request again, byte for byte.
    let (status, refusal) = send_signed(&w, reqwest::Method::GET, path, &fresh, b"").await;
    assert_eq!(status, 401, "{refusal}");
    assert_eq!(refusal["error"], "invalid_signature");

    let mut refusals = Vec::new();
    for timestamp in [now_ms() - 600_000, now_ms() + 600_000] {
        let stale = device.sign("GET", path, b"", timestamp);
        refusals.push((
            "timestamp",
            send_signed(&w, reqwest::Method::GET, path, &stale, b"").await,
        ));
    }
    let stranger = RawDevice {
        id: device_id.clone(),
        key: SigningKey::random(&mut OsRng),
    };
    let forged = stranger.sign("GET", path, b"", now_ms());
    refusals.push((
        "another key",
        send_signed(&w, reqwest::Method::GET, path, &forged, b"").await,
    ));
    let unknown = RawDevice {
        id: "d".repeat(64),
        key: device.key.clone(),
    };
    let headers = unknown.sign("GET", path, b"", now_ms());
    refusals.push((
        "unknown device",
        send_signed(&w, reqwest::Method::GET, path, &headers, b"").await,
    ));
    let signed_for_path = device.sign("GET", path, b"", now_ms());
    let other_query = format!("{path}?all=1");
    refusals.push((
        "query added",
        send_signed(
            &w,
            reqwest::Method::GET,
            &other_query,
            &signed_for_path,
            b"",
        )
        .await,
    ));

    // A push registration whose token was changed after signing.
    let registration = "/device/v1/push-registration";
    let signed_body =
        json!({"application": "bank-app", "version": "1.0", "platform": "ios", "token": ANN_TOKEN})
            .to_string();
    let altered_body = signed_body.replace(ANN_TOKEN, ANN2_TOKEN);
    let headers = device.sign("PUT", registration, signed_body.as_bytes(), now_ms());
    refusals.push((
        "body changed",
        send_signed(
            &w,
            reqwest::Method::PUT,
            registration,
            &headers,
            altered_body.as_bytes(),
        )
        .await,
    ));
    for (what, (status, body)) in &refusals {
        assert_eq!(*status, 401, "{what}: {body}");
        assert_eq!(body, &refusal, "{what}: one answer for every cause");
    }
    // The body as signed is accepted (same device, same token), and pushes still go to Ann's token.
    let headers = device.sign("PUT", registration, signed_body.as_bytes(), now_ms());
    let (status, body) = send_signed(
        &w,
        reqwest::Method::PUT,
        registration,
        &headers,
        signed_body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, init) = push_init(&w, "short_push", "ann", &device_id, &[]).await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(w.apns.received()[0].token, ANN_TOKEN);
}

// ---- 8. number matching -----------------------------------------------------------------------

#[tokio::test]
async fn number_matching_denies_a_wrong_pick_and_approves_the_right_one() {
    let w = world(Store::Memory, "single", "");
    let (phone, device_id) = w.phone("ann", ANN_TOKEN).await;

    let (status, init) = push_init(&w, "login_push", "ann", &device_id, &[]).await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["auth_method"], "push");
    let number = init["number"].as_u64().unwrap_or_else(|| panic!("{init}"));
    assert!((10..=99).contains(&number), "{init}");
    let tx = tx_id(&init);
    let raw_push = w.apns.received()[0].payload.to_string();
    assert!(
        !raw_push.contains("number"),
        "the number is for the requester's screen, not the push: {raw_push}"
    );

    let (exit, shown, err) = phone.run(&["show", &tx]);
    assert_eq!(exit, 0, "{err}");
    let choices: Vec<u64> = shown["number_choices"]
        .as_array()
        .unwrap_or_else(|| panic!("{shown}"))
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect();
    assert_eq!(choices.len(), 3, "{shown}");
    assert!(choices.contains(&number), "{choices:?} lacks {number}");
    let wrong = choices.iter().find(|c| **c != number).unwrap().to_string();

    assert_eq!(shown["number_matching"], "pick", "{shown}");
    assert_eq!(init["number_matching"], "pick", "{init}");
    let (exit, _, err) = phone.run(&["approve", &tx, "--number", "100"]);
    assert_ne!(exit, 0, "the reference phone offers only the three choices");
    assert!(err.contains("not among the numbers offered"), "{err}");
    let (exit, answer, err) = phone.run(&["approve", &tx, "--number", &wrong]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(
        answer["status"], "failed",
        "a wrong number fails the transaction"
    );
    let (_, result) = w.get(&result_v4(&tx)).await;
    assert_not_authenticated(&result, "invalid_answer");

    let (status, init) = push_init(&w, "login_push", "ann", &device_id, &[]).await;
    assert_eq!(status, 200, "{init}");
    let tx = tx_id(&init);
    let number = init["number"].as_u64().unwrap().to_string();
    let (exit, answer, err) = phone.run(&["approve", &tx, "--number", &number]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "approved");
    let (_, result) = w.get(&result_v4(&tx)).await;
    assert_eq!(result["is_authenticated"], true, "{result}");
    assert_eq!(result["authentication_method"], "push");
}

// ---- 9. once-only details ---------------------------------------------------------------------

#[tokio::test]
async fn transaction_details_are_handed_out_once() {
    let w = world(Store::Memory, "single", "");
    let (phone, device_id) = w.phone("ann", ANN_TOKEN).await;
    let device = RawDevice::of(&phone, &device_id);
    let secure = [
        ("secure_message", SECURE_MESSAGE),
        ("signing_data", SIGNING_DATA),
    ];

    // The phone fetched first: a second fetch is refused, the phone's cache still shows it.
    let (status, init) = push_init(&w, "login_pin", "ann", &device_id, &secure).await;
    assert_eq!(status, 200, "{init}");
    let tx = tx_id(&init);
    let (exit, shown, err) = phone.run(&["show", &tx]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(shown["secure_message"], SECURE_MESSAGE);
    let (status, body) = signed_get(&w, &device, &format!("/device/v1/transactions/{tx}")).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"], "already_fetched");
    let (exit, again, err) = phone.run(&["show", &tx]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(again, shown);

    // Someone else fetched first: sealed for the device, once; the phone can still deny.
    let (status, init) = push_init(&w, "login_pin", "ann", &device_id, &secure).await;
    assert_eq!(status, 200, "{init}");
    let tx = tx_id(&init);
    let details = format!("/device/v1/transactions/{tx}");
    let (status, body) = signed_get(&w, &device, &details).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["transaction_id"], tx.as_str());
    assert_eq!(body["auth_method"], "push_with_pin");
    assert_eq!(body["number_choices"], Value::Null);
    assert!(body["encrypted"]["ciphertext"].is_string(), "{body}");
    assert!(!body.to_string().contains("NL00BANK"), "sealed: {body}");
    let (status, body) = signed_get(&w, &device, &details).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"], "already_fetched");
    let (exit, _, err) = phone.run(&["show", &tx]);
    assert_ne!(exit, 0);
    assert!(err.contains("already_fetched"), "{err}");
    let (exit, answer, err) = phone.run(&["deny", &tx]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "denied");
}

// ---- 10. FCM ----------------------------------------------------------------------------------

#[tokio::test]
async fn an_android_phone_gets_a_data_message_through_fcm_and_approves() {
    let w = world_with_fcm(Store::Memory, "single", "");
    let fcm = w.fcm.as_ref().unwrap();
    let (phone, device_id) = enrolled_phone(&w, "ann", "android").await;
    let (exit, out, err) = register(&phone, ANDROID_VERSION, "android", FCM_TOKEN);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(out["registered"], true);

    let secure = [
        ("secure_message", SECURE_MESSAGE),
        ("signing_data", SIGNING_DATA),
    ];
    let (status, init) = push_init(&w, "login_pin", "ann", &device_id, &secure).await;
    assert_eq!(status, 200, "{init}\n{}", w.gate.log_text());
    assert_eq!(init["auth_method"], "push_with_pin");
    assert_eq!(init["device"]["platform"], "android");
    let tx = tx_id(&init);

    let messages = fcm.received();
    assert_eq!(messages.len(), 1);
    assert!(w.apns.received().is_empty());
    let message = &messages[0];
    assert_eq!(message.api, Api::V1);
    assert_eq!(message.token, FCM_TOKEN);
    assert!(
        message.body["message"].get("notification").is_none(),
        "a data message: {}",
        message.body
    );
    let content: Value =
        serde_json::from_str(message.body["message"]["data"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content["og_transaction_id"], tx.as_str());
    assert_eq!(content["og_message"], "Approve sign-in to the bank");
    assert!(
        !message.body.to_string().contains("NL00BANK"),
        "no secure message or signing data in the push: {}",
        message.body
    );

    let (exit, answer, err) = phone.run(&["approve", &tx, "--pin", "1234"]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "approved");
    w.portal.wait_for(1, Duration::from_secs(10)).await;
    let (_, result) = w.get(&result_v4(&tx)).await;
    assert_eq!(result["is_authenticated"], true, "{result}");
    assert_eq!(result["signature_verified"], true, "{result}");
}

// ---- 11. result API edges ---------------------------------------------------------------------

#[tokio::test]
async fn the_result_api_refuses_unknown_sms_and_unauthenticated_lookups() {
    let w = world(Store::Memory, "single", "");
    let (status, body) = w.get(&result_v4(&uuid::Uuid::new_v4().to_string())).await;
    assert_error_code(status, &body, 404, "3004");
    let (status, body) = w.get(&result_v4("not-a-transaction-id")).await;
    assert_error_code(status, &body, 404, "3004");

    // An SMS transaction has no result here (its verify answer is the result).
    let (status, init) = w
        .post(
            INIT_V4,
            &[
                ("type", "sms_code"),
                ("user_id", "ann"),
                ("phone_number", PHONE),
            ],
        )
        .await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["auth_method"], "sms");
    let sms_tx = tx_id(&init);
    let (status, body) = w.get(&result_v4(&sms_tx)).await;
    assert_error_code(status, &body, 404, "3004");

    // A push transaction, asked for with bad credentials.
    let (_phone, device_id) = w.phone("ann", ANN_TOKEN).await;
    let (status, init) = push_init(&w, "login_pin", "ann", &device_id, &[]).await;
    assert_eq!(status, 200, "{init}");
    let tx = tx_id(&init);
    for (id, secret) in [(CLIENT_ID, "not-the-secret"), ("nobody", CLIENT_SECRET)] {
        let response = client()
            .get(w.gate.url(&result_v4(&tx)))
            .basic_auth(id, Some(secret))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client", "{body}");
    }
    let response = client()
        .get(w.gate.url(&result_v4(&tx)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    // A callback_uri off the list (exactly matched) starts nothing.
    for callback in [
        "http://127.0.0.1:9/ma-callback".to_owned(),
        format!("{}/extra", w.callback_url()),
    ] {
        let (status, body) = w
            .post(
                INIT_V4,
                &[
                    ("type", "login_pin"),
                    ("user_id", "ann"),
                    ("device_id", &device_id),
                    ("callback_uri", &callback),
                ],
            )
            .await;
        assert_error_code(status, &body, 400, "1003");
    }
    assert_eq!(w.apns.received().len(), 1);
}

// ---- 12. enrollment edges ---------------------------------------------------------------------

#[tokio::test]
async fn enrollment_codes_are_single_use_and_need_the_end_user_api() {
    let w = world(Store::Memory, "single", "");
    let (status, code) = w
        .post("/oauth/api/v4/users/ann/enrollment-codes", &[])
        .await;
    assert_eq!(status, 201, "{code}");
    let text = code["code"].as_str().unwrap().to_owned();
    assert_eq!(code["expires_in"], 600);
    let qr_uri = code["qr_uri"].as_str().unwrap().to_owned();
    assert!(qr_uri.starts_with(&w.gate.url("/")), "{qr_uri}");

    let qr = |authenticated: bool, uri: String| async move {
        let request = client().get(uri);
        let request = if authenticated {
            request.basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        } else {
            request
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, content_type, response.text().await.unwrap())
    };
    let (status, content_type, svg) = qr(true, qr_uri.clone()).await;
    assert_eq!(status, 200, "{svg}");
    assert_eq!(content_type, "image/svg+xml");
    assert!(svg.contains("<svg"), "{svg}");
    assert!(
        !svg.contains(&text),
        "the QR draws the code, it does not print it"
    );
    let (status, _, _) = qr(false, qr_uri.clone()).await;
    assert_eq!(status, 401);
    // Ann's code is not Bob's.
    let bobs = qr_uri.replace("/users/ann/", "/users/bob/");
    let (status, _, _) = qr(true, bobs).await;
    assert_eq!(status, 404);

    let phone = DeviceCli::new(&w.gate.url(""));
    phone.enroll(&text, "bank-app", &["--pin", "1234"]);
    let (status, _, _) = qr(true, qr_uri).await;
    assert_eq!(status, 404, "a used code has no QR");
    let again = DeviceCli::new(&w.gate.url(""));
    let (exit, out, err) = again.run(&[
        "enroll",
        "--code",
        &text,
        "--application",
        "bank-app",
        "--pin",
        "1234",
    ]);
    assert_eq!((exit, out), (1, Value::Null), "{err}");
    assert!(err.contains("HTTP 401 invalid_code"), "{err}");

    // A client without the End User API gets no code.
    let response = client()
        .post(w.gate.url("/oauth/api/v4/users/ann/enrollment-codes"))
        .basic_auth(MA_ONLY_CLIENT_ID, Some(MA_ONLY_CLIENT_SECRET))
        .form(&[("unused", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client", "{body}");
}
