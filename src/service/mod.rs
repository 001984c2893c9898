//! Use cases: start, verify, resend, finish and read transactions (`transactions`), SMS
//! (`sms`), step-up for the proxy with held requests and grants (`stepup`), and whether
//! the gateway can serve (`health`). Edges (api, proxy) call these; they call the domain and its
//! ports, never a concrete adapter.
//!
//! May import: domain, telemetry.

pub mod admin;
pub mod availability;
pub mod callbacks;
pub mod devices;
pub mod end_user;
pub mod guard;
pub mod health;
pub mod otp;
pub mod push;
pub mod sms;
pub mod stepup;
pub mod transactions;
