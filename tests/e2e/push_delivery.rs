//! Push delivery through the library's clients (`stepgate::notify::push`), configured from YAML
//! the way the gateway loads it, against the APNs fake (HTTP/2 over TLS with a test CA) and the
//! FCM fake (OAuth token endpoint, HTTP v1 and legacy send): what reaches the provider (JWT,
//! topic, headers, payload without secure data), how answers are classified (unregistered,
//! unavailable, refused tokens), token caching, the outgoing proxy (a forward/CONNECT proxy fake
//! that checks `Proxy-Authorization`), and `stepgate validate` refusing a bad key file.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{Request, Response, StatusCode, Version};
use serde_json::{Value, json};
use stepgate::config::Settings;
use stepgate::domain::clock::ManualClock;
use stepgate::domain::device::Platform;
use stepgate::domain::push::{ApnsEnvironment, PushError, PushMessage, apns_payload};
use stepgate::notify::push::{self, PushSenders};
use tokio::sync::oneshot;

use crate::fakes::apns::FakeApns;
use crate::fakes::fcm::{Api, FakeFcm, LEGACY_SERVER_KEY};
use crate::fakes::push_keys::PushKeys;
use crate::harness::BINARY;

const BUNDLE_ID: &str = "com.example.bank";
const APNS_TOKEN: &str = "7a1c0e5b2f9d4c6e8a0b1d3f5e7c9a2b4d6f8e0a1c3e5b7d9f1a3c5e7b9d1f3a";
const FCM_TOKEN: &str = "fcm-registration-token:APA91bH_stepgate_test_0123456789";
const BASE: &str = "secret_key: \"0123456789abcdef0123456789abcdef\"\n";

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn load(dir: &Path, yaml: &str) -> Settings {
    let env: BTreeMap<&str, &str> = BTreeMap::new();
    stepgate::config::load_str(&format!("{BASE}{yaml}"), &dir.join("config.yaml"), &env)
        .unwrap_or_else(|error| panic!("config: {error}"))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn ios_message(token: &str) -> PushMessage {
    PushMessage {
        token: token.to_owned(),
        platform: Platform::Ios,
        push_config: "apns-main".into(),
        topic: Some(BUNDLE_ID.into()),
        environment: ApnsEnvironment::Development,
        transaction_id: "6f1b7c2e-4d3a-4e8b-9c0d-1a2b3c4d5e6f".into(),
        message: Some("Approve the transfer of EUR 250?".into()),
        expires_at_secs: now_secs() + 300,
    }
}

fn android_message(push_config: &str, token: &str) -> PushMessage {
    PushMessage {
        token: token.to_owned(),
        platform: Platform::Android,
        push_config: push_config.into(),
        topic: None,
        environment: ApnsEnvironment::Production,
        transaction_id: "0c9e8d7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f".into(),
        message: Some("Sign in to the bank?".into()),
        expires_at_secs: now_secs() + 120,
    }
}

fn apns_config(keys: &PushKeys, fake: &FakeApns) -> String {
    format!(
        "push_configs:\n  - id: apns-main\n    platform: ios\n    team_id: {}\n    key_id: {}\n    key_file: \"{}\"\n    endpoint: \"{}\"\n    ca_file: \"{}\"\n",
        crate::fakes::push_keys::TEAM_ID,
        crate::fakes::push_keys::KEY_ID,
        keys.apns_key_file().display(),
        fake.url(),
        fake.ca_file().display(),
    )
}

fn fcm_config(keys: &PushKeys, fake: &FakeFcm) -> String {
    let account = keys.write_service_account(&fake.token_uri());
    format!(
        "push_configs:\n  - {{ id: fcm-main, platform: android, service_account_file: \"{}\", endpoint: \"{}\" }}\n  - {{ id: fcm-legacy, platform: android, legacy_server_key: \"{LEGACY_SERVER_KEY}\", legacy_endpoint: \"{}\" }}\n",
        account.display(),
        fake.url(),
        fake.legacy_url(),
    )
}

#[tokio::test]
async fn apns_receives_a_signed_alert_for_the_bundle_without_secure_data() {
    install_crypto();
    let keys = PushKeys::generate();
    let fake = FakeApns::start(&keys, BUNDLE_ID);
    let settings = load(keys.dir(), &apns_config(&keys, &fake));
    let senders = push::build(&settings).unwrap();

    let message = ios_message(APNS_TOKEN);
    senders.send(&message).await.unwrap();
    senders.send(&message).await.unwrap();

    let received = fake.received();
    assert_eq!(received.len(), 2);
    let push = &received[0];
    assert_eq!(push.token, APNS_TOKEN);
    assert_eq!(push.version, Version::HTTP_2);
    assert_eq!(push.headers["apns-topic"], BUNDLE_ID);
    assert_eq!(push.headers["apns-push-type"], "alert");
    assert_eq!(push.headers["apns-priority"], "10");
    assert_eq!(
        push.headers["apns-expiration"],
        message.expires_at_secs.to_string()
    );
    assert_eq!(push.payload, apns_payload(&message));
    assert_eq!(
        push.payload["aps"]["alert"]["body"],
        "Approve the transfer of EUR 250?"
    );
    assert_eq!(
        push.payload["og_transaction_id"],
        "6f1b7c2e-4d3a-4e8b-9c0d-1a2b3c4d5e6f"
    );
    let keys_sent: Vec<&String> = push.payload.as_object().unwrap().keys().collect();
    assert_eq!(keys_sent, ["aps", "og_message", "og_transaction_id"]);
    // One provider token serves both pushes (Apple throttles re-signing).
    assert_eq!(fake.provider_tokens().len(), 1);
}

#[tokio::test]
async fn apns_classifies_dead_tokens_outages_topics_and_expired_provider_tokens() {
    install_crypto();
    let keys = PushKeys::generate();
    let fake = FakeApns::start(&keys, BUNDLE_ID);
    let settings = load(keys.dir(), &apns_config(&keys, &fake));
    let senders = push::build(&settings).unwrap();

    fake.unregister(APNS_TOKEN);
    assert_eq!(
        senders.send(&ios_message(APNS_TOKEN)).await,
        Err(PushError::Unregistered)
    );
    // A token that is not hexadecimal never names a device.
    assert_eq!(
        senders.send(&ios_message("not/a/token")).await,
        Err(PushError::Unregistered)
    );

    let live = "00ff".repeat(16);
    fake.fail_next(1);
    assert!(matches!(
        senders.send(&ios_message(&live)).await,
        Err(PushError::Unavailable(why)) if why.contains("503")
    ));
    senders.send(&ios_message(&live)).await.unwrap();

    let mut wrong_topic = ios_message(&live);
    wrong_topic.topic = Some("com.example.other".into());
    assert!(matches!(
        senders.send(&wrong_topic).await,
        Err(PushError::Rejected(why)) if why.contains("DeviceTokenNotForTopic")
    ));

    let before = fake.requests();
    fake.expire_next_token();
    senders.send(&ios_message(&live)).await.unwrap();
    assert_eq!(fake.requests(), before + 2, "re-signed and tried once more");
}

#[tokio::test]
async fn apns_rejects_a_provider_token_signed_with_another_key() {
    install_crypto();
    let keys = PushKeys::generate();
    let other = PushKeys::generate();
    let fake = FakeApns::start(&other, BUNDLE_ID);
    let settings = load(keys.dir(), &apns_config(&keys, &fake));
    let senders = push::build(&settings).unwrap();
    assert!(matches!(
        senders.send(&ios_message(APNS_TOKEN)).await,
        Err(PushError::Rejected(why)) if why.contains("InvalidProviderToken")
    ));
    assert!(fake.received().is_empty());
}

#[tokio::test]
async fn fcm_v1_fetches_one_token_for_many_sends_and_sends_data_only() {
    install_crypto();
    let keys = PushKeys::generate();
    let fake = FakeFcm::start(&keys);
    let settings = load(keys.dir(), &fcm_config(&keys, &fake));
    let senders = push::build(&settings).unwrap();

    let message = android_message("fcm-main", FCM_TOKEN);
    senders.send(&message).await.unwrap();
    senders.send(&message).await.unwrap();
    assert_eq!(fake.token_calls(), 1);

    let received = fake.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].api, Api::V1);
    assert_eq!(received[0].token, FCM_TOKEN);
    let body = &received[0].body;
    assert_eq!(body["message"]["android"]["priority"], "HIGH");
    let ttl = body["message"]["android"]["ttl"].as_str().unwrap();
    let seconds: u64 = ttl.strip_suffix('s').unwrap().parse().unwrap();
    assert!((115..=120).contains(&seconds), "{ttl}");
    let data = body["message"]["data"].as_object().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["content"]);
    let content: Value = serde_json::from_str(data["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        content,
        json!({
            "og_transaction_id": "0c9e8d7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f",
            "og_message": "Sign in to the bank?",
        })
    );
    // No notification block: the app renders it, after fetching the details itself.
    assert!(body["message"].get("notification").is_none(), "{body}");
}

