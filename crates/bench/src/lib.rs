//! `agentfleet bench`: the figures of BENCHMARKS.md, measured the way the fleet runs: real
//! worker processes (the binaries next to this executable) against a real Redis on loopback.
//!
//! Every scenario works in a fresh namespace `bench-<random>` and deletes it afterwards, so
//! the bench can share a Redis with a live fleet; with no Redis at `--redis-url` it starts a
//! private `redis-server` and stops it at the end. The bench reports numbers and never fails
//! on one: it exits 1 only when a scenario could not run.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use agentfleet_job::{TaskSpec, now_ms};
use agentfleet_queue::{
    ConnectOptions, Namespace, NewTask, PushEntry, Queue, RedisArgs, TaskStore, connect,
};
use agentfleet_testkit::{
    PrivateRedis, RedisOptions, ScratchNamespace, find_bin, stop_process, tempdir,
};
use anyhow::{Context, anyhow, bail};
use clap::Args;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

/// Every scenario, in the order they run.
const SCENARIOS: [&str; 10] = [
    "enqueue-single",
    "enqueue-bulk",
    "drain-noop-c1",
    "drain-noop-c50",
    "drain-noop-c50-1m",
    "llm-bound-c500",
    "llm-bound-c5000",
    "chain-latency",
    "redis-cost",
    "rss",
];

/// How often completion counters are polled: fine enough for multi-second runs, and a few
/// hundred commands per scenario at most.
const POLL: Duration = Duration::from_millis(20);
/// A run whose counter has not moved for this long is stuck, not slow.
const STALL: Duration = Duration::from_secs(30);
/// The mock LLM latency of the llm-bound scenarios.
const LLM_LATENCY: Duration = Duration::from_millis(200);
/// A prompt of a realistic size (entries and records then have production sizes).
const PROMPT: &str = "Compare token-bucket, leaky-bucket and sliding-window rate limiting for \
    an API gateway serving 2,000 requests per second, and recommend one for a small team.";

#[derive(Args)]
pub struct BenchArgs {
    /// Small sizes: proves every scenario runs (CI), in well under two minutes.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object with every figure instead of the table.
    #[arg(long)]
    json: bool,
    /// Start a private redis-server even when one answers at --redis-url: no other client
    /// then distorts the figures (redis-cost counts every command the server runs).
    #[arg(long)]
    private_redis: bool,
    /// Run only this scenario (repeatable; default: all).
    #[arg(long = "scenario", value_name = "NAME",
          value_parser = clap::builder::PossibleValuesParser::new(SCENARIOS))]
    scenarios: Vec<String>,
}

/// Problem sizes of one run (full / `--quick`).
struct Sizes {
    single: u64,
    bulk: u64,
    drain_c1: u64,
    drain_c50: u64,
    /// llm-bound queues hold concurrency × this many tasks.
    llm_rounds: u64,
    chain: u64,
    cost: u64,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                single: 2_000,
                bulk: 20_000,
                drain_c1: 2_000,
                drain_c50: 20_000,
                llm_rounds: 4,
                chain: 100,
                cost: 2_000,
            }
        } else {
            Self {
                single: 20_000,
                bulk: 200_000,
                drain_c1: 20_000,
                drain_c50: 200_000,
                llm_rounds: 10,
                chain: 500,
                cost: 20_000,
            }
        }
    }
}

/// What a figure is held against.
#[derive(Clone, Copy)]
enum Target {
    AtLeast(f64),
    AtMost(f64),
    Within(f64, f64),
}

impl Target {
    fn bounds(self) -> (Option<f64>, Option<f64>) {
        match self {
            Self::AtLeast(t) => (Some(t), None),
            Self::AtMost(t) => (None, Some(t)),
            Self::Within(lo, hi) => (Some(lo), Some(hi)),
        }
    }

    fn met(self, v: f64) -> bool {
        match self {
            Self::AtLeast(t) => v >= t,
            Self::AtMost(t) => v <= t,
            Self::Within(lo, hi) => (lo..=hi).contains(&v),
        }
    }

    fn text(self, unit: &str) -> String {
        match self {
            Self::AtLeast(t) => format!(">= {} {unit}", fmt_value(t)),
            Self::AtMost(t) => format!("<= {} {unit}", fmt_value(t)),
            Self::Within(lo, hi) => format!("{}–{} {unit}", fmt_value(lo), fmt_value(hi)),
        }
    }
}

/// One reported number.
#[derive(serde::Serialize)]
struct Figure {
    /// Stable id for scripts: `<scenario>.<name>`.
    key: String,
    scenario: &'static str,
    figure: String,
    /// NaN (JSON null) when it could not be measured.
    value: f64,
    unit: &'static str,
    /// The target as people read it ("<= 6.00 cmds"), and its bounds for scripts.
    target: Option<String>,
    target_min: Option<f64>,
    target_max: Option<f64>,
    met: Option<bool>,
    /// A detail of the figure above it (indented in the table).
    #[serde(skip)]
    detail: bool,
}

