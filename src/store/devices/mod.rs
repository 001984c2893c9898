//! The device store (`domain::ports::DeviceStore`): enrolled devices, their push registrations,
//! one-time enrollment codes, PIN failure counters, claim-once markers and per-device pending
//! push transactions. `memory` for a single instance (lost on restart, like every memory store)
//! and `redis` (shared by every replica; one command or one Lua script per method). Both pass one
//! conformance suite, and both read time from the injected clock for every expiry they decide.
//!
//! May import: domain, the Redis store (for its shared connection).

pub mod memory;
pub mod redis;

pub use memory::MemoryDeviceStore;
pub use redis::RedisDeviceStore;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE.md house rules)
mod conformance;
