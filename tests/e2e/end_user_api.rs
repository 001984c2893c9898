//! The End User API's device endpoints (v4 camelCase, v3 snake_case) against the real gate:
//! listing, deleting one, a selection or all, and withdrawing the fingerprint, push or the whole
//! mobile authentication enrollment, with their effect on the phone (`stepgate device`) and on
//! push init; another user's device ids change nothing. Memory and Redis.

use reqwest::Method;
use serde_json::{Value, json};

use crate::device_cli::DeviceCli;
use crate::harness::client;
use crate::push_flow::{
    ANN_TOKEN, CLIENT_ID, CLIENT_SECRET, MA_ONLY_CLIENT_ID, MA_ONLY_CLIENT_SECRET, Store, World,
    world,
};

const BOB_TOKEN: &str = "b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1";
const PHONE: &str = "+31612345678";

/// A request with the portal's End User credentials; `body` is sent as JSON.
async fn call(w: &World, method: Method, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut request = client()
        .request(method, w.gate.url(path))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.expect("api request");
    let status = response.status().as_u16();
    if status == 204 {
        assert_eq!(
            response
                .headers()
                .get("cache-control")
                .and_then(|v| v.to_str().ok()),
            Some("no-store")
        );
    }
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn list(w: &World, version: u8, user: &str) -> (u16, Value) {
    call(
        w,
        Method::GET,
        &format!("/oauth/api/v{version}/users/{user}/devices"),
        None,
    )
    .await
}

/// POST `.../devices/{device}/{action}` as v`version`; asserts the documented 204.
async fn act(w: &World, version: u8, user: &str, device: &str, action: &str) {
    let (status, body) = call(
        w,
        Method::POST,
        &format!("/oauth/api/v{version}/users/{user}/devices/{device}/{action}"),
        None,
    )
    .await;
    assert_eq!(status, 204, "{action}: {body}");
}

fn keys(object: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = object
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// A second phone for Ann: Android, fingerprint, model and OS version, no push registration.
async fn second_phone(w: &World) -> (DeviceCli, String) {
    let (status, code) = w
        .post("/oauth/api/v4/users/ann/enrollment-codes", &[])
        .await;
    assert_eq!(status, 201, "{code}");
    let phone = DeviceCli::new(&w.gate.url(""));
    let id = phone.enroll(
        code["code"].as_str().unwrap(),
        "bank-app",
        &[
            "--pin",
            "1234",
            "--biometric",
            "--platform",
            "android",
            "--name",
            "Ann's Pixel",
            "--model",
            "Pixel 8",
            "--os-version",
            "15",
        ],
    );
    (phone, id)
}

async fn devices_are_listed_and_withdrawn(store: Store) {
    let w = world(store, "single", "");
    for version in [4, 3] {
        let (status, body) = list(&w, version, "ann").await;
        assert_eq!(
            (status, body),
            (404, json!({"error": "No devices found"})),
            "v{version}"
        );
    }
    let (iphone, iphone_id) = w.phone("ann", ANN_TOKEN).await;
    let (pixel, pixel_id) = second_phone(&w).await;

    // v4: camelCase, optional model and osVersion, oldest first.
    let (status, v4) = list(&w, 4, "ann").await;
    assert_eq!(status, 200, "{v4}");
    let devices = v4["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    let first = &devices[0];
    assert_eq!(first["id"], iphone_id.as_str());
    assert_eq!(
        keys(first),
        [
            "application",
            "createdAt",
            "id",
            "lastLogin",
            "mobileAuthenticationEnabled",
            "name",
            "platform",
            "pushAuthenticationEnabled",
            "tokenTypes"
        ]
    );
    assert_eq!(first["name"], "Ann's iPhone");
    assert_eq!(first["application"], "Bank app");
    assert_eq!(first["platform"], "ios");
    assert!(first["createdAt"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(first["lastLogin"], first["createdAt"]);
    assert_eq!(first["tokenTypes"], json!(["DEFAULT"]));
    assert_eq!(first["mobileAuthenticationEnabled"], true);
    assert_eq!(first["pushAuthenticationEnabled"], true);
    let second = &devices[1];
    assert_eq!(second["id"], pixel_id.as_str());
    assert_eq!(second["model"], "Pixel 8");
    assert_eq!(second["osVersion"], "15");
    assert_eq!(second["platform"], "android");
    assert_eq!(second["tokenTypes"], json!(["DEFAULT", "FINGER_PRINT"]));
    assert_eq!(second["pushAuthenticationEnabled"], false);

    // v3: the same devices in snake_case, without model and osVersion.
    let (status, v3) = list(&w, 3, "ann").await;
    assert_eq!(status, 200, "{v3}");
    let second_v3 = &v3["devices"][1];
    assert_eq!(
        keys(second_v3),
        [
            "application",
            "created_at",
            "id",
            "last_login",
            "mobile_authentication_enabled",
            "name",
            "platform",
            "push_authentication_enabled",
            "token_types"
        ]
    );
    assert_eq!(second_v3["created_at"], second["createdAt"]);
    assert_eq!(second_v3["token_types"], json!(["DEFAULT", "FINGER_PRINT"]));
    assert_eq!(v3["devices"][0]["push_authentication_enabled"], true);

    // Bob's device, addressed through Ann's paths: 204 every time, and nothing changes.
    let (bob, bob_id) = w.phone("bob", BOB_TOKEN).await;
    let (_, bob_before) = list(&w, 4, "bob").await;
    for action in [
        "disableFingerprint",
        "disablePushAuthentication",
        "disableMobileAuthentication",
    ] {
        act(&w, 4, "ann", &bob_id, action).await;
    }
    let (status, _) = call(
        &w,
        Method::DELETE,
        &format!("/oauth/api/v4/users/ann/devices/{bob_id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(
        &w,
        Method::POST,
        "/oauth/api/v3/users/ann/devices",
        Some(&json!({"delete": [bob_id]}).to_string()),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(list(&w, 4, "bob").await, (200, bob_before));
    let (exit, _, err) = bob.run(&["pending"]);
    assert_eq!(exit, 0, "Bob's phone still works: {err}");

    // disableFingerprint drops the biometric key only (and may be repeated).
    act(&w, 4, "ann", &pixel_id, "disableFingerprint").await;
    act(&w, 3, "ann", &pixel_id, "disableFingerprint").await;
    let (_, v4) = list(&w, 4, "ann").await;
    assert_eq!(v4["devices"][1]["tokenTypes"], json!(["DEFAULT"]));
    let (exit, _, err) = pixel.run(&["pending"]);
    assert_eq!(exit, 0, "{err}");

    // disablePushAuthentication: push init falls back to SMS; the phone still signs in.
    act(&w, 4, "ann", &iphone_id, "disablePushAuthentication").await;
    let (_, v4) = list(&w, 4, "ann").await;
    assert_eq!(v4["devices"][0]["pushAuthenticationEnabled"], false);
    assert_eq!(v4["devices"][0]["mobileAuthenticationEnabled"], true);
    let callback = w.callback_url();
    let (status, init) = w
        .post(
            "/oauth/api/v4/authenticate/user",
            &[
                ("type", "login_pin"),
                ("user_id", "ann"),
                ("device_id", &iphone_id),
                ("callback_uri", &callback),
                ("phone_number", PHONE),
            ],
        )
        .await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["auth_method"], "sms");
    assert!(w.apns.received().is_empty());
    let (exit, pending, err) = iphone.run(&["pending"]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(pending["transactions"], json!([]));

    // disableMobileAuthentication: keys gone, the phone's signed requests fail.
    act(&w, 3, "ann", &iphone_id, "disableMobileAuthentication").await;
    let (exit, _, err) = iphone.run(&["pending"]);
    assert_ne!(exit, 0);
    assert!(err.contains("invalid_signature"), "{err}");
    let (_, v4) = list(&w, 4, "ann").await;
    assert_eq!(v4["devices"].as_array().unwrap().len(), 1);
    assert_eq!(v4["devices"][0]["id"], pixel_id.as_str());

    // Bulk delete: ids in any case, unknown ones are simply not there.
    let (status, body) = call(
        &w,
        Method::POST,
        "/oauth/api/v4/users/ann/devices",
        Some(&json!({"delete": [pixel_id.to_ascii_uppercase(), "nonsense"]}).to_string()),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(list(&w, 3, "ann").await.0, 404);
    let (exit, _, _) = pixel.run(&["pending"]);
    assert_ne!(exit, 0);

    // Delete all of Bob's devices; deleting an unknown one is still 204.
    let (status, _) = call(&w, Method::DELETE, "/oauth/api/v4/users/bob/devices", None).await;
    assert_eq!(status, 204);
    assert_eq!(list(&w, 4, "bob").await.0, 404);
    let (exit, _, _) = bob.run(&["pending"]);
    assert_ne!(exit, 0);
    let (status, _) = call(
        &w,
        Method::DELETE,
        &format!("/oauth/api/v3/users/bob/devices/{bob_id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn devices_are_listed_and_withdrawn_on_memory() {
    devices_are_listed_and_withdrawn(Store::Memory).await;
}

#[tokio::test]
async fn devices_are_listed_and_withdrawn_on_redis() {
    devices_are_listed_and_withdrawn(Store::Redis).await;
}

#[tokio::test]
async fn bad_bulk_bodies_and_clients_are_refused() {
    let w = world(Store::Memory, "single", "");
    let (_phone, device_id) = w.phone("ann", ANN_TOKEN).await;
    for body in ["not json", "{\"delete\": \"one\"}", "{}"] {
        let (status, answer) = call(
            &w,
            Method::POST,
            "/oauth/api/v4/users/ann/devices",
            Some(body),
        )
        .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["code"], "invalid_request");
        assert_eq!(answer["details"], json!(["delete"]));
    }

    // The End User API needs its scope; the refusal is the API's usual invalid_client.
    for (id, secret) in [
        (MA_ONLY_CLIENT_ID, MA_ONLY_CLIENT_SECRET),
        (CLIENT_ID, "wrong-secret"),
    ] {
        for (method, path) in [
            (Method::GET, "/oauth/api/v4/users/ann/devices".to_owned()),
            (Method::DELETE, "/oauth/api/v3/users/ann/devices".to_owned()),
            (
                Method::POST,
                format!("/oauth/api/v4/users/ann/devices/{device_id}/disableMobileAuthentication"),
            ),
        ] {
            let response = client()
                .request(method, w.gate.url(&path))
                .basic_auth(id, Some(secret))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 401, "{id} {path}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"], "invalid_client");
        }
    }
    let response = client()
        .get(w.gate.url("/oauth/api/v4/users/ann/devices"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    // Nothing was touched.
    let (status, devices) = list(&w, 4, "ann").await;
    assert_eq!(status, 200);
    assert_eq!(devices["devices"][0]["pushAuthenticationEnabled"], true);
}
