//! Outbound providers: the adapters that carry messages out of the gateway. One folder per
//! provider (`sms`, `push`, portal `callback`s; `console` is what the printing demo ones
//! share), each with a `build` from the compiled settings, a `startup_check` so that bad
//! credentials fail the boot rather than the first payment, and a classification of failures
//! into the domain's `SendError` categories (which decide between retrying with another
//! sender, falling back, or giving up).
//!
//! Every outgoing request has a timeout and never follows redirects; error messages and logs
//! never carry secrets, codes or message bodies.
//!
//! May import: domain, config, telemetry.

pub mod callback;
pub mod console;
mod outbound;
pub mod outgoing;
pub mod push;
pub mod sms;

use std::path::PathBuf;

/// Why a provider could not be set up or failed its startup check.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("cannot build the HTTP client for {provider}: {reason}")]
    HttpClient {
        provider: &'static str,
        reason: String,
    },
    /// The provider answered and refused the configured credentials or account: a config error.
    #[error("{provider} refused the configured credentials: {reason}")]
    Credentials {
        provider: &'static str,
        reason: String,
    },
    /// The provider could not be reached or answered unexpectedly; it may work later.
    #[error("{provider} startup check failed: {reason}")]
    Unreachable {
        provider: &'static str,
        reason: String,
    },
    #[error("cannot append to the SMS outbox {}: {source}", path.display())]
    Outbox {
        path: PathBuf,
        source: std::io::Error,
    },
}
