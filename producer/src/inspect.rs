use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use agentfleet_job::{TaskRecord, TaskStatus, exit};
use anyhow::Context;

use crate::{Fleet, NotFound};

/// Longest a field is shown on a terminal without `--full`, in characters.
const CUT_AT_CHARS: usize = 2_000;

/// `text` whole, or its first [`CUT_AT_CHARS`] characters and how much was left out when
/// stdout is a terminal and `--full` was not given (a 5 MB answer floods a terminal; a
/// pipe or a file gets everything).
pub fn cut(text: &str, full: bool) -> String {
    if full || !std::io::stdout().is_terminal() {
        return text.to_owned();
    }
    match text.char_indices().nth(CUT_AT_CHARS) {
        None => text.to_owned(),
        Some((at, _)) => format!(
            "{}\n... ({} more characters; --full shows all)",
            &text[..at],
            text[at..].chars().count()
        ),
    }
}

/// `at_ms` as a local ISO time with how long ago (or until): "2026-11-30T15:02:11+01:00
/// (12 s ago)".
pub fn moment(at_ms: u64) -> String {
    let iso = jiff::Timestamp::from_millisecond(at_ms as i64)
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%dT%H:%M:%S%:z")
                .to_string()
        })
        .unwrap_or_else(|_| format!("{at_ms} ms"));
    let now = agentfleet_job::now_ms();
    let rel = if at_ms >= now {
        format!("in {}", span(at_ms - now))
    } else {
        format!("{} ago", span(now - at_ms))
    };
    format!("{iso} ({rel})")
}

/// A duration for people: "850 ms", "12 s", "4 min 3 s", "2 h 5 min", "3 d 4 h".
pub fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

fn not_found(id: &str) -> anyhow::Error {
    anyhow::Error::new(NotFound(format!(
        "task {id} not found: never enqueued in this namespace, or its record expired"
    )))
}

