//! Availability (`/authenticate/user/{u}/enabled` and its per-device, per-application and v2
//! variants), API v2 init/result/SMS, v2 and v3 under the `multiple` enrollment mode, and
//! `api.minimum_version`, against the real gate with the reference phone client and fake APNs.

use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{BINARY, GateBuilder, client};
use crate::push_flow::{ANN_TOKEN, CLIENT_ID, CLIENT_SECRET, Store, World, world};

const BOB_TOKEN: &str = "b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1";
const PHONE: &str = "+31612345678";
/// v2 is below the default minimum (3): worlds that use it lower the minimum.
const V2_ON: &str = "api: { minimum_version: 2 }\n";

fn enabled_v4(user: &str) -> String {
    format!("/oauth/api/v4/authenticate/user/{user}/enabled")
}

fn enabled_v3(user: &str) -> String {
    format!("/oauth/api/v3/authenticate/user/{user}/enabled")
}

fn names(body: &Value) -> Vec<&str> {
    body["enabled"]
        .as_array()
        .unwrap_or_else(|| panic!("no enabled list in {body}"))
        .iter()
        .map(|entry| entry.as_str().or(entry["type"].as_str()).unwrap())
        .collect()
}

fn assert_error_code(status: u16, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error_code"], code, "{body}");
}

/// The last SMS code in the gate's file outbox.
fn last_sms_code(w: &World) -> String {
    let text = std::fs::read_to_string(w.gate.dir().join("outbox.jsonl")).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    last["body"]
        .as_str()
        .unwrap()
        .trim_start_matches("Code: ")
        .to_owned()
}

