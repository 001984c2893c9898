//! Hold mode never drops an approval. A request whose client left while it waited stays held:
//! the code given afterwards (from another tab, `/.stepgate/pending`) forwards it there, once.
//! A gate that stops while a request waits answers it (503 `gateway_restarting`, `Retry-After`)
//! instead of closing the socket, and on Redis another gate completes the request. On both
//! stores.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::fakes::upstream::RecordingUpstream;
use crate::harness::{Gate, GateBuilder, Store, client, on_both_stores, signal};
use crate::proxy::{codes, proxy_yaml};

const USER: (&str, &str) = ("hana", "+31622222222");

fn gate_on(builder: GateBuilder, upstream: &RecordingUpstream) -> Gate {
    let gate = builder.yaml(&proxy_yaml(upstream, 0, "hold", "")).start();
    gate.wait_for_proxy();
    gate
}

fn as_user(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request
        .header("x-user-id", USER.0)
        .header("x-user-phone", USER.1)
        .header("accept", "application/json")
}

/// The user's pending hold-mode request, as another tab sees it.
async fn pending(gate: &Gate) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = as_user(client().get(gate.proxy_url("/.stepgate/pending")))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            return response.json().await.unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing pending: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn verify(gate: &Gate, pending: &Value, code: &str) -> reqwest::Response {
    as_user(client().post(gate.proxy_url(pending["verify_uri"].as_str().unwrap())))
        .json(&serde_json::json!({ "sms_code": code }))
        .send()
        .await
        .unwrap()
}

async fn an_approval_after_the_client_left_is_forwarded_where_it_is_given(store: Store) {
    let upstream = RecordingUpstream::start();
    let gate = gate_on(store.builder(), &upstream);
    // The client gives up waiting (its connection closes) before anyone approves.
    let _ = client(); // installs the TLS provider reqwest needs
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    let gave_up = as_user(impatient.post(gate.proxy_url("/transfer")))
        .form(&[("amount", "10"), ("iban", "NL91ABNA0417164300")])
        .send()
        .await;
    assert!(gave_up.is_err(), "the hold should still be waiting");
    let pending = pending(&gate).await;
    assert_eq!(pending["status"], "pending", "{pending}");
    // The gate noticed that nobody waits any more.
    crate::harness::eventually(
        Duration::from_secs(5),
        "the closed client noticed",
        || async {
            gate.log_text()
                .contains("the client of a held request left")
        },
    )
    .await;

    let code = codes(&gate).pop().expect("the SMS");
    let response = verify(&gate, &pending, &code).await;
    assert_eq!(response.status(), StatusCode::OK, "{}", gate.log_text());
    let body = response.text().await.unwrap();
    assert!(body.contains("upstream saw POST /transfer"), "{body}");
    assert_eq!(upstream.seen_on("/transfer").len(), 1);

    // Once: completing again finds nothing to send.
    let again = as_user(client().post(gate.proxy_url(pending["complete_uri"].as_str().unwrap())))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(again.status().is_client_error(), "{}", again.status());
    assert_eq!(upstream.seen_on("/transfer").len(), 1);
}

async fn a_waiting_request_gets_an_answer_when_the_gate_stops(store: Store) {
    let upstream = RecordingUpstream::start();
    let gate = gate_on(store.builder(), &upstream);
    let url = gate.proxy_url("/transfer");
    let waiting = tokio::spawn(async move {
        as_user(client().post(url))
            .form(&[("amount", "10"), ("iban", "NL91ABNA0417164300")])
            .send()
            .await
    });
    pending(&gate).await;
    signal(gate.pid(), "TERM");
    let response = waiting
        .await
        .unwrap()
        .expect("an answer, not a closed socket");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "gateway_restarting", "{body}");
    assert!(upstream.seen_on("/transfer").is_empty());
}

on_both_stores!(
    an_approval_after_the_client_left_is_forwarded_where_it_is_given,
    a_waiting_request_gets_an_answer_when_the_gate_stops,
);

