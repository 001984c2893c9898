//! End-to-end tests: each starts the real `stepgate` binary on free ports and talks to it over
//! the network. `harness` builds configs and processes; the other modules are the scenarios.

mod cli;
mod harness;
mod redis_outage;
mod serving;