/// Thousands separators for big numbers, a few significant digits for small ones.
fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_owned();
    }
    let a = v.abs();
    if a >= 1_000.0 {
        let digits = format!("{:.0}", a);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// True when a Redis answers PING at `url` within 2 s.
async fn answers(redis: &RedisArgs) -> bool {
    let Ok(client) = redis.client() else {
        return false;
    };
    let ping = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ping).await,
        Ok(Ok(_))
    )
}

/// A private redis-server for this run (no persistence), stopped and removed on drop.
fn start_private_redis() -> anyhow::Result<(String, PrivateRedis)> {
    let server = PrivateRedis::launch(RedisOptions::default()).context(
        "no Redis answers at --redis-url, and a private redis-server could not be started",
    )?;
    Ok((server.url(), server))
}

/// One worker process of a scenario.
struct Worker {
    child: Child,
    role: String,
    log: PathBuf,
}

impl Worker {
    /// Fails when the process has exited, with the end of its log.
    fn check(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            bail!(
                "{}-worker exited early ({status}); log {}:\n{tail}",
                self.role,
                self.log.display()
            );
        }
        Ok(())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        stop_process(&mut self.child, Duration::from_secs(5));
    }
}

/// One scenario's world: a fresh namespace and the workers started in it. Dropping it (also
/// on error or Ctrl-C) stops the workers, then deletes every key of the namespace.
struct Scratch {
    scenario: &'static str,
    ns: Namespace,
    conn: ConnectionManager,
    logs: PathBuf,
    workers: Vec<Worker>,
    /// Deletes the namespace's keys; dropped after the workers (see `Drop`).
    scratch: ScratchNamespace,
}

impl Scratch {
    fn new(bench: &Bench, scenario: &'static str) -> anyhow::Result<Self> {
        let scratch = ScratchNamespace::new("bench", bench.redis.clone())?;
        Ok(Self {
            scenario,
            ns: scratch.namespace().clone(),
            conn: bench.conn.clone(),
            logs: bench.logs.clone(),
            workers: Vec::new(),
            scratch,
        })
    }

    fn queue(&self, role: &str) -> anyhow::Result<Queue> {
        Ok(Queue::new(self.conn.clone(), &self.ns, role)?)
    }

    fn store(&self) -> TaskStore {
        // Long enough to outlive any scenario; the namespace is deleted afterwards anyway.
        TaskStore::new(
            self.conn.clone(),
            self.ns.clone(),
            Duration::from_secs(3600),
        )
    }

