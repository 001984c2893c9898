//! The durable queue of portal callbacks (`domain::callback::CallbackQueue`): `memory` for a
//! single instance (lost on restart, like every memory store) and `redis` (survives restarts and
//! is shared by every replica; one Lua script per step). Both pass one conformance suite.
//!
//! May import: domain, the Redis store (for its shared connection).

pub mod memory;
pub mod redis;

pub use memory::MemoryCallbackQueue;
pub use redis::RedisCallbackQueue;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE.md house rules)
mod conformance;
