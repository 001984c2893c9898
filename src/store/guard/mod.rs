//! The account guard's store (`domain::ports::AccountGuardStore`): per-user failure counts,
//! locks, push counts and report blocks. `memory` for a single instance (lost on restart, like
//! every memory store) and `redis` (shared by every replica; one Lua script per step). Both pass
//! one conformance suite and read time from the injected clock for every expiry they decide.
//!
//! May import: domain, the Redis store (for its shared connection).

pub mod memory;
pub mod redis;

pub use memory::MemoryGuardStore;
pub use redis::RedisGuardStore;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE.md house rules)
mod conformance;