/// On Redis another gate finishes what the stopped one held.
#[tokio::test]
async fn on_redis_another_gate_completes_what_a_stopping_gate_held() {
    let upstream = RecordingUpstream::start();
    let prefix = format!("stepgate-e2e-hold:{}:", uuid::Uuid::new_v4());
    let store = format!(
        "store:\n  backend: redis\n  redis: {{ url: \"{}\", key_prefix: \"{prefix}\" }}\n",
        crate::harness::redis_url()
    );
    let first = gate_on(GateBuilder::store_yaml(store.clone()), &upstream);
    let second = gate_on(GateBuilder::store_yaml(store), &upstream);
    let url = first.proxy_url("/transfer");
    let waiting = tokio::spawn(async move {
        as_user(client().post(url))
            .form(&[("amount", "10"), ("iban", "NL91ABNA0417164300")])
            .send()
            .await
    });
    pending(&first).await;
    let code = codes(&first).pop().expect("the SMS");
    signal(first.pid(), "TERM");
    let stopped = waiting.await.unwrap().expect("an answer");
    assert_eq!(stopped.status(), StatusCode::SERVICE_UNAVAILABLE);

    let pending = pending(&second).await;
    let response = verify(&second, &pending, &code).await;
    assert_eq!(response.status(), StatusCode::OK, "{}", second.log_text());
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("upstream saw POST /transfer")
    );
    assert_eq!(upstream.seen_on("/transfer").len(), 1);
}

/// Sends `head` (request line and headers, each ending in CRLF) and a JSON `body` exactly as
/// written, and returns the status code.
fn raw(gate: &Gate, head: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(gate.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "{head}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Forwarding an approved request from where the approval is given is the owner's alone:
/// another user, a request naming two users, or another spelling of the path gets nothing
/// forwarded and spends none of the owner's attempts; then the owner's code sends the original
/// bytes, once.
async fn nobody_else_completes_a_request_whose_client_left(store: Store) {
    let upstream = RecordingUpstream::start();
    let gate = gate_on(store.builder(), &upstream);
    let _ = client();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    let form = "amount=10&iban=NL91ABNA0417164300";
    let gave_up = as_user(impatient.post(gate.proxy_url("/transfer")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await;
    assert!(gave_up.is_err());
    let pending = pending(&gate).await;
    let tx = pending["transaction_id"].as_str().unwrap().to_owned();
    let code = codes(&gate).pop().expect("the SMS");
    let body = format!("{{\"sms_code\":\"{code}\"}}");
    let mallory = "X-User-Id: mallory\r\nX-User-Phone: +31633333333\r\n";
    let both = format!(
        "X-User-Id: {}\r\nX-User-Id: mallory\r\nX-User-Phone: {}\r\n",
        USER.0, USER.1
    );
    let host = "Host: bank.example\r\nAccept: application/json\r\n";
    let mut attacks = Vec::new();
    for action in ["verify", "complete"] {
        attacks.push(format!(
            "POST /.stepgate/tx/{tx}/{action} HTTP/1.1\r\n{host}{mallory}"
        ));
        attacks.push(format!(
            "POST /.stepgate/tx/{tx}/{action} HTTP/1.1\r\n{host}{both}"
        ));
    }
    for spelling in [
        format!("/.stepgate/tx/{}/verify", tx.to_uppercase()),
        format!("/.stepgate//tx/{tx}/verify"),
        format!("/%2estepgate/tx/{tx}/verify"),
        format!("/.stepgate/tx/{tx}/verify/"),
        format!("/.stepgate/tx/{tx}/./verify"),
    ] {
        attacks.push(format!("POST {spelling} HTTP/1.1\r\n{host}{mallory}"));
    }
    for attack in &attacks {
        let status = tokio::task::block_in_place(|| raw(&gate, attack, &body));
        assert_ne!(status, 200, "{attack}");
        assert!(
            upstream.seen_on("/transfer").is_empty(),
            "forwarded by: {attack}"
        );
    }
    // The owner's code still works: none of the above spent an attempt or took the request.
    let response = verify(&gate, &pending, &code).await;
    assert_eq!(response.status(), StatusCode::OK, "{}", gate.log_text());
    let seen = upstream.seen_on("/transfer");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, form.as_bytes());
    assert_eq!(seen[0].header("x-user-id").as_deref(), Some(USER.0));
}

mod attacks {
    use super::Store;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_nobody_else_completes_a_request_whose_client_left() {
        super::nobody_else_completes_a_request_whose_client_left(Store::Memory).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_nobody_else_completes_a_request_whose_client_left() {
        super::nobody_else_completes_a_request_whose_client_left(Store::Redis).await;
    }
}
