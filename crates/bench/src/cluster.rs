//! `agentfleet bench --cluster`: one role's queue drained on a Redis Cluster with one shard,
//! then with three, each master's CPU per job, and what that figure projects for clusters
//! whose nodes have a core each.
//!
//! Why a projection: the local cluster's six redis-servers, the workers and the bench share
//! this machine's cores, so its drain rate shows the machine, not the cluster. A job's Redis
//! CPU on the master that owns its shard does not depend on that: a node on a dedicated core
//! runs at most 1 s / (CPU per job) jobs a second, and a role with one shard per node at most
//! the node count times that.

use std::time::{Duration, Instant};

use agentfleet_job::Lane;
use anyhow::{Context, bail};
use redis::aio::MultiplexedConnection;

use crate::POLL;
use crate::measure::{RedisSnapshot, cpu_ticks, redis_snapshot};
use crate::report::fmt_value;
use crate::scenarios::Bench;
use crate::scratch::{Scratch, prefill_entries};

/// The cluster scenarios, in the order they run.
pub(crate) const CLUSTER_SCENARIOS: [&str; 2] = ["cluster-drain-1-shard", "cluster-drain-3-shards"];

/// No-op workers per scenario, at concurrency 50 each: two, as the pipeline test
/// runs per role, and the same for both shard counts so that only the sharding differs.
const WORKERS: usize = 2;
const CONCURRENCY: u64 = 50;
/// How long each master's idle CPU (cluster bus, replication pings) is sampled before a
/// drain, to be subtracted from what the drain cost.
const IDLE_SAMPLE: Duration = Duration::from_secs(1);
/// Cluster sizes the per-node figure is projected to.
const PROJECTED_NODES: [u32; 2] = [3, 10];

/// One master of the cluster, as the bench measures it.
struct Master {
    addr: String,
    port: u16,
    conn: MultiplexedConnection,
}

impl Master {
    /// True when this master owns `key`'s slot (another node answers `MOVED`).
    async fn owns(&mut self, key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(key)
            .query_async::<i64>(&mut self.conn)
            .await
            .is_ok()
    }
}

/// The cluster's masters (from `CLUSTER NODES` on a seed), in port order.
async fn masters(bench: &Bench) -> anyhow::Result<Vec<Master>> {
    let mut out = Vec::new();
    for client in bench
        .redis
        .master_clients()
        .context("cannot list the cluster's masters")?
    {
        let addr = client.get_connection_info().addr().to_string();
        let port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("cannot connect to master {addr}"))?;
        out.push(Master { addr, port, conn });
    }
    out.sort_by_key(|m| m.port);
    if out.is_empty() {
        bail!("the cluster reported no master");
    }
    Ok(out)
}

