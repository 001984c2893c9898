//! The SMS gateway adapters against fakes of their providers, through the library's public API
//! (`stepgate::notify::sms::{build, startup_check}`): Twilio's success and failure
//! classification, startup checks, timeouts and redirects; the generic HTTP gateway's JSON and
//! form bodies; the file gateway's JSON lines.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::any;
use stepgate::config::settings::{
    BodyTemplate, FileGatewaySettings, HttpAuth, HttpBodyFormat, HttpGatewaySettings, SmsGateway,
    SmsSettings, TwilioSettings,
};
use stepgate::domain::ports::{SendError, SmsMessage};
use stepgate::notify::NotifyError;
use stepgate::notify::sms::{build, startup_check};

use crate::fakes::Server;
use crate::fakes::twilio::{FakeTwilio, Recorded};

const DEFAULT_NUMBER: &str = "+15005550006";

fn sms_settings(gateway: SmsGateway, timeout: Duration) -> SmsSettings {
    SmsSettings {
        gateway,
        timeout,
        origin_bound_host: None,
    }
}

fn twilio_settings(base_url: &str, auth_token: &str, from_number: &str) -> SmsGateway {
    SmsGateway::Twilio(TwilioSettings {
        account_sid: "ACf00dfeedf00dfeedf00dfeedf00dfeed".to_owned(),
        auth_token: auth_token.to_owned(),
        from_number: from_number.to_owned(),
        base_url: base_url.parse().expect("a base URL"),
    })
}

fn against(fake: &FakeTwilio) -> SmsSettings {
    assert_eq!(fake.account_sid(), "ACf00dfeedf00dfeedf00dfeedf00dfeed");
    sms_settings(
        twilio_settings(&fake.base_url(), fake.auth_token(), DEFAULT_NUMBER),
        Duration::from_secs(5),
    )
}

/// The Twilio sender records into this process's one metrics registry, which every test of this
/// binary shares (under `cargo test` they run as threads of one process): tests that send
/// through Twilio take turns, so a test can read exact counts as differences.
async fn counting_twilio_sends() -> tokio::sync::MutexGuard<'static, ()> {
    static TWILIO_SENDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TWILIO_SENDS.lock().await
}

/// A sample's value in this process's metrics (0 when absent).
fn metric(series: &str) -> u64 {
    let (_, body) = stepgate::telemetry::metrics::render();
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |value| value.trim().parse().unwrap())
}

fn message(from: Option<&str>) -> SmsMessage {
    SmsMessage {
        to: "+31612345678".to_owned(),
        from: from.map(str::to_owned),
        body: "Your code: 123456\n\n@bank.example #123456".to_owned(),
    }
}

#[tokio::test]
async fn twilio_sends_from_the_type_sender_or_the_default_number() {
    let _counting = counting_twilio_sends().await;
    let fake = FakeTwilio::start().await;
    let sender = build(&against(&fake)).unwrap();
    assert_eq!(sender.gateway(), "twilio");
    let sent = r#"stepgate_sms_sent_total{gateway="twilio",result="sent"}"#;
    let timed = r#"stepgate_sms_send_duration_seconds_count{gateway="twilio"}"#;
    let (sent_before, timed_before) = (metric(sent), metric(timed));
    sender.send(&message(Some("MyBank"))).await.unwrap();
    sender.send(&message(None)).await.unwrap();
    let body = message(None).body;
    assert_eq!(
        fake.messages(),
        [
            Recorded {
                to: "+31612345678".into(),
                from: "MyBank".into(),
                body: body.clone()
            },
            Recorded {
                to: "+31612345678".into(),
                from: DEFAULT_NUMBER.into(),
                body
            },
        ]
    );
    assert_eq!(metric(sent) - sent_before, 2);
    assert_eq!(metric(timed) - timed_before, 2);
}

