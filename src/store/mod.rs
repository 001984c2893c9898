//! Store adapters: `memory` (embedded default) and `redis` (Lua for every atomic step, one round
//! trip each). Both implement the domain's store ports and pass one conformance suite.
//!
//! May import: domain, telemetry.