#[tokio::test]
async fn fcm_v1_concurrent_sends_share_one_token_request() {
    install_crypto();
    let keys = PushKeys::generate();
    let fake = FakeFcm::start(&keys);
    let settings = load(keys.dir(), &fcm_config(&keys, &fake));
    let senders = Arc::new(push::build(&settings).unwrap());
    let sends = (0..8).map(|i| {
        let senders = senders.clone();
        async move {
            senders
                .send(&android_message("fcm-main", &format!("{FCM_TOKEN}-{i}")))
                .await
        }
    });
    for result in futures::future::join_all(sends).await {
        result.unwrap();
    }
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.received().len(), 8);
}

#[tokio::test]
async fn fcm_v1_refreshes_a_refused_token_once_and_an_old_one_before_it_expires() {
    install_crypto();
    let keys = PushKeys::generate();
    let fake = FakeFcm::start(&keys);
    let settings = load(keys.dir(), &fcm_config(&keys, &fake));
    let clock = Arc::new(ManualClock::starting_now());
    let senders = PushSenders::build(&settings.push_configs, None, clock.clone()).unwrap();
    let message = android_message("fcm-main", FCM_TOKEN);

    senders.send(&message).await.unwrap();
    assert_eq!(fake.token_calls(), 1);

    // FCM refuses the cached token: one new token, one retry.
    fake.revoke_access_tokens();
    senders.send(&message).await.unwrap();
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.sends(), 3);

    // The token is used until 60 s before its hour is up, then replaced unasked.
    clock.advance(Duration::from_secs(3600 - 61));
    senders.send(&message).await.unwrap();
    assert_eq!(fake.token_calls(), 2);
    clock.advance(Duration::from_secs(1));
    senders.send(&message).await.unwrap();
    assert_eq!(fake.token_calls(), 3);
    assert_eq!(fake.received().len(), 4);
}