#[tokio::test]
async fn a_refused_type_sender_asks_for_the_default_number() {
    let _counting = counting_twilio_sends().await;
    let fake = FakeTwilio::start().await;
    fake.set_refuse_alphanumeric_senders(true);
    let sender = build(&against(&fake)).unwrap();
    let refused = sender.send(&message(Some("MyBank"))).await.unwrap_err();
    assert!(
        matches!(&refused, SendError::SenderRefused(cause) if cause.contains("21212")),
        "{refused:?}"
    );
    assert!(
        !refused.to_string().contains("+316"),
        "Twilio's text quotes numbers and is not passed on: {refused}"
    );
    sender.send(&message(None)).await.unwrap();
    assert_eq!(fake.messages().len(), 1);
    assert_eq!(fake.attempts(), 2);

    // When the default sender itself is refused there is nothing to fall back to.
    let misconfigured = sms_settings(
        twilio_settings(&fake.base_url(), fake.auth_token(), "MyBank"),
        Duration::from_secs(5),
    );
    let error = build(&misconfigured)
        .unwrap()
        .send(&message(None))
        .await
        .unwrap_err();
    assert!(matches!(error, SendError::Rejected(_)), "{error:?}");
}

#[tokio::test]
async fn twilio_failures_are_unavailable_and_bad_credentials_rejected() {
    let _counting = counting_twilio_sends().await;
    let fake = FakeTwilio::start().await;
    fake.set_fail(true);
    let sender = build(&against(&fake)).unwrap();
    let error = sender.send(&message(None)).await.unwrap_err();
    assert!(
        matches!(&error, SendError::Unavailable(cause) if cause.contains("HTTP 500")),
        "{error:?}"
    );
    fake.set_fail(false);

    let wrong = sms_settings(
        twilio_settings(&fake.base_url(), "not-the-token", DEFAULT_NUMBER),
        Duration::from_secs(5),
    );
    let error = build(&wrong)
        .unwrap()
        .send(&message(None))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SendError::Rejected(cause) if cause.contains("credentials") && cause.contains("20003")),
        "{error:?}"
    );
    assert!(!error.to_string().contains("not-the-token"));
    assert!(fake.messages().is_empty());
}

#[tokio::test]
async fn the_startup_check_fails_on_wrong_credentials() {
    let _counting = counting_twilio_sends().await;
    let fake = FakeTwilio::start().await;
    startup_check(&against(&fake)).await.unwrap();

    let wrong = sms_settings(
        twilio_settings(&fake.base_url(), "not-the-token", DEFAULT_NUMBER),
        Duration::from_secs(5),
    );
    let error = startup_check(&wrong).await.unwrap_err();
    assert!(
        matches!(error, NotifyError::Credentials { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("HTTP 401") && text.contains("STEPGATE_TWILIO_AUTH_TOKEN"),
        "{text}"
    );
    assert!(!text.contains("not-the-token"), "{text}");

    // Nothing listens on a port we just released: unreachable, not a credentials problem.
    let closed = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", socket.local_addr().unwrap())
    };
    let unreachable = sms_settings(
        twilio_settings(&closed, fake.auth_token(), DEFAULT_NUMBER),
        Duration::from_secs(2),
    );
    let error = startup_check(&unreachable).await.unwrap_err();
    assert!(
        matches!(error, NotifyError::Unreachable { .. }),
        "{error:?}"
    );
    let error = build(&unreachable)
        .unwrap()
        .send(&message(None))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SendError::Unavailable(cause) if cause.contains("cannot connect")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_slow_provider_times_out_as_unavailable() {
    let _counting = counting_twilio_sends().await;
    let fake = FakeTwilio::start().await;
    fake.set_delay(Duration::from_secs(3));
    let mut settings = against(&fake);
    settings.timeout = Duration::from_millis(300);
    let sender = build(&settings).unwrap();
    let started = Instant::now();
    let error = sender.send(&message(None)).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(&error, SendError::Unavailable(cause) if cause.contains("no answer within 300 ms")),
        "{error:?}"
    );
}

/// Answers every request with a redirect to `target` (same path).
fn redirector(target: String) -> Server {
    Server::start(Router::new().fallback(any(move |uri: axum::http::Uri| {
        let location = format!("{target}{}", uri.path());
        async move {
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, location)],
            )
                .into_response()
        }
    })))
}

