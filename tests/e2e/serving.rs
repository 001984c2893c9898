//! The serving skeleton over the network: liveness, readiness on both stores, metrics, and a
//! graceful stop on SIGTERM.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{GateBuilder, client, redis_url};

async fn get_json(url: &str) -> (u16, Value) {
    let response = client().get(url).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

#[tokio::test]
async fn memory_gate_is_live_ready_and_exports_metrics() {
    let gate = GateBuilder::memory().start();
    let (status, body) = get_json(&gate.url("/health")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    let (status, body) = get_json(&gate.url("/ready")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["store"]["backend"], "memory");
    assert_eq!(body["store"]["reachable"], true);

    let response = client().get(gate.metrics_url()).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    let build = format!(
        "stepgate_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&build), "{text}");
    assert!(
        text.contains("stepgate_store_up{backend=\"memory\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("stepgate_store_operation_duration_seconds_count{backend=\"memory\",operation=\"ping\",outcome=\"ok\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_paths_get_a_json_404() {
    let gate = GateBuilder::memory().start();
    let (status, body) = get_json(&gate.url("/nope")).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn redis_gate_reports_ready() {
    let gate = GateBuilder::redis(redis_url()).start();
    let (status, body) = get_json(&gate.url("/ready")).await;
    assert_eq!(status, 200, "{body}\n{}", gate.log_text());
    assert_eq!(body["store"]["backend"], "redis");
}

#[tokio::test]
async fn sigterm_stops_the_gate_gracefully() {
    let gate = GateBuilder::memory().start();
    assert_eq!(
        client()
            .get(gate.url("/health"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let status = gate.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}");
}
