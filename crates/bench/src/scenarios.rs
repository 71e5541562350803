//! The scenarios of BENCHMARKS.md: what each runs and which figures it reports.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agentfleet_job::{Lane, now_ms};
use agentfleet_queue::RedisConnection;
use agentfleet_queue::{NewTask, RedisArgs};
use anyhow::{Context, anyhow, bail};

use crate::measure::{command_delta, cpu_ticks, mem_mib, percentile, redis_snapshot, total_calls};
use crate::report::{Figure, Target, fmt_value};
use crate::scratch::{Scratch, field, new_task, prefill_entries, prefill_tasks};
use crate::{LLM_LATENCY, POLL, Sizes};

/// The run: where it measures, what it found.
pub(crate) struct Bench {
    pub(crate) redis: RedisArgs,
    pub(crate) private: bool,
    pub(crate) quick: bool,
    pub(crate) sizes: Sizes,
    pub(crate) clk_tck: f64,
    pub(crate) conn: RedisConnection,
    /// Worker logs of this run (kept when a scenario failed).
    pub(crate) logs: PathBuf,
    pub(crate) figures: Vec<Figure>,
    pub(crate) notes: Vec<String>,
    pub(crate) failures: Vec<(String, String)>,
    /// drain-noop-c50's rate, for the 1M-backlog comparison.
    pub(crate) c50_rate: Option<f64>,
}