#[tokio::test]
async fn redirects_are_never_followed() {
    let _counting = counting_twilio_sends().await;
    let fake = FakeTwilio::start().await;
    let redirect = redirector(fake.base_url());
    let settings = sms_settings(
        twilio_settings(&redirect.url(), fake.auth_token(), DEFAULT_NUMBER),
        Duration::from_secs(5),
    );
    let error = build(&settings)
        .unwrap()
        .send(&message(None))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SendError::Rejected(cause) if cause.contains("redirect")),
        "{error:?}"
    );
    assert_eq!(fake.attempts(), 0, "the redirect was followed");

    let receiver = Receiver::start(StatusCode::OK);
    let redirect = redirector(receiver.server.url());
    let settings = sms_settings(
        http_gateway(
            &format!("{}/send", redirect.url()),
            HttpBodyFormat::Json,
            None,
        ),
        Duration::from_secs(5),
    );
    let error = build(&settings)
        .unwrap()
        .send(&message(None))
        .await
        .unwrap_err();
    assert!(matches!(error, SendError::Rejected(_)), "{error:?}");
    assert!(receiver.requests().is_empty(), "the redirect was followed");
}

/// A webhook that records what it receives and answers a settable status.
struct Receiver {
    server: Server,
    requests: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    status: Arc<Mutex<StatusCode>>,
}

impl Receiver {
    fn start(status: StatusCode) -> Self {
        let requests: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
        let status = Arc::new(Mutex::new(status));
        let (seen, answer) = (requests.clone(), status.clone());
        let router = Router::new().route(
            "/send",
            any(move |headers: HeaderMap, body: Bytes| {
                let (seen, answer) = (seen.clone(), answer.clone());
                async move {
                    seen.lock().expect("requests").push((headers, body));
                    *answer.lock().expect("status")
                }
            }),
        );
        Self {
            server: Server::start(router),
            requests,
            status,
        }
    }

    fn url(&self) -> String {
        format!("{}/send", self.server.url())
    }

    fn requests(&self) -> Vec<(HeaderMap, Bytes)> {
        self.requests.lock().expect("requests").clone()
    }

    fn answer(&self, status: StatusCode) {
        *self.status.lock().expect("status") = status;
    }
}

fn http_gateway(url: &str, format: HttpBodyFormat, auth: Option<HttpAuth>) -> SmsGateway {
    let body = [("from", "{from}"), ("text", "SMS: {body}"), ("to", "{to}")]
        .into_iter()
        .map(|(name, text)| {
            (
                name.to_owned(),
                BodyTemplate::parse(text).expect("a template"),
            )
        })
        .collect();
    SmsGateway::Http(HttpGatewaySettings {
        url: url.parse().expect("a URL"),
        format,
        auth,
        headers: vec![("X-Api-Key".to_owned(), "key-123".to_owned())],
        body,
    })
}

fn header_of<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn the_http_gateway_posts_json_with_bearer_auth() {
    let receiver = Receiver::start(StatusCode::ACCEPTED);
    let settings = sms_settings(
        http_gateway(
            &receiver.url(),
            HttpBodyFormat::Json,
            Some(HttpAuth::Bearer("bearer-xyz".into())),
        ),
        Duration::from_secs(5),
    );
    startup_check(&settings).await.unwrap();
    let sender = build(&settings).unwrap();
    assert_eq!(sender.gateway(), "http");
    sender.send(&message(Some("MyBank"))).await.unwrap();
    sender.send(&message(None)).await.unwrap();

    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    let (headers, body) = &requests[0];
    assert_eq!(header_of(headers, "content-type"), "application/json");
    assert_eq!(header_of(headers, "authorization"), "Bearer bearer-xyz");
    assert_eq!(header_of(headers, "x-api-key"), "key-123");
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "from": "MyBank",
            "text": format!("SMS: {}", message(None).body),
            "to": "+31612345678",
        })
    );
    let without_sender: serde_json::Value = serde_json::from_slice(&requests[1].1).unwrap();
    assert!(without_sender.get("from").is_none(), "{without_sender}");

    receiver.answer(StatusCode::SERVICE_UNAVAILABLE);
    let error = sender.send(&message(None)).await.unwrap_err();
    assert!(matches!(error, SendError::Unavailable(_)), "{error:?}");
    receiver.answer(StatusCode::TOO_MANY_REQUESTS);
    let error = sender.send(&message(None)).await.unwrap_err();
    assert!(matches!(error, SendError::Unavailable(_)), "{error:?}");
    receiver.answer(StatusCode::UNPROCESSABLE_ENTITY);
    let error = sender.send(&message(None)).await.unwrap_err();
    assert!(matches!(error, SendError::Rejected(_)), "{error:?}");
}

