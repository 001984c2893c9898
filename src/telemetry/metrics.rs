//! Metric names and their record functions. Labels are bounded sets (backend, operation, outcome);
//! never a user id, phone number, transaction id or raw path.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, TextEncoder,
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec,
};

pub const BUILD_INFO: &str = "stepgate_build_info";
pub const STORE_OPERATION_SECONDS: &str = "stepgate_store_operation_duration_seconds";
pub const STORE_UP: &str = "stepgate_store_up";

// Registration only fails on a duplicate name or invalid label, both programming errors caught by
// the first test that touches the metric; falling back to an unregistered metric keeps the gateway up.
static BUILD: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(BUILD_INFO, "Build information; always 1.", &["version"])
        .unwrap_or_else(|_| unregistered_gauge(BUILD_INFO, &["version"]))
});

static STORE_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        STORE_OPERATION_SECONDS,
        "Latency of store operations by backend, operation and outcome (ok | error).",
        &["backend", "operation", "outcome"],
        vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ],
    )
});

static STORE_UP_GAUGE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        STORE_UP,
        "1 when the last readiness check reached the store.",
        &["backend"]
    )
    .unwrap_or_else(|_| unregistered_gauge(STORE_UP, &["backend"]))
});

// --- transactions and abuse controls -----------------------------------------------------------

pub const TRANSACTIONS_STARTED: &str = "stepgate_transactions_started_total";
pub const TRANSACTIONS_FINISHED: &str = "stepgate_transactions_finished_total";
pub const RATE_LIMITED: &str = "stepgate_rate_limited_total";

static STARTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        TRANSACTIONS_STARTED,
        "Transactions started, by auth type and the method used (after fallback).",
        &["type", "method"],
    )
});

static FINISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        TRANSACTIONS_FINISHED,
        "Transactions that reached a final state, by auth type, method and outcome (approved | denied | expired | failed).",
        &["type", "method", "outcome"],
    )
});

static LIMITED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        RATE_LIMITED,
        "Requests refused by a rate limit, by limit (sms_per_user | sms_per_phone).",
        &["limit"],
    )
});

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    register_histogram_vec!(name, help, labels, buckets.clone()).unwrap_or_else(|_| {
        HistogramVec::new(
            prometheus::HistogramOpts::new(name, "unregistered").buckets(buckets),
            labels,
        )
        .unwrap_or_else(|_| unreachable!("static histogram options are valid"))
    })
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register_int_counter_vec!(name, help, labels).unwrap_or_else(|_| {
        IntCounterVec::new(prometheus::Opts::new(name, "unregistered"), labels)
            .unwrap_or_else(|_| unreachable!("static counter options are valid"))
    })
}

/// A transaction started with `method` (which differs from the type's when a fallback fired).
pub fn transaction_started(auth_type: &str, method: &str) {
    STARTED.with_label_values(&[auth_type, method]).inc();
}

/// A transaction reached a final state.
pub fn transaction_finished(auth_type: &str, method: &str, outcome: &str) {
    FINISHED
        .with_label_values(&[auth_type, method, outcome])
        .inc();
}

pub fn rate_limited(limit: &'static str) {
    LIMITED.with_label_values(&[limit]).inc();
}

// --- the account guard (failure locks, push fatigue, reports) ---------------------------------

pub const ACCOUNT_GUARD: &str = "stepgate_account_guard_total";

static GUARD_COUNTER: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        ACCOUNT_GUARD,
        "Account guard events, by event: locked (consecutive failures reached the limit) | unlocked (by an admin) | reported (a phone said \"this wasn't me\") | refused_locked | refused_push_reported | refused_push_fatigue | refused_busy | refused_too_many_pending | refused_too_many_held (a start or check refused: locked, push held back, the attempts in flight take the failure limit, or the user's pending step-ups or held requests are at their bound).",
        &["event"],
    )
});

/// One account guard event (see `ACCOUNT_GUARD` for the names).
pub fn account_guard(event: &'static str) {
    GUARD_COUNTER.with_label_values(&[event]).inc();
}

// --- SMS gateways (recorded once per send by `notify::sms::Instrumented`) ----------------------

pub const SMS_SENT: &str = "stepgate_sms_sent_total";
pub const SMS_SEND_SECONDS: &str = "stepgate_sms_send_duration_seconds";

static SMS_SENT_COUNTER: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        SMS_SENT,
        "SMS send attempts by gateway (twilio | http | file) and result (sent | sender_refused | rejected | unavailable).",
        &["gateway", "result"],
    )
});

static SMS_SEND_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        SMS_SEND_SECONDS,
        "Time an SMS gateway took to accept or refuse one message, by gateway.",
        &["gateway"],
        vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ],
    )
});

/// One SMS send finished. `result` is `sent`, `sender_refused`, `rejected` or `unavailable`.
pub fn record_sms_send(gateway: &'static str, result: &'static str, elapsed: Duration) {
    SMS_SENT_COUNTER.with_label_values(&[gateway, result]).inc();
    SMS_SEND_LATENCY
        .with_label_values(&[gateway])
        .observe(elapsed.as_secs_f64());
}

