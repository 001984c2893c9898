//! The SMS flow through the Onegini-compatible API, end to end: a portal calls the real gateway
//! binary over HTTP, codes arrive at a fake Twilio that speaks Twilio's wire format, and every
//! documented path (wrong code, resend, limits, expiry, sender-id fallback, bad credentials,
//! provider failure, rate limits) is driven on the memory store and on Redis.

use std::time::Duration;

use serde_json::Value;

use crate::fakes::twilio::FakeTwilio;
use crate::harness::{Gate, GateBuilder, Store, client, on_both_stores};

const CLIENT_ID: &str = "portal";
const CLIENT_SECRET: &str = "portal-secret-0123456789";
/// A second portal of the same gateway: it may not touch the first one's transactions.
const OTHER_ID: &str = "other-portal";
const OTHER_SECRET: &str = "other-portal-secret-0123456789";

fn config(twilio: &FakeTwilio, extra_types: &str, limits: &str) -> String {
    format!(
        "api_clients:
  - {{ client_id: {CLIENT_ID}, client_secret: \"{CLIENT_SECRET}\", apis: [mobile_authentication] }}
  - {{ client_id: enduser-only, client_secret: \"enduser-secret-0123456789\", apis: [end_user] }}
  - {{ client_id: {OTHER_ID}, client_secret: \"{OTHER_SECRET}\", apis: [mobile_authentication] }}
auth_types:
  - name: sms_code
    method: sms
    ttl_seconds: 300
    max_attempts: 3
    max_resends: 2
    sender_id: MyBank
    default_messages: {{ en: \"Your code: {{code}}\", nl: \"Uw code: {{code}}\" }}
  - name: push_then_sms
    method: push
    fallback: sms_code
  - name: push_only
    method: push
{extra_types}callbacks: {{ only_allow_configured: false }}
sms:
  gateway: twilio
  timeout_ms: 2000
  origin_bound_host: bank.example
  twilio: {{ account_sid: \"{sid}\", auth_token: \"{token}\", from_number: \"+15005550006\", base_url: \"{base}\" }}
rate_limits:
{limits}",
        sid = twilio.account_sid(),
        token = twilio.auth_token(),
        base = twilio.base_url(),
    )
}

/// Form fields as a portal sends them.
type Form<'a> = Vec<(&'a str, &'a str)>;

const GENEROUS: &str = "  sms_per_user: { limit: 100, window_seconds: 60 }\n  sms_per_phone: { limit: 100, window_seconds: 60 }\n";

fn gate(store: &Store, yaml: String) -> Gate {
    store.builder().yaml(&yaml).start()
}

/// A portal: posts forms with Basic client credentials.
struct Portal<'a> {
    gate: &'a Gate,
    version: &'static str,
}

impl Portal<'_> {
    async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        self.post_as(path, form, CLIENT_ID, CLIENT_SECRET).await
    }

    async fn post_as(
        &self,
        path: &str,
        form: &[(&str, &str)],
        id: &str,
        secret: &str,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let url = self.gate.url(&format!("/oauth/api/{}{path}", self.version));
        let response = client()
            .post(url)
            .basic_auth(id, Some(secret))
            .form(form)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body, headers)
    }

    async fn init(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let (status, body, _) = self.post("/authenticate/user", form).await;
        (status, body)
    }

    async fn start_sms(&self, user: &str, phone: &str) -> String {
        let (status, body) = self
            .init(&[
                ("type", "sms_code"),
                ("user_id", user),
                ("phone_number", phone),
            ])
            .await;
        assert_eq!(status, 200, "{body}");
        body["transaction_id"]
            .as_str()
            .expect("transaction_id")
            .to_owned()
    }

    async fn verify(&self, user: &str, tx: &str, code: &str) -> (u16, Value) {
        let (status, body, _) = self
            .post(
                &format!("/authenticate/user/{user}/sms"),
                &[("transaction_id", tx), ("sms_code", code)],
            )
            .await;
        (status, body)
    }

    async fn resend(&self, user: &str, tx: &str) -> (u16, Value) {
        let (status, body, _) = self
            .post(
                &format!("/authenticate/user/{user}/sms/resend"),
                &[("transaction_id", tx)],
            )
            .await;
        (status, body)
    }
}

/// The six digits of the newest SMS to `phone`.
fn last_code(twilio: &FakeTwilio, phone: &str) -> String {
    let messages = twilio.messages();
    let message = messages
        .iter()
        .rev()
        .find(|m| m.to == phone)
        .expect("an SMS to that phone");
    let digits: String = message
        .body
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take(6)
        .collect();
    assert_eq!(digits.len(), 6, "no code in {:?}", message.body);
    digits
}

fn wrong_code(right: &str) -> String {
    let first = right.as_bytes()[0] - b'0';
    format!("{}{}", (first + 1) % 10, &right[1..])
}

fn error_code(body: &Value) -> &str {
    body["error_code"].as_str().unwrap_or("<none>")
}

async fn the_documented_flow(store: Store) {
    let twilio = FakeTwilio::start().await;
    let gate = gate(&store, config(&twilio, "", GENEROUS));
    let portal = Portal {
        gate: &gate,
        version: "v4",
    };

    let (status, body) = portal
        .init(&[
            ("type", "sms_code"),
            ("user_id", "ann"),
            ("phone_number", "+31612345678"),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["auth_method"], "sms");
    assert_eq!(body["time_to_live"], 300_000);
    let tx = body["transaction_id"].as_str().unwrap().to_owned();

    let first = last_code(&twilio, "+31612345678");
    let sms = twilio.messages().last().cloned().unwrap();
    assert_eq!(sms.from, "MyBank");
    assert_eq!(
        sms.body,
        format!("Your code: {first}\n\n@bank.example #{first}")
    );

    let (status, body) = portal.verify("ann", &tx, &wrong_code(&first)).await;
    assert_eq!((status, error_code(&body)), (404, "3003"), "{body}");

    let (status, body) = portal.resend("ann", &tx).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(twilio.messages().len(), 2);
    let second = last_code(&twilio, "+31612345678");
    if second != first {
        let (status, body) = portal.verify("ann", &tx, &first).await;
        assert_eq!(
            (status, error_code(&body)),
            (404, "3003"),
            "the old code stops working after a resend"
        );
    }
    let (status, body) = portal.verify("ann", &tx, &second).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["transaction_id"], tx.as_str());

    let (status, body) = portal.verify("ann", &tx, &second).await;
    assert_eq!(
        (status, error_code(&body)),
        (404, "3004"),
        "a code is usable once"
    );

    let metrics = gate.metrics_text().await;
    assert!(
        metrics.contains("stepgate_transactions_started_total{method=\"sms\",type=\"sms_code\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("stepgate_transactions_finished_total{method=\"sms\",outcome=\"approved\",type=\"sms_code\"} 1"), "{metrics}");
    assert!(
        metrics.contains("stepgate_sms_sent_total{gateway=\"twilio\",result=\"sent\"} 2"),
        "{metrics}"
    );
    let log = gate.log_text();
    assert!(
        log.contains("SMS_AUTH_INIT_MESSAGE_SENT") && log.contains("SMS_AUTH_AUTHENTICATED"),
        "{log}"
    );
    assert!(
        !log.contains(&first) && !log.contains(&second),
        "codes must never be logged"
    );
    assert!(
        !log.contains("+31612345678"),
        "phone numbers are masked in logs"
    );
}

async fn limits_and_expiry(store: Store) {
    let twilio = FakeTwilio::start().await;
    let extra = "  - { name: two_tries, method: sms, max_attempts: 2, max_resends: 1, default_messages: { en: \"{code}\" } }
  - { name: no_resend, method: sms, default_messages: { en: \"{code}\" } }
  - { name: brief, method: sms, ttl_seconds: 1, default_messages: { en: \"{code}\" } }
";
    let gate = gate(&store, config(&twilio, extra, GENEROUS));
    let portal = Portal {
        gate: &gate,
        version: "v4",
    };
    let start = |kind: &'static str, phone: &'static str| {
        let portal = &portal;
        async move {
            let (status, body) = portal
                .init(&[("type", kind), ("user_id", "bob"), ("phone_number", phone)])
                .await;
            assert_eq!(status, 200, "{body}");
            body["transaction_id"].as_str().unwrap().to_owned()
        }
    };

    // Attempts: the second wrong code invalidates the transaction, then even the right one fails.
    let tx = start("two_tries", "+31600000001").await;
    let code = last_code(&twilio, "+31600000001");
    assert_eq!(
        error_code(&portal.verify("bob", &tx, &wrong_code(&code)).await.1),
        "3003"
    );
    assert_eq!(
        error_code(&portal.verify("bob", &tx, &wrong_code(&code)).await.1),
        "3003"
    );
    assert_eq!(
        error_code(&portal.verify("bob", &tx, &code).await.1),
        "3004"
    );

    // Resends: one allowed, then 3006/403; a type without resends answers 3006 at once.
    let tx = start("two_tries", "+31600000002").await;
    assert_eq!(portal.resend("bob", &tx).await.0, 204);
    let (status, body) = portal.resend("bob", &tx).await;
    assert_eq!((status, error_code(&body)), (403, "3006"));
    let tx = start("no_resend", "+31600000003").await;
    let (status, body) = portal.resend("bob", &tx).await;
    assert_eq!((status, error_code(&body)), (403, "3006"));

    // The user id in the path must be the transaction's; a stranger learns nothing.
    let code = last_code(&twilio, "+31600000003");
    let (status, body) = portal.verify("mallory", &tx, &code).await;
    assert_eq!((status, error_code(&body)), (404, "3004"));
    assert_eq!(
        portal.verify("bob", &tx, &code).await.0,
        200,
        "the stranger's try cost no attempt"
    );

    // The TTL covers everything.
    let tx = start("brief", "+31600000004").await;
    let code = last_code(&twilio, "+31600000004");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (status, body) = portal.verify("bob", &tx, &code).await;
    assert_eq!((status, error_code(&body)), (404, "3004"), "expired");
}

async fn requests_and_credentials(store: Store) {
    let twilio = FakeTwilio::start().await;
    let gate = gate(&store, config(&twilio, "", GENEROUS));
    let v3 = Portal {
        gate: &gate,
        version: "v3",
    };

    // v3 paths, language defaults, push falling back to SMS.
    let (status, body) = v3
        .init(&[
            ("type", "push_then_sms"),
            ("user_id", "cas"),
            ("phone_number", "+32470000000"),
            ("language_code", "nl"),
        ])
        .await;
    assert_eq!(
        (status, body["auth_method"].as_str()),
        (200, Some("sms")),
        "{body}"
    );
    let code = last_code(&twilio, "+32470000000");
    assert!(
        twilio
            .messages()
            .last()
            .unwrap()
            .body
            .starts_with(&format!("Uw code: {code}"))
    );
    assert_eq!(
        v3.verify("cas", body["transaction_id"].as_str().unwrap(), &code)
            .await
            .0,
        200
    );

    // A message without {code}: the SMS holds only the code (plus the origin-bound line).
    let (status, _) = v3
        .init(&[
            ("type", "sms_code"),
            ("user_id", "cas"),
            ("phone_number", "+32470000001"),
            ("message", "Log in"),
        ])
        .await;
    assert_eq!(status, 200);
    let code = last_code(&twilio, "+32470000001");
    assert_eq!(
        twilio.messages().last().unwrap().body,
        format!("{code}\n\n@bank.example #{code}")
    );

    // Documented errors.
    let long = "x".repeat(156);
    let cases: Vec<(Form, u16, &str)> = vec![
        (
            vec![("user_id", "cas"), ("phone_number", "+32470000002")],
            400,
            "1003",
        ),
        (
            vec![
                ("type", "nope"),
                ("user_id", "cas"),
                ("phone_number", "+32470000002"),
            ],
            404,
            "3005",
        ),
        (vec![("type", "sms_code"), ("user_id", "cas")], 400, "3001"),
        (
            vec![("type", "sms_code"), ("phone_number", "+32470000002")],
            400,
            "1003",
        ),
        (
            vec![
                ("type", "sms_code"),
                ("user_id", "cas"),
                ("phone_number", "0470"),
            ],
            400,
            "1003",
        ),
        (
            vec![
                ("type", "sms_code"),
                ("user_id", "cas"),
                ("phone_number", "+32470000002"),
                ("message", &long),
            ],
            400,
            "1005",
        ),
    ];
    for (form, expected_status, expected_code) in cases {
        let (status, body) = v3.init(&form).await;
        assert_eq!(
            (status, error_code(&body)),
            (expected_status, expected_code),
            "{form:?} -> {body}"
        );
    }
    // A push type without fallback and without its target: the reference's "missing app id"
    // failure, a parameter error. With a target but no enrolled device: nothing can start.
    let (status, body) = v3.init(&[("type", "push_only"), ("user_id", "cas")]).await;
    assert_eq!((status, error_code(&body)), (400, "1003"), "{body}");
    let (status, body) = v3
        .init(&[
            ("type", "push_only"),
            ("user_id", "cas"),
            ("app_id", "bank-app"),
            ("callback_uri", "https://portal.example/cb"),
        ])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    // With only_allow_configured off, a callback_uri still never names an internal address.
    for uri in [
        "http://169.254.169.254/latest/meta-data",
        "http://127.0.0.1:8081/admin/v1/reload",
        "http://[::1]/cb",
        "http://[::ffff:10.0.0.7]/cb",
        "http://192.168.1.10/cb",
        "http://0.0.0.0:9100/metrics",
    ] {
        let (status, body) = v3
            .init(&[
                ("type", "push_only"),
                ("user_id", "cas"),
                ("app_id", "bank-app"),
                ("callback_uri", uri),
            ])
            .await;
        assert_eq!((status, error_code(&body)), (400, "1003"), "{uri}: {body}");
    }

    // Client authentication: OAuth error body and no-cache headers.
    let v4 = Portal {
        gate: &gate,
        version: "v4",
    };
    for (id, secret) in [
        (CLIENT_ID, "wrong-secret"),
        ("nobody", CLIENT_SECRET),
        ("enduser-only", "enduser-secret-0123456789"),
    ] {
        let (status, body, headers) = v4
            .post_as("/authenticate/user", &[("type", "sms_code")], id, secret)
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{id}"
        );
        assert_eq!(
            headers["cache-control"],
            "no-cache, no-store, must-revalidate"
        );
        assert_eq!(headers["pragma"], "no-cache");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
    }
    let url = gate.url("/oauth/api/v4/authenticate/user");
    let form = [
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
        ("type", "sms_code"),
        ("user_id", "dee"),
        ("phone_number", "+32470000009"),
    ];
    let response = client().post(url).form(&form).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "form credentials work too");
    assert_eq!(twilio.messages().len(), 3);
}

async fn provider_trouble_and_abuse(store: Store) {
    let twilio = FakeTwilio::start().await;
    let limits = "  sms_per_user: { limit: 100, window_seconds: 60 }\n  sms_per_phone: { limit: 3, window_seconds: 60 }\n";
    let gate = gate(&store, config(&twilio, "", limits));
    let portal = Portal {
        gate: &gate,
        version: "v4",
    };

    // Twilio refuses the alphanumeric sender: retried once from the configured number.
    twilio.set_refuse_alphanumeric_senders(true);
    let tx = portal.start_sms("eve", "+447700900001").await;
    let sent = twilio.messages();
    assert_eq!(sent.len(), 1, "the refused attempt is not delivered");
    assert_eq!(sent[0].from, "+15005550006");
    assert_eq!(
        portal
            .verify("eve", &tx, &last_code(&twilio, "+447700900001"))
            .await
            .0,
        200
    );
    twilio.set_refuse_alphanumeric_senders(false);

    // Twilio down: 3002/503, the transaction fails, the metric counts it.
    twilio.set_fail(true);
    let (status, body) = portal
        .init(&[
            ("type", "sms_code"),
            ("user_id", "eve"),
            ("phone_number", "+447700900002"),
        ])
        .await;
    assert_eq!((status, error_code(&body)), (503, "3002"), "{body}");
    twilio.set_fail(false);
    let metrics = gate.metrics_text().await;
    assert!(
        metrics.contains("stepgate_sms_sent_total{gateway=\"twilio\",result=\"unavailable\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("outcome=\"failed\""), "{metrics}");

    // SMS pumping: the fourth SMS to one number within the window is refused with Retry-After,
    // whichever user asks, and a resend counts too.
    let tx = portal.start_sms("eve", "+447700900003").await;
    assert_eq!(portal.resend("eve", &tx).await.0, 204);
    portal.start_sms("frank", "+447700900003").await;
    let (status, body, headers) = portal
        .post(
            "/authenticate/user",
            &[
                ("type", "sms_code"),
                ("user_id", "gus"),
                ("phone_number", "+447700900003"),
            ],
        )
        .await;
    assert_eq!(status, 429, "{body}");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let (status, _) = portal.resend("eve", &tx).await;
    assert_eq!(status, 429, "resends are counted against the same limit");
}

/// A transaction answers only to the API client that started it: another client of the same
/// gateway, with the right user, the right code and valid credentials, gets the unknown-transaction
/// answer for verify and resend, and costs the owner no attempt and no SMS.
async fn another_clients_transaction_is_unknown(store: Store) {
    let twilio = FakeTwilio::start().await;
    let gate = gate(&store, config(&twilio, "", GENEROUS));
    let portal = Portal {
        gate: &gate,
        version: "v4",
    };
    let tx = portal.start_sms("ann", "+31612340001").await;
    let code = last_code(&twilio, "+31612340001");
    for attempt in 0..4 {
        let (status, body, _) = portal
            .post_as(
                "/authenticate/user/ann/sms",
                &[("transaction_id", &tx), ("sms_code", &code)],
                OTHER_ID,
                OTHER_SECRET,
            )
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (404, "3004"),
            "verify #{attempt} by another client: {body}"
        );
    }
    let (status, body, _) = portal
        .post_as(
            "/authenticate/user/ann/sms/resend",
            &[("transaction_id", &tx)],
            OTHER_ID,
            OTHER_SECRET,
        )
        .await;
    assert_eq!((status, error_code(&body)), (404, "3004"), "{body}");
    assert_eq!(
        twilio.messages().len(),
        1,
        "another client's resend sends nothing"
    );

    // The owner still has every attempt: the right code on the first try.
    let (status, body) = portal.verify("ann", &tx, &code).await;
    assert_eq!(status, 200, "{body}");
}

on_both_stores!(
    the_documented_flow,
    limits_and_expiry,
    requests_and_credentials,
    provider_trouble_and_abuse,
    another_clients_transaction_is_unknown
);

#[tokio::test]
async fn a_disabled_feature_answers_1000() {
    let twilio = FakeTwilio::start().await;
    let gate = GateBuilder::memory()
        .yaml(&format!(
            "{}features: {{ mobile_authentication: false }}\n",
            config(&twilio, "", GENEROUS)
        ))
        .start();
    let (status, body) = Portal {
        gate: &gate,
        version: "v4",
    }
    .init(&[("type", "sms_code")])
    .await;
    assert_eq!((status, error_code(&body)), (404, "1000"));
}

/// Concurrency cannot buy guesses through the API either: 40 simultaneous wrong codes against a
/// transaction that allows 3 attempts get exactly 3 "wrong code" answers, and the right code is
/// refused afterwards.
#[tokio::test]
async fn concurrent_wrong_codes_get_exactly_the_allowed_attempts() {
    let twilio = FakeTwilio::start().await;
    let gate = gate(&Store::Redis, config(&twilio, "", GENEROUS));
    let portal = Portal {
        gate: &gate,
        version: "v4",
    };
    let tx = portal.start_sms("ivy", "+31600000077").await;
    let right = last_code(&twilio, "+31600000077");
    let wrong = wrong_code(&right);
    let guesses = (0..40).map(|_| portal.verify("ivy", &tx, &wrong));
    // join_all polls them together, so the requests are in flight at once.
    let answers = futures::future::join_all(guesses).await;
    let wrong_answers = answers
        .iter()
        .filter(|(_, body)| error_code(body) == "3003")
        .count();
    // The rest are refused unchecked: the transaction has ended (3004), or the account guard
    // already counts five attempts in flight for the user (429, retry in a moment).
    let refused_answers = answers
        .iter()
        .filter(|(status, body)| {
            error_code(body) == "3004" || (*status == 429 && body["error"] == "too_many_requests")
        })
        .count();
    assert_eq!((wrong_answers, refused_answers), (3, 37), "{answers:?}");
    assert_eq!(
        error_code(&portal.verify("ivy", &tx, &right).await.1),
        "3004"
    );
}
