//! Identity sources against forged, expired, early, missing, duplicated and wrong-audience
//! credentials, through the real binary: a protected `POST /transfer` starts a step-up
//! (401 `step_up_required`) only for a credential stepgate can trust; anything else is
//! `login_required` or, for two credentials, 400 `ambiguous_request`. Identity headers from a
//! client that is not a trusted proxy are ignored and never reach the app.

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fakes::upstream::RecordingUpstream;
use crate::harness::{Gate, GateBuilder, client};

const SECRET: &str = "jwt-secret-0123456789abcdef0123456789";

fn yaml(upstream: &RecordingUpstream, proxy: &str) -> String {
    format!(
        "auth_types:
  - {{ name: sms_code, method: sms, ttl_seconds: 60, default_messages: {{ en: \"Code: {{code}}\" }} }}
sms: {{ gateway: file, file: {{ path: outbox.jsonl }} }}
policies:
  - name: transfers
    match: {{ methods: [POST], paths: [\"/transfer\"] }}
    require: {{ auth_type: sms_code }}
proxy:
  upstream: {{ address: \"{upstream}\" }}
{proxy}",
        upstream = upstream.address()
    )
}

fn start(upstream: &RecordingUpstream, proxy: &str) -> Gate {
    let gate = GateBuilder::memory().yaml(&yaml(upstream, proxy)).start();
    gate.wait_for_proxy();
    gate
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(header: &Header, claims: &Value, secret: &str) -> String {
    encode(header, claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn hs256(claims: Value) -> String {
    sign(&Header::new(Algorithm::HS256), &claims, SECRET)
}

/// The error code of a protected POST carrying `headers`.
async fn transfer(gate: &Gate, headers: &[(&str, String)]) -> (StatusCode, String) {
    let mut request = client()
        .post(gate.proxy_url("/transfer"))
        .header("accept", "application/json")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=1");
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn only_a_token_that_verifies_for_this_issuer_and_audience_starts_a_step_up() {
    let upstream = RecordingUpstream::start();
    let gate = start(
        &upstream,
        &format!(
            "  identity: {{ jwt: {{ cookie: session, algorithm: HS256, secret: \"{SECRET}\", issuer: idp, audience: bank }} }}\n"
        ),
    );
    let good = |extra: Value| {
        let mut claims = json!({"sub": "ann", "phone_number": "+31612345678", "exp": now() + 600, "iss": "idp", "aud": "bank"});
        for (key, value) in extra.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(key);
            } else {
                claims[key] = value.clone();
            }
        }
        hs256(claims)
    };
    let cookie = |token: &str| ("cookie", format!("session={token}"));
    let bearer = |token: &str| ("authorization", format!("Bearer {token}"));

    let valid = good(json!({}));
    assert_eq!(
        transfer(&gate, &[cookie(&valid)]).await,
        (StatusCode::UNAUTHORIZED, "step_up_required".to_owned())
    );
    assert_eq!(
        transfer(&gate, &[bearer(&valid)]).await.1,
        "step_up_required"
    );

    let claims = json!({"sub": "ann", "exp": now() + 600, "iss": "idp", "aud": "bank"});
    let mut critical = Header::new(Algorithm::HS256);
    critical.crit = Some(vec!["exp".into()]);
    let rejected = [
        (
            "forged",
            sign(
                &Header::new(Algorithm::HS256),
                &claims,
                "another-secret-0123456789abcdef",
            ),
        ),
        ("expired", good(json!({"exp": now() - 3600}))),
        ("not yet valid", good(json!({"nbf": now() + 3600}))),
        ("no audience", good(json!({"aud": null}))),
        ("wrong audience", good(json!({"aud": "shop"}))),
        ("no issuer", good(json!({"iss": null}))),
        ("wrong issuer", good(json!({"iss": "evil"}))),
        ("no expiry", good(json!({"exp": null}))),
        ("crit", sign(&critical, &claims, SECRET)),
        (
            "alg none",
            format!("eyJhbGciOiJub25lIn0.{}.", valid.split('.').nth(1).unwrap()),
        ),
        ("garbage", "not-a-token".to_owned()),
    ];
    for (what, token) in &rejected {
        assert_eq!(
            transfer(&gate, &[cookie(token)]).await,
            (StatusCode::UNAUTHORIZED, "login_required".to_owned()),
            "{what}"
        );
    }
    assert_eq!(transfer(&gate, &[]).await.1, "login_required");

    let bob = hs256(json!({"sub": "bob", "exp": now() + 600, "iss": "idp", "aud": "bank"}));
    let ambiguous = [
        vec![("cookie", format!("session={valid}; session={bob}"))],
        vec![cookie(&valid), bearer(&bob)],
        vec![
            cookie(&valid),
            ("authorization", "Basic Ym9iOnNlY3JldA==".to_owned()),
        ],
    ];
    for headers in &ambiguous {
        assert_eq!(
            transfer(&gate, headers).await,
            (StatusCode::BAD_REQUEST, "ambiguous_request".to_owned()),
            "{headers:?}"
        );
    }
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn identity_headers_count_only_from_trusted_proxies_and_never_reach_the_app_otherwise() {
    let upstream = RecordingUpstream::start();
    // Loopback, where the test connects from, is not the trusted layer here.
    let gate = start(
        &upstream,
        "  trusted_proxies: [\"10.0.0.0/8\"]\n  identity: { header: X-User-Id, phone_header: X-User-Phone }\n",
    );
    let forged = [
        ("x-user-id", "ann".to_owned()),
        ("x-user-phone", "+31600000666".to_owned()),
    ];
    assert_eq!(
        transfer(&gate, &forged).await,
        (StatusCode::UNAUTHORIZED, "login_required".to_owned())
    );
    let outbox = std::fs::read_to_string(gate.dir().join("outbox.jsonl")).unwrap_or_default();
    assert!(
        outbox.is_empty(),
        "a code went to the forged phone: {outbox}"
    );
    let response = client()
        .get(gate.proxy_url("/account"))
        .header("x-user-id", "ann")
        .header("X-User-Phone", "+31600000666")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = upstream.seen_on("/account");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-user-id"), None);
    assert_eq!(seen[0].header("x-user-phone"), None);
}

#[tokio::test]
async fn from_the_trusted_layer_headers_identify_and_a_duplicate_is_refused() {
    let upstream = RecordingUpstream::start();
    let gate = start(
        &upstream,
        "  trusted_proxies: [\"127.0.0.1/32\", \"::1/128\"]\n  identity: { header: X-User-Id, phone_header: X-User-Phone }\n",
    );
    let one = [
        ("x-user-id", "ann".to_owned()),
        ("x-user-phone", "+31612345678".to_owned()),
    ];
    assert_eq!(transfer(&gate, &one).await.1, "step_up_required");
    let twice = [
        ("x-user-id", "ann".to_owned()),
        ("x-user-id", "bob".to_owned()),
        ("x-user-phone", "+31612345678".to_owned()),
    ];
    assert_eq!(
        transfer(&gate, &twice).await,
        (StatusCode::BAD_REQUEST, "ambiguous_request".to_owned())
    );
    let response = client()
        .get(gate.proxy_url("/account"))
        .header("x-user-id", "ann")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        upstream.seen_on("/account")[0]
            .header("x-user-id")
            .as_deref(),
        Some("ann")
    );
}

#[test]
fn header_identity_without_trusted_proxies_does_not_start() {
    let upstream = RecordingUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let text = format!(
        "secret_key: \"{}\"\n{}",
        crate::harness::SECRET,
        yaml(&upstream, "  identity: { header: X-User-Id }\n")
    );
    std::fs::write(&config, text).unwrap();
    let output = std::process::Command::new(crate::harness::BINARY)
        .args(["validate"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("proxy.identity.header: identity headers need proxy.trusted_proxies"),
        "{stderr}"
    );
}