#[tokio::test]
async fn fcm_v1_classifies_unregistered_tokens_and_outages() {
    install_crypto();
    let keys = PushKeys::generate();
    let fake = FakeFcm::start(&keys);
    let settings = load(keys.dir(), &fcm_config(&keys, &fake));
    let senders = push::build(&settings).unwrap();

    fake.unregister(FCM_TOKEN);
    assert_eq!(
        senders.send(&android_message("fcm-main", FCM_TOKEN)).await,
        Err(PushError::Unregistered)
    );
    assert_eq!(
        senders
            .send(&android_message("fcm-main", "bad token"))
            .await,
        Err(PushError::Unregistered),
        "an INVALID_ARGUMENT about the token"
    );
    fake.fail_next(1);
    assert!(matches!(
        senders.send(&android_message("fcm-main", "live")).await,
        Err(PushError::Unavailable(why)) if why.contains("503")
    ));
    senders
        .send(&android_message("fcm-main", "live"))
        .await
        .unwrap();
    // The other platform's message never reaches FCM.
    let mut ios = android_message("fcm-main", "live");
    ios.platform = Platform::Ios;
    assert_eq!(
        senders.send(&ios).await,
        Err(PushError::UnknownConfig("fcm-main".into()))
    );
}

#[tokio::test]
async fn a_service_account_the_token_endpoint_refuses_is_rejected() {
    install_crypto();
    let keys = PushKeys::generate();
    let other = PushKeys::generate();
    let fake = FakeFcm::start(&other);
    let settings = load(keys.dir(), &fcm_config(&keys, &fake));
    let senders = push::build(&settings).unwrap();
    assert!(matches!(
        senders.send(&android_message("fcm-main", FCM_TOKEN)).await,
        Err(PushError::Rejected(why)) if why.contains("invalid_grant")
    ));
    assert_eq!(fake.sends(), 0);
}

#[tokio::test]
async fn fcm_legacy_sends_with_the_server_key() {
    install_crypto();
    let keys = PushKeys::generate();
    let fake = FakeFcm::start(&keys);
    let settings = load(keys.dir(), &fcm_config(&keys, &fake));
    let senders = push::build(&settings).unwrap();

    senders
        .send(&android_message("fcm-legacy", FCM_TOKEN))
        .await
        .unwrap();
    let received = fake.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].api, Api::Legacy);
    let body = &received[0].body;
    assert_eq!(body["to"], FCM_TOKEN);
    assert_eq!(body["priority"], "high");
    let content: Value = serde_json::from_str(body["data"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        content["og_transaction_id"],
        "0c9e8d7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f"
    );
    assert_eq!(fake.token_calls(), 0);

    fake.unregister(FCM_TOKEN);
    assert_eq!(
        senders
            .send(&android_message("fcm-legacy", FCM_TOKEN))
            .await,
        Err(PushError::Unregistered)
    );

    let wrong_key = fcm_config(&keys, &fake).replace(LEGACY_SERVER_KEY, "AAAAwrong:key");
    let senders = push::build(&load(keys.dir(), &wrong_key)).unwrap();
    assert!(matches!(
        senders.send(&android_message("fcm-legacy", "other")).await,
        Err(PushError::Rejected(why)) if why.contains("401")
    ));
}