/// Shard numbers as "0,2", or `none` when there are none.
fn shard_list(shards: &[usize], none: &str) -> String {
    if shards.is_empty() {
        return none.to_owned();
    }
    shards
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

async fn snapshots(masters: &mut [Master]) -> anyhow::Result<Vec<RedisSnapshot>> {
    let mut out = Vec::with_capacity(masters.len());
    for m in masters.iter_mut() {
        out.push(
            redis_snapshot(&mut m.conn)
                .await
                .with_context(|| format!("INFO on {}", m.addr))?,
        );
    }
    Ok(out)
}

impl Bench {
    /// A prefilled queue of `shards` shards drained by two `bench-noop-worker`s.
    pub(crate) async fn cluster_drain(
        &mut self,
        scenario: &'static str,
        shards: usize,
    ) -> anyhow::Result<()> {
        let n = self.sizes.drain_c50;
        let mut s = Scratch::new(self, scenario)?.with_shards(shards);
        let queue = s.queue("reasoning")?;
        prefill_entries(&queue, n, &[Lane::Normal]).await?;
        let mut masters = masters(self).await?;

        // Where each shard landed: its keys share one hash tag, so one master holds them all.
        let mut shards_of: Vec<Vec<usize>> = vec![Vec::new(); masters.len()];
        for (k, shard) in queue.shards().iter().enumerate() {
            let key = shard.keys().pending_lane(Lane::Normal);
            let mut owner = None;
            for (i, m) in masters.iter_mut().enumerate() {
                if m.owns(&key).await {
                    owner = Some(i);
                }
            }
            match owner {
                Some(i) => shards_of[i].push(k),
                None => bail!("no master owns shard {k}'s key {key}"),
            }
        }
        let placement = masters
            .iter()
            .zip(&shards_of)
            .map(|(m, ks)| format!("{} [{}]", m.port, shard_list(ks, "-")))
            .collect::<Vec<_>>()
            .join(" ");
        self.notes.push(format!(
            "{scenario}: shards per master (port [shards]): {placement}"
        ));

        let idle0 = snapshots(&mut masters).await?;
        tokio::time::sleep(IDLE_SAMPLE).await;
        let before = snapshots(&mut masters).await?;
        let idle_secs = IDLE_SAMPLE.as_secs_f64();

        let t0 = Instant::now();
        let mut pids = Vec::with_capacity(WORKERS);
        for _ in 0..WORKERS {
            pids.push(s.spawn_noop("reasoning", CONCURRENCY)?);
        }
        let cpu0: Vec<Option<u64>> = pids.iter().map(|&p| cpu_ticks(p)).collect();
        let done = s.wait_succeeded("reasoning", n).await?;
        let cpu1: Vec<Option<u64>> = pids.iter().map(|&p| cpu_ticks(p)).collect();
        let after = snapshots(&mut masters).await?;
        drop(s);
        let secs = done.duration_since(t0).as_secs_f64();

        self.figure(
            scenario,
            "jobs_per_s",
            format!(
                "jobs/s, backlog {} on {shards} shard(s), {WORKERS} workers × c{CONCURRENCY}",
                fmt_value(n as f64)
            ),
            n as f64 / secs,
            "/s",
            None,
        );
        let worker_ticks: Option<u64> = cpu0
            .iter()
            .zip(&cpu1)
            .map(|(a, b)| Some(b.as_ref()?.saturating_sub(*a.as_ref()?)))
            .sum();
        self.figure(
            scenario,
            "worker_cpu_us_per_job",
            "worker CPU per job (all workers, utime+stime)",
            worker_ticks.map_or(f64::NAN, |t| t as f64 / self.clk_tck * 1e6 / n as f64),
            "µs",
            None,
        );

        // Each master's CPU per job of the whole drain, its idle rate subtracted.
        let per_master: Vec<f64> = (0..masters.len())
            .map(|i| {
                let idle_rate = (before[i].cpu_secs - idle0[i].cpu_secs) / idle_secs;
                let spent = (after[i].cpu_secs - before[i].cpu_secs) - idle_rate * secs;
                spent.max(0.0) * 1e6 / n as f64
            })
            .collect();
        let total: f64 = per_master.iter().sum();
        self.figure(
            scenario,
            "redis_cpu_us_per_job",
            "Redis CPU per job, all masters (idle subtracted)",
            total,
            "µs",
            None,
        );
        for (i, (m, us)) in masters.iter().zip(&per_master).enumerate() {
            self.figure(
                scenario,
                &format!("master{i}_cpu_us_per_job"),
                format!(
                    " master :{} (shards {}): CPU per job",
                    m.port,
                    shard_list(&shards_of[i], "none")
                ),
                *us,
                "µs",
                None,
            );
        }

        // Per node: a job costs `total` on the one master that owns its shard (the others
        // see nothing of it), so a dedicated core runs 1 s / total of them.
        let per_node_rate = if total > 0.0 { 1e6 / total } else { f64::NAN };
        if shards == 1 {
            self.figure(
                scenario,
                "projected_ceiling_per_s",
                "projected ceiling, any cluster size (one shard = one node's core)",
                per_node_rate,
                "/s",
                None,
            );
        } else {
            for nodes in PROJECTED_NODES {
                self.figure(
                    scenario,
                    &format!("projected_{nodes}_nodes_per_s"),
                    format!("projected drain, {nodes} nodes × 1 core, {nodes} shards"),
                    per_node_rate * f64::from(nodes),
                    "/s",
                    None,
                );
            }
        }
        // The drain must have kept a poll's worth of time, else the figures are noise.
        if secs < POLL.as_secs_f64() * 10.0 {
            self.notes.push(format!(
                "{scenario}: drained in {secs:.2} s, too short for steady figures"
            ));
        }
        Ok(())
    }
}
