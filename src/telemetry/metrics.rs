//! Metric names and their record functions. Labels are bounded sets (backend, operation, outcome);
//! never a user id, phone number, transaction id or raw path.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramVec, IntGaugeVec, TextEncoder, register_histogram_vec, register_int_gauge_vec,
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
    let buckets = vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    ];
    register_histogram_vec!(
        STORE_OPERATION_SECONDS,
        "Latency of store operations by backend, operation and outcome (ok | error).",
        &["backend", "operation", "outcome"],
        buckets.clone()
    )
    .unwrap_or_else(|_| {
        HistogramVec::new(
            prometheus::HistogramOpts::new(STORE_OPERATION_SECONDS, "unregistered")
                .buckets(buckets),
            &["backend", "operation", "outcome"],
        )
        .unwrap_or_else(|_| unreachable!("static histogram options are valid"))
    })
});

static STORE_UP_GAUGE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        STORE_UP,
        "1 when the last readiness check reached the store.",
        &["backend"]
    )
    .unwrap_or_else(|_| unregistered_gauge(STORE_UP, &["backend"]))
});

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
