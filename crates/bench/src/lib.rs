//! `agentfleet bench` (agentfleet-bench): the figures of BENCHMARKS.md, measured the way the fleet runs: real
//! worker processes (the binaries next to this executable) against a real Redis on loopback.
//!
//! Every scenario works in a fresh namespace `bench-<random>` and deletes it afterwards, so
//! the bench can share a Redis with a live fleet; with no Redis at `--redis-url` it starts a
//! private `redis-server` and stops it at the end. The bench reports numbers and never fails
//! on one: it exits 1 only when a scenario could not run.

//!
//! Modules by job: `scenarios` (what each scenario runs and reports), `scratch` (a
//! scenario's namespace and worker processes), `measure` (reading `/proc` and Redis's
//! counters), `report` (figures, targets, the table). `bench-noop-worker` (`src/bin`) is the
//! worker the drain-noop scenarios run: the queue alone, no role handler. `cluster` holds the
//! `--cluster` scenarios (a Redis Cluster, one role's queue with 1 and 3 shards).
//!
//! A library of the CLI's: its errors are reported, never matched, so it uses `anyhow` like
//! the binary it runs in.
#![forbid(unsafe_code)]

mod cluster;
mod measure;
mod report;
mod scenarios;
mod scratch;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use agentfleet_queue::{ConnectOptions, RedisArgs, connect};
use agentfleet_testkit::{PrivateRedis, RedisOptions, tempdir};
use anyhow::Context;
use clap::Args;

use cluster::CLUSTER_SCENARIOS;
use measure::clock_ticks;
use report::print_table;
use scenarios::Bench;

/// Every scenario, in the order they run.
pub(crate) const SCENARIOS: [&str; 12] = [
    "enqueue-single",
    "enqueue-bulk",
    "drain-noop-c1",
    "drain-noop-c50",
    "drain-noop-c50-1m",
    "drain-noop-c50-lanes",
    "llm-bound-c500",
    "llm-bound-c5000",
    "chain-latency",
    "drain-events",
    "redis-cost",
    "rss",
];

/// How often completion counters are polled: fine enough for multi-second runs, and a few
/// hundred commands per scenario at most.
pub(crate) const POLL: Duration = Duration::from_millis(20);
/// A run whose counter has not moved for this long is stuck, not slow.
pub(crate) const STALL: Duration = Duration::from_secs(30);
/// The mock LLM latency of the llm-bound scenarios.
pub(crate) const LLM_LATENCY: Duration = Duration::from_millis(200);
/// A prompt of a realistic size (entries and records then have production sizes).
pub(crate) const PROMPT: &str = "Compare token-bucket, leaky-bucket and sliding-window rate limiting for \
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
    /// Run only this scenario (repeatable; default: all of the set, single Redis or
    /// `--cluster`).
    #[arg(long = "scenario", value_name = "NAME",
          value_parser = clap::builder::PossibleValuesParser::new(
              SCENARIOS.iter().chain(CLUSTER_SCENARIOS.iter())))]
    scenarios: Vec<String>,
    /// The Redis Cluster scenarios instead (one role drained with 1 and 3 shards, Redis CPU
    /// per job per master, projections for 3 and 10 nodes), on the cluster given by
    /// `--redis-cluster --redis-url SEEDS` (`make bench-cluster` starts the local one).
    #[arg(long, conflicts_with = "private_redis")]
    cluster: bool,
}

/// Problem sizes of one run (full / `--quick`).
pub(crate) struct Sizes {
    pub(crate) single: u64,
    pub(crate) bulk: u64,
    pub(crate) drain_c1: u64,
    pub(crate) drain_c50: u64,
    /// llm-bound queues hold concurrency × this many tasks.
    pub(crate) llm_rounds: u64,
    pub(crate) chain: u64,
    pub(crate) cost: u64,
}

impl Sizes {
    pub(crate) fn new(quick: bool) -> Self {
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

/// True when a Redis (or a cluster) answers PING at `redis` within 2 s.
async fn answers(redis: &RedisArgs) -> bool {
    let Ok(mut conn) = connect(redis, &ConnectOptions::default()) else {
        return false;
    };
    let ping_cmd = redis::cmd("PING");
    let ping = ping_cmd.query_async::<String>(&mut conn);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ping).await,
        Ok(Ok(_))
    )
}

/// `redis_version` from `INFO server` (on a cluster, of its first master).
async fn redis_version(redis: &RedisArgs) -> anyhow::Result<String> {
    let client = redis
        .master_clients()?
        .into_iter()
        .next()
        .context("the cluster reported no master")?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("cannot connect to Redis")?;
    let server: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .context("INFO server failed")?;
    Ok(server
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_owned())
}

/// A private redis-server for this run (no persistence), stopped and removed on drop.
fn start_private_redis() -> anyhow::Result<(String, PrivateRedis)> {
    let server = PrivateRedis::launch(RedisOptions::default()).context(
        "no Redis answers at --redis-url, and a private redis-server could not be started",
    )?;
    Ok((server.url(), server))
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

pub async fn run(redis: &RedisArgs, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let set: &[&'static str] = if args.cluster {
        &CLUSTER_SCENARIOS
    } else {
        &SCENARIOS
    };
    let selected: Vec<&'static str> = set
        .iter()
        .copied()
        .filter(|s| args.scenarios.is_empty() || args.scenarios.iter().any(|a| a == s))
        .collect();
    if selected.is_empty() {
        anyhow::bail!(
            "{} --scenario is of the {} set: {}",
            args.scenarios.join(", "),
            if args.cluster {
                "single-Redis"
            } else {
                "--cluster"
            },
            if args.cluster {
                "drop --cluster"
            } else {
                "add --cluster"
            }
        );
    }
    match (args.cluster, redis.cluster) {
        (true, false) => anyhow::bail!(
            "bench --cluster measures a Redis Cluster: give one with --redis-cluster --redis-url SEEDS \
             (`make bench-cluster` starts the local one, scripts/redis-cluster.sh)"
        ),
        (false, true) => anyhow::bail!(
            "the single-Redis scenarios measure one Redis; on a cluster run `agentfleet bench --cluster`"
        ),
        _ => {}
    }

    // Declared before everything that uses it, so it is dropped (stopped) last.
    let mut private_redis = None;
    let redis = if !args.private_redis && answers(redis).await {
        redis.clone()
    } else if args.cluster {
        anyhow::bail!("no Redis Cluster answers at {}", redis.url);
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
    let conn = connect(&redis, &ConnectOptions::default())?;
    let redis_version = redis_version(&redis).await?;
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