#[tokio::test]
async fn the_http_gateway_posts_forms_with_basic_auth() {
    let receiver = Receiver::start(StatusCode::OK);
    let settings = sms_settings(
        http_gateway(
            &receiver.url(),
            HttpBodyFormat::Form,
            Some(HttpAuth::Basic {
                username: "user".into(),
                password: "pass".into(),
            }),
        ),
        Duration::from_secs(5),
    );
    build(&settings)
        .unwrap()
        .send(&message(Some("MyBank")))
        .await
        .unwrap();
    let requests = receiver.requests();
    let (headers, body) = &requests[0];
    assert_eq!(
        header_of(headers, "content-type"),
        "application/x-www-form-urlencoded"
    );
    // base64("user:pass")
    assert_eq!(header_of(headers, "authorization"), "Basic dXNlcjpwYXNz");
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(
        fields,
        [
            ("from".to_owned(), "MyBank".to_owned()),
            ("text".to_owned(), format!("SMS: {}", message(None).body)),
            ("to".to_owned(), "+31612345678".to_owned()),
        ]
    );
}

#[tokio::test]
async fn the_file_gateway_appends_private_json_lines() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.jsonl");
    let settings = sms_settings(
        SmsGateway::File(FileGatewaySettings { path: path.clone() }),
        Duration::from_secs(5),
    );
    startup_check(&settings).await.unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    let sender = build(&settings).unwrap();
    assert_eq!(sender.gateway(), "file");
    sender.send(&message(Some("MyBank"))).await.unwrap();
    sender.send(&message(None)).await.unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["to"], "+31612345678");
    assert_eq!(lines[0]["from"], "MyBank");
    assert_eq!(lines[0]["body"], message(None).body);
    assert!(lines[1]["from"].is_null());
    assert!(lines[0]["time_ms"].as_u64().unwrap() <= lines[1]["time_ms"].as_u64().unwrap());
    let keys: Vec<&str> = text
        .lines()
        .next()
        .unwrap()
        .split('"')
        .skip(1)
        .step_by(2)
        .take(1)
        .collect();
    assert_eq!(keys, ["time_ms"], "time_ms comes first: {text}");

    let missing_folder = sms_settings(
        SmsGateway::File(FileGatewaySettings {
            path: dir.path().join("absent/outbox.jsonl"),
        }),
        Duration::from_secs(5),
    );
    let error = startup_check(&missing_folder).await.unwrap_err();
    assert!(matches!(error, NotifyError::Outbox { .. }), "{error:?}");
}

#[tokio::test]
async fn wrong_twilio_credentials_stop_the_gateway_at_boot() {
    use crate::harness::{BINARY, SECRET, free_addr};

    let fake = FakeTwilio::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let text = format!(
        "listen: {{ proxy: \"{}\", api: \"{}\", metrics: \"{}\" }}\n\
         secret_key: \"{SECRET}\"\n\
         sms:\n  gateway: twilio\n  twilio: {{ account_sid: \"{}\", from_number: \"{DEFAULT_NUMBER}\", base_url: \"{}\" }}\n",
        free_addr(),
        free_addr(),
        free_addr(),
        fake.account_sid(),
        fake.base_url(),
    );
    std::fs::write(&config, text).unwrap();
    let output = std::process::Command::new(BINARY)
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .env("STEPGATE_TWILIO_AUTH_TOKEN", "wrong-token-0000")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("twilio refused the configured credentials"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-token-0000"), "{stderr}");
    assert!(fake.messages().is_empty());
}