/// What the proxy fake saw.
#[derive(Default)]
struct ProxyLog {
    forwarded: Vec<String>,
    tunnels: Vec<String>,
    refused: usize,
}

/// A tiny HTTP/1.1 forward proxy: absolute-form requests are forwarded, `CONNECT` opens a
/// tunnel; both need `Proxy-Authorization: Basic` with the expected credentials (else 407).
struct ForwardProxy {
    addr: SocketAddr,
    log: Arc<Mutex<ProxyLog>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ForwardProxy {
    fn start(username: &str, password: &str) -> Self {
        use base64::Engine as _;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
        );
        let log = Arc::new(Mutex::new(ProxyLog::default()));
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        let (shutdown, stop) = oneshot::channel::<()>();
        let thread_log = log.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(socket).unwrap();
                let upstream = reqwest::Client::builder()
                    .no_proxy()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap();
                let serve = async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let log = thread_log.clone();
                        let expected = expected.clone();
                        let upstream = upstream.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |request| {
                                proxy_request(
                                    request,
                                    log.clone(),
                                    expected.clone(),
                                    upstream.clone(),
                                )
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stop => {}
                }
            });
        });
        Self {
            addr,
            log,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn proxy_request(
    request: Request<hyper::body::Incoming>,
    log: Arc<Mutex<ProxyLog>>,
    expected: String,
    upstream: reqwest::Client,
) -> Result<Response<axum::body::Body>, Infallible> {
    let authorized = request
        .headers()
        .get("proxy-authorization")
        .and_then(|value| value.to_str().ok())
        == Some(expected.as_str());
    if !authorized {
        log.lock().unwrap().refused += 1;
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::PROXY_AUTHENTICATION_REQUIRED;
        response.headers_mut().insert(
            "proxy-authenticate",
            "Basic realm=\"test\"".parse().unwrap(),
        );
        return Ok(response);
    }
    if request.method() == axum::http::Method::CONNECT {
        let target = request
            .uri()
            .authority()
            .map(ToString::to_string)
            .unwrap_or_default();
        log.lock().unwrap().tunnels.push(target.clone());
        tokio::spawn(async move {
            let Ok(upgraded) = hyper::upgrade::on(request).await else {
                return;
            };
            let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                return;
            };
            let mut client = hyper_util::rt::TokioIo::new(upgraded);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
        return Ok(Response::new(axum::body::Body::empty()));
    }
    let uri = request.uri().to_string();
    log.lock().unwrap().forwarded.push(uri.clone());
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(axum::body::Body::new(body), 1 << 20)
        .await
        .unwrap_or_default();
    let mut forward = upstream.request(parts.method, &uri).body(body);
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "proxy-authorization" | "proxy-connection" | "connection" | "host"
        ) {
            forward = forward.header(name, value);
        }
    }
    let answer = match forward.send().await {
        Ok(answer) => answer,
        Err(_) => {
            let mut response = Response::new(axum::body::Body::empty());
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            return Ok(response);
        }
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !matches!(name.as_str(), "connection" | "transfer-encoding") {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    Ok(response.body(axum::body::Body::from(bytes)).unwrap())
}

fn proxy_config(proxy: &ForwardProxy, password: &str) -> String {
    format!(
        "outgoing_proxy: {{ enabled: true, url: \"{}\", username: gate, password: \"{password}\" }}\n",
        proxy.url()
    )
}

#[tokio::test]
async fn pushes_go_through_the_outgoing_proxy_with_its_credentials() {
    install_crypto();
    let keys = PushKeys::generate();
    let fcm = FakeFcm::start(&keys);
    let apns = FakeApns::start(&keys, BUNDLE_ID);
    let proxy = ForwardProxy::start("gate", "proxy-secret");
    let yaml = format!(
        "{}{}{}",
        fcm_config(&keys, &fcm),
        apns_config(&keys, &apns).replace("push_configs:\n", ""),
        proxy_config(&proxy, "proxy-secret"),
    );
    let settings = load(keys.dir(), &yaml);
    assert!(settings.outgoing_proxy.is_some());
    let senders = push::build(&settings).unwrap();

    // Plain-HTTP FCM: the token request and the send are forwarded requests.
    senders
        .send(&android_message("fcm-main", FCM_TOKEN))
        .await
        .unwrap();
    // APNs over TLS: one CONNECT tunnel, HTTP/2 inside it.
    senders.send(&ios_message(APNS_TOKEN)).await.unwrap();
    {
        let log = proxy.log.lock().unwrap();
        assert_eq!(log.refused, 0);
        assert_eq!(
            log.forwarded,
            [
                fcm.token_uri(),
                format!(
                    "{}/v1/projects/{}/messages:send",
                    fcm.url(),
                    crate::fakes::push_keys::PROJECT_ID
                ),
            ]
        );
        assert_eq!(log.tunnels, [apns.url().trim_start_matches("https://")]);
    }
    assert_eq!(fcm.received().len(), 1);
    assert_eq!(apns.received().len(), 1);
    assert_eq!(apns.received()[0].version, Version::HTTP_2);

    // Wrong proxy credentials: the proxy refuses, nothing reaches FCM.
    let wrong = format!(
        "{}{}",
        fcm_config(&keys, &fcm),
        proxy_config(&proxy, "wrong")
    );
    let senders = push::build(&load(keys.dir(), &wrong)).unwrap();
    assert!(
        senders
            .send(&android_message("fcm-main", FCM_TOKEN))
            .await
            .is_err()
    );
    assert_eq!(proxy.log.lock().unwrap().refused, 1);
    assert_eq!(fcm.token_calls(), 1);
}

#[tokio::test]
async fn sms_gateways_go_through_the_outgoing_proxy_too() {
    install_crypto();
    let twilio = crate::fakes::twilio::FakeTwilio::start().await;
    let proxy = ForwardProxy::start("gate", "proxy-secret");
    let dir = tempfile::tempdir().unwrap();
    let settings = load(dir.path(), &proxy_config(&proxy, "proxy-secret"));
    let sms = stepgate::config::settings::SmsSettings {
        gateway: stepgate::config::settings::SmsGateway::Twilio(
            stepgate::config::settings::TwilioSettings {
                account_sid: twilio.account_sid().to_owned(),
                auth_token: twilio.auth_token().to_owned(),
                from_number: "+15005550006".to_owned(),
                base_url: twilio.base_url().parse().unwrap(),
            },
        ),
        timeout: Duration::from_secs(5),
        origin_bound_host: None,
    };
    let proxy_settings = settings.outgoing_proxy.as_ref();
    stepgate::notify::sms::startup_check_with_proxy(&sms, proxy_settings)
        .await
        .unwrap();
    let sender = stepgate::notify::sms::build_with_proxy(&sms, proxy_settings).unwrap();
    sender
        .send(&stepgate::domain::ports::SmsMessage {
            to: "+31612345678".into(),
            from: None,
            body: "Your code: 123456".into(),
        })
        .await
        .unwrap();
    assert_eq!(twilio.messages().len(), 1);
    let log = proxy.log.lock().unwrap();
    assert_eq!(log.forwarded.len(), 2, "{:?}", log.forwarded);
    assert!(log.forwarded[1].ends_with("/Messages.json"));
}

#[test]
fn validate_refuses_unreadable_and_garbage_key_files_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("AuthKey_BROKEN.p8"),
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("account.json"),
        "{\"type\": \"service_account\"",
    )
    .unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "{BASE}push_configs:\n  - {{ id: apns-main, platform: ios, team_id: TEAM0STEP1, key_id: KEY0STEP01, key_file: AuthKey_BROKEN.p8 }}\n  - {{ id: fcm-main, platform: android, service_account_file: account.json }}\n  - {{ id: apns-gone, platform: ios, team_id: TEAM0STEP1, key_id: KEY0STEP01, key_file: missing.p8 }}\n"
        ),
    )
    .unwrap();
    let output = Command::new(BINARY)
        .arg("validate")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let name = config.display().to_string();
    for (line, expected) in [
        (
            3,
            "push_configs[0].key_file: AuthKey_BROKEN.p8 is not an APNs auth key",
        ),
        (
            4,
            "push_configs[1].service_account_file: account.json is not a service-account JSON file",
        ),
        (5, "push_configs[2].key_file: cannot read missing.p8"),
    ] {
        let prefix = format!("{name}:{line}:");
        assert!(
            stderr
                .lines()
                .any(|found| found.starts_with(&prefix) && found.contains(expected)),
            "missing {prefix} ... {expected:?} in:\n{stderr}"
        );
    }
}
