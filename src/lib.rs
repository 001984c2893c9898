//! stepgate: a step-up (mobile) authentication gateway. A pingora sidecar that demands push, SMS
//! or OTP approval on declared routes, and an Onegini-compatible mobile authentication API.
//!
//! Layering (see DESIGN.md): edges (`api`, `proxy`) call `service`; services use `domain` and its
//! ports; adapters (`store`, `notify`) implement the ports; `app` is the composition root.
//! Outside the gateway proper: `device` (the reference phone client; domain only) and `demo`
//! (the demo bank and the demo phone that drives `device`; domain and device only), both
//! talking to the gateway over the network as any app or phone would; `cli` wires everything.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod device;
pub mod domain;
pub mod enrich;
pub mod notify;
pub mod proxy;
pub mod qr;
pub mod service;
pub mod store;
pub mod telemetry;