// --- the proxy ---------------------------------------------------------------------------------

pub const PROXY_REQUESTS: &str = "stepgate_proxy_requests_total";
pub const PROXY_HELD: &str = "stepgate_proxy_held_requests";
pub const PROXY_ADDED_LATENCY: &str = "stepgate_proxy_added_latency_seconds";

static PROXY_REQUEST_COUNTER: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        PROXY_REQUESTS,
        "Requests through the proxy by policy (none when no rule matched; stepgate for its own pages) and decision (allow | deny | granted | challenged | approved | held | refused | unavailable | invalid | too_large | stepgate).",
        &["policy", "decision"],
    )
});

static PROXY_HELD_GAUGE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        PROXY_HELD,
        "Requests this instance holds open in hold mode, waiting for approval, by mode (hold).",
        &["mode"]
    )
    .unwrap_or_else(|_| unregistered_gauge(PROXY_HELD, &["mode"]))
});

static PROXY_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        PROXY_ADDED_LATENCY,
        "Time stepgate spent on a forwarded request before sending it upstream (policy, identity, grant), by decision.",
        &["decision"],
        vec![
            0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
            0.1,
        ],
    )
});

/// The series of the hot path (no rule matched, passed through), resolved once: a label lookup
/// hashes the labels under a lock on every request.
static PROXY_PASSED_UNMATCHED: LazyLock<IntCounter> =
    LazyLock::new(|| PROXY_REQUEST_COUNTER.with_label_values(&["none", "allow"]));
static PROXY_LATENCY_ALLOW: LazyLock<Histogram> =
    LazyLock::new(|| PROXY_LATENCY.with_label_values(&["allow"]));

/// One request through the proxy finished.
pub fn proxy_request(policy: &str, decision: &'static str) {
    if policy == "none" && decision == "allow" {
        PROXY_PASSED_UNMATCHED.inc();
    } else {
        PROXY_REQUEST_COUNTER
            .with_label_values(&[policy, decision])
            .inc();
    }
}

/// Time added before a request went upstream.
pub fn proxy_added_latency(decision: &'static str, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    if decision == "allow" {
        PROXY_LATENCY_ALLOW.observe(seconds);
    } else {
        PROXY_LATENCY
            .with_label_values(&[decision])
            .observe(seconds);
    }
}

/// A hold-mode request started (`+1`) or stopped (`-1`) waiting.
pub fn proxy_held(delta: i64) {
    PROXY_HELD_GAUGE.with_label_values(&["hold"]).add(delta);
}

// --- policy reload (recorded by the composition root for `config::reload`) ---------------------

pub const POLICY_RELOADS: &str = "stepgate_policy_reloads_total";
pub const POLICY_RULES: &str = "stepgate_policy_rules";

static POLICY_RELOAD_COUNTER: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let counter = counter_vec(
        POLICY_RELOADS,
        "Policy reload attempts (SIGHUP or changed files) by result (ok | error; on error the previous policies stay).",
        &["result"],
    );
    for result in ["ok", "error"] {
        counter.with_label_values(&[result]);
    }
    counter
});

static POLICY_RULES_GAUGE: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!(POLICY_RULES, "Route policy rules in force.").unwrap_or_else(
        |_| {
            prometheus::IntGauge::new(POLICY_RULES, "unregistered")
                .unwrap_or_else(|_| unreachable!("static gauge options are valid"))
        },
    )
});

/// The policies in force at start-up.
pub fn policy_rules(rules: usize) {
    POLICY_RULES_GAUGE.set(i64::try_from(rules).unwrap_or(i64::MAX));
}

/// One reload attempt: `Some(rules)` when the new policies are in force, `None` when it failed
/// and the previous ones stay.
pub fn policy_reload(rules: Option<usize>) {
    let result = if rules.is_some() { "ok" } else { "error" };
    POLICY_RELOAD_COUNTER.with_label_values(&[result]).inc();
    if let Some(rules) = rules {
        policy_rules(rules);
    }
}

// --- push providers (recorded once per send by `notify::push::PushSenders`) ----------------------

pub const PUSH_SENDS: &str = "stepgate_push_sends_total";
pub const PUSH_PROVIDER_SECONDS: &str = "stepgate_push_provider_seconds";

static PUSH_SENDS_COUNTER: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        PUSH_SENDS,
        "Push send attempts by provider (apns | fcm | fcm_legacy | none) and result (sent | unregistered | unavailable | rejected | unknown_config).",
        &["provider", "result"],
    )
});

static PUSH_PROVIDER_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        PUSH_PROVIDER_SECONDS,
        "Time a push provider took to accept or refuse one push (token fetches included), by provider.",
        &["provider"],
        vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ],
    )
});

/// One push send finished. `result` is `sent` or a `PushError` label.
pub fn record_push_send(provider: &'static str, result: &'static str, elapsed: Duration) {
    PUSH_SENDS_COUNTER
        .with_label_values(&[provider, result])
        .inc();
    PUSH_PROVIDER_LATENCY
        .with_label_values(&[provider])
        .observe(elapsed.as_secs_f64());
}

