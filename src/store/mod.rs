//! Store adapters: `memory` (embedded default) and `redis` (Lua for every atomic step, one round
//! trip each). Both implement the domain's store ports and pass one conformance suite.
//!
//! May import: domain, telemetry.

pub mod callbacks;
pub mod devices;
pub mod instrumented;
pub mod memory;
pub mod redis;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE.md house rules)
mod conformance;
