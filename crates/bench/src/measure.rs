//! Reading what a run cost: a process's CPU and memory from `/proc`, Redis's counters from
//! `INFO`, percentiles.

use std::collections::HashMap;
use std::process::Command;

use anyhow::Context;

/// utime + stime of a process, in clock ticks (`/proc/<pid>/stat` fields 14 and 15).
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: count fields from after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `/proc/<pid>/status` memory field (VmRSS, VmHWM), KiB → MiB.
pub(crate) fn mem_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Clock ticks per second for `/proc/<pid>/stat`: `getconf CLK_TCK` (the producer has no
/// unsafe code, so no `sysconf`), else Linux's fixed USER_HZ of 100.
pub(crate) fn clock_ticks() -> (f64, bool) {
    let read = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|t| *t > 0.0);
    match read {
        Some(t) => (t, false),
        None => (100.0, true),
    }
}

/// Redis's counters at one moment: per command (calls, µs), and its CPU seconds.
pub(crate) struct RedisSnapshot {
    pub(crate) commands: HashMap<String, (u64, u64)>,
    pub(crate) cpu_secs: f64,
}

pub(crate) async fn redis_snapshot<C: redis::aio::ConnectionLike>(
    conn: &mut C,
) -> anyhow::Result<RedisSnapshot> {
    let (stats, cpu): (String, String) = redis::pipe()
        .cmd("INFO")
        .arg("commandstats")
        .cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .context("INFO failed")?;
    let commands = stats
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |k: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(k))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            Some((
                name.to_owned(),
                (field("calls=")?, field("usec=").unwrap_or(0)),
            ))
        })
        .collect();
    let cpu_secs = cpu
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| matches!(*k, "used_cpu_sys" | "used_cpu_user"))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum();
    Ok(RedisSnapshot { commands, cpu_secs })
}

/// Per command between two snapshots: (name, calls, µs), most called first.
pub(crate) fn command_delta(a: &RedisSnapshot, b: &RedisSnapshot) -> Vec<(String, u64, u64)> {
    let mut d: Vec<(String, u64, u64)> = b
        .commands
        .iter()
        .map(|(name, (calls, usec))| {
            let (c0, u0) = a.commands.get(name).copied().unwrap_or((0, 0));
            (
                name.clone(),
                calls.saturating_sub(c0),
                usec.saturating_sub(u0),
            )
        })
        .filter(|(_, calls, _)| *calls > 0)
        .collect();
    d.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    d
}

pub(crate) fn total_calls(delta: &[(String, u64, u64)]) -> u64 {
    delta.iter().map(|(_, calls, _)| calls).sum()
}

/// Nearest-rank percentile of sorted values.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn proc_stat_fields_after_the_command_name() {
        // Our own process: fields parse and are plausible.
        assert!(cpu_ticks(std::process::id()).is_some());
        assert!(mem_mib(std::process::id(), "VmHWM").is_some_and(|m| m > 0.0));
    }
}