/// A push named a push config that does not exist; no provider was asked.
pub fn push_unknown_config() {
    PUSH_SENDS_COUNTER
        .with_label_values(&["none", "unknown_config"])
        .inc();
}

// --- portal callbacks (recorded by `service::callbacks` once per delivery attempt) -------------

pub const CALLBACKS: &str = "stepgate_callbacks_total";

static CALLBACK_COUNTER: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let counter = counter_vec(
        CALLBACKS,
        "Portal callback delivery attempts by result (delivered | retried: failed and scheduled again | failed: rejected or out of attempts, given up).",
        &["result"],
    );
    for result in ["delivered", "retried", "failed"] {
        counter.with_label_values(&[result]);
    }
    counter
});

/// A portal accepted a callback (2xx).
pub fn callback_delivered() {
    CALLBACK_COUNTER.with_label_values(&["delivered"]).inc();
}

/// A callback attempt failed in a way worth retrying, and the callback is scheduled again.
pub fn callback_retried() {
    CALLBACK_COUNTER.with_label_values(&["retried"]).inc();
}

/// A callback was given up: the portal refused it, or it ran out of attempts.
pub fn callback_failed() {
    CALLBACK_COUNTER.with_label_values(&["failed"]).inc();
}

fn unregistered_gauge(name: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(prometheus::Opts::new(name, "unregistered"), labels)
        .unwrap_or_else(|_| unreachable!("static gauge options are valid"))
}

/// Sets the build-info gauge; call once at start-up.
pub fn record_build_info(version: &str) {
    BUILD.with_label_values(&[version]).set(1);
}

/// Records one store call. `operation` is a fixed name such as `verify_code`.
pub fn record_store_operation(
    backend: &'static str,
    operation: &'static str,
    ok: bool,
    elapsed: Duration,
) {
    let outcome = if ok { "ok" } else { "error" };
    STORE_LATENCY
        .with_label_values(&[backend, operation, outcome])
        .observe(elapsed.as_secs_f64());
}

/// Records the result of a readiness probe of the store.
pub fn record_store_up(backend: &'static str, up: bool) {
    STORE_UP_GAUGE
        .with_label_values(&[backend])
        .set(i64::from(up));
}

/// Forces registration so every family shows on `/metrics` from the first scrape.
pub fn register_all() {
    LazyLock::force(&BUILD);
    LazyLock::force(&STORE_LATENCY);
    LazyLock::force(&STORE_UP_GAUGE);
    LazyLock::force(&STARTED);
    LazyLock::force(&FINISHED);
    LazyLock::force(&LIMITED);
    for event in [
        "locked",
        "unlocked",
        "reported",
        "refused_locked",
        "refused_push_reported",
        "refused_push_fatigue",
        "refused_busy",
        "refused_too_many_pending",
        "refused_too_many_held",
    ] {
        GUARD_COUNTER.with_label_values(&[event]).inc_by(0);
    }
    LazyLock::force(&SMS_SENT_COUNTER);
    LazyLock::force(&SMS_SEND_LATENCY);
    LazyLock::force(&PROXY_REQUEST_COUNTER);
    PROXY_HELD_GAUGE.with_label_values(&["hold"]).add(0);
    LazyLock::force(&PROXY_LATENCY);
    LazyLock::force(&POLICY_RELOAD_COUNTER);
    LazyLock::force(&POLICY_RULES_GAUGE);
    LazyLock::force(&PUSH_SENDS_COUNTER);
    LazyLock::force(&PUSH_PROVIDER_LATENCY);
    LazyLock::force(&CALLBACK_COUNTER);
}

/// The Prometheus text exposition of every registered metric.
pub fn render() -> (String, Vec<u8>) {
    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    // Encoding into a Vec cannot fail for well-formed families.
    let _ = encoder.encode(&prometheus::gather(), &mut buffer);
    (encoder.format_type().to_owned(), buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_reloads_count_by_result_and_set_the_rules_in_force() {
        register_all();
        policy_reload(Some(7));
        policy_reload(None);
        let text = String::from_utf8(render().1).unwrap();
        assert!(
            text.contains(r#"stepgate_policy_reloads_total{result="ok"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"stepgate_policy_reloads_total{result="error"}"#),
            "{text}"
        );
        assert!(text.contains("stepgate_policy_rules "), "{text}");
    }

    #[test]
    fn rendered_text_carries_build_info_and_store_latency() {
        register_all();
        record_build_info("9.9.9-test");
        record_store_operation("memory", "get", true, Duration::from_micros(30));
        let (content_type, body) = render();
        let text = String::from_utf8(body).unwrap();
        assert!(content_type.starts_with("text/plain"));
        assert!(
            text.contains(r#"stepgate_build_info{version="9.9.9-test"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("stepgate_store_operation_duration_seconds_bucket"),
            "{text}"
        );
    }
}
