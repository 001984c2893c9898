//! The pure domain core: auth types, transactions and their state machine, one-time codes, the
//! attempt/resend/expiry rules, the canonical reading of a request and the route policies that
//! decide on it, and the ports (traits) that adapters implement.
//!
//! Owns every rule that decides whether a step-up succeeds. Knows nothing of HTTP, pingora, Redis,
//! YAML or the network, and may import nothing else from this crate.

pub mod address;
pub mod application;
pub mod assertion;
pub mod auth_type;
pub mod callback;
pub mod canonical;
pub mod clock;
pub mod code;
pub mod context;
pub mod destination;
pub mod device;
pub mod device_crypto;
pub mod grant;
pub mod guard;
pub mod held;
pub mod otp;
pub mod policy;
pub mod ports;
pub mod push;
pub mod regulation;
pub mod sms;
pub mod transaction;
