//! Store outage and transport: the gate boots without Redis, reports not ready (503) while Redis is away, and
//! recovers by itself each time Redis returns, with no restart of the gate; and `rediss://` speaks TLS.

use std::time::Duration;

use crate::harness::{GateBuilder, ScratchRedis, client, eventually};

async fn ready_status(url: &str) -> u16 {
    match client().get(url).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test]
async fn readiness_follows_redis_down_and_up() {
    let mut redis = ScratchRedis::new();
    let gate = GateBuilder::redis(redis.url()).start();
    let ready = gate.url("/ready");

    assert_eq!(ready_status(&ready).await, 503, "Redis has not started yet");
    assert_eq!(
        ready_status(&gate.url("/health")).await,
        200,
        "liveness does not depend on the store"
    );

    redis.start();
    eventually(
        Duration::from_secs(15),
        "ready after Redis starts",
        || async { ready_status(&ready).await == 200 },
    )
    .await;

    redis.stop();
    eventually(Duration::from_secs(15), "503 after Redis stops", || async {
        ready_status(&ready).await == 503
    })
    .await;

    redis.start();
    eventually(
        Duration::from_secs(15),
        "ready again after Redis returns",
        || async { ready_status(&ready).await == 200 },
    )
    .await;

    let metrics = gate.metrics_text().await;
    assert!(
        metrics.contains("stepgate_store_up{backend=\"redis\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("stepgate_store_operation_duration_seconds_count{backend=\"redis\",operation=\"ping\",outcome=\"error\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn rediss_urls_speak_tls_to_redis() {
    let mut redis = ScratchRedis::with_tls();
    redis.start();
    let ca = redis.ca_file().display().to_string();
    let gate = GateBuilder::redis(redis.url())
        .env("SSL_CERT_FILE", ca)
        .start();
    let ready = gate.url("/ready");
    eventually(
        Duration::from_secs(15),
        "ready over TLS with the certificate verified",
        || async { ready_status(&ready).await == 200 },
    )
    .await;
}

/// The API fails closed while Redis is away (503 JSON, nothing sent) and works again when it
/// returns, with no restart.
#[tokio::test]
async fn the_api_fails_closed_without_redis_and_recovers() {
    let twilio = crate::fakes::twilio::FakeTwilio::start().await;
    let mut redis = ScratchRedis::new();
    redis.start();
    let yaml = format!(
        "api_clients: [ {{ client_id: portal, client_secret: \"portal-secret-0123456789\", apis: [mobile_authentication] }} ]
auth_types: [ {{ name: sms_code, method: sms, default_messages: {{ en: \"{{code}}\" }} }} ]
sms: {{ gateway: twilio, twilio: {{ account_sid: \"{}\", auth_token: \"{}\", from_number: \"+15005550006\", base_url: \"{}\" }} }}
",
        twilio.account_sid(),
        twilio.auth_token(),
        twilio.base_url()
    );
    let gate = GateBuilder::redis(redis.url()).yaml(&yaml).start();
    let init = || async {
        let response = client()
            .post(gate.url("/oauth/api/v4/authenticate/user"))
            .basic_auth("portal", Some("portal-secret-0123456789"))
            .form(&[
                ("type", "sms_code"),
                ("user_id", "ann"),
                ("phone_number", "+31612340000"),
            ])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(init().await.0, 200);

    redis.stop();
    let (status, body) = init().await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{body}"
    );
    assert_eq!(
        twilio.messages().len(),
        1,
        "nothing is sent while the store is down"
    );

    redis.start();
    let mut recovered = false;
    for _ in 0..150 {
        if init().await.0 == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the API works again once Redis is back");
}
