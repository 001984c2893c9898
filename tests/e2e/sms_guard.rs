//! The SMS-pumping guard end to end, on the memory store and on Redis (issue #13, item 5):
//! premium-rate and international-network destinations refused before anything is sent, an
//! allow-list of countries, global, per-country and per-client-IP quotas (the proxy's client
//! behind trusted proxies, the API's caller only through `api.trusted_proxies`), quotas spent only
//! by sends that reached the provider, and one resend per transaction at a time.

use reqwest::StatusCode;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::fakes::twilio::FakeTwilio;
use crate::fakes::upstream::RecordingUpstream;
use crate::harness::{Gate, Store, client, on_both_stores};

const PORTAL: (&str, &str) = ("portal", "portal-secret-0123456789");

/// A gate sending through the fake Twilio, with `rate_limits` and `extra` YAML.
fn gate(store: Store, twilio: &FakeTwilio, rate_limits: &str, extra: &str) -> Gate {
    let yaml = format!(
        "api_clients:
  - {{ client_id: {id}, client_secret: \"{secret}\", apis: [mobile_authentication] }}
auth_types:
  - {{ name: sms_code, method: sms, max_resends: 3, default_messages: {{ en: \"Code: {{code}}\" }} }}
  - {{ name: no_resend, method: sms, max_resends: 0, default_messages: {{ en: \"Code: {{code}}\" }} }}
sms:
  gateway: twilio
  timeout_ms: 2000
  twilio: {{ account_sid: \"{sid}\", auth_token: \"{token}\", from_number: \"+15005550006\", base_url: \"{base}\" }}
rate_limits:
{rate_limits}{extra}",
        id = PORTAL.0,
        secret = PORTAL.1,
        sid = twilio.account_sid(),
        token = twilio.auth_token(),
        base = twilio.base_url(),
    );
    store.builder().yaml(&yaml).start()
}

const GENEROUS: &str = "  sms_per_user: { limit: 100, window_seconds: 60 }\n  sms_per_phone: { limit: 100, window_seconds: 60 }\n";

async fn post(
    gate: &Gate,
    path: &str,
    form: &[(&str, &str)],
    forwarded_for: Option<&str>,
) -> (u16, Value) {
    let mut request = client()
        .post(gate.url(path))
        .basic_auth(PORTAL.0, Some(PORTAL.1))
        .form(form);
    if let Some(address) = forwarded_for {
        request = request.header("x-forwarded-for", address);
    }
    let response = request.send().await.expect("api request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn init(gate: &Gate, user: &str, phone: &str) -> (u16, Value) {
    init_from(gate, user, phone, None).await
}

async fn init_from(
    gate: &Gate,
    user: &str,
    phone: &str,
    forwarded_for: Option<&str>,
) -> (u16, Value) {
    post(
        gate,
        "/oauth/api/v4/authenticate/user",
        &[
            ("type", "sms_code"),
            ("user_id", user),
            ("phone_number", phone),
        ],
        forwarded_for,
    )
    .await
}

fn error_of(body: &Value) -> String {
    body["error_code"]
        .as_str()
        .or_else(|| body["error"].as_str())
        .unwrap_or("")
        .to_owned()
}

async fn premium_and_network_ranges_are_refused_before_sending(store: Store) {
    let twilio = FakeTwilio::start().await;
    let gate = gate(store, &twilio, GENEROUS, "");
    for phone in [
        "+8816312345678",
        "+88239912345",
        "+31906123456",
        "+19005550100",
    ] {
        let (status, body) = init(&gate, "ann", phone).await;
        assert_eq!(
            (status, error_of(&body).as_str()),
            (400, "3008"),
            "{phone}: {body}"
        );
    }
    assert_eq!(twilio.attempts(), 0, "nothing reached the provider");
    let (status, body) = init(&gate, "ann", "+31612345678").await;
    assert_eq!(status, 200, "{body}");
    let metrics = gate.metrics_text().await;
    assert!(
        metrics.contains("stepgate_rate_limited_total{limit=\"sms_destination_denied\"} 4"),
        "{metrics}"
    );
    let log = gate.log_text();
    assert!(log.contains("SMS_DESTINATION_REFUSED"), "{log}");
    assert!(!log.contains("+8816312345678"), "numbers are masked");
}

async fn an_allow_list_admits_its_countries_only(store: Store) {
    let twilio = FakeTwilio::start().await;
    let gate = gate(
        store,
        &twilio,
        GENEROUS,
        "sms_guard: { allowed_prefixes: [\"+31\", \"+32\"] }\n",
    );
    assert_eq!(init(&gate, "ann", "+31612345678").await.0, 200);
    assert_eq!(init(&gate, "bob", "+32470123456").await.0, 200);
    let (status, body) = init(&gate, "cy", "+447700900123").await;
    assert_eq!((status, error_of(&body).as_str()), (400, "3008"), "{body}");
    let (status, _) = init(&gate, "di", "+31906123456").await;
    assert_eq!(
        status, 400,
        "the deny-list still wins inside an allowed country"
    );
    assert_eq!(twilio.messages().len(), 2);
}

/// `sms_global: 5` with twenty inits of different users at once: exactly five are sent; then
/// `sms_per_country` holds one country back while another still gets through.
async fn global_and_per_country_quotas_count_exactly(store: Store) {
    let twilio = FakeTwilio::start().await;
    let gate = gate(
        store,
        &twilio,
        &format!("{GENEROUS}  sms_global: {{ limit: 5, window_seconds: 60 }}\n"),
        "",
    );
    let url = gate.url("/oauth/api/v4/authenticate/user");
    let mut burst = JoinSet::new();
    for n in 0..20 {
        let url = url.clone();
        burst.spawn(async move {
            let user = format!("user-{n}");
            let phone = format!("+316123400{n:02}");
            client()
                .post(url)
                .basic_auth(PORTAL.0, Some(PORTAL.1))
                .form(&[
                    ("type", "sms_code"),
                    ("user_id", &user),
                    ("phone_number", &phone),
                ])
                .send()
                .await
                .expect("init")
                .status()
                .as_u16()
        });
    }
    let mut sent = 0;
    let mut limited = 0;
    while let Some(status) = burst.join_next().await {
        match status.unwrap() {
            200 => sent += 1,
            429 => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((sent, limited), (5, 15));
    assert_eq!(twilio.messages().len(), 5);

    let twilio = FakeTwilio::start().await;
    let gate = self::gate(
        store,
        &twilio,
        &format!("{GENEROUS}  sms_per_country: {{ limit: 2, window_seconds: 3600 }}\n"),
        "",
    );
    assert_eq!(init(&gate, "a", "+31612345601").await.0, 200);
    assert_eq!(init(&gate, "b", "+31612345602").await.0, 200);
    let (status, body) = init(&gate, "c", "+31612345603").await;
    assert_eq!(
        (status, error_of(&body).as_str()),
        (429, "too_many_requests"),
        "{body}"
    );
    assert_eq!(
        init(&gate, "d", "+32470123456").await.0,
        200,
        "another country"
    );
    let metrics = gate.metrics_text().await;
    assert!(
        metrics.contains("stepgate_rate_limited_total{limit=\"sms_per_country\"} 1"),
        "{metrics}"
    );
}

/// Sends that failed at the provider and resends the rules refused spend no quota: after a
/// provider outage the user still has the whole budget.
async fn only_sends_that_reached_the_provider_count(store: Store) {
    let twilio = FakeTwilio::start().await;
    let gate = gate(
        store,
        &twilio,
        "  sms_per_user: { limit: 2, window_seconds: 900 }\n  sms_per_phone: { limit: 2, window_seconds: 900 }\n",
        "",
    );
    twilio.set_fail(true);
    for _ in 0..4 {
        let (status, body) = init(&gate, "ann", "+31612345678").await;
        assert_eq!((status, error_of(&body).as_str()), (503, "3002"), "{body}");
    }
    twilio.set_fail(false);
    let (status, body) = post(
        &gate,
        "/oauth/api/v4/authenticate/user",
        &[
            ("type", "no_resend"),
            ("user_id", "ann"),
            ("phone_number", "+31612345678"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "a provider outage spent nothing: {body}");
    let tx = body["transaction_id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let (status, body) = post(
            &gate,
            "/oauth/api/v4/authenticate/user/ann/sms/resend",
            &[("transaction_id", &tx)],
            None,
        )
        .await;
        assert_eq!((status, error_of(&body).as_str()), (403, "3006"), "{body}");
    }
    let (status, body) = init(&gate, "ann", "+31612345678").await;
    assert_eq!(status, 200, "refused resends spent nothing: {body}");
    let (status, _) = init(&gate, "ann", "+31612345678").await;
    assert_eq!(
        status, 429,
        "two sends reached the provider: the budget is spent"
    );
}

/// The API counts a per-client-IP quota only for an address a trusted proxy forwarded: portals
/// calling directly share no quota, a forwarded address has its own, and a forged header from
/// an untrusted peer is ignored.
async fn the_api_counts_client_addresses_only_behind_trusted_proxies(store: Store) {
    let quota = format!("{GENEROUS}  sms_per_client_ip: {{ limit: 2, window_seconds: 900 }}\n");
    let twilio = FakeTwilio::start().await;
    let direct = gate(store, &twilio, &quota, "");
    for n in 0..4 {
        let (status, body) = init_from(
            &direct,
            &format!("u{n}"),
            "+31612345678",
            Some("203.0.113.9"),
        )
        .await;
        assert_eq!(
            status, 200,
            "a direct portal call has no client-IP quota: {body}"
        );
    }
    let behind = gate(
        store,
        &twilio,
        &quota,
        "api: { trusted_proxies: [\"127.0.0.1/32\", \"::1/128\"] }\n",
    );
    for n in 0..2 {
        let (status, _) = init_from(
            &behind,
            &format!("v{n}"),
            "+31612345678",
            Some("203.0.113.9"),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (status, body) = init_from(&behind, "v2", "+31612345678", Some("203.0.113.9")).await;
    assert_eq!(
        (status, error_of(&body).as_str()),
        (429, "too_many_requests"),
        "{body}"
    );
    let (status, _) = init_from(&behind, "v3", "+31612345678", Some("198.51.100.4")).await;
    assert_eq!(status, 200, "another client address has its own quota");
}

/// The proxy counts its client's address (behind its trusted proxies): three users from one
/// address share the quota, a fourth address does not.
async fn the_proxy_counts_its_clients_address(store: Store) {
    let upstream = RecordingUpstream::start();
    let yaml = crate::proxy::proxy_yaml(&upstream, 0, "challenge", "")
        .replace(
            "  sms_per_phone: { limit: 100, window_seconds: 60 }\n",
            "  sms_per_phone: { limit: 100, window_seconds: 60 }\n  sms_per_client_ip: { limit: 2, window_seconds: 900 }\n",
        );
    let gate = store.builder().yaml(&yaml).start();
    gate.wait_for_proxy();
    let transfer = |user: &str, from: &str| {
        client()
            .post(gate.proxy_url("/transfer"))
            .header("x-user-id", user)
            .header("x-user-phone", "+31612345678")
            .header("x-forwarded-for", from)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body("amount=10&iban=NL91ABNA0417164300")
            .send()
    };
    for user in ["alice", "bob"] {
        let response = transfer(user, "203.0.113.20").await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "challenged");
    }
    let response = transfer("carol", "203.0.113.20").await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    let response = transfer("dave", "203.0.113.21").await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(upstream.seen_on("/transfer").is_empty());
}

/// Two resends of one transaction at once: one is sent, the other answers 429 and sends
/// nothing, so the last SMS to arrive holds the code that works.
async fn concurrent_resends_never_leave_a_dead_code_last(store: Store) {
    let twilio = FakeTwilio::start().await;
    let gate = gate(store, &twilio, GENEROUS, "");
    twilio.set_delay(std::time::Duration::from_millis(300));
    let (status, body) = init(&gate, "ann", "+31612345678").await;
    assert_eq!(status, 200, "{body}");
    let tx = body["transaction_id"].as_str().unwrap().to_owned();
    let form = [("transaction_id", tx.as_str())];
    let resend = || {
        post(
            &gate,
            "/oauth/api/v4/authenticate/user/ann/sms/resend",
            &form,
            None,
        )
    };
    let (first, second) = tokio::join!(resend(), resend());
    let mut statuses = [first.0, second.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [204, 429], "{first:?} {second:?}");
    twilio.set_delay(std::time::Duration::ZERO);
    let messages = twilio.messages();
    assert_eq!(messages.len(), 2);
    let last: String = messages
        .last()
        .unwrap()
        .body
        .chars()
        .filter(char::is_ascii_digit)
        .take(6)
        .collect();
    let (status, body) = post(
        &gate,
        "/oauth/api/v4/authenticate/user/ann/sms",
        &[("transaction_id", tx.as_str()), ("sms_code", last.as_str())],
        None,
    )
    .await;
    assert_eq!(status, 200, "the last SMS holds the working code: {body}");
}

on_both_stores!(
    premium_and_network_ranges_are_refused_before_sending,
    an_allow_list_admits_its_countries_only,
    global_and_per_country_quotas_count_exactly,
    only_sends_that_reached_the_provider_count,
    the_api_counts_client_addresses_only_behind_trusted_proxies,
    the_proxy_counts_its_clients_address,
    concurrent_resends_never_leave_a_dead_code_last,
);
