//! Typed number matching on every path, on the memory store and on Redis (issue #13, item 4):
//! the API's init answer, the proxy's JSON challenge, its page, and hold mode's pending view all
//! show the number; the phone gets no choices and must type it (`stepgate device approve
//! --number`); a wrong number fails the transaction and counts for the account guard; the
//! right one approves and the held request reaches the app.

use std::time::Duration;

use serde_json::Value;

use crate::device_cli::DeviceCli;
use crate::fakes::upstream::RecordingUpstream;
use crate::harness::{Store, client, client_without_redirects, eventually, on_both_stores};
use crate::push_flow::{self, ANN_TOKEN, World};

/// The push world plus a proxy in front of `upstream`: `/transfer` needs `login_typed` (push,
/// typed number matching) in `mode`.
fn world(store: Store, upstream: &RecordingUpstream, mode: &str) -> World {
    push_flow::world(
        store,
        "single",
        &format!(
            "policies:
  - name: transfers
    match: {{ methods: [POST], paths: [\"/transfer\"] }}
    require: {{ auth_type: login_typed }}
    message: \"Approve the transfer\"
    mode: {mode}
proxy:
  upstream: {{ address: \"{upstream}\" }}
  trusted_proxies: [\"127.0.0.1/32\", \"::1/128\"]
  identity: {{ header: X-User-Id }}
",
            upstream = upstream.address()
        ),
    )
}

fn transfer(w: &World) -> reqwest::RequestBuilder {
    client()
        .post(w.gate.proxy_url("/transfer"))
        .header("x-user-id", "ann")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=10")
}

fn wrong(number: u64) -> String {
    (if number == 99 { 10 } else { number + 1 }).to_string()
}

async fn the_api_shows_the_number_and_the_phone_must_type_it(store: Store) {
    let upstream = RecordingUpstream::start();
    let w = world(store, &upstream, "challenge");
    let (phone, device_id) = w.phone("ann", ANN_TOKEN).await;
    let callback = w.callback_url();
    let form = [
        ("type", "login_typed"),
        ("user_id", "ann"),
        ("device_id", device_id.as_str()),
        ("callback_uri", callback.as_str()),
    ];
    let init = || w.post("/oauth/api/v4/authenticate/user", &form);
    let (status, started) = init().await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["number_matching"], "type", "{started}");
    let number = started["number"].as_u64().unwrap();
    let tx = started["transaction_id"].as_str().unwrap().to_owned();

    let (exit, shown, err) = phone.run(&["show", &tx]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(shown["number_matching"], "type", "{shown}");
    assert_eq!(
        shown["number_choices"],
        Value::Null,
        "no hint at the number: {shown}"
    );
    let (exit, _, err) = phone.run(&["approve", &tx]);
    assert_ne!(exit, 0);
    assert!(err.contains("--number"), "{err}");
    let (exit, answer, err) = phone.run(&["approve", &tx, "--number", &wrong(number)]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "failed");
    let (_, result) = w
        .get(&format!("/oauth/api/v4/authenticate/transaction/{tx}"))
        .await;
    assert_eq!(
        result["not_authenticated_reason"]["reason"], "invalid_answer",
        "{result}"
    );

    let (status, started) = init().await;
    assert_eq!(status, 200, "{started}");
    let tx = started["transaction_id"].as_str().unwrap().to_owned();
    let number = started["number"].as_u64().unwrap().to_string();
    let (exit, answer, err) = phone.run(&["approve", &tx, "--number", &number]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "approved");
}

async fn the_proxy_challenge_page_and_hold_mode_show_the_number(store: Store) {
    let upstream = RecordingUpstream::start();
    let w = world(store, &upstream, "challenge");
    let (phone, _) = w.phone("ann", ANN_TOKEN).await;
    w.gate.wait_for_proxy();

    // An API client's challenge carries the number.
    let response = transfer(&w)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let challenge: Value = response.json().await.unwrap();
    assert_eq!(challenge["auth_method"], "push", "{challenge}");
    assert_eq!(challenge["number_matching"], "type", "{challenge}");
    let number = challenge["number"].as_u64().unwrap();
    let tx = challenge["transaction_id"].as_str().unwrap().to_owned();

    // A browser's page shows it.
    let response = client_without_redirects()
        .post(w.gate.proxy_url("/transfer"))
        .header("x-user-id", "ann")
        .header("accept", "text/html")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=10")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        303,
        "the browser is sent to the page"
    );
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = client()
        .get(w.gate.proxy_url(&location))
        .header("x-user-id", "ann")
        .header("accept", "text/html")
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Type <strong>"), "{page}");

    // A wrong typed number fails the API client's transaction; nothing reaches the app.
    let (exit, answer, err) = phone.run(&["approve", &tx, "--number", &wrong(number)]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "failed");
    assert!(upstream.seen_on("/transfer").is_empty());
}

async fn hold_mode_shows_the_number_and_forwards_after_the_typed_approval(store: Store) {
    let upstream = RecordingUpstream::start();
    let w = world(store, &upstream, "hold");
    let (phone, _) = w.phone("ann", ANN_TOKEN).await;
    w.gate.wait_for_proxy();
    let held = tokio::spawn(transfer(&w).timeout(Duration::from_secs(30)).send());
    let pending_url = w.gate.proxy_url("/.stepgate/pending");
    let pending = || {
        client()
            .get(&pending_url)
            .header("x-user-id", "ann")
            .header("accept", "application/json")
            .send()
    };
    eventually(
        Duration::from_secs(10),
        "the held request is pending",
        || async { pending().await.unwrap().status().as_u16() == 200 },
    )
    .await;
    let view: Value = pending().await.unwrap().json().await.unwrap();
    assert_eq!(view["number_matching"], "type", "{view}");
    let number = view["number"].as_u64().unwrap().to_string();
    let tx = view["transaction_id"].as_str().unwrap().to_owned();
    let (exit, answer, err) = phone.run(&["approve", &tx, "--number", &number]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "approved");
    let response = held.await.unwrap().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(upstream.seen_on("/transfer").len(), 1);
    drop(DeviceCli::new(&w.gate.url("")));
}

on_both_stores!(
    the_api_shows_the_number_and_the_phone_must_type_it,
    the_proxy_challenge_page_and_hold_mode_show_the_number,
    hold_mode_shows_the_number_and_forwards_after_the_typed_approval,
);
