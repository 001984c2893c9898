//! What the benchmarks share: Redis's own per-command call counts, to report the commands an
//! operation costs; free ports, medians, and child processes that die with the bench.
//!
//! Each bench compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::Child;

/// Calls per command name from `INFO commandstats`. Commands a Lua script runs are counted under
/// their own names, next to the EVALSHA that ran them.
pub async fn redis_command_calls(
    conn: &mut redis::aio::MultiplexedConnection,
) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// A port nothing listens on right now (the OS picks it; a race with other binders is possible
/// but does not happen on a bench machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port")
}

/// CPU time the process `pid` has used so far, over all its threads (the scheduler's
/// nanosecond count in `/proc/<pid>/task/*/schedstat`); `None` where that is unreadable.
/// Threads that ended in between are missed, which the benches' long-lived servers do not have.
pub fn process_cpu(pid: u32) -> Option<std::time::Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut nanos: u64 = 0;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        nanos += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(std::time::Duration::from_nanos(nanos))
}

/// The middle value (the upper one of the two middles for an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A child process killed when dropped, so a bench that panics leaves nothing running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
