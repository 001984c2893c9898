//! Identity a client cannot forge, end to end: the real binary in front of a recording upstream,
//! with each `proxy.identity` source. A protected `POST /transfer` answers 401
//! `step_up_required` when the identity holds (the SMS goes to the phone the source vouched for),
//! 401 `login_required` when it does not, 400 `ambiguous_request` when the credentials can be read
//! two ways and 503 when the source cannot be asked. JWTs are minted in-test (HS256, ES256 from a
//! local JWKS server, EdDSA from a PEM file); the introspection endpoint is a local fake that
//! counts its calls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::IntoResponse;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fakes::Server;
use crate::fakes::upstream::RecordingUpstream;
use crate::harness::{Gate, GateBuilder, client, free_addr};

const HS_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
const PHONE: &str = "+31612345678";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A gate with `/transfer` behind an SMS step-up, codes to `outbox.jsonl`, and `proxy_extra`
/// (identity and trusted proxies) in its proxy section.
fn gate(upstream: &RecordingUpstream, proxy_extra: &str, files: &[(&str, &str)]) -> Gate {
    let yaml = format!(
        "auth_types:
  - {{ name: sms_code, method: sms, ttl_seconds: 60, max_attempts: 3, default_messages: {{ en: \"Code: {{code}}\" }} }}
sms: {{ gateway: file, file: {{ path: outbox.jsonl }} }}
rate_limits:
  sms_per_user: {{ limit: 100, window_seconds: 60 }}
  sms_per_phone: {{ limit: 100, window_seconds: 60 }}
policies:
  - name: transfers
    match: {{ methods: [POST], paths: [\"/transfer\"] }}
    require: {{ auth_type: sms_code, freshness_seconds: 300 }}
proxy:
  upstream: {{ address: \"{upstream}\" }}
  reload_interval_seconds: 0
{proxy_extra}",
        upstream = upstream.address()
    );
    let mut builder = GateBuilder::memory().yaml(&yaml);
    for (name, contents) in files {
        builder = builder.file(name, contents);
    }
    let gate = builder.start();
    gate.wait_for_proxy();
    gate
}

/// `POST /transfer` as an API client with `headers`: the status and the `error` of the body.
async fn transfer(gate: &Gate, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let mut request = client()
        .post(gate.proxy_url("/transfer"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body("amount=10");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

fn step_up() -> (StatusCode, String) {
    (StatusCode::UNAUTHORIZED, "step_up_required".to_owned())
}

fn login() -> (StatusCode, String) {
    (StatusCode::UNAUTHORIZED, "login_required".to_owned())
}

fn ambiguous() -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, "ambiguous_request".to_owned())
}

fn unavailable() -> (StatusCode, String) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable".to_owned(),
    )
}

/// The numbers SMS codes went to, oldest first.
fn sms_recipients(gate: &Gate) -> Vec<String> {
    std::fs::read_to_string(gate.dir().join("outbox.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            value["to"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims(user: &str) -> Value {
    json!({"sub": user, "phone_number": PHONE, "iss": "https://idp.test", "aud": "bank", "exp": now() + 600})
}

#[tokio::test]
async fn identity_jwt_hs256_valid_forged_expired_early_wrong_audience_crit_and_duplicates() {
    let upstream = RecordingUpstream::start();
    let gate = gate(
        &upstream,
        &format!(
            "  identity:
    jwt: {{ cookie: session, algorithm: HS256, secret: \"{HS_SECRET}\", issuer: \"https://idp.test\", audience: bank, leeway_seconds: 0 }}
"
        ),
        &[],
    );
    let good = hs256(&claims("alice"), HS_SECRET);
    let cookie = format!("session={good}");
    let bearer = format!("Bearer {good}");
    assert_eq!(transfer(&gate, &[("cookie", &cookie)]).await, step_up());
    assert_eq!(
        transfer(&gate, &[("authorization", &bearer)]).await,
        step_up()
    );
    assert_eq!(sms_recipients(&gate), [PHONE, PHONE]);

    let with = |change: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut claims = claims("alice");
        change(claims.as_object_mut().unwrap());
        hs256(&claims, HS_SECRET)
    };
    let mut crit_header = Header::new(Algorithm::HS256);
    crit_header.crit = Some(vec!["exp".into()]);
    let rejected = [
        (
            "forged",
            hs256(&claims("alice"), "another-secret-of-at-least-32-bytes!!"),
        ),
        (
            "expired",
            with(&|c| drop(c.insert("exp".into(), json!(now() - 60)))),
        ),
        (
            "not yet valid",
            with(&|c| drop(c.insert("nbf".into(), json!(now() + 300)))),
        ),
        (
            "wrong audience",
            with(&|c| drop(c.insert("aud".into(), json!("shop")))),
        ),
        (
            "wrong issuer",
            with(&|c| drop(c.insert("iss".into(), json!("https://evil.test")))),
        ),
        ("no audience", with(&|c| drop(c.remove("aud")))),
        ("no issuer", with(&|c| drop(c.remove("iss")))),
        (
            "crit",
            encode(
                &crit_header,
                &claims("alice"),
                &EncodingKey::from_secret(HS_SECRET.as_bytes()),
            )
            .unwrap(),
        ),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (what, token) in &rejected {
        assert_eq!(
            transfer(&gate, &[("cookie", &format!("session={token}"))]).await,
            login(),
            "{what}"
        );
        assert_eq!(
            transfer(&gate, &[("authorization", &format!("Bearer {token}"))]).await,
            login(),
            "{what} as bearer"
        );
    }
    assert_eq!(transfer(&gate, &[]).await, login(), "missing");

    let other = hs256(&claims("mallory"), HS_SECRET);
    let duplicated = [
        vec![("cookie", format!("session={good}; session={other}"))],
        vec![
            ("cookie", format!("session={other}")),
            ("cookie", format!("app=1; session={good}")),
        ],
        vec![
            ("authorization", format!("Bearer {good}")),
            ("authorization", format!("Bearer {good}")),
        ],
        vec![
            ("cookie", format!("session={good}")),
            ("authorization", format!("Bearer {other}")),
        ],
        vec![
            ("cookie", format!("session={good}")),
            ("authorization", "Basic YWxpY2U6cHc=".to_owned()),
        ],
    ];
    for headers in &duplicated {
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        assert_eq!(transfer(&gate, &pairs).await, ambiguous(), "{headers:?}");
    }
    // The same token in the cookie and the bearer reads one way.
    assert_eq!(
        transfer(&gate, &[("cookie", &cookie), ("authorization", &bearer)]).await,
        step_up()
    );
    assert!(upstream.seen_on("/transfer").is_empty());
    // No token or cookie value reaches the log.
    let log = gate.log_text();
    assert!(!log.contains(&good) && !log.contains(&other), "{log}");
}

/// A JWKS server whose key set the test swaps, counting fetches.
struct Jwks {
    server: Server,
    set: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

impl Jwks {
    fn start(set: Value) -> Self {
        let set = Arc::new(Mutex::new(set));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (set.clone(), fetches.clone());
        let router = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (served, counted) = (served.clone(), counted.clone());
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    axum::Json(served.lock().unwrap().clone())
                }
            }),
        );
        Self {
            server: Server::start(router),
            set,
            fetches,
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A fresh P-256 key: its JWK (with `kid`) and a signer.
fn es256_key(kid: &str) -> (Value, EncodingKey) {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let signing = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let point = signing.verifying_key().to_encoded_point(false);
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": B64.encode(point.x().unwrap()), "y": B64.encode(point.y().unwrap()),
    });
    let pem = signing.to_pkcs8_pem(LineEnding::LF).unwrap();
    (jwk, EncodingKey::from_ec_pem(pem.as_bytes()).unwrap())
}

fn es256(kid: &str, key: &EncodingKey, user: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    encode(&header, &claims(user), key).unwrap()
}

#[tokio::test]
async fn identity_jwt_es256_from_a_jwks_url_refreshes_on_an_unknown_kid_rate_limited() {
    let (jwk1, key1) = es256_key("k1");
    let (jwk2, key2) = es256_key("k2");
    let jwks = Jwks::start(json!({"keys": [jwk1.clone()]}));
    let upstream = RecordingUpstream::start();
    let gate = gate(
        &upstream,
        &format!(
            "  identity:
    jwt: {{ algorithm: ES256, jwks_url: \"{}/jwks.json\", jwks_min_refetch_seconds: 1, issuer: \"https://idp.test\", audience: bank }}
",
            jwks.server.url()
        ),
        &[],
    );
    let bearer = |token: &str| format!("Bearer {token}");
    assert_eq!(
        transfer(
            &gate,
            &[("authorization", &bearer(&es256("k1", &key1, "alice")))]
        )
        .await,
        step_up()
    );
    assert_eq!(jwks.fetches(), 1);
    // Alg confusion: an HS256 token "signed" with the public key material.
    let mut confused = Header::new(Algorithm::HS256);
    confused.kid = Some("k1".into());
    let forged = encode(
        &confused,
        &claims("alice"),
        &EncodingKey::from_secret(jwk1.to_string().as_bytes()),
    )
    .unwrap();
    assert_eq!(
        transfer(&gate, &[("authorization", &bearer(&forged))]).await,
        login()
    );
    // A token for k1 signed with another key is forged.
    assert_eq!(
        transfer(
            &gate,
            &[("authorization", &bearer(&es256("k1", &key2, "alice")))]
        )
        .await,
        login()
    );

    // The issuer rotates to k2. Right after a fetch, an unknown kid does not cause another.
    *jwks.set.lock().unwrap() = json!({"keys": [jwk1, jwk2]});
    let rotated = es256("k2", &key2, "bob");
    assert_eq!(
        transfer(&gate, &[("authorization", &bearer(&rotated))]).await,
        login()
    );
    assert_eq!(jwks.fetches(), 1, "rate-limited");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        transfer(&gate, &[("authorization", &bearer(&rotated))]).await,
        step_up()
    );
    assert_eq!(jwks.fetches(), 2, "refreshed once for the unknown kid");
    // Forged kids now cost no fetch at all.
    for kid in ["k7", "k8", "k9"] {
        let token = es256(kid, &key2, "mallory");
        assert_eq!(
            transfer(&gate, &[("authorization", &bearer(&token))]).await,
            login()
        );
    }
    assert_eq!(jwks.fetches(), 2);
    assert!(upstream.seen_on("/transfer").is_empty());
}

#[tokio::test]
async fn identity_jwt_jwks_endpoint_down_fails_closed_with_503() {
    let (_, key) = es256_key("k1");
    let upstream = RecordingUpstream::start();
    let gate = gate(
        &upstream,
        &format!(
            "  identity:
    jwt: {{ algorithm: ES256, jwks_url: \"http://{}/jwks.json\", jwks_timeout_ms: 500 }}
",
            free_addr()
        ),
        &[],
    );
    let token = format!("Bearer {}", es256("k1", &key, "alice"));
    assert_eq!(
        transfer(&gate, &[("authorization", &token)]).await,
        unavailable()
    );
    assert_eq!(
        transfer(&gate, &[("authorization", &token)]).await,
        unavailable()
    );
    // Unprotected traffic does not need an identity.
    let open = client().get(gate.proxy_url("/open")).send().await.unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    assert!(upstream.seen_on("/transfer").is_empty());
}

#[tokio::test]
async fn identity_jwt_eddsa_from_a_pem_file() {
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    // SubjectPublicKeyInfo of an Ed25519 key: a fixed prefix and the 32 key bytes.
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(signing.verifying_key().as_bytes());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    let der = {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        signing.to_pkcs8_der().unwrap()
    };
    let upstream = RecordingUpstream::start();
    let gate = gate(
        &upstream,
        "  identity:
    jwt: { cookie: id, algorithm: EdDSA, public_key_file: ed25519.pem, user_claim: uid, phone_claim: tel }
",
        &[("ed25519.pem", &pem)],
    );
    let token = |claims: &Value| {
        encode(
            &Header::new(Algorithm::EdDSA),
            claims,
            &EncodingKey::from_ed_der(der.as_bytes()),
        )
        .unwrap()
    };
    let good = token(&json!({"uid": "dave", "tel": PHONE, "exp": now() + 600}));
    assert_eq!(
        transfer(&gate, &[("cookie", &format!("id={good}"))]).await,
        step_up()
    );
    assert_eq!(sms_recipients(&gate), [PHONE]);
    let expired = token(&json!({"uid": "dave", "exp": now() - 120}));
    assert_eq!(
        transfer(&gate, &[("cookie", &format!("id={expired}"))]).await,
        login()
    );
    let hs = hs256(&json!({"uid": "dave", "exp": now() + 600}), &pem);
    assert_eq!(
        transfer(&gate, &[("cookie", &format!("id={hs}"))]).await,
        login()
    );
}

#[tokio::test]
async fn identity_headers_from_an_untrusted_peer_are_ignored_and_never_reach_the_upstream() {
    let upstream = RecordingUpstream::start();
    // 127.0.0.1 (the test client) is not a trusted proxy here.
    let gate = gate(
        &upstream,
        "  trusted_proxies: [\"10.0.0.0/8\"]
  identity: { header: X-User-Id, phone_header: X-User-Phone }
",
        &[],
    );
    let forged = [("x-user-id", "victim"), ("x-user-phone", "+31600000000")];
    assert_eq!(transfer(&gate, &forged).await, login());
    assert!(sms_recipients(&gate).is_empty());
    let open = client()
        .get(gate.proxy_url("/account"))
        .header("x-user-id", "victim")
        .header("X-User-Phone", "+31600000000")
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    let seen = upstream.seen_on("/account");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-user-id"), None);
    assert_eq!(seen[0].header("x-user-phone"), None);
    assert_eq!(
        seen[0].header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn identity_headers_from_a_trusted_peer_are_believed_once() {
    let upstream = RecordingUpstream::start();
    let gate = gate(
        &upstream,
        "  trusted_proxies: [\"127.0.0.1/32\", \"::1/128\"]
  identity: { header: X-User-Id, phone_header: X-User-Phone }
",
        &[],
    );
    let user = [("x-user-id", "erin"), ("x-user-phone", PHONE)];
    assert_eq!(transfer(&gate, &user).await, step_up());
    assert_eq!(sms_recipients(&gate), [PHONE]);
    let twice = [("x-user-id", "erin"), ("x-user-id", "victim")];
    assert_eq!(transfer(&gate, &twice).await, ambiguous());
    let phones = [
        ("x-user-id", "erin"),
        ("x-user-phone", PHONE),
        ("x-user-phone", "+31600000000"),
    ];
    assert_eq!(transfer(&gate, &phones).await, ambiguous());
    assert_eq!(transfer(&gate, &[]).await, login());
    // The trusted layer's headers reach the app.
    let open = client()
        .get(gate.proxy_url("/account"))
        .header("x-user-id", "erin")
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    assert_eq!(
        upstream.seen_on("/account")[0]
            .header("x-user-id")
            .as_deref(),
        Some("erin")
    );
}

/// The app's "who am I" endpoint: `session=good` is carol, `session=broken` a 500, anything else
/// 401. It counts calls and keeps the Cookie header it was sent.
struct WhoAmI {
    server: Server,
    calls: Arc<AtomicUsize>,
    cookies: Arc<Mutex<Vec<String>>>,
}

impl WhoAmI {
    fn start() -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let cookies = Arc::new(Mutex::new(Vec::new()));
        let (counted, kept) = (calls.clone(), cookies.clone());
        let router = axum::Router::new().route(
            "/api/me",
            axum::routing::get(move |headers: HeaderMap| {
                let (counted, kept) = (counted.clone(), kept.clone());
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let cookie = headers
                        .get("cookie")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    kept.lock().unwrap().push(cookie.clone());
                    match cookie.as_str() {
                        "session=good" => {
                            axum::Json(json!({"user": {"id": "carol", "phone": PHONE}}))
                                .into_response()
                        }
                        "session=broken" => AxumStatus::INTERNAL_SERVER_ERROR.into_response(),
                        _ => AxumStatus::UNAUTHORIZED.into_response(),
                    }
                }
            }),
        );
        Self {
            server: Server::start(router),
            calls,
            cookies,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn identity_introspection_valid_rejected_cached_duplicated_and_down() {
    let app = WhoAmI::start();
    let upstream = RecordingUpstream::start();
    let gate = gate(
        &upstream,
        &format!(
            "  identity:
    introspection: {{ url: \"{}/api/me\", cookies: [session], user_field: user.id, phone_field: user.phone, cache_seconds: 60, timeout_ms: 1000 }}
",
            app.server.url()
        ),
        &[],
    );
    let good = [("cookie", "theme=dark; session=good")];
    assert_eq!(transfer(&gate, &good).await, step_up());
    assert_eq!(app.calls(), 1);
    assert_eq!(
        app.cookies.lock().unwrap()[0],
        "session=good",
        "only the session cookie"
    );
    assert_eq!(transfer(&gate, &good).await, step_up());
    assert_eq!(app.calls(), 1, "the answer is cached");
    assert_eq!(sms_recipients(&gate), [PHONE, PHONE]);

    assert_eq!(
        transfer(&gate, &[("cookie", "session=stolen")]).await,
        login()
    );
    assert_eq!(
        transfer(&gate, &[("cookie", "session=broken")]).await,
        unavailable()
    );
    assert_eq!(
        transfer(&gate, &[("cookie", "session=broken")]).await,
        unavailable()
    );
    assert_eq!(app.calls(), 4, "failures are not cached");
    assert_eq!(transfer(&gate, &[("cookie", "theme=dark")]).await, login());
    assert_eq!(app.calls(), 4, "no session, no call");

    let duplicated = [("cookie", "session=good"), ("cookie", "session=other")];
    assert_eq!(transfer(&gate, &duplicated).await, ambiguous());
    let with_bearer = [("cookie", "session=good"), ("authorization", "Bearer x")];
    assert_eq!(transfer(&gate, &with_bearer).await, ambiguous());
    assert_eq!(app.calls(), 4);

    // The endpoint goes away: uncached sessions fail closed.
    drop(app);
    assert_eq!(
        transfer(&gate, &[("cookie", "session=fresh")]).await,
        unavailable()
    );
    assert!(upstream.seen_on("/transfer").is_empty());
    let log = gate.log_text();
    assert!(
        !log.contains("session=good") && !log.contains(PHONE),
        "{log}"
    );
}