    /// Starts `<role>-worker` from this executable's directory with the scenario's Redis
    /// and namespace. Inherited `AGENTFLEET_*` variables are dropped so that nothing in the
    /// caller's environment (a fail rate, a real provider) changes what is measured.
    fn spawn(&mut self, role: &str, args: &[&str]) -> anyhow::Result<u32> {
        let bin = find_bin(&format!("{role}-worker")).context(
            "build the workers next to agentfleet (`cargo build --release --bins`, as `make bench` does)",
        )?;
        let log = self.logs.join(format!(
            "{}-{}-{role}-{}.log",
            self.scenario,
            self.ns,
            self.workers.len()
        ));
        let log_file =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(&bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AGENTFLEET_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .args(["--metrics-addr", "127.0.0.1:0", "--provider", "mock"])
            // A stopped bench worker hands its jobs back at once instead of waiting 30 s.
            .args(["--shutdown-grace-secs", "1"])
            .args(args)
            .envs(self.scratch.redis().to_env())
            .env("AGENTFLEET_NAMESPACE", self.ns.as_str())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id();
        self.workers.push(Worker {
            child,
            role: role.to_owned(),
            log,
        });
        Ok(pid)
    }

    /// Stops every worker of the scenario (SIGTERM, then SIGKILL after 5 s).
    fn stop_workers(&mut self) {
        self.workers.clear();
    }

    fn check_workers(&mut self) -> anyhow::Result<()> {
        self.workers.iter_mut().try_for_each(Worker::check)
    }

    async fn stat(&self, role: &str, field: &str) -> anyhow::Result<u64> {
        let key = self.ns.queue(role)?.stats();
        let v: Option<u64> = self.conn.clone().hget(key, field).await?;
        Ok(v.unwrap_or(0))
    }

    /// Polls `role`'s `succeeded` counter every 20 ms until it reaches `n`; returns when it
    /// was seen there. Fails when a worker exits or the counter stops moving.
    async fn wait_succeeded(&mut self, role: &str, n: u64) -> anyhow::Result<Instant> {
        let mut last = (u64::MAX, Instant::now());
        loop {
            let done = self.stat(role, "succeeded").await?;
            if done >= n {
                return Ok(Instant::now());
            }
            self.check_workers()?;
            if done != last.0 {
                last = (done, Instant::now());
            } else if last.1.elapsed() > STALL {
                bail!("{role}: stuck at {done} of {n} jobs for {STALL:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `role` has a registered worker (it heartbeats as it starts).
    async fn wait_registered(&mut self, role: &str) -> anyhow::Result<()> {
        let key = self.ns.queue(role)?.workers();
        let started = Instant::now();
        loop {
            let n: u64 = self.conn.clone().zcard(&key).await?;
            if n > 0 {
                return Ok(());
            }
            self.check_workers()?;
            if started.elapsed() > Duration::from_secs(15) {
                bail!("no {role} worker registered within 15 s");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Numeric fields of task records, one pipelined round trip per 1,000 tasks.
    async fn record_fields(
        &self,
        ids: &[String],
        fields: &[&str],
    ) -> anyhow::Result<Vec<Vec<Option<u64>>>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1_000) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HMGET").arg(self.ns.task(id)).arg(fields);
            }
            let rows: Vec<Vec<Option<String>>> = pipe.query_async(&mut self.conn.clone()).await?;
            out.extend(rows.into_iter().map(|row| {
                row.into_iter()
                    .map(|v| v.and_then(|s| s.parse().ok()))
                    .collect()
            }));
        }
        Ok(out)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Workers first: one still running would hand jobs back into deleted keys.
        self.stop_workers();
        if let Err(e) = self.scratch.delete() {
            eprintln!(
                "agentfleet bench: could not delete namespace {}: {e}",
                self.ns
            );
        }
    }
}

/// A task exactly as `agentfleet enqueue` makes it (trace context included).
fn new_task() -> NewTask {
    NewTask::new(
        TaskSpec {
            prompt: PROMPT.to_owned(),
            metadata: Default::default(),
        },
        None,
        &agentfleet_job::Pipeline::default(),
    )
}

/// Bare reasoning entries (no records: the no-op drain never reads them), built and pushed
/// 50,000 at a time so that a 1M backlog never sits in this process at once.
async fn prefill_entries(queue: &Queue, n: u64) -> anyhow::Result<()> {
    let mut left = n;
    while left > 0 {
        let k = left.min(50_000);
        let entries: Vec<PushEntry> = (0..k).map(|_| new_task().push).collect();
        queue.push_many(&entries).await.context("prefill failed")?;
        left -= k;
    }
    Ok(())
}

/// Tasks with records, as the producer enqueues them. Returns their ids.
async fn prefill_tasks(queue: &Queue, store: &TaskStore, n: u64) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n as usize);
    let mut left = n;
    while left > 0 {
        let k = left.min(20_000);
        let tasks: Vec<NewTask> = (0..k).map(|_| new_task()).collect();
        queue
            .enqueue_tasks(store, &tasks)
            .await
            .context("prefill failed")?;
        ids.extend(tasks.into_iter().map(|t| t.task_id));
        left -= k;
    }
    Ok(ids)
}

/// Field `i` of a record row from [`Scratch::record_fields`] (None when absent).
fn field(row: &[Option<u64>], i: usize) -> Option<u64> {
    row.get(i).copied().flatten()
}

/// utime + stime of a process, in clock ticks (`/proc/<pid>/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: count fields from after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `/proc/<pid>/status` memory field (VmRSS, VmHWM), KiB → MiB.
fn mem_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Clock ticks per second for `/proc/<pid>/stat`: `getconf CLK_TCK` (the producer has no
/// unsafe code, so no `sysconf`), else Linux's fixed USER_HZ of 100.
fn clock_ticks() -> (f64, bool) {
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
struct RedisSnapshot {
    commands: HashMap<String, (u64, u64)>,
    cpu_secs: f64,
}

async fn redis_snapshot(conn: &mut ConnectionManager) -> anyhow::Result<RedisSnapshot> {
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
fn command_delta(a: &RedisSnapshot, b: &RedisSnapshot) -> Vec<(String, u64, u64)> {
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

fn total_calls(delta: &[(String, u64, u64)]) -> u64 {
    delta.iter().map(|(_, calls, _)| calls).sum()
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The run: where it measures, what it found.
struct Bench {
    redis: RedisArgs,
    private: bool,
    quick: bool,
    sizes: Sizes,
    clk_tck: f64,
    conn: ConnectionManager,
    /// Worker logs of this run (kept when a scenario failed).
    logs: PathBuf,
    figures: Vec<Figure>,
    notes: Vec<String>,
    failures: Vec<(String, String)>,
    /// drain-noop-c50's rate, for the 1M-backlog comparison.
    c50_rate: Option<f64>,
}

impl Bench {
    fn figure(
        &mut self,
        scenario: &'static str,
        name: &str,
        label: impl Into<String>,
        value: f64,
        unit: &'static str,
        target: Option<Target>,
    ) {
        let label = label.into();
        let detail = label.starts_with(' ');
        let label = label.trim().to_owned();
        let met = target.map(|t| t.met(value));
        let (target_min, target_max) = target.map_or((None, None), Target::bounds);
        eprintln!(
            "  {scenario:<18} {:<52} {:>10} {unit}{}",
            if detail {
                format!("  {label}")
            } else {
                label.clone()
            },
            fmt_value(value),
            match met {
                Some(true) => "  (target met)",
                Some(false) => "  (target missed)",
                None => "",
            }
        );
        self.figures.push(Figure {
            key: format!("{scenario}.{name}"),
            scenario,
            figure: label,
            value,
            unit,
            target: target.map(|t| t.text(unit)),
            target_min,
            target_max,
            met,
            detail,
        });
    }

    async fn scenario(&mut self, name: &'static str) -> anyhow::Result<()> {
        match name {
            "enqueue-single" => self.enqueue_single().await,
            "enqueue-bulk" => self.enqueue_bulk().await,
            "drain-noop-c1" => self.drain(name, 1, self.sizes.drain_c1).await,
            "drain-noop-c50" => self.drain(name, 50, self.sizes.drain_c50).await,
            "drain-noop-c50-1m" => self.drain(name, 50, 1_000_000).await,
            "llm-bound-c500" => self.llm_bound(name, 500).await,
            "llm-bound-c5000" => self.llm_bound(name, 5_000).await,
            "chain-latency" => self.chain_latency().await,
            "redis-cost" => self.redis_cost().await,
            "rss" => self.rss().await,
            other => Err(anyhow!("unknown scenario {other:?}")),
        }
    }

    /// One awaited `enqueue_tasks` per task: one round trip each (record + push pipelined).
    async fn enqueue_single(&mut self) -> anyhow::Result<()> {
        let n = self.sizes.single;
        let s = Scratch::new(self, "enqueue-single")?;
        let (queue, store) = (s.queue("reasoning")?, s.store());
        let tasks: Vec<NewTask> = (0..n).map(|_| new_task()).collect();
        let t = Instant::now();
        for task in &tasks {
            queue
                .enqueue_tasks(&store, std::slice::from_ref(task))
                .await
                .context("enqueue failed")?;
        }
        let secs = t.elapsed().as_secs_f64();
        drop(s);
        self.figure(
            "enqueue-single",
            "tasks_per_s",
            format!("tasks/s, {} awaited one at a time", fmt_value(n as f64)),
            n as f64 / secs,
            "/s",
            Some(Target::AtLeast(12_000.0)),
        );
        Ok(())
    }

    /// `enqueue_tasks` with big slices: 1,000 tasks per pipelined round trip inside.
    async fn enqueue_bulk(&mut self) -> anyhow::Result<()> {
        let n = self.sizes.bulk;
        let s = Scratch::new(self, "enqueue-bulk")?;
        let (queue, store) = (s.queue("reasoning")?, s.store());
        let mut spent = Duration::ZERO;
        let mut left = n;
        while left > 0 {
            let k = left.min(20_000);
            // Tasks are built outside the clock: this measures the queue, not ULIDs.
            let tasks: Vec<NewTask> = (0..k).map(|_| new_task()).collect();
            let t = Instant::now();
            queue
                .enqueue_tasks(&store, &tasks)
                .await
                .context("enqueue failed")?;
            spent += t.elapsed();
            left -= k;
        }
        drop(s);
        self.figure(
            "enqueue-bulk",
            "tasks_per_s",
            format!("tasks/s, {} via enqueue_tasks", fmt_value(n as f64)),
            n as f64 / spent.as_secs_f64(),
            "/s",
            Some(Target::AtLeast(100_000.0)),
        );
        Ok(())
    }

    /// A prefilled queue drained by one `--bench-noop` worker: the queue's own throughput.
    async fn drain(
        &mut self,
        scenario: &'static str,
        concurrency: u64,
        n: u64,
    ) -> anyhow::Result<()> {
        let mut s = Scratch::new(self, scenario)?;
        prefill_entries(&s.queue("reasoning")?, n).await?;
        let before = redis_snapshot(&mut s.conn).await?;
        let t0 = Instant::now();
        let pid = s.spawn(
            "reasoning",
            &["--bench-noop", "--concurrency", &concurrency.to_string()],
        )?;
        let cpu0 = cpu_ticks(pid);
        let done = s.wait_succeeded("reasoning", n).await?;
        let cpu1 = cpu_ticks(pid);
        let after = redis_snapshot(&mut s.conn).await?;
        drop(s);

        let rate = n as f64 / done.duration_since(t0).as_secs_f64();
        let rate_target = if concurrency == 1 { 8_000.0 } else { 30_000.0 };
        self.figure(
            scenario,
            "jobs_per_s",
            format!("jobs/s from worker start, backlog {}", fmt_value(n as f64)),
            rate,
            "/s",
            (scenario != "drain-noop-c50-1m").then_some(Target::AtLeast(rate_target)),
        );
        let cpu_us = match (cpu0, cpu1) {
            (Some(a), Some(b)) => (b.saturating_sub(a)) as f64 / self.clk_tck * 1e6 / n as f64,
            _ => f64::NAN,
        };
        self.figure(
            scenario,
            "worker_cpu_us_per_job",
            "worker CPU per job (utime+stime)",
            cpu_us,
            "µs",
            (scenario == "drain-noop-c50").then_some(Target::AtMost(20.0)),
        );
        self.figure(
            scenario,
            "redis_cpu_us_per_job",
            "Redis CPU per job",
            (after.cpu_secs - before.cpu_secs) * 1e6 / n as f64,
            "µs",
            None,
        );
        self.figure(
            scenario,
            "redis_commands_per_job",
            "Redis commands per job (incl. inside Lua)",
            total_calls(&command_delta(&before, &after)) as f64 / n as f64,
            "cmds",
            None,
        );
        match scenario {
            "drain-noop-c50" => self.c50_rate = Some(rate),
            "drain-noop-c50-1m" => match self.c50_rate {
                Some(base) => self.figure(
                    scenario,
                    "rate_vs_200k_pct",
                    "rate vs the 200,000 backlog",
                    rate / base * 100.0,
                    "%",
                    Some(Target::Within(80.0, 120.0)),
                ),
                None => self
                    .notes
                    .push("drain-noop-c50-1m: run drain-noop-c50 too for the ratio".to_owned()),
            },
            _ => {}
        }
        Ok(())
    }

    /// The real reasoning handler against a 200 ms mock LLM: does the worker keep
    /// `concurrency` calls in flight all the time?
    async fn llm_bound(&mut self, scenario: &'static str, concurrency: u64) -> anyhow::Result<()> {
        let n = concurrency * self.sizes.llm_rounds;
        let mut s = Scratch::new(self, scenario)?;
        let ids = prefill_tasks(&s.queue("reasoning")?, &s.store(), n).await?;
        let before = redis_snapshot(&mut s.conn).await?;
        let spawned_ms = now_ms();
        let t0 = Instant::now();
        let pid = s.spawn(
            "reasoning",
            &[
                "--mock-latency-ms",
                &LLM_LATENCY.as_millis().to_string(),
                "--concurrency",
                &concurrency.to_string(),
            ],
        )?;
        let cpu0 = cpu_ticks(pid);
        let done = s.wait_succeeded("reasoning", n).await?;
        let cpu1 = cpu_ticks(pid);
        let after = redis_snapshot(&mut s.conn).await?;
        let rows = s
            .record_fields(
                &ids,
                &["reasoning.started_at_ms", "reasoning.finished_at_ms"],
            )
            .await?;
        drop(s);

        let first_start = rows.iter().filter_map(|r| field(r, 0)).min();
        let last_finish = rows.iter().filter_map(|r| field(r, 1)).max();
        let possible = concurrency as f64 / LLM_LATENCY.as_secs_f64();
        // Share of the ideal: n jobs at `concurrency` in flight take n/possible seconds.
        let ideal = n as f64 / possible;
        let sustained = match (first_start, last_finish) {
            (Some(a), Some(b)) if b > a => ideal / ((b - a) as f64 / 1000.0) * 100.0,
            _ => f64::NAN,
        };
        self.figure(
            scenario,
            "share_of_possible_pct",
            format!("share of C/0.2 s, first start → last finish, {n} jobs"),
            sustained,
            "%",
            (concurrency == 5_000).then_some(Target::AtLeast(98.0)),
        );
        let wall = done.duration_since(t0).as_secs_f64();
        self.figure(
            scenario,
            "share_from_worker_start_pct",
            "same, from process start to last ack (20 ms poll)",
            ideal / wall * 100.0,
            "%",
            None,
        );
        self.figure(
            scenario,
            "jobs_per_s",
            format!("jobs/s achieved (possible {})", fmt_value(possible)),
            n as f64 / wall,
            "/s",
            None,
        );
        self.figure(
            scenario,
            "startup_ms",
            "process start → first job started",
            first_start.map_or(f64::NAN, |a| a.saturating_sub(spawned_ms) as f64),
            "ms",
            None,
        );
        // Where a slot's time goes: each of the `concurrency` slots ran n/concurrency jobs
        // in the window; a job holds its slot for its handler time (record start, the LLM
        // call, record finish), the rest is between handlers (chained push, ack, refetch).
        let handler_ms: Vec<f64> = rows
            .iter()
            .filter_map(|r| Some(field(r, 1)?.saturating_sub(field(r, 0)?) as f64))
            .collect();
        let mean_handler = handler_ms.iter().sum::<f64>() / handler_ms.len().max(1) as f64;
        let slot_ms = match (first_start, last_finish) {
            (Some(a), Some(b)) => (b.saturating_sub(a)) as f64 * concurrency as f64 / n as f64,
            _ => f64::NAN,
        };
        self.figure(
            scenario,
            "handler_overhead_ms",
            "  mean handler time beyond the 200 ms call",
            mean_handler - LLM_LATENCY.as_secs_f64() * 1000.0,
            "ms",
            None,
        );
        self.figure(
            scenario,
            "between_jobs_ms",
            "  mean slot time between handlers",
            slot_ms - mean_handler,
            "ms",
            None,
        );
        let cpu_us = match (cpu0, cpu1) {
            (Some(a), Some(b)) => (b.saturating_sub(a)) as f64 / self.clk_tck * 1e6 / n as f64,
            _ => f64::NAN,
        };
        self.figure(
            scenario,
            "worker_cpu_us_per_job",
            "worker CPU per job (real handler)",
            cpu_us,
            "µs",
            None,
        );
        // Busy shares over the run: which side is saturated.
        self.figure(
            scenario,
            "worker_busy_pct",
            "  worker CPU busy, % of one core",
            cpu_us * n as f64 / 1e6 / wall * 100.0,
            "%",
            None,
        );
        let redis_secs = after.cpu_secs - before.cpu_secs;
        self.figure(
            scenario,
            "redis_cpu_us_per_job",
            "Redis CPU per job",
            redis_secs * 1e6 / n as f64,
            "µs",
            None,
        );
        self.figure(
            scenario,
            "redis_busy_pct",
            "  Redis CPU busy, % of one core (its one thread)",
            redis_secs / wall * 100.0,
            "%",
            None,
        );
        Ok(())
    }

    /// Enqueue → synthesis done, through both roles with a zero-latency LLM: pure overhead.
    async fn chain_latency(&mut self) -> anyhow::Result<()> {
        let n = self.sizes.chain;
        let mut s = Scratch::new(self, "chain-latency")?;
        s.spawn("reasoning", &["--concurrency", "50"])?;
        s.spawn("synthesis", &["--concurrency", "50"])?;
        s.wait_registered("reasoning").await?;
        s.wait_registered("synthesis").await?;
        // Let both settle into their blocking wait for work.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (queue, store) = (s.queue("reasoning")?, s.store());
        let mut ids = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let task = new_task();
            queue
                .enqueue_tasks(&store, std::slice::from_ref(&task))
                .await
                .context("enqueue failed")?;
            ids.push(task.task_id);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        s.wait_succeeded("synthesis", n).await?;
        let rows = s
            .record_fields(
                &ids,
                &[
                    "created_at_ms",
                    "reasoning.started_at_ms",
                    "reasoning.finished_at_ms",
                    "synthesis.started_at_ms",
                    "synthesis.finished_at_ms",
                ],
            )
            .await?;
        drop(s);
        // Milliseconds between two record timestamps, per task, sorted.
        let span = |from: usize, to: usize| {
            let mut v: Vec<f64> = rows
                .iter()
                .filter_map(|r| Some(field(r, to)?.saturating_sub(field(r, from)?) as f64))
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let latencies = span(0, 4);
        let first_hop = span(0, 1);
        let chain_hop = span(2, 3);
        if latencies.len() < ids.len() {
            self.notes.push(format!(
                "chain-latency: {} of {} records lacked timestamps",
                ids.len() - latencies.len(),
                ids.len()
            ));
        }
        let sc = "chain-latency";
        self.figure(
            sc,
            "p50_ms",
            format!("enqueue → synthesis done p50, {n} tasks"),
            percentile(&latencies, 0.50),
            "ms",
            Some(Target::AtMost(2.0)),
        );
        self.figure(
            sc,
            "p95_ms",
            "enqueue → synthesis done p95",
            percentile(&latencies, 0.95),
            "ms",
            None,
        );
        self.figure(
            sc,
            "p99_ms",
            "enqueue → synthesis done p99",
            percentile(&latencies, 0.99),
            "ms",
            Some(Target::AtMost(10.0)),
        );
        self.figure(
            sc,
            "max_ms",
            "enqueue → synthesis done max",
            latencies.last().copied().unwrap_or(f64::NAN),
            "ms",
            None,
        );
        // Where the time goes: the two queue hops (the rest is handler work).
        for (name, label, v) in [
            (
                "enqueue_to_reasoning_p99_ms",
                "  enqueue → reasoning start p99",
                &first_hop,
            ),
            (
                "reasoning_to_synthesis_p99_ms",
                "  reasoning done → synthesis start p99",
                &chain_hop,
            ),
        ] {
            self.figure(sc, name, label, percentile(v, 0.99), "ms", None);
        }
        Ok(())
    }

    /// What a task costs Redis: commands (Lua-internal ones included, as commandstats counts
    /// them) and CPU, per task stage, with both roles running their real handlers.
    async fn redis_cost(&mut self) -> anyhow::Result<()> {
        let n = self.sizes.cost;
        let mut s = Scratch::new(self, "redis-cost")?;
        let a = redis_snapshot(&mut s.conn).await?;
        prefill_tasks(&s.queue("reasoning")?, &s.store(), n).await?;
        let b = redis_snapshot(&mut s.conn).await?;
        s.spawn("reasoning", &["--concurrency", "50"])?;
        s.spawn("synthesis", &["--concurrency", "50"])?;
        s.wait_succeeded("synthesis", n).await?;
        // A reasoning ack may land after its synthesis job finished: wait for both.
        s.wait_succeeded("reasoning", n).await?;
        let c = redis_snapshot(&mut s.conn).await?;
        drop(s);

        let sc = "redis-cost";
        if !self.private {
            self.notes.push(
                "redis-cost: shared Redis, so other clients' commands and CPU are counted too"
                    .to_owned(),
            );
        }
        let enqueue = command_delta(&a, &b);
        self.figure(
            sc,
            "commands_per_enqueued_task",
            "commands per enqueued task (producer side)",
            total_calls(&enqueue) as f64 / n as f64,
            "cmds",
            None,
        );
        let stages = command_delta(&b, &c);
        let per_stage = 2.0 * n as f64;
        self.figure(
            sc,
            "commands_per_stage",
            format!("commands per task stage ({n} tasks × 2)"),
            total_calls(&stages) as f64 / per_stage,
            "cmds",
            Some(Target::AtMost(6.0)),
        );
        for (name, calls, usec) in stages.iter().take(6) {
            self.figure(
                sc,
                &format!("{name}_per_stage"),
                format!(
                    "  {name} per stage ({:.1} µs/call)",
                    *usec as f64 / *calls as f64
                ),
                *calls as f64 / per_stage,
                "cmds",
                None,
            );
        }
        let lua_us = stages
            .iter()
            .filter(|(name, _, _)| matches!(name.as_str(), "evalsha" | "eval"))
            .map(|(_, _, usec)| *usec)
            .sum::<u64>();
        self.figure(
            sc,
            "lua_us_per_stage",
            "Lua (EVALSHA) time per stage, inner commands included",
            lua_us as f64 / per_stage,
            "µs",
            None,
        );
        self.figure(
            sc,
            "redis_cpu_us_per_task",
            "Redis CPU per task, both stages",
            (c.cpu_secs - b.cpu_secs) * 1e6 / n as f64,
            "µs",
            None,
        );
        Ok(())
    }

    /// Peak RSS of a reasoning worker: idle, and holding 1,000 jobs in flight.
    async fn rss(&mut self) -> anyhow::Result<()> {
        let args = ["--concurrency", "1000", "--mock-latency-ms", "3000"];
        let mut s = Scratch::new(self, "rss")?;

        let t = Instant::now();
        let pid = s.spawn("reasoning", &args)?;
        s.wait_registered("reasoning").await?;
        tokio::time::sleep(Duration::from_secs(2).saturating_sub(t.elapsed())).await;
        s.check_workers()?;
        let idle = mem_mib(pid, "VmHWM").unwrap_or(f64::NAN);
        s.stop_workers();

        let queue = s.queue("reasoning")?;
        prefill_tasks(&queue, &s.store(), 1_000).await?;
        let pid = s.spawn("reasoning", &args)?;
        let started = Instant::now();
        loop {
            let in_flight = queue
                .counts(Duration::from_secs(30))
                .await
                .context("reading queue counts failed")?
                .in_flight;
            if in_flight >= 1_000 {
                break;
            }
            s.check_workers()?;
            if started.elapsed() > Duration::from_secs(15) {
                bail!("only {in_flight} of 1,000 jobs in flight after 15 s");
            }
            tokio::time::sleep(POLL).await;
        }
        // All handlers are now parked in their 3 s LLM call.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let in_flight_rss = mem_mib(pid, "VmRSS").unwrap_or(f64::NAN);
        // The peak includes the burst of 1,000 completions.
        s.wait_succeeded("reasoning", 1_000).await?;
        let busy = mem_mib(pid, "VmHWM").unwrap_or(f64::NAN);
        drop(s);

        self.figure(
            "rss",
            "idle_peak_mib",
            "worker peak RSS (VmHWM), idle 2 s",
            idle,
            "MiB",
            Some(Target::AtMost(20.0)),
        );
        self.figure(
            "rss",
            "in_flight_rss_mib",
            "worker RSS (VmRSS), 1,000 in flight",
            in_flight_rss,
            "MiB",
            None,
        );
        self.figure(
            "rss",
            "in_flight_peak_mib",
            "worker peak RSS (VmHWM), 1,000 in flight",
            busy,
            "MiB",
            Some(Target::AtMost(64.0)),
        );
        Ok(())
    }

    async fn run_all(&mut self, selected: &[&'static str]) {
        for &name in selected {
            if name == "drain-noop-c50-1m" && self.quick {
                self.notes
                    .push("drain-noop-c50-1m: full runs only (skipped with --quick)".to_owned());
                continue;
            }
            // The previous scenario's aftermath (its keys being freed, its workers exiting)
            // must not land in this one's measurement.
            tokio::time::sleep(Duration::from_millis(500)).await;
            eprintln!("{name} ...");
            let t = Instant::now();
            match self.scenario(name).await {
                Ok(()) => eprintln!("  ({:.1} s)", t.elapsed().as_secs_f64()),
                Err(e) => {
                    eprintln!("  {name} FAILED: {e:#}");
                    self.failures.push((name.to_owned(), format!("{e:#}")));
                }
            }
        }
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn print_table(figures: &[Figure]) {
    let rows: Vec<[String; 5]> = figures
        .iter()
        .map(|f| {
            [
                f.scenario.to_owned(),
                if f.detail {
                    format!("  {}", f.figure)
                } else {
                    f.figure.clone()
                },
                format!("{} {}", fmt_value(f.value), f.unit),
                f.target.clone().unwrap_or_default(),
                match f.met {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "NO".to_owned(),
                    None => String::new(),
                },
            ]
        })
        .collect();
    let header = ["scenario", "figure", "value", "target", "met?"];
    let mut width = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String; 5]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(width)
            .enumerate()
            .map(|(i, (c, w))| {
                let pad = " ".repeat(w - c.chars().count());
                // Values right-aligned, the rest left-aligned.
                if i == 2 {
                    format!("{pad}{c}")
                } else {
                    format!("{c}{pad}")
                }
            })
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(&header.map(str::to_owned));
    println!(
        "|{}|",
        width
            .iter()
            .enumerate()
            .map(|(i, w)| if i == 2 {
                format!("{}:", "-".repeat(w + 1))
            } else {
                "-".repeat(w + 2)
            })
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in &rows {
        line(row);
    }
}

pub async fn run(redis: &RedisArgs, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let selected: Vec<&'static str> = SCENARIOS
        .into_iter()
        .filter(|s| args.scenarios.is_empty() || args.scenarios.iter().any(|a| a == s))
        .collect();

    // Declared before everything that uses it, so it is dropped (stopped) last.
    let mut private_redis = None;
    let redis = if !args.private_redis && answers(redis).await {
        redis.clone()
    } else {
        if !args.private_redis {
            eprintln!(
                "no Redis answers at {}: starting a private redis-server",
                redis.url
            );
        }
        let (url, server) = start_private_redis()?;
        private_redis = Some(server);
        RedisArgs::plain(url)
    };
    // Shown without its password, everywhere below.
    let url = redis.url.clone();
    let private = private_redis.is_some();
    let mut conn = connect(&redis, &ConnectOptions::default())?;
    let server: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .context("INFO server failed")?;
    let redis_version = server
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let (clk_tck, clk_assumed) = clock_ticks();
    let logs = tempdir("bench")?;
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = cpu_model();

    let mut bench = Bench {
        redis: redis.clone(),
        private,
        quick: args.quick,
        sizes: Sizes::new(args.quick),
        clk_tck,
        conn,
        logs: logs.clone(),
        figures: Vec::new(),
        notes: Vec::new(),
        failures: Vec::new(),
        c50_rate: None,
    };
    if clk_assumed {
        bench
            .notes
            .push("getconf CLK_TCK failed: assumed 100 ticks/s (Linux USER_HZ)".to_owned());
    }
    if !private {
        bench.notes.push(format!(
            "shared Redis at {url}: other clients' load distorts every figure, redis-cost most"
        ));
    }
    eprintln!(
        "agentfleet bench{}: {} Redis {redis_version} at {url}; {nproc} CPUs ({cpu}); CLK_TCK {clk_tck}",
        if args.quick { " --quick" } else { "" },
        if private { "private" } else { "shared" },
    );

    let interrupted = tokio::select! {
        () = bench.run_all(&selected) => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    if interrupted {
        bench
            .failures
            .push(("bench".to_owned(), "interrupted (Ctrl-C)".to_owned()));
    }
    let seconds = started.elapsed().as_secs_f64();

    if args.json {
        let out = serde_json::json!({
            "quick": args.quick,
            "seconds": seconds,
            "redis": { "url": url.to_string(), "private": private, "version": redis_version },
            "machine": { "nproc": nproc, "cpu_model": cpu, "clk_tck": clk_tck },
            "figures": bench.figures,
            "notes": bench.notes,
            "failures": bench.failures.iter()
                .map(|(s, e)| serde_json::json!({ "scenario": s, "error": e }))
                .collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&bench.figures);
        for note in &bench.notes {
            println!("note: {note}");
        }
        for (scenario, error) in &bench.failures {
            println!("FAILED {scenario}: {error}");
        }
        println!(
            "{} Redis {redis_version}, {nproc} CPUs, {:.0} s{}",
            if private { "private" } else { "shared" },
            seconds,
            if args.quick { " (--quick)" } else { "" }
        );
    }

    drop(private_redis);
    let has_logs = std::fs::read_dir(&logs).is_ok_and(|mut d| d.next().is_some());
    if bench.failures.is_empty() || !has_logs {
        let _ = std::fs::remove_dir_all(&logs);
    } else {
        eprintln!("worker logs kept in {}", logs.display());
    }
    Ok(if bench.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_well() {
        assert_eq!(fmt_value(1_234_567.4), "1,234,567");
        assert_eq!(fmt_value(512.3), "512");
        assert_eq!(fmt_value(12.34), "12.3");
        assert_eq!(fmt_value(1.234), "1.23");
        assert_eq!(fmt_value(f64::NAN), "n/a");
    }

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

    #[test]
    fn targets() {
        assert!(Target::AtLeast(10.0).met(10.0));
        assert!(!Target::AtMost(6.0).met(6.5));
        assert!(Target::Within(80.0, 120.0).met(95.0));
        assert!(!Target::Within(80.0, 120.0).met(f64::NAN));
    }
}
