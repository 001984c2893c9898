//! What the benchmarks share: Redis's own per-command call counts, to report the commands an
//! operation costs.

use std::collections::BTreeMap;

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
