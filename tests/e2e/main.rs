//! End-to-end tests: each starts the real `stepgate` binary on free ports and talks to it over
//! the network. `harness` builds configs and processes; the other modules are the scenarios.

// Test code may unwrap: a panic is the failure report (STYLE.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod account_guard;
mod admin_api;
mod availability;
mod browser;
mod callbacks;
mod cdp;
mod cli;
mod demo;
mod device_cli;
mod dynamic_linking;
mod edge;
mod end_user_api;
mod failover;
mod fakes;
mod harness;
mod hold_mode;
mod identity;
mod number_matching;
mod otp_flow;
mod proxy;
mod push_cases;
mod push_delivery;
mod push_flow;
mod redis_outage;
mod scale_out;
mod secure_context;
mod serving;
mod sms_flow;
mod sms_gateways;
mod sms_guard;
