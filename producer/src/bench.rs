//! `agentfleet bench`: the figures of BENCHMARKS.md, measured with real worker processes
//! against a real Redis. It reports; it never fails on a number.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use agentfleet_job::{Envelope, ReasoningJob, TaskId, now_ms};
use agentfleet_queue::{ConnectOptions, Namespace, NewTask, PushEntry, Queue, TaskStore, connect};
use anyhow::{Context, bail};
use clap::Args;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

#[derive(Args)]
pub struct BenchArgs {
    /// Small sizes: proves every scenario runs (CI), in well under two minutes.
    #[arg(long)]
    quick: bool,
    /// One JSON object with every figure instead of the table.
    #[arg(long)]
    json: bool,
    /// Run only these scenarios (repeatable): enqueue-single, enqueue-bulk, drain-noop,
    /// llm-bound, chain-latency, redis-cost, rss.
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
}

/// One reported figure.
#[derive(serde::Serialize)]
struct Figure {
    scenario: String,
    figure: String,
    value: f64,
    unit: &'static str,
    /// Human-readable target, and whether it was met (None: no target).
    target: Option<String>,
    met: Option<bool>,
}

struct Report(Vec<Figure>);

impl Report {
    fn add(
        &mut self,
        scenario: &str,
        figure: &str,
        value: f64,
        unit: &'static str,
        target: Option<(f64, bool)>,
    ) {
        let (target, met) = match target {
            Some((t, at_least)) => {
                let text = format!("{} {}", if at_least { ">=" } else { "<=" }, fmt_num(t));
                (
                    Some(text),
                    Some(if at_least { value >= t } else { value <= t }),
                )
            }
            None => (None, None),
        };
        let f = Figure {
            scenario: scenario.to_owned(),
            figure: figure.to_owned(),
            value,
            unit,
            target,
            met,
        };
        eprintln!(
            "  {:<16} {:<40} {:>12} {}",
            f.scenario,
            f.figure,
            fmt_num(f.value),
            f.unit
        );
        self.0.push(f);
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The Redis under test: the one given, or a private redis-server this run started.
struct BenchRedis {
    url: String,
    private: Option<(Child, PathBuf)>,
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        if let Some((child, dir)) = &mut self.private {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// True when a Redis answers PING at `url` within two seconds.
async fn ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let answer = tokio::time::timeout(Duration::from_secs(2), async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    })
    .await;
    matches!(answer, Ok(Ok(_)))
}

async fn redis_for_bench(url: &str) -> anyhow::Result<BenchRedis> {
    if ping(url).await {
        return Ok(BenchRedis {
            url: url.to_owned(),
            private: None,
        });
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("agentfleet-bench-redis-{port}"));
    std::fs::create_dir_all(&dir)?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .context("no Redis answers at --redis-url and redis-server could not be started")?;
    let url = format!("redis://127.0.0.1:{port}");
    let bench = BenchRedis {
        url: url.clone(),
        private: Some((child, dir)),
    };
    for _ in 0..100 {
        if ping(&url).await {
            return Ok(bench);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("private redis-server did not start")
}

/// One scenario's private namespace, deleted afterwards.
struct Scratch {
    conn: ConnectionManager,
    namespace: Namespace,
    url: String,
    workers: Vec<Child>,
}

impl Scratch {
    async fn new(url: &str, name: &str) -> anyhow::Result<Self> {
        let suffix: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(6)
            .collect::<String>()
            .to_ascii_lowercase();
        let namespace = Namespace::new(&format!("bench-{name}-{suffix}"))?;
        Ok(Self {
            conn: connect(url, &ConnectOptions::default())?,
            namespace,
            url: url.to_owned(),
            workers: Vec::new(),
        })
    }

    fn queue(&self, role: &str) -> anyhow::Result<Queue> {
        Ok(Queue::new(self.conn.clone(), &self.namespace, role)?)
    }

    fn store(&self) -> TaskStore {
        TaskStore::new(
            self.conn.clone(),
            self.namespace.clone(),
            Duration::from_secs(3600),
        )
    }

    /// Starts a worker process of `role` next to this executable.
    fn worker(&mut self, role: &str, args: &[&str]) -> anyhow::Result<u32> {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().context("executable directory")?;
        let bin = dir.join(format!("{role}-worker"));
        let child = Command::new(&bin)
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(args)
            .env("REDIS_URL", &self.url)
            .env("AGENTFLEET_NAMESPACE", self.namespace.as_str())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id();
        self.workers.push(child);
        Ok(pid)
    }

    async fn succeeded(&self, role: &str) -> anyhow::Result<u64> {
        let key = self.namespace.queue(role)?.stats();
        let n: Option<u64> = self.conn.clone().hget(key, "succeeded").await?;
        Ok(n.unwrap_or(0))
    }

    /// Waits until `role` has succeeded `n` jobs of a prefilled queue; returns the rate
    /// measured from the moment the worker took its first entry (so process start-up is not
    /// counted, and the first round of a slow job is).
    async fn drain_rate(&self, role: &str, n: u64, limit: Duration) -> anyhow::Result<f64> {
        let pending_key = self.namespace.queue(role)?.pending();
        let started = Instant::now();
        let mut first_fetch: Option<Instant> = None;
        loop {
            if first_fetch.is_none() {
                let pending: u64 = self.conn.clone().llen(&pending_key).await?;
                if pending < n {
                    first_fetch = Some(Instant::now());
                }
            }
            let done = self.succeeded(role).await?;
            if done >= n {
                let t0 = first_fetch.unwrap_or(started);
                return Ok(n as f64 / t0.elapsed().as_secs_f64().max(1e-6));
            }
            if started.elapsed() > limit {
                bail!("{role}: only {done} of {n} jobs done after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `role` has succeeded `n` jobs (queues filled while it runs).
    async fn wait_done(&self, role: &str, n: u64, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while self.succeeded(role).await? < n {
            if started.elapsed() > limit {
                bail!("{role}: not all {n} jobs done after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    async fn cleanup(mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        let mut conn = self.conn.clone();
        for pattern in [
            format!("{}:*", self.namespace),
            format!("{{{}:*", self.namespace),
        ] {
            let mut keys: Vec<String> = Vec::new();
            if let Ok(mut iter) = conn.scan_match::<_, String>(&pattern).await {
                while let Some(item) = iter.next_item().await {
                    if let Ok(key) = item {
                        keys.push(key);
                    }
                }
            }
            for chunk in keys.chunks(500) {
                let _: redis::RedisResult<()> = conn.del(chunk).await;
            }
        }
    }
}

fn task(prompt: &str) -> NewTask {
    let task_id = TaskId::new();
    let created_at_ms = now_ms();
    NewTask {
        task_id: task_id.to_string(),
        prompt: prompt.to_owned(),
        metadata: BTreeMap::new(),
        created_at_ms,
        traceparent: None,
        push: PushEntry {
            entry: Envelope::new(
                task_id.to_string(),
                ReasoningJob {
                    task_id,
                    prompt: prompt.to_owned(),
                    metadata: BTreeMap::new(),
                    created_at_ms,
                    trace: None,
                },
            )
            .encode(),
            idempotency_key: None,
        },
    }
}

/// Pushes `n` jobs (no records: the no-op drain never reads them).
async fn prefill_jobs(queue: &Queue, n: u64) -> anyhow::Result<()> {
    let mut left = n;
    while left > 0 {
        let k = left.min(50_000);
        let entries: Vec<PushEntry> = (0..k).map(|_| task("noop").push).collect();
        queue.push_many(&entries).await?;
        left -= k;
    }
    Ok(())
}

async fn prefill_tasks(queue: &Queue, store: &TaskStore, n: u64) -> anyhow::Result<()> {
    let mut left = n;
    while left > 0 {
        let k = left.min(20_000);
        let tasks: Vec<NewTask> = (0..k).map(|_| task("bench")).collect();
        queue.enqueue_tasks(store, &tasks).await?;
        left -= k;
    }
    Ok(())
}

/// utime + stime of a process, in seconds (clock ticks of 1/100 s, Linux's USER_HZ).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// A /proc/<pid>/status field in MiB (VmRSS, VmHWM).
fn mem_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn info_section(conn: &mut ConnectionManager, section: &str) -> anyhow::Result<String> {
    Ok(redis::cmd("INFO").arg(section).query_async(conn).await?)
}

fn command_calls(info: &str) -> HashMap<String, u64> {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

fn redis_cpu(info: &str) -> f64 {
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_sys" || *k == "used_cpu_user")
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

pub async fn run(redis_url: &str, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let redis = redis_for_bench(redis_url).await?;
    let url = redis.url.clone();
    let shared = redis.private.is_none();
    let q = args.quick;
    let wanted = |name: &str| args.scenarios.is_empty() || args.scenarios.iter().any(|s| s == name);
    let mut report = Report(Vec::new());
    let started = Instant::now();
    eprintln!(
        "agentfleet bench{} against {} ({})",
        if q { " --quick" } else { "" },
        url,
        if shared {
            "shared Redis: other clients distort redis-cost"
        } else {
            "private redis-server"
        }
    );

    if wanted("enqueue-single") {
        let s = Scratch::new(&url, "enq1").await?;
        let (queue, store) = (s.queue("reasoning")?, s.store());
        let n = if q { 2_000 } else { 20_000 };
        let t = Instant::now();
        for _ in 0..n {
            queue.enqueue_tasks(&store, &[task("single")]).await?;
        }
        report.add(
            "enqueue-single",
            "tasks/s, one awaited at a time",
            n as f64 / t.elapsed().as_secs_f64(),
            "/s",
            Some((12_000.0, true)),
        );
        s.cleanup().await;
    }

    if wanted("enqueue-bulk") {
        let s = Scratch::new(&url, "enqbulk").await?;
        let (queue, store) = (s.queue("reasoning")?, s.store());
        let n: u64 = if q { 20_000 } else { 200_000 };
        let tasks: Vec<NewTask> = (0..n).map(|_| task("bulk")).collect();
        let t = Instant::now();
        for chunk in tasks.chunks(20_000) {
            queue.enqueue_tasks(&store, chunk).await?;
        }
        report.add(
            "enqueue-bulk",
            "tasks/s, 1,000 per round trip",
            n as f64 / t.elapsed().as_secs_f64(),
            "/s",
            Some((100_000.0, true)),
        );
        s.cleanup().await;
    }

    if wanted("drain-noop") {
        let mut cases: Vec<(&str, u64, u64)> = vec![
            ("c1", 1, if q { 2_000 } else { 20_000 }),
            ("c50", 50, if q { 20_000 } else { 200_000 }),
        ];
        if !q {
            cases.push(("c50-1m", 50, 1_000_000));
        }
        let mut rate_200k = None;
        for (name, c, n) in cases {
            let mut s = Scratch::new(&url, &format!("drain{name}")).await?;
            prefill_jobs(&s.queue("reasoning")?, n).await?;
            let pid = s.worker(
                "reasoning",
                &["--bench-noop", "--concurrency", &c.to_string()],
            )?;
            let cpu0 = cpu_seconds(pid);
            let rate = s
                .drain_rate("reasoning", n, Duration::from_secs(300))
                .await?;
            let cpu1 = cpu_seconds(pid);
            let target = match c {
                1 => 8_000.0,
                _ => 30_000.0,
            };
            report.add(
                "drain-noop",
                &format!("jobs/s, concurrency {c}, backlog {n}"),
                rate,
                "/s",
                Some((target, true)),
            );
            if let (Some(a), Some(b)) = (cpu0, cpu1) {
                let per_job_us = (b - a) * 1e6 / n as f64;
                report.add(
                    "drain-noop",
                    &format!("worker CPU per job, concurrency {c}"),
                    per_job_us,
                    "µs",
                    (c == 50).then_some((20.0, false)),
                );
            }
            if name == "c50" {
                rate_200k = Some(rate);
            }
            if name == "c50-1m"
                && let Some(r) = rate_200k
            {
                report.add(
                    "drain-noop",
                    "1M-backlog rate / 200k-backlog rate",
                    rate / r * 100.0,
                    "%",
                    Some((80.0, true)),
                );
            }
            s.cleanup().await;
        }
    }

    if wanted("llm-bound") {
        for c in [500u64, 5_000] {
            let mut s = Scratch::new(&url, &format!("llm{c}")).await?;
            let n = c * if q { 3 } else { 10 };
            prefill_tasks(&s.queue("reasoning")?, &s.store(), n).await?;
            s.worker(
                "reasoning",
                &["--mock-latency-ms", "200", "--concurrency", &c.to_string()],
            )?;
            let rate = s
                .drain_rate("reasoning", n, Duration::from_secs(300))
                .await?;
            let possible = c as f64 / 0.2;
            report.add(
                "llm-bound",
                &format!("share of possible rate, concurrency {c}"),
                rate / possible * 100.0,
                "%",
                (c == 5_000).then_some((98.0, true)),
            );
            s.cleanup().await;
        }
    }

    if wanted("chain-latency") {
        let mut s = Scratch::new(&url, "chain").await?;
        s.worker("reasoning", &["--concurrency", "50"])?;
        s.worker("synthesis", &["--concurrency", "50"])?;
        let (queue, store) = (s.queue("reasoning")?, s.store());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = if q { 100 } else { 500 };
        let mut ids = Vec::new();
        for _ in 0..n {
            let t = task("chain");
            ids.push(t.task_id.clone());
            queue.enqueue_tasks(&store, &[t]).await?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        s.wait_done("synthesis", n, Duration::from_secs(60)).await?;
        let mut latencies = Vec::new();
        for id in &ids {
            if let Some(r) = store.get(id).await?
                && let Some(done) = r.stages.get("synthesis").and_then(|st| st.finished_at_ms)
            {
                latencies.push(done.saturating_sub(r.created_at_ms) as f64);
            }
        }
        latencies.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        report.add(
            "chain-latency",
            "enqueue→done p50 (mock latency 0)",
            pct(0.5),
            "ms",
            Some((2.0, false)),
        );
        report.add("chain-latency", "enqueue→done p95", pct(0.95), "ms", None);
        report.add(
            "chain-latency",
            "enqueue→done p99",
            pct(0.99),
            "ms",
            Some((10.0, false)),
        );
        s.cleanup().await;
    }

    if wanted("redis-cost") {
        let mut s = Scratch::new(&url, "cost").await?;
        let mut conn = s.conn.clone();
        let n: u64 = if q { 2_000 } else { 20_000 };
        let (queue, store) = (s.queue("reasoning")?, s.store());
        let a = (
            info_section(&mut conn, "commandstats").await?,
            info_section(&mut conn, "cpu").await?,
        );
        prefill_tasks(&queue, &store, n).await?;
        let b = (
            info_section(&mut conn, "commandstats").await?,
            info_section(&mut conn, "cpu").await?,
        );
        s.worker("reasoning", &["--concurrency", "50"])?;
        s.worker("synthesis", &["--concurrency", "50"])?;
        s.wait_done("synthesis", n, Duration::from_secs(120))
            .await?;
        let c = (
            info_section(&mut conn, "commandstats").await?,
            info_section(&mut conn, "cpu").await?,
        );
        let delta = |x: &str, y: &str| {
            let (x, y) = (command_calls(x), command_calls(y));
            let mut d: Vec<(String, u64)> = y
                .iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(*x.get(k).unwrap_or(&0))))
                .filter(|(_, v)| *v > 0)
                .collect();
            d.sort_by_key(|(_, calls)| std::cmp::Reverse(*calls));
            d
        };
        let enqueue = delta(&a.0, &b.0);
        let stages = delta(&b.0, &c.0);
        let per =
            |d: &[(String, u64)], per: f64| d.iter().map(|(_, v)| *v).sum::<u64>() as f64 / per;
        report.add(
            "redis-cost",
            "commands per enqueued task",
            per(&enqueue, n as f64),
            "cmds",
            None,
        );
        report.add(
            "redis-cost",
            "commands per task stage",
            per(&stages, 2.0 * n as f64),
            "cmds",
            Some((6.0, false)),
        );
        for (name, calls) in stages.iter().take(8) {
            report.add(
                "redis-cost",
                &format!("  {name} per stage"),
                *calls as f64 / (2.0 * n as f64),
                "cmds",
                None,
            );
        }
        report.add(
            "redis-cost",
            "Redis CPU per task (both stages)",
            (redis_cpu(&c.1) - redis_cpu(&b.1)) * 1e6 / n as f64,
            "µs",
            None,
        );
        s.cleanup().await;
    }

    if wanted("rss") {
        let mut s = Scratch::new(&url, "rss").await?;
        let pid = s.worker(
            "reasoning",
            &["--concurrency", "1000", "--mock-latency-ms", "3000"],
        )?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(idle) = mem_mib(pid, "VmHWM") {
            report.add(
                "rss",
                "worker peak RSS, idle",
                idle,
                "MiB",
                Some((20.0, false)),
            );
        }
        prefill_tasks(&s.queue("reasoning")?, &s.store(), 1_000).await?;
        let queue = s.queue("reasoning")?;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if queue.counts(Duration::from_secs(30)).await?.in_flight >= 1_000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(busy) = mem_mib(pid, "VmHWM") {
            report.add(
                "rss",
                "worker peak RSS, 1,000 in flight",
                busy,
                "MiB",
                Some((64.0, false)),
            );
        }
        s.cleanup().await;
    }

    drop(redis);
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"quick": q, "seconds": secs, "figures": report.0})
            )?
        );
    } else {
        println!("| scenario | figure | value | target | met |");
        println!("|---|---|---|---|---|");
        for f in &report.0 {
            println!(
                "| {} | {} | {} {} | {} | {} |",
                f.scenario,
                f.figure.trim(),
                fmt_num(f.value),
                f.unit,
                f.target.as_deref().unwrap_or(""),
                match f.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "",
                }
            );
        }
        println!("\n({secs:.0} s)");
    }
    Ok(ExitCode::SUCCESS)
}