impl Bench {
    pub(crate) fn figure(
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

    pub(crate) async fn scenario(&mut self, name: &'static str) -> anyhow::Result<()> {
        match name {
            "enqueue-single" => self.enqueue_single().await,
            "enqueue-bulk" => self.enqueue_bulk().await,
            "drain-noop-c1" => self.drain(name, 1, self.sizes.drain_c1).await,
            "drain-noop-c50" => self.drain(name, 50, self.sizes.drain_c50).await,
            "drain-noop-c50-1m" => self.drain(name, 50, 1_000_000).await,
            "drain-noop-c50-lanes" => self.drain(name, 50, self.sizes.drain_c50).await,
            "llm-bound-c500" => self.llm_bound(name, 500).await,
            "llm-bound-c5000" => self.llm_bound(name, 5_000).await,
            "chain-latency" => self.chain_latency().await,
            "drain-events" => self.drain_events().await,
            "redis-cost" => self.redis_cost().await,
            "rss" => self.rss().await,
            "cluster-drain-1-shard" => self.cluster_drain(name, 1).await,
            "cluster-drain-3-shards" => self.cluster_drain(name, 3).await,
            other => Err(anyhow!("unknown scenario {other:?}")),
        }
    }

    /// One awaited `enqueue_tasks` per task: one round trip each (record + push pipelined).
    pub(crate) async fn enqueue_single(&mut self) -> anyhow::Result<()> {
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
        let rate = n as f64 / secs;
        self.figure(
            "enqueue-single",
            "tasks_per_s",
            format!("tasks/s, {} awaited one at a time", fmt_value(n as f64)),
            rate,
            "/s",
            Some(Target::AtLeast(12_000.0)),
        );
        // The machine's bound for any awaited round trip, on the same connection and
        // runtime: machines differ by x2 in it, so this is what makes tables taken on
        // different machines comparable.
        let t = Instant::now();
        for _ in 0..n {
            redis::cmd("PING")
                .query_async::<String>(&mut self.conn)
                .await
                .context("PING failed")?;
        }
        let pings = n as f64 / t.elapsed().as_secs_f64();
        self.figure(
            "enqueue-single",
            "ping_round_trips_per_s",
            "  bare PING round trips/s, same connection (the machine's bound)",
            pings,
            "/s",
            None,
        );
        self.figure(
            "enqueue-single",
            "share_of_ping_rate_pct",
            "  enqueue rate as a share of it",
            100.0 * rate / pings,
            "%",
            None,
        );
        Ok(())
    }

    /// `enqueue_tasks` with big slices: 1,000 tasks per pipelined round trip inside.
    pub(crate) async fn enqueue_bulk(&mut self) -> anyhow::Result<()> {
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

    /// A prefilled queue drained by one `bench-noop-worker`: the queue's own throughput.
    pub(crate) async fn drain(
        &mut self,
        scenario: &'static str,
        concurrency: u64,
        n: u64,
    ) -> anyhow::Result<()> {
        let mut s = Scratch::new(self, scenario)?;
        // The lanes scenario spreads the backlog over high, normal and low: every fetch
        // then keeps the lower lanes' shares (deficit round robin in fetch.lua).
        let lanes: &[Lane] = if scenario == "drain-noop-c50-lanes" {
            &Lane::ALL
        } else {
            &[Lane::Normal]
        };
        prefill_entries(&s.queue("reasoning")?, n, lanes).await?;
        let before = redis_snapshot(&mut s.conn).await?;
        let t0 = Instant::now();
        let pid = s.spawn_noop("reasoning", concurrency)?;
        let cpu0 = cpu_ticks(pid);
        let done = s.wait_succeeded("reasoning", n).await?;
        let cpu1 = cpu_ticks(pid);
        let after = redis_snapshot(&mut s.conn).await?;
        drop(s);

        let rate = n as f64 / done.duration_since(t0).as_secs_f64();
        let rate_target = if concurrency == 1 { 8_000.0 } else { 30_000.0 };
        let has_rate_target = !matches!(scenario, "drain-noop-c50-1m" | "drain-noop-c50-lanes");
        self.figure(
            scenario,
            "jobs_per_s",
            format!("jobs/s from worker start, backlog {}", fmt_value(n as f64)),
            rate,
            "/s",
            has_rate_target.then_some(Target::AtLeast(rate_target)),
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
            "drain-noop-c50-lanes" => match self.c50_rate {
                Some(base) => self.figure(
                    scenario,
                    "rate_vs_one_lane_pct",
                    "rate vs one lane (drain-noop-c50)",
                    rate / base * 100.0,
                    "%",
                    Some(Target::AtLeast(90.0)),
                ),
                None => self
                    .notes
                    .push("drain-noop-c50-lanes: run drain-noop-c50 too for the ratio".to_owned()),
            },
            _ => {}
        }
        Ok(())
    }

    /// The real reasoning handler against a 200 ms mock LLM: does the worker keep
    /// `concurrency` calls in flight all the time?
    pub(crate) async fn llm_bound(
        &mut self,
        scenario: &'static str,
        concurrency: u64,
    ) -> anyhow::Result<()> {
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

    /// The lifecycle events' cost: the same drain by a real reasoning worker (concurrency
    /// 50, a zero-latency mock LLM: every job is record start, record finish, chain, ack)
    /// with events off (`--events-maxlen 0`) and on (the default cap).
    pub(crate) async fn drain_events(&mut self) -> anyhow::Result<()> {
        let n = self.sizes.cost;
        let mut rates = Vec::new();
        for (label, maxlen) in [("off", "0"), ("on", "100000")] {
            let mut s = Scratch::new(self, "drain-events")?;
            prefill_tasks(&s.queue("reasoning")?, &s.store(), n).await?;
            let before = redis_snapshot(&mut s.conn).await?;
            let t0 = Instant::now();
            s.spawn(
                "reasoning",
                &[
                    "--mock-latency-ms",
                    "0",
                    "--concurrency",
                    "50",
                    "--events-maxlen",
                    maxlen,
                ],
            )?;
            let done = s.wait_succeeded("reasoning", n).await?;
            let after = redis_snapshot(&mut s.conn).await?;
            drop(s);
            let rate = n as f64 / done.duration_since(t0).as_secs_f64();
            rates.push(rate);
            self.figure(
                "drain-events",
                &format!("jobs_per_s_events_{label}"),
                format!("real worker c50, events {label}: jobs/s ({n} jobs, from process start)"),
                rate,
                "/s",
                None,
            );
            self.figure(
                "drain-events",
                &format!("redis_cpu_us_per_job_events_{label}"),
                format!("  Redis CPU per job, events {label}"),
                (after.cpu_secs - before.cpu_secs) * 1e6 / n as f64,
                "µs",
                None,
            );
        }
        self.figure(
            "drain-events",
            "events_cost_pct",
            "throughput lost to events (off → on)",
            (1.0 - rates[1] / rates[0]) * 100.0,
            "%",
            None,
        );
        Ok(())
    }

    /// Enqueue → synthesis done, through both roles with a zero-latency LLM: pure overhead.
    pub(crate) async fn chain_latency(&mut self) -> anyhow::Result<()> {
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
    pub(crate) async fn redis_cost(&mut self) -> anyhow::Result<()> {
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
    pub(crate) async fn rss(&mut self) -> anyhow::Result<()> {
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

    pub(crate) async fn run_all(&mut self, selected: &[&'static str]) {
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