pub async fn status(fleet: &Fleet, id: &str, json: bool, full: bool) -> anyhow::Result<ExitCode> {
    let record = fleet
        .store
        .get(id)
        .await
        .context("reading the task record")?;
    let Some(record) = record else {
        return Err(not_found(id));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        print_record(&record, full);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_record(r: &TaskRecord, full: bool) {
    println!("task      {}", r.task_id);
    println!("status    {}", describe_status(r));
    println!("created   {}", moment(r.created_at_ms));
    println!("prompt    {}", cut(&r.prompt, full));
    for (k, v) in &r.metadata {
        println!("meta      {k}={v}");
    }
    if let Some(p) = &r.pipeline {
        println!("pipeline  {p}");
    }
    if !r.lane.is_normal() {
        println!("priority  {}", r.lane);
    }
    if let Some(at) = r.deadline_ms {
        println!("deadline  {}", moment(at));
    }
    if let Some(at) = r.not_before_ms {
        println!("starts    {}", moment(at));
    }
    if let Some(why) = &r.stop_reason {
        let when = r.stopped_at_ms.map(moment).unwrap_or_default();
        println!("stopped   {when}: {why}");
    }
    if let Some(e) = &r.last_error {
        println!("error     {e}");
    }
    for (role, stage) in ordered_stages(r) {
        let state = stage.state.map(|s| s.as_str()).unwrap_or("queued");
        let took = stage
            .duration_ms()
            .map(|ms| format!("{ms} ms"))
            .unwrap_or_else(|| "-".to_owned());
        let usage = stage
            .usage
            .map(|u| {
                format!(
                    " | {} prompt + {} completion tokens",
                    u.prompt_tokens, u.completion_tokens
                )
            })
            .unwrap_or_default();
        println!(
            "\n[{role}] {state} | attempts {} | {took} | worker {}{usage}",
            stage.attempts,
            stage.worker_id.as_deref().unwrap_or("-")
        );
        if let Some(e) = &stage.last_error {
            let when = if stage.state == Some(agentfleet_job::StageState::Retrying) {
                stage
                    .retry_at_ms
                    .map(|at| format!(" (next attempt due in {})", until(at)))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            println!("  an earlier attempt failed{when}: {e}");
        }
        if let Some(review) = &stage.review {
            println!(
                "  waits for review ({} rules {}): {} (agentfleet review show {})",
                review.side,
                review.rules.join(", "),
                review.reason,
                r.task_id
            );
        }
        if let Some(out) = &stage.output {
            println!("{}", cut(out, full));
        }
    }
    for d in &r.reviews {
        let note = d
            .note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default();
        println!(
            "review: {} {} by {} ({} rules {}){note}",
            d.role,
            d.verdict,
            d.by,
            d.side,
            d.rules.join(", ")
        );
    }
    if let Some(a) = &r.answer {
        println!("\nanswer:\n{}", cut(a, full));
    }
}

/// The task's status, with where it is when it is in progress: waiting for a stage, a
/// retry due, or running on a worker.
fn describe_status(r: &TaskRecord) -> String {
    if r.status == TaskStatus::Queued
        && let Some(at) = r.not_before_ms.filter(|&at| at > agentfleet_job::now_ms())
    {
        return format!("queued (delayed: starts in {})", until(at));
    }
    if r.status != TaskStatus::Running {
        return r.status.to_string();
    }
    let mut parts = Vec::new();
    for (role, stage) in ordered_stages(r) {
        match stage.state {
            Some(agentfleet_job::StageState::Running) => parts.push(format!(
                "{role} running on {}",
                stage.worker_id.as_deref().unwrap_or("a worker")
            )),
            Some(agentfleet_job::StageState::Retrying) => parts.push(format!(
                "{role} waiting for a retry due in {}",
                stage.retry_at_ms.map(until).unwrap_or_else(|| "-".into())
            )),
            _ => {}
        }
    }
    if parts.is_empty() {
        let stage = r.stage.map(|s| s + 1).unwrap_or(1);
        return format!("running (stage {stage}: waiting in its queue)");
    }
    format!("running ({})", parts.join("; "))
}

/// The record's stages in pipeline order (roles not in its pipeline last, by name).
fn ordered_stages(r: &TaskRecord) -> Vec<(&str, &agentfleet_job::StageRecord)> {
    let order: Vec<String> = r
        .pipeline
        .as_deref()
        .and_then(|p| p.parse::<agentfleet_job::Pipeline>().ok())
        .map(|p| p.roles().map(str::to_owned).collect())
        .unwrap_or_default();
    let mut stages: Vec<(&str, &agentfleet_job::StageRecord)> =
        r.stages.iter().map(|(k, v)| (k.as_str(), v)).collect();
    stages.sort_by_key(|(role, _)| {
        (
            order.iter().position(|o| o == role).unwrap_or(usize::MAX),
            role.to_string(),
        )
    });
    stages
}

/// "3.2 s" (or "now") from now to `at_ms`.
fn until(at_ms: u64) -> String {
    let now = agentfleet_job::now_ms();
    if at_ms <= now {
        return "now".to_owned();
    }
    format!("{:.1} s", (at_ms - now) as f64 / 1000.0)
}

pub async fn wait(
    fleet: &Fleet,
    ids: &[String],
    timeout: Option<Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut poll = Duration::from_millis(20);
    loop {
        let statuses = fleet
            .store
            .statuses(ids)
            .await
            .context("reading task status")?;
        if let Some(pos) = statuses.iter().position(Option::is_none) {
            return Err(not_found(&ids[pos]));
        }
        if statuses.iter().flatten().all(|s| s.is_terminal()) {
            let mut any_dead = false;
            for id in ids {
                let Some(record) = fleet.store.get(id).await? else {
                    return Err(not_found(id));
                };
                // Cancelled and expired tasks have no answer either: the same exit as dead.
                any_dead |= record.status.is_failure();
                if json {
                    println!("{}", serde_json::to_string(&record)?);
                } else if record.status == TaskStatus::Done {
                    if ids.len() > 1 {
                        println!("== {id}");
                    }
                    println!("{}", record.answer.as_deref().unwrap_or_default());
                } else {
                    let reason = match record.status {
                        TaskStatus::Dead => record.last_error.as_deref(),
                        _ => record.stop_reason.as_deref(),
                    };
                    println!(
                        "== {id} is {}: {}",
                        record.status,
                        reason.unwrap_or("no reason recorded")
                    );
                }
            }
            return Ok(ExitCode::from(if any_dead {
                exit::TASK_DEAD
            } else {
                exit::OK
            }));
        }
        if let Some(limit) = timeout
            && started.elapsed() >= limit
        {
            let open = ids
                .iter()
                .zip(&statuses)
                .filter(|(_, s)| !s.is_some_and(|s| s.is_terminal()))
                .map(|(id, s)| format!("{id} ({})", s.map(|s| s.as_str()).unwrap_or("?")))
                .collect::<Vec<_>>();
            eprintln!("agentfleet: timed out waiting for {}", open.join(", "));
            return Ok(ExitCode::from(exit::TIMED_OUT));
        }
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(Duration::from_millis(250));
    }
}

type Row = (
    String,
    agentfleet_queue::QueueCounts,
    Vec<String>,
    agentfleet_queue::ReviewCounts,
);

/// Every role's counts, live workers and review counts.
pub(crate) async fn rows(fleet: &Fleet) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for role in fleet.pipeline.roles() {
        let queue = fleet.queue(role)?;
        let counts = queue
            .counts(fleet.lease)
            .await
            .with_context(|| format!("reading queue {role}"))?;
        let workers = queue.live_workers(fleet.lease).await?;
        let review = queue.review_counts().await?;
        rows.push((role.to_owned(), counts, workers, review));
    }
    Ok(rows)
}

/// `queues --watch`: the table again every `every`, in place on a terminal (appended with
/// a time line otherwise), with each role's rate of finished jobs since the last refresh.
pub async fn watch_queues(fleet: &Fleet, every: Duration) -> anyhow::Result<ExitCode> {
    let terminal = std::io::stdout().is_terminal();
    let mut last: Option<(Instant, BTreeMap<String, u64>)> = None;
    // One listener for the whole watch: a Ctrl-C that lands while the table is being read
    // or drawn is kept for the next wait rather than lost.
    let mut interrupted = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("listening for Ctrl-C")?;
    loop {
        let rows = rows(fleet).await?;
        let now = Instant::now();
        let done: BTreeMap<String, u64> = rows
            .iter()
            .map(|(role, c, _, _)| (role.clone(), c.succeeded + c.dead_lettered))
            .collect();
        let rates: BTreeMap<String, f64> = match &last {
            Some((at, before)) => {
                let secs = now.duration_since(*at).as_secs_f64().max(1e-3);
                done.iter()
                    .map(|(role, n)| {
                        let was = before.get(role).copied().unwrap_or(*n);
                        (role.clone(), n.saturating_sub(was) as f64 / secs)
                    })
                    .collect()
            }
            None => BTreeMap::new(),
        };
        if terminal {
            // Clear the screen and go home: the table is redrawn in place.
            print!("\x1b[2J\x1b[H");
        } else {
            println!();
        }
        println!(
            "{} (every {} s; Ctrl-C to stop)",
            moment(agentfleet_job::now_ms()),
            every.as_secs()
        );
        print_table(&rows, Some(&rates));
        last = Some((now, done));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = interrupted.recv() => return Ok(ExitCode::SUCCESS),
        }
    }
}

pub async fn queues(fleet: &Fleet, json: bool) -> anyhow::Result<ExitCode> {
    let rows = rows(fleet).await?;
    if json {
        let mut out: Vec<_> = rows
            .iter()
            .map(|(role, c, workers, review)| {
                serde_json::json!({
                    "role": role,
                    "pending": c.pending,
                    "pending_by_lane": {
                        "high": c.pending_high,
                        "normal": c.pending_normal,
                        "low": c.pending_low,
                    },
                    "in_flight": c.in_flight,
                    "scheduled": c.scheduled,
                    "dead": c.dead,
                    "done": c.succeeded,
                    "retried": c.retried,
                    "recovered": c.recovered,
                    "oldest_pending_age_ms": c.oldest_pending_age_ms,
                    "live_workers": workers,
                    "review": review.waiting,
                    "oldest_review_age_ms": review.oldest_age_ms,
                })
            })
            .collect();
        if fleet.shards > 1 {
            // A sharded fleet: each role's counts per shard too (the totals above sum them).
            for (row, (role, ..)) in out.iter_mut().zip(&rows) {
                let per_shard = fleet
                    .queue(role)?
                    .counts_per_shard(fleet.lease)
                    .await
                    .with_context(|| format!("reading queue {role}"))?;
                row["shards"] = per_shard
                    .iter()
                    .enumerate()
                    .map(|(shard, c)| {
                        serde_json::json!({
                            "shard": shard,
                            "pending": c.pending,
                            "in_flight": c.in_flight,
                            "scheduled": c.scheduled,
                            "dead": c.dead,
                            "done": c.succeeded,
                            "retried": c.retried,
                            "recovered": c.recovered,
                        })
                    })
                    .collect();
            }
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_table(&rows, None);
    Ok(ExitCode::SUCCESS)
}

/// The table for people; with `rates` (jobs finished per second by role), a RATE column.
fn print_table(rows: &[Row], rates: Option<&BTreeMap<String, f64>>) {
    let rate_head = if rates.is_some() { "    RATE/s" } else { "" };
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>7} {:>10} {:>8}{rate_head}  oldest",
        "ROLE", "PENDING", "IN-FLIGHT", "SCHEDULED", "DEAD", "DONE", "WORKERS"
    );
    for (role, c, workers, _) in rows {
        let oldest = c
            .oldest_pending_age_ms
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".to_owned());
        let rate = match rates {
            None => String::new(),
            Some(r) => match r.get(role) {
                Some(v) => format!(" {v:>9.1}"),
                None => format!(" {:>9}", "-"),
            },
        };
        println!(
            "{role:<12} {:>9} {:>9} {:>9} {:>7} {:>10} {:>8}{rate}  {oldest}",
            c.pending,
            c.in_flight,
            c.scheduled,
            c.dead,
            c.succeeded,
            workers.len()
        );
    }
    for (role, c, _, _) in rows {
        if c.pending_high + c.pending_low > 0 {
            println!(
                "{role} pending by lane: high {}, normal {}, low {}",
                c.pending_high, c.pending_normal, c.pending_low
            );
        }
    }
    for (role, _, workers, _) in rows {
        if !workers.is_empty() {
            println!("{role} workers: {}", workers.join(", "));
        }
    }
    for (role, _, _, review) in rows {
        if review.waiting > 0 {
            println!(
                "{role}: {} task(s) wait for review, the oldest for {:.1}s (agentfleet review list)",
                review.waiting,
                review.oldest_age_ms.unwrap_or(0) as f64 / 1000.0
            );
        }
    }
}

/// What `status --batch` and `wait --batch` report about a batch.
#[derive(serde::Serialize)]
struct BatchSummary {
    batch: String,
    tasks: usize,
    /// Tasks by status (only statuses some task has).
    by_status: BTreeMap<String, usize>,
    /// Done, dead, cancelled or expired.
    finished: usize,
    /// Finished tasks per second, from the first task's creation to the last update of a
    /// finished one.
    rate_per_sec: Option<f64>,
    /// The unfinished task created first, and its age.
    oldest_unfinished: Option<String>,
    oldest_unfinished_age_ms: Option<u64>,
    /// Task ids whose records expired (or were deleted) since the batch was made.
    missing: usize,
}

impl BatchSummary {
    fn all_finished(&self) -> bool {
        self.finished + self.missing == self.tasks
    }

    fn failed(&self) -> usize {
        ["dead", "cancelled", "expired"]
            .iter()
            .map(|s| self.by_status.get(*s).copied().unwrap_or(0))
            .sum()
    }

    fn print(&self) {
        let counts = self
            .by_status
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!("batch     {}", self.batch);
        println!("tasks     {} ({counts})", self.tasks);
        if self.missing > 0 {
            println!("missing   {} (records expired)", self.missing);
        }
        println!("finished  {}/{}", self.finished, self.tasks);
        if let Some(rate) = self.rate_per_sec {
            println!("rate      {rate:.1} tasks/s");
        }
        if let (Some(id), Some(age)) = (&self.oldest_unfinished, self.oldest_unfinished_age_ms) {
            println!("oldest    {id}, unfinished for {}", span(age));
        }
    }
}

fn batch_not_found(batch: &str) -> anyhow::Error {
    anyhow::Error::new(NotFound(format!(
        "batch {batch} not found: never made in this namespace, or its tasks' records expired"
    )))
}

async fn summarise_batch(fleet: &Fleet, batch: &str) -> anyhow::Result<BatchSummary> {
    let ids = fleet
        .store
        .batch_members(batch)
        .await
        .context("reading the batch")?
        .ok_or_else(|| batch_not_found(batch))?;
    let statuses = fleet
        .store
        .statuses(&ids)
        .await
        .context("reading task status")?;
    let times = fleet
        .store
        .times(&ids)
        .await
        .context("reading task times")?;
    let now = agentfleet_job::now_ms();
    let mut summary = BatchSummary {
        batch: batch.to_owned(),
        tasks: ids.len(),
        by_status: BTreeMap::new(),
        finished: 0,
        rate_per_sec: None,
        oldest_unfinished: None,
        oldest_unfinished_age_ms: None,
        missing: 0,
    };
    let mut first_created = u64::MAX;
    let mut last_finished = 0;
    let mut oldest: Option<(u64, &String)> = None;
    for ((id, status), time) in ids.iter().zip(&statuses).zip(&times) {
        let Some(status) = status else {
            summary.missing += 1;
            continue;
        };
        *summary.by_status.entry(status.to_string()).or_default() += 1;
        let (created, updated) = time.unwrap_or((now, now));
        first_created = first_created.min(created);
        if status.is_terminal() {
            summary.finished += 1;
            last_finished = last_finished.max(updated);
        } else if oldest.is_none_or(|(at, _)| created < at) {
            oldest = Some((created, id));
        }
    }
    if summary.finished > 0 && last_finished > first_created {
        summary.rate_per_sec =
            Some(summary.finished as f64 / ((last_finished - first_created) as f64 / 1000.0));
    }
    if let Some((at, id)) = oldest {
        summary.oldest_unfinished = Some(id.clone());
        summary.oldest_unfinished_age_ms = Some(now.saturating_sub(at));
    }
    Ok(summary)
}

/// `status --batch`: counts by status, rate, oldest unfinished task.
pub async fn batch_status(fleet: &Fleet, batch: &str, json: bool) -> anyhow::Result<ExitCode> {
    let summary = summarise_batch(fleet, batch).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        summary.print();
    }
    Ok(ExitCode::SUCCESS)
}

