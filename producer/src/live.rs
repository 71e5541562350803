//! The live view on a terminal: `agentfleet workers`, `agentfleet tasks`, `agentfleet watch`.

use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentfleet_job::{TaskStatus, exit};
use agentfleet_queue::{Event, TaskFilter};
use anyhow::Context;

use crate::{Fleet, NotFound, usage};

/// `agentfleet workers`: the live workers of every role, from the registry.
pub async fn workers(fleet: &Fleet, json: bool) -> anyhow::Result<ExitCode> {
    let mut all = Vec::new();
    for role in fleet.pipeline.roles() {
        let queue = fleet.queue(role)?;
        all.extend(
            queue
                .registered_workers(fleet.lease)
                .await
                .context("reading the workers registry")?,
        );
    }
    if json {
        println!("{}", serde_json::to_string(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_ms();
    println!(
        "{:<36} {:<12} {:<16} {:<10} {:<20} {:>5} {:>8} {:>8} {:>7} {:>9} {:>6}",
        "WORKER",
        "ROLE",
        "HOST",
        "PROVIDER",
        "MODEL",
        "CONC",
        "INFLIGHT",
        "DONE",
        "FAILED",
        "UP",
        "BEAT"
    );
    for w in &all {
        let get = |k: &str| w.get(k).map(String::as_str).unwrap_or("-");
        let age = |k: &str| {
            w.get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .map(|t| short_duration(now.saturating_sub(t)))
                .unwrap_or_else(|| "-".to_owned())
        };
        println!(
            "{:<36} {:<12} {:<16} {:<10} {:<20} {:>5} {:>8} {:>8} {:>7} {:>9} {:>6}",
            get("id"),
            get("role"),
            get("host"),
            get("provider"),
            get("model"),
            get("concurrency"),
            get("in_flight"),
            get("done"),
            get("failed"),
            age("started_at_ms"),
            age("last_heartbeat_ms"),
        );
    }
    if all.is_empty() {
        println!("(no live workers)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Flags of `agentfleet tasks`.
#[derive(Debug, clap::Args)]
pub struct TasksArgs {
    /// Only tasks with this status (queued, running, review, done, dead, cancelled, expired).
    #[arg(long, env = "AGENTFLEET_TASKS_STATUS")]
    status: Option<TaskStatus>,
    /// Only tasks whose metadata has KEY=VALUE (repeat: all must match).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
    /// Only tasks whose pipeline has this role.
    #[arg(long, env = "AGENTFLEET_TASKS_ROLE")]
    role: Option<String>,
    /// Only tasks enqueued within this long (e.g. 10m, 2h, 1d).
    #[arg(long, value_parser = humantime::parse_duration, env = "AGENTFLEET_TASKS_SINCE")]
    since: Option<Duration>,
    /// At most this many (newest first).
    #[arg(long, default_value_t = 50, env = "AGENTFLEET_TASKS_LIMIT")]
    limit: usize,
    /// Only stalled tasks: queued or running, unchanged for --stalled-for, and waiting for a
    /// job that no queue holds (pending, scheduled or in flight). After a Redis Cluster
    /// failover these are the tasks whose job was in the writes the old master had not
    /// replicated; re-enqueue them. Reads whole queues: an audit, not a dashboard query.
    #[arg(long, conflicts_with_all = ["status", "meta", "role", "since"])]
    stalled: bool,
    /// How long a task must be unchanged to count as stalled (e.g. 30s, 5m).
    #[arg(
        long,
        value_parser = humantime::parse_duration,
        default_value = "60s",
        env = "AGENTFLEET_TASKS_STALLED_FOR",
        value_name = "DURATION"
    )]
    stalled_for: Duration,
    #[arg(long)]
    json: bool,
}

/// Parses `KEY=VALUE` pairs.
pub fn parse_meta(pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| usage!("--meta {p:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// `agentfleet tasks`: tasks newest first from the tasks index.
pub async fn tasks(fleet: &Fleet, args: TasksArgs) -> anyhow::Result<ExitCode> {
    if let Some(role) = &args.role {
        fleet.queue(role)?;
    }
    let filter = TaskFilter {
        status: args.status,
        metadata: parse_meta(&args.meta)?,
        role: args.role,
        since_ms: args
            .since
            .map(|d| now_ms().saturating_sub(d.as_millis() as u64)),
        text: None,
        limit: args.limit.max(1),
    };
    let found = if args.stalled {
        let mut queues = std::collections::BTreeMap::new();
        for role in fleet.pipeline.roles() {
            queues.insert(role.to_owned(), fleet.queue(role)?);
        }
        fleet
            .store
            .stalled_tasks(&queues, args.stalled_for, filter.limit)
            .await
            .context("auditing the queues for stalled tasks")?
    } else {
        fleet
            .store
            .list_tasks(&filter)
            .await
            .context("reading the tasks index")?
    };
    if args.json {
        for t in &found {
            println!("{}", serde_json::to_string(t)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<26} {:<10} {:<24} {:<8} METADATA",
        "TASK", "STATUS", "ENQUEUED (UTC)", "AGE"
    );
    let now = now_ms();
    for t in &found {
        let meta: Vec<String> = t.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<26} {:<10} {:<24} {:<8} {}",
            t.task_id,
            t.status,
            clock(t.created_at_ms),
            short_duration(now.saturating_sub(t.created_at_ms)),
            meta.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Flags of `agentfleet watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Follow one task to its end; exit as `wait` does (0 done, 1 dead, cancelled or
    /// expired, 3 unknown).
    #[arg(long, env = "AGENTFLEET_WATCH_TASK")]
    task: Option<String>,
    /// Only events of this role.
    #[arg(long, env = "AGENTFLEET_WATCH_ROLE")]
    role: Option<String>,
    /// Only events of this kind (enqueued, started, stage_done, done, retried, dead,
    /// recovered, cancelled, expired, parked, approved, rejected, replayed).
    #[arg(long, env = "AGENTFLEET_WATCH_KIND")]
    kind: Option<String>,
    /// Start after this event id (the last one a previous reader saw; `0` for every event
    /// the stream still holds). Default: only new events.
    #[arg(long, env = "AGENTFLEET_WATCH_FROM")]
    from: Option<String>,
    /// One JSON object per event, no throughput lines.
    #[arg(long)]
    json: bool,
}

/// Events that end a task.
fn ends_task(kind: &str) -> bool {
    matches!(kind, "done" | "dead" | "cancelled" | "expired" | "rejected")
}

/// Per role: when each of its last stages finished (for the throughput line).
#[derive(Default)]
struct Throughput {
    done: BTreeMap<String, VecDeque<u64>>,
}

impl Throughput {
    const WINDOW_MS: u64 = 10_000;

    fn note(&mut self, event: &Event) {
        if event.kind == "stage_done"
            && let Some(role) = event.field("role")
        {
            self.done
                .entry(role.to_owned())
                .or_default()
                .push_back(event.at_ms());
        }
    }

    fn line(&mut self, now: u64) -> String {
        let mut parts = Vec::new();
        for (role, times) in &mut self.done {
            while times.front().is_some_and(|t| *t + Self::WINDOW_MS < now) {
                times.pop_front();
            }
            parts.push(format!(
                "{role} {:.1}/s",
                times.len() as f64 / (Self::WINDOW_MS as f64 / 1000.0)
            ));
        }
        if parts.is_empty() {
            "-- throughput (10 s): no stage finished".to_owned()
        } else {
            format!("-- throughput (10 s): {}", parts.join(", "))
        }
    }
}

/// `agentfleet watch`: events as they happen.
pub async fn watch(fleet: &Fleet, args: WatchArgs) -> anyhow::Result<ExitCode> {
    if let Some(role) = &args.role {
        fleet.queue(role)?;
    }
    let events = fleet.store.events();
    // With events off, `--task` still follows the task's record (every 2 s).
    if !events.enabled() && args.task.is_none() {
        return Err(usage!(
            "events are off (--events-maxlen 0): there is nothing to watch"
        ));
    }
    let mut out = std::io::stdout().lock();
    let mut after = match &args.from {
        Some(id) => id.clone(),
        None => events.last_id().await.context("reading the event stream")?,
    };
    // Following one task: show what the stream still holds of it, then its record's state.
    if let Some(task) = &args.task {
        let record = fleet
            .store
            .get(task)
            .await
            .context("reading the task record")?;
        let Some(record) = record else {
            return Err(anyhow::Error::new(NotFound(format!("no task {task}"))));
        };
        if args.from.is_none() {
            for e in events.of_task(task, 10_000).await? {
                print_event(&mut out, &e, args.json)?;
            }
        }
        if record.status.is_terminal() {
            return Ok(task_exit(record.status));
        }
    }
    // Where a later reader can resume from to miss nothing (stderr: stdout is the events).
    eprintln!("watching events after {after}");
    let terminal = std::io::stdout().is_terminal() && !args.json && args.task.is_none();
    let mut rates = Throughput::default();
    let mut last_line = Instant::now();
    let mut last_check = Instant::now();
    loop {
        let batch = events
            .read(&after, 1_000, Some(Duration::from_secs(1)))
            .await
            .context("reading the event stream")?;
        for e in &batch {
            after = e.id.clone();
            rates.note(e);
            if args.task.as_ref().is_some_and(|t| *t != e.task)
                || args
                    .role
                    .as_ref()
                    .is_some_and(|r| Some(r.as_str()) != e.field("role"))
                || args.kind.as_ref().is_some_and(|k| *k != e.kind)
            {
                continue;
            }
            print_event(&mut out, e, args.json)?;
            if args.task.is_some() && ends_task(&e.kind) {
                // The record has the final word (a replayed dead task runs again).
                if let Some(record) = fleet.store.get(&e.task).await?
                    && record.status.is_terminal()
                {
                    return Ok(task_exit(record.status));
                }
            }
        }
        // Following a task: its record says when it ended, even if an event was lost.
        if let Some(task) = &args.task
            && last_check.elapsed() >= Duration::from_secs(2)
        {
            last_check = Instant::now();
            match fleet.store.get(task).await? {
                Some(r) if r.status.is_terminal() => return Ok(task_exit(r.status)),
                Some(_) => {}
                None => return Err(anyhow::Error::new(NotFound(format!("no task {task}")))),
            }
        }
        if terminal && last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            writeln!(out, "{}", rates.line(now_ms()))?;
            out.flush()?;
        }
    }
}

fn task_exit(status: TaskStatus) -> ExitCode {
    ExitCode::from(if status.is_failure() {
        exit::TASK_DEAD
    } else {
        exit::OK
    })
}

fn print_event(out: &mut impl Write, e: &Event, json: bool) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(e)?)?;
    } else {
        let fields: Vec<String> = e
            .fields
            .iter()
            .map(|(k, v)| {
                if v.contains(' ') {
                    format!("{k}={v:?}")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        writeln!(
            out,
            "{} {:<10} {} {}",
            clock(e.at_ms()),
            e.kind,
            e.task,
            fields.join(" ")
        )?;
    }
    out.flush()?;
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `2026-11-30T14:39:19.123Z`-style UTC time of a ms timestamp.
fn clock(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `3s`, `4m`, `2h`, `5d`.
fn short_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
