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
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _already_installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
