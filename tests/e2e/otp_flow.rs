//! OTP (QR) authentication end to end, on the memory store and on Redis: a portal starts an OTP
//! login over the v4 API (no user), gets the code, its deep link and a QR code; the reference
//! phone client (`stepgate device otp`, the real binary) submits it, signed; the portal's
//! callback arrives and the result names who scanned. Then the refusals: a code used twice, a
//! tampered code (counted against `max_attempts`), an expired transaction, a `user_id` on an
//! OTP init, the deny path; and the sidecar's browser-free OTP step-up (JSON challenge with the
//! code, the page's QR, the phone submits, `complete` forwards the held request exactly once;
//! hold mode too).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::device_cli::DeviceCli;
use crate::fakes::callback::FakePortal;
use crate::fakes::upstream::RecordingUpstream;
use crate::harness::{Gate, Store, client, eventually};

const CLIENT_ID: &str = "portal";
const CLIENT_SECRET: &str = "portal-secret-0123456789";
const INIT: &str = "/oauth/api/v4/authenticate/user";

struct World {
    gate: Gate,
    portal: FakePortal,
}

/// A gate with two OTP types (`qr_login`: 60 s, 3 attempts; `short_qr`: 2 s), the `bank-app`
/// application, the deep-link scheme `bankapp`, a fake portal for callbacks, and `extra` YAML.
fn world(store: Store, extra: &str) -> World {
    let portal = FakePortal::start();
    let yaml = format!(
        "api_clients:
  - {{ client_id: {CLIENT_ID}, client_secret: \"{CLIENT_SECRET}\", apis: [mobile_authentication, end_user] }}
  - {{ client_id: other-portal, client_secret: \"other-portal-secret-0123456789\", apis: [mobile_authentication] }}
auth_types:
  - name: qr_login
    method: otp
    ttl_seconds: 60
    max_attempts: 3
    default_messages: {{ en: \"Sign in to the bank\" }}
  - name: short_qr
    method: otp
    ttl_seconds: 2
    default_messages: {{ en: \"Quick sign-in\" }}
applications:
  - id: bank-app
    name: Bank app
    versions:
      - {{ version: \"1.0\", platform: ios }}
otp: {{ deep_link_scheme: bankapp }}
callbacks:
  only_allow_configured: true
  endpoints:
    - {{ url: \"{callback}\", username: portal-cb, password: \"cb-secret-0123\" }}
{extra}",
        callback = portal.url("/ma-callback"),
    );
    World {
        gate: store.builder().yaml(&yaml).start(),
        portal,
    }
}

impl World {
    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let response = client()
            .post(self.gate.url(path))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(form)
            .send()
            .await
            .expect("api request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn result(&self, tx: &str) -> Value {
        let response = client()
            .get(
                self.gate
                    .url(&format!("/oauth/api/v4/authenticate/transaction/{tx}")),
            )
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .send()
            .await
            .expect("result request");
        assert_eq!(response.status().as_u16(), 200);
        response.json().await.expect("result JSON")
    }

    /// A phone enrolled (signing key only) for `user`.
    async fn phone(&self, user: &str) -> DeviceCli {
        let (status, code) = self
            .post(&format!("/oauth/api/v4/users/{user}/enrollment-codes"), &[])
            .await;
        assert_eq!(status, 201, "enrollment code: {code}");
        let phone = DeviceCli::new(&self.gate.url(""));
        phone.enroll(
            code["code"].as_str().unwrap(),
            "bank-app",
            &["--platform", "ios"],
        );
        phone
    }

    /// Starts a portal OTP login of `auth_type`; returns the init answer.
    async fn init(&self, auth_type: &str) -> Value {
        let callback = self.portal.url("/ma-callback");
        let (status, init) = self
            .post(
                INIT,
                &[
                    ("type", auth_type),
                    ("callback_uri", &callback),
                    ("message", "Sign in to the bank portal"),
                ],
            )
            .await;
        assert_eq!(status, 200, "init: {init}\n{}", self.gate.log_text());
        init
    }
}

/// The code with one bit of its secret flipped: same transaction, wrong secret.
fn tampered(code: &str) -> String {
    let mut bytes = URL_SAFE_NO_PAD.decode(code).unwrap();
    bytes[31] ^= 0x01;
    URL_SAFE_NO_PAD.encode(bytes)
}

async fn portal_otp_login(store: Store) {
    let w = world(store, "");
    let ann = w.phone("ann").await;
    let init = w.init("qr_login").await;
    assert_eq!(init["auth_method"], "otp");
    assert_eq!(init["time_to_live"], 60_000);
    let tx = init["transaction_id"].as_str().unwrap().to_owned();
    let code = init["otp"].as_str().unwrap().to_owned();
    let deep_link = init["deep_link"].as_str().unwrap().to_owned();

    // The code: the transaction id's 16 bytes, then a 128-bit secret, base64url.
    assert_eq!(code.len(), 43);
    let bytes = URL_SAFE_NO_PAD.decode(&code).unwrap();
    assert_eq!(bytes.len(), 32);
    assert_eq!(
        uuid::Uuid::from_slice(&bytes[..16]).unwrap().to_string(),
        tx
    );
    assert_eq!(deep_link, format!("bankapp://otp?c={code}"));
    let svg = init["qr_svg"].as_str().unwrap();
    assert!(svg.starts_with("<svg class=\"qr\""), "{svg}");
    // Only an HMAC is kept: the code appears in no log line.
    assert!(!w.gate.log_text().contains(&code[22..]));

    // Pending: nobody has answered yet.
    let pending = w.result(&tx).await;
    assert_eq!(pending["is_authenticated"], false);
    assert_eq!(pending["user_id"], Value::Null);

    // A tampered secret is refused and counted (3 attempts: 2 left).
    let (exit, _, err) = ann.run(&["otp", &tampered(&code)]);
    assert_ne!(exit, 0);
    assert!(err.contains("invalid_otp"), "{err}");
    assert!(err.contains("\"remaining_attempts\":2"), "{err}");

    // The phone scans the QR code (the deep link) and approves.
    let (exit, answer, err) = ann.run(&["otp", &deep_link]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["transaction_id"], tx.as_str());
    assert_eq!(answer["status"], "approved");
    assert_eq!(answer["message"], "Sign in to the bank portal");

    eventually(Duration::from_secs(10), "the callback", || async {
        !w.portal.received().is_empty()
    })
    .await;
    let calls = w.portal.received();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].json["transaction_id"], tx.as_str());
    assert!(
        calls[0]
            .authorization
            .as_deref()
            .unwrap_or_default()
            .starts_with("Basic ")
    );

    let result = w.result(&tx).await;
    assert_eq!(result["is_authenticated"], true, "{result}");
    assert_eq!(result["user_id"], "ann");
    assert_eq!(result["authentication_method"], "otp");

    // Single use: the same code again is refused.
    let (exit, _, err) = ann.run(&["otp", &code]);
    assert_ne!(exit, 0);
    assert!(err.contains("HTTP 409 not_pending"), "{err}");
}

#[tokio::test]
async fn portal_otp_login_on_memory() {
    portal_otp_login(Store::Memory).await;
}

#[tokio::test]
async fn portal_otp_login_on_redis() {
    portal_otp_login(Store::Redis).await;
}

/// The result of a transaction is the starting client's alone: another client of the gateway
/// (valid credentials, the right transaction id) gets the unknown-transaction answer, before and
/// after the phone answers, and learns neither the user nor the outcome.
async fn results_answer_only_the_starting_client(store: Store) {
    let world = world(store, "");
    let init = world.init("qr_login").await;
    let tx = init["transaction_id"].as_str().unwrap().to_owned();
    let as_other = || async {
        let response = client()
            .get(
                world
                    .gate
                    .url(&format!("/oauth/api/v4/authenticate/transaction/{tx}")),
            )
            .basic_auth("other-portal", Some("other-portal-secret-0123456789"))
            .send()
            .await
            .expect("result request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    };
    let (status, body) = as_other().await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("3004"), "{body}");
    let phone = world.phone("ann").await;
    let (exit, _, err) = phone.run(&["otp", init["otp"].as_str().unwrap()]);
    assert_eq!(exit, 0, "{err}");
    let (status, body) = as_other().await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("ann"), "{body}");
    let owner_view = world.result(&tx).await;
    assert_eq!(owner_view["is_authenticated"], true, "{owner_view}");
    assert_eq!(owner_view["user_id"], "ann");
}

#[tokio::test]
async fn results_answer_only_the_starting_client_on_memory() {
    results_answer_only_the_starting_client(Store::Memory).await;
}

#[tokio::test]
async fn results_answer_only_the_starting_client_on_redis() {
    results_answer_only_the_starting_client(Store::Redis).await;
}

async fn otp_refusals(store: Store) {
    let w = world(store, "");
    let ann = w.phone("ann").await;
    let callback = w.portal.url("/ma-callback");

    // user_id on an OTP type: 1003 (v4 and v3 alike), as is a missing callback_uri.
    for version in ["v4", "v3"] {
        let (status, body) = w
            .post(
                &format!("/oauth/api/{version}/authenticate/user"),
                &[
                    ("type", "qr_login"),
                    ("user_id", "ann"),
                    ("callback_uri", &callback),
                ],
            )
            .await;
        assert_eq!((status, body["error_code"].as_str()), (400, Some("1003")));
    }
    let (status, body) = w.post(INIT, &[("type", "qr_login")]).await;
    assert_eq!((status, body["error_code"].as_str()), (400, Some("1003")));
    // v3 starts OTP logins too.
    let (status, body) = w
        .post(
            "/oauth/api/v3/authenticate/user",
            &[("type", "qr_login"), ("callback_uri", &callback)],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["auth_method"], "otp");

    // Tampered codes are counted: the third wrong one fails the transaction for good.
    let init = w.init("qr_login").await;
    let code = init["otp"].as_str().unwrap().to_owned();
    let tx = init["transaction_id"].as_str().unwrap().to_owned();
    for remaining in [2, 1, 0] {
        let (exit, _, err) = ann.run(&["otp", &tampered(&code)]);
        assert_ne!(exit, 0);
        assert!(
            err.contains(&format!("\"remaining_attempts\":{remaining}")),
            "{err}"
        );
    }
    let (exit, _, err) = ann.run(&["otp", &code]);
    assert_ne!(exit, 0);
    assert!(err.contains("HTTP 409 not_pending"), "{err}");
    let result = w.result(&tx).await;
    assert_eq!(result["is_authenticated"], false);
    assert_eq!(
        result["not_authenticated_reason"]["reason"],
        "attempts_exhausted"
    );

    // A code naming no transaction: unknown; text that is no code: refused by the client.
    let mut foreign = URL_SAFE_NO_PAD.decode(&code).unwrap();
    foreign[0] ^= 0xff;
    let (exit, _, err) = ann.run(&["otp", &URL_SAFE_NO_PAD.encode(foreign)]);
    assert_ne!(exit, 0);
    assert!(err.contains("unknown_transaction"), "{err}");
    let (exit, _, err) = ann.run(&["otp", "bankapp://enroll?code=ABC"]);
    assert_eq!(exit, 2, "{err}");

    // An expired transaction takes no code.
    let short = w.init("short_qr").await;
    let short_tx = short["transaction_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let (exit, _, err) = ann.run(&["otp", short["otp"].as_str().unwrap()]);
    assert_ne!(exit, 0);
    assert!(err.contains("HTTP 409 not_pending"), "{err}");
    let result = w.result(&short_tx).await;
    assert_eq!(result["is_authenticated"], false);
    assert_eq!(result["user_id"], Value::Null);
    assert_eq!(result["not_authenticated_reason"]["reason"], "expired");

    // Deny: the transaction is denied, and the portal still learns who said no.
    let init = w.init("qr_login").await;
    let tx = init["transaction_id"].as_str().unwrap().to_owned();
    let (exit, answer, err) = ann.run(&["otp", init["otp"].as_str().unwrap(), "--deny"]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "denied");
    let result = w.result(&tx).await;
    assert_eq!(result["is_authenticated"], false);
    assert_eq!(result["user_id"], "ann");
    assert_eq!(result["not_authenticated_reason"]["reason"], "not_accepted");
    eventually(Duration::from_secs(10), "the deny callback", || async {
        w.portal
            .received()
            .iter()
            .any(|call| call.json["transaction_id"] == tx.as_str())
    })
    .await;
}

#[tokio::test]
async fn otp_refusals_on_memory() {
    otp_refusals(Store::Memory).await;
}

#[tokio::test]
async fn otp_refusals_on_redis() {
    otp_refusals(Store::Redis).await;
}

async fn proxy_otp_step_up(store: Store) {
    let upstream = RecordingUpstream::start();
    let extra = format!(
        "policies:
  - name: transfers
    match: {{ methods: [POST], paths: [\"/transfer\"] }}
    require: {{ auth_type: qr_login, freshness_seconds: 0 }}
    message: \"Approve transfer of {{form.amount}} EUR\"
  - name: held
    match: {{ methods: [POST], paths: [\"/held\"] }}
    require: {{ auth_type: qr_login, freshness_seconds: 0 }}
    mode: hold
proxy:
  upstream: {{ address: \"{}\" }}
  trusted_proxies: [\"127.0.0.1/32\", \"::1/128\"]
  identity: {{ header: X-User-Id }}
",
        upstream.address()
    );
    let w = world(store, &extra);
    w.gate.wait_for_proxy();
    let ann = w.phone("ann").await;
    let bob = w.phone("bob").await;

    // An API client hits the protected route: 401 JSON with the code and its deep link.
    let response = client()
        .post(w.gate.proxy_url("/transfer"))
        .header("x-user-id", "ann")
        .header("accept", "application/json")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=25")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let challenge: Value = response.json().await.unwrap();
    assert_eq!(challenge["auth_method"], "otp");
    let tx = challenge["transaction_id"].as_str().unwrap().to_owned();
    let code = challenge["otp"].as_str().unwrap().to_owned();
    let deep_link = challenge["deep_link"].as_str().unwrap().to_owned();
    assert_eq!(deep_link, format!("bankapp://otp?c={code}"));
    let binding = challenge["binding_token"].as_str().unwrap().to_owned();

    // The interstitial page (as a browser holding the binding cookie sees it) shows the QR code
    // of the deep link and the link itself; a reload shows the same code.
    let page = |cookie: String| {
        let url = w.gate.proxy_url(&format!("/.stepgate/tx/{tx}"));
        async move {
            client()
                .get(url)
                .header("x-user-id", "ann")
                .header("accept", "text/html")
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
        }
    };
    let html = page(format!("stepgate_binding={binding}")).await;
    assert_eq!(html.status().as_u16(), 200);
    let html = html.text().await.unwrap();
    assert!(html.contains("<svg class=\"qr\""), "{html}");
    assert!(
        html.contains(&format!("href=\"{deep_link}\"")),
        "the deep link: {html}"
    );
    assert!(html.contains("Approve transfer of 25 EUR"));
    // Another client (no binding token) is not shown the page, let alone the code.
    let other = page("stepgate_binding=someone-else".to_owned()).await;
    assert_eq!(other.status().as_u16(), 404);
    assert!(!other.text().await.unwrap().contains(&code));

    // The code is for the phone: typed back as a code it is refused, and nothing is counted.
    let verify = client()
        .post(w.gate.proxy_url(&format!("/.stepgate/tx/{tx}/verify")))
        .header("x-user-id", "ann")
        .header("accept", "application/json")
        .header("stepgate-binding", &binding)
        .form(&[("sms_code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(verify.status().as_u16(), 400);

    let complete = |binding: String| {
        let url = w.gate.proxy_url(&format!("/.stepgate/tx/{tx}/complete"));
        async move {
            client()
                .post(url)
                .header("x-user-id", "ann")
                .header("accept", "application/json")
                .header("stepgate-binding", binding)
                .send()
                .await
                .unwrap()
        }
    };
    // Not approved yet: nothing is forwarded.
    let early = complete(binding.clone()).await;
    assert_eq!(early.status().as_u16(), 409);
    assert!(upstream.seen_on("/transfer").is_empty());

    // The transaction is ann's: bob's phone cannot answer it.
    let (exit, _, err) = bob.run(&["otp", &deep_link]);
    assert_ne!(exit, 0);
    assert!(err.contains("unknown_transaction"), "{err}");

    let (exit, answer, err) = ann.run(&["otp", &deep_link]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "approved");
    assert_eq!(answer["message"], "Approve transfer of 25 EUR");

    let done = complete(binding.clone()).await;
    assert_eq!(done.status().as_u16(), 200);
    let again = complete(binding).await;
    assert_ne!(
        again.status().as_u16(),
        200,
        "the held request goes out once"
    );
    let seen = upstream.seen_on("/transfer");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"amount=25");

    // Hold mode: the connection waits; the user finds the code from another session (the
    // pending endpoint, then the page's JSON) and the phone answers it.
    let proxy_url = w.gate.proxy_url("/held");
    let waiting = tokio::spawn(async move {
        client()
            .post(proxy_url)
            .header("x-user-id", "ann")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("amount=7")
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap()
    });
    eventually(Duration::from_secs(10), "the held request", || {
        let url = w.gate.proxy_url("/.stepgate/pending");
        async move {
            let response = client()
                .get(url)
                .header("x-user-id", "ann")
                .header("accept", "application/json")
                .send()
                .await
                .unwrap();
            response.status().as_u16() == 200
        }
    })
    .await;
    let pending: Value = client()
        .get(w.gate.proxy_url("/.stepgate/pending"))
        .header("x-user-id", "ann")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let held_tx = pending["transaction_id"].as_str().unwrap().to_owned();
    let shown: Value = client()
        .get(w.gate.proxy_url(&format!("/.stepgate/tx/{held_tx}")))
        .header("x-user-id", "ann")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["auth_method"], "otp");
    let held_link = shown["deep_link"].as_str().unwrap().to_owned();
    let (exit, answer, err) = ann.run(&["otp", &held_link]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "approved");
    let response = waiting.await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(upstream.seen_on("/held").len(), 1);
}

#[tokio::test]
async fn proxy_otp_step_up_on_memory() {
    proxy_otp_step_up(Store::Memory).await;
}

#[tokio::test]
async fn proxy_otp_step_up_on_redis() {
    proxy_otp_step_up(Store::Redis).await;
}
