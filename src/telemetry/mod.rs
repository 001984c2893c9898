//! Telemetry: tracing setup and the Prometheus metrics (names as constants, bounded labels,
//! semantic record functions), plus rendering for `/metrics`.
//!
//! Imports nothing from this crate; everything else may import it.

pub mod audit;
pub mod http;
pub mod metrics;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global tracing subscriber (and the `log` bridge that carries pingora's logs).
/// `RUST_LOG` wins over `level` when set, so an operator can raise verbosity without a config
/// change. Calling it twice is harmless.
pub fn init_tracing(level: &str, format: LogFormat) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // The hint carries the configured level to the `log` bridge, so that pingora's debug and
    // trace macros stay switched off at their call sites instead of being formatted and then
    // dropped here (12,000 instructions per proxied request when the hint was missing).
    let hint = filter
        .max_level_hint()
        .unwrap_or(tracing_subscriber::filter::LevelFilter::TRACE);
    let cap = tracing_subscriber::filter::filter_fn(|meta| !hides_secrets_below_info(meta))
        .with_max_level_hint(hint);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let _already_installed = tracing_subscriber::registry()
        .with(fmt.with_filter(filter).with_filter(cap))
        .try_init();
}

/// Targets whose debug and trace lines print requests, headers or frames as they are (the
/// client's cookies, bearer tokens, our grants and binding tokens, phone numbers in bodies):
/// pingora's own, and the HTTP and TLS stacks under our clients. They log at `info` at most,
/// whatever level is configured; stepgate's own lines never carry such values.
const WIRE_LOGGING_TARGETS: [&str; 6] =
    ["pingora", "h2", "hyper", "reqwest", "rustls", "tungstenite"];

fn hides_secrets_below_info(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() > tracing::Level::INFO
        && WIRE_LOGGING_TARGETS
            .iter()
            .any(|prefix| meta.target().starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing::callsite::Identifier;
    use tracing::field::FieldSet;
    use tracing::metadata::Kind;

    use super::*;

    struct Site;
    impl tracing::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unreachable!()
        }
    }
    static SITE: Site = Site;

    fn meta(target: &'static str, level: Level) -> tracing::Metadata<'static> {
        tracing::Metadata::new(
            "event",
            target,
            level,
            None,
            None,
            None,
            FieldSet::new(&[], Identifier(&SITE)),
            Kind::EVENT,
        )
    }

    #[test]
    fn wire_level_lines_of_the_http_stacks_are_never_written() {
        for target in [
            "pingora_core::protocols::http::v1::server",
            "pingora_proxy",
            "h2::codec",
            "hyper::proto::h1::io",
            "reqwest::connect",
        ] {
            assert!(
                hides_secrets_below_info(&meta(target, Level::TRACE)),
                "{target}"
            );
            assert!(
                hides_secrets_below_info(&meta(target, Level::DEBUG)),
                "{target}"
            );
            assert!(
                !hides_secrets_below_info(&meta(target, Level::INFO)),
                "{target}"
            );
            assert!(
                !hides_secrets_below_info(&meta(target, Level::WARN)),
                "{target}"
            );
        }
        assert!(!hides_secrets_below_info(&meta(
            "stepgate::proxy",
            Level::TRACE
        )));
    }
}
