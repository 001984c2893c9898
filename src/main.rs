//! The `stepgate` binary: picks the allocator and hands over to the CLI.

use std::process::ExitCode;

// mimalloc measured 10-20% more proxy throughput than the system allocator on this workload.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    stepgate::cli::main()
}