/// `wait --batch`: blocks until every task of the batch is finished, showing progress on
/// stderr. Exit 0 when all are done, 1 if any is dead, cancelled or expired, 2 on timeout.
pub async fn wait_batch(
    fleet: &Fleet,
    batch: &str,
    timeout: Option<Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut poll = Duration::from_millis(50);
    let mut progress: Option<crate::progress::Progress> = None;
    loop {
        let summary = summarise_batch(fleet, batch).await?;
        progress
            .get_or_insert_with(|| crate::progress::Progress::new(summary.tasks as u64, "finished"))
            .set((summary.finished + summary.missing) as u64);
        let timed_out = timeout.is_some_and(|limit| started.elapsed() >= limit);
        if summary.all_finished() || timed_out {
            if let Some(p) = progress.take() {
                p.finish();
            }
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                summary.print();
            }
            if !summary.all_finished() {
                eprintln!(
                    "agentfleet: timed out waiting for batch {batch}: {} of {} unfinished",
                    summary.tasks - summary.finished - summary.missing,
                    summary.tasks
                );
                return Ok(ExitCode::from(exit::TIMED_OUT));
            }
            return Ok(ExitCode::from(if summary.failed() > 0 {
                exit::TASK_DEAD
            } else {
                exit::OK
            }));
        }
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(Duration::from_secs(1));
    }
}
