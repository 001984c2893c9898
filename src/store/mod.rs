//! Store adapters: `memory` (embedded default) and `redis` (Lua for every atomic step, one round
//! trip each). Both implement the domain's store ports and pass one conformance suite.
//!
//! May import: domain, telemetry.

/// Runs a conformance suite's test bodies (`async fn name(&Harness)` in the calling module)
/// against one store: `$harness().await` builds the store, `single` tests run on the default
/// runtime, `concurrent` ones on four worker threads (where races must be possible).
#[cfg(test)]
macro_rules! run_suite {
    ($harness:path; single: [$($single:ident),+ $(,)?]; concurrent: [$($concurrent:ident),* $(,)?]) => {
        $(
            #[tokio::test]
            async fn $single() {
                let harness = $harness().await;
                super::$single(&harness).await;
            }
        )+
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $concurrent() {
                let harness = $harness().await;
                super::$concurrent(&harness).await;
            }
        )*
    };
}

pub mod admin;
pub mod callbacks;
pub mod devices;
pub mod guard;
pub mod instrumented;
pub mod memory;
pub mod redis;
pub mod signals;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE.md house rules)
mod conformance;