async fn availability_follows_devices_and_fallbacks(store: Store) {
    let w = world(store, "single", V2_ON);

    // Carl has no phone: SMS, and the push types that fall back to it, are all he has.
    let (status, carl) = w.get(&enabled_v4("carl")).await;
    assert_eq!(status, 200, "{carl}");
    assert_eq!(
        carl,
        json!({"enabled": [
            {"type": "login_pin", "method": "PUSH_WITH_PIN", "sms_fallback_allowed": true, "apps_enrolled_for_push": []},
            {"type": "login_push", "method": "PUSH", "sms_fallback_allowed": true, "apps_enrolled_for_push": []},
            {"type": "sms_code", "method": "SMS"},
        ]})
    );
    let (status, carl_v3) = w.get(&enabled_v3("carl")).await;
    assert_eq!(status, 200);
    assert_eq!(carl_v3, carl, "nothing enrolled: the shapes agree");

    // Ann's phone (PIN key, push registration) answers every push method.
    let (_ann, ann_device) = w.phone("ann", ANN_TOKEN).await;
    let (status, ann) = w.get(&enabled_v4("ann")).await;
    assert_eq!(status, 200, "{ann}");
    assert_eq!(
        names(&ann),
        [
            "login_finger",
            "login_pin",
            "login_push",
            "login_typed",
            "short_push",
            "sms_code"
        ]
    );
    let device = json!({
        "app_id": "bank-app",
        "app_name": "Bank app",
        "device_id": ann_device,
        "device_name": "Ann's iPhone",
        "platform": "ios",
    });
    assert_eq!(
        ann["enabled"][0],
        json!({"type": "login_finger", "method": "PUSH_WITH_FINGERPRINT",
               "sms_fallback_allowed": false, "apps_enrolled_for_push": [device]})
    );
    assert_eq!(ann["enabled"][1]["sms_fallback_allowed"], true);
    assert_eq!(ann["enabled"][4]["apps_enrolled_for_push"], json!([device]));
    assert_eq!(
        ann["enabled"][5],
        json!({"type": "sms_code", "method": "SMS"})
    );
    let (_, ann_v3) = w.get(&enabled_v3("ann")).await;
    assert_eq!(names(&ann_v3), names(&ann));
    assert_eq!(
        ann_v3["enabled"][0]["apps_enrolled_for_push"],
        json!([{"id": "bank-app", "name": "Bank app"}])
    );

    // Per device (v4) and per application (v3): type names only; a device or application the
    // user has nothing in gets the empty list.
    let (_bob, bob_device) = w.phone("bob", BOB_TOKEN).await;
    let (status, on_device) = w
        .get(&format!(
            "/oauth/api/v4/authenticate/user/ann/device/{ann_device}/enabled"
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        on_device,
        json!({"enabled": ["login_finger", "login_pin", "login_push", "login_typed", "short_push", "sms_code"]})
    );
    for path in [
        format!("/oauth/api/v4/authenticate/user/ann/device/{bob_device}/enabled"),
        format!(
            "/oauth/api/v4/authenticate/user/ann/device/{}/enabled",
            "c".repeat(64)
        ),
        "/oauth/api/v4/authenticate/user/ann/device/not-a-device/enabled".to_owned(),
        "/oauth/api/v3/authenticate/user/ann/application/other-app/enabled".to_owned(),
        "/oauth/api/v3/authenticate/user/carl/application/bank-app/enabled".to_owned(),
    ] {
        let (status, body) = w.get(&path).await;
        assert_eq!((status, body), (200, json!({"enabled": []})), "{path}");
    }
    let (status, on_app) = w
        .get("/oauth/api/v3/authenticate/user/ann/application/bank-app/enabled")
        .await;
    assert_eq!(status, 200);
    assert_eq!(names(&on_app), names(&ann));

    // v2: one type at a time, as a boolean.
    for (user, auth_type, expected) in [
        ("ann", "login_finger", true),
        ("carl", "login_finger", false),
        ("carl", "login_pin", true),
        ("carl", "sms_code", true),
        ("ann", "no_such_type", false),
    ] {
        let (status, body) = w
            .get(&format!(
                "/oauth/api/v2/authenticate/user/{user}/enabled/{auth_type}"
            ))
            .await;
        assert_eq!(
            (status, body),
            (200, json!({"enabled": expected})),
            "{user} {auth_type}"
        );
    }

    // The API client must authenticate, as everywhere.
    let response = client()
        .get(w.gate.url(&enabled_v4("ann")))
        .basic_auth(CLIENT_ID, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
}

#[tokio::test]
async fn availability_follows_devices_and_fallbacks_on_memory() {
    availability_follows_devices_and_fallbacks(Store::Memory).await;
}

#[tokio::test]
async fn availability_follows_devices_and_fallbacks_on_redis() {
    availability_follows_devices_and_fallbacks(Store::Redis).await;
}

/// Types that need a device, for a user who has none: the list is empty, and still 200.
#[tokio::test]
async fn a_user_with_nothing_gets_an_empty_list() {
    let gate = GateBuilder::memory()
        .yaml(&format!(
            "api_clients:
  - {{ client_id: {CLIENT_ID}, client_secret: \"{CLIENT_SECRET}\", apis: [mobile_authentication] }}
auth_types:
  - {{ name: only_push, method: push, default_messages: {{ en: \"Approve\" }} }}
  - {{ name: also_push, method: push_with_pin, fallback: only_push, default_messages: {{ en: \"Approve\" }} }}
callbacks: {{ only_allow_configured: false }}
"
        ))
        .start();
    for path in [
        "/oauth/api/v4/authenticate/user/nobody/enabled",
        "/oauth/api/v3/authenticate/user/nobody/enabled",
    ] {
        let response = client()
            .get(gate.url(path))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({"enabled": []}), "{path}");
    }
}

async fn v2_pushes_to_the_single_device_and_verifies_sms(store: Store) {
    let w = world(store, "single", V2_ON);
    let (phone, _) = w.phone("ann", ANN_TOKEN).await;
    let callback = w.callback_url();
    // No device or application named: v2 knows one push enrollment per user.
    let (status, init) = w
        .post(
            "/oauth/api/v2/authenticate/user",
            &[
                ("type", "login_pin"),
                ("user_id", "ann"),
                ("callback_uri", &callback),
            ],
        )
        .await;
    assert_eq!(status, 200, "{init}\n{}", w.gate.log_text());
    assert_eq!(init["auth_method"], "push_with_pin");
    assert_eq!(init["device"]["name"], "Ann's iPhone");
    let tx = init["transaction_id"].as_str().unwrap().to_owned();
    let pushes = w.apns.received();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].token, ANN_TOKEN);
    assert_eq!(pushes[0].payload["og_transaction_id"], tx.as_str());

    let (exit, answer, err) = phone.run(&["approve", &tx, "--pin", "1234"]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "approved");
    let (status, result) = w
        .get(&format!("/oauth/api/v2/authenticate/transaction/{tx}"))
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["is_authenticated"], true);
    assert_eq!(result["user_id"], "ann");

    // SMS through v2: init, a wrong code, the right one.
    let (status, init) = w
        .post(
            "/oauth/api/v2/authenticate/user",
            &[
                ("type", "sms_code"),
                ("user_id", "carl"),
                ("phone_number", PHONE),
            ],
        )
        .await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["auth_method"], "sms");
    let sms_tx = init["transaction_id"].as_str().unwrap().to_owned();
    // `sms_code` allows no resend: the v2 resend path answers as v4 does.
    let (status, body) = w
        .post(
            "/oauth/api/v2/authenticate/user/carl/sms/resend",
            &[("transaction_id", &sms_tx)],
        )
        .await;
    assert_error_code(status, &body, 403, "3006");
    let verify = "/oauth/api/v2/authenticate/user/carl/sms";
    let code = last_sms_code(&w);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (status, body) = w
        .post(verify, &[("transaction_id", &sms_tx), ("sms_code", wrong)])
        .await;
    assert_error_code(status, &body, 404, "3003");
    let (status, body) = w
        .post(verify, &[("transaction_id", &sms_tx), ("sms_code", &code)])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["transaction_id"], sms_tx.as_str());
}

#[tokio::test]
async fn v2_pushes_to_the_single_device_and_verifies_sms_on_memory() {
    v2_pushes_to_the_single_device_and_verifies_sms(Store::Memory).await;
}

#[tokio::test]
async fn v2_pushes_to_the_single_device_and_verifies_sms_on_redis() {
    v2_pushes_to_the_single_device_and_verifies_sms(Store::Redis).await;
}

/// Under `multiple`, v2 and v3 cannot name a push target: their push types answer 404 and their
/// availability leaves push types out; SMS keeps working there, and v4 is unaffected.
#[tokio::test]
async fn v2_and_v3_close_push_under_the_multiple_mode() {
    let w = world(Store::Memory, "multiple", V2_ON);
    let (_phone, device_id) = w.phone("ann", ANN_TOKEN).await;
    let callback = w.callback_url();
    for (path, target) in [
        ("/oauth/api/v2/authenticate/user", ("app_id", "")),
        ("/oauth/api/v3/authenticate/user", ("app_id", "bank-app")),
    ] {
        let (status, body) = w
            .post(
                path,
                &[
                    ("type", "login_pin"),
                    ("user_id", "ann"),
                    target,
                    ("callback_uri", &callback),
                    ("phone_number", PHONE),
                ],
            )
            .await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"], "not_found");
        let (status, body) = w
            .post(
                path,
                &[
                    ("type", "sms_code"),
                    ("user_id", "ann"),
                    ("phone_number", PHONE),
                ],
            )
            .await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["auth_method"], "sms");
    }
    assert!(w.apns.received().is_empty());

    let (_, v3) = w.get(&enabled_v3("ann")).await;
    assert_eq!(names(&v3), ["sms_code"]);
    let (_, on_app) = w
        .get("/oauth/api/v3/authenticate/user/ann/application/bank-app/enabled")
        .await;
    assert_eq!(on_app, json!({"enabled": ["sms_code"]}));
    let (_, v2) = w
        .get("/oauth/api/v2/authenticate/user/ann/enabled/login_pin")
        .await;
    assert_eq!(v2, json!({"enabled": false}));
    let (_, v4) = w.get(&enabled_v4("ann")).await;
    assert_eq!(
        names(&v4),
        [
            "login_finger",
            "login_pin",
            "login_push",
            "login_typed",
            "short_push",
            "sms_code"
        ]
    );

    let (status, init) = w
        .post(
            "/oauth/api/v4/authenticate/user",
            &[
                ("type", "login_pin"),
                ("user_id", "ann"),
                ("device_id", &device_id),
                ("callback_uri", &callback),
            ],
        )
        .await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["auth_method"], "push_with_pin");
}

#[tokio::test]
async fn minimum_version_4_answers_4001_below_it() {
    let w = world(Store::Memory, "single", "api: { minimum_version: 4 }\n");
    let (_phone, device_id) = w.phone("ann", ANN_TOKEN).await;
    let callback = w.callback_url();
    let tx = "0c6f1f2e-3b7a-4c55-9d0e-2a8f0b6e4d11";
    let below = [
        ("POST", "/oauth/api/v3/authenticate/user".to_owned()),
        ("POST", "/oauth/api/v2/authenticate/user".to_owned()),
        (
            "GET",
            format!("/oauth/api/v3/authenticate/transaction/{tx}"),
        ),
        (
            "GET",
            format!("/oauth/api/v2/authenticate/transaction/{tx}"),
        ),
        ("POST", "/oauth/api/v3/authenticate/user/ann/sms".to_owned()),
        (
            "POST",
            "/oauth/api/v3/authenticate/user/ann/sms/resend".to_owned(),
        ),
        ("GET", enabled_v3("ann")),
        (
            "GET",
            "/oauth/api/v3/authenticate/user/ann/application/bank-app/enabled".to_owned(),
        ),
        (
            "GET",
            "/oauth/api/v2/authenticate/user/ann/enabled/login_pin".to_owned(),
        ),
    ];
    let form = [
        ("type", "login_pin"),
        ("user_id", "ann"),
        ("app_id", "bank-app"),
        ("callback_uri", callback.as_str()),
    ];
    for (method, path) in &below {
        let (status, body) = if *method == "GET" {
            w.get(path).await
        } else {
            w.post(path, &form).await
        };
        assert_error_code(status, &body, 404, "4001");
        assert_eq!(
            body["description"],
            "Server configuration mandates use of API version 4 and above for mobile authentication",
            "{path}"
        );
    }
    assert!(w.apns.received().is_empty(), "nothing below v4 started");

    // The client still authenticates first: strangers learn nothing about the version rule.
    let response = client()
        .post(w.gate.url("/oauth/api/v3/authenticate/user"))
        .basic_auth(CLIENT_ID, Some("wrong"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    // Form credentials count too.
    let mut with_credentials = form.to_vec();
    with_credentials.extend([("client_id", CLIENT_ID), ("client_secret", CLIENT_SECRET)]);
    let response = client()
        .post(w.gate.url("/oauth/api/v3/authenticate/user"))
        .form(&with_credentials)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error_code"], "4001");

    // v4 works, and so does the End User API's v3 (it is not a mobile authentication path).
    let (status, init) = w
        .post(
            "/oauth/api/v4/authenticate/user",
            &[
                ("type", "login_pin"),
                ("user_id", "ann"),
                ("device_id", &device_id),
                ("callback_uri", &callback),
            ],
        )
        .await;
    assert_eq!(status, 200, "{init}");
    let (status, devices) = w.get("/oauth/api/v3/users/ann/devices").await;
    assert_eq!(status, 200, "{devices}");
}

#[tokio::test]
async fn v2_is_closed_by_default_and_the_minimum_is_validated() {
    let w = world(Store::Memory, "single", "");
    let (status, body) = w
        .post(
            "/oauth/api/v2/authenticate/user",
            &[
                ("type", "sms_code"),
                ("user_id", "ann"),
                ("phone_number", PHONE),
            ],
        )
        .await;
    assert_error_code(status, &body, 404, "4001");
    assert_eq!(
        body["description"],
        "Server configuration mandates use of API version 3 and above for mobile authentication"
    );
    let (status, body) = w
        .post(
            "/oauth/api/v3/authenticate/user",
            &[
                ("type", "sms_code"),
                ("user_id", "ann"),
                ("phone_number", PHONE),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "secret_key: \"0123456789abcdef0123456789abcdef\"\napi:\n  minimum_version: 5\n",
    )
    .unwrap();
    let output = Command::new(BINARY)
        .arg("validate")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(":3:3: api.minimum_version: 5 is out of range (expected 2, 3 or 4)"),
        "{stderr}"
    );
}
