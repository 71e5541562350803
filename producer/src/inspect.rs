use std::process::ExitCode;
use std::time::{Duration, Instant};

use agentfleet_job::{TaskRecord, TaskStatus, exit};
use anyhow::Context;

use crate::{Fleet, NotFound};

fn not_found(id: &str) -> anyhow::Error {
    anyhow::Error::new(NotFound(format!(
        "task {id} not found: never enqueued in this namespace, or its record expired"
    )))
}

pub async fn status(fleet: &Fleet, id: &str, json: bool) -> anyhow::Result<ExitCode> {
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
        print_record(&record);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_record(r: &TaskRecord) {
    println!("task      {}", r.task_id);
    println!("status    {}", describe_status(r));
    println!("prompt    {}", r.prompt);
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
            println!("{out}");
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
        println!("\nanswer:\n{a}");
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

/// `at_ms` as "in 3.2 s" or "4.1 s ago".
fn moment(at_ms: u64) -> String {
    let now = agentfleet_job::now_ms();
    if at_ms >= now {
        format!("in {:.1} s", (at_ms - now) as f64 / 1000.0)
    } else {
        format!("{:.1} s ago", (now - at_ms) as f64 / 1000.0)
    }
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

pub async fn queues(fleet: &Fleet, json: bool) -> anyhow::Result<ExitCode> {
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
    if json {
        let out: Vec<_> = rows
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
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>7} {:>10} {:>8}  oldest",
        "ROLE", "PENDING", "IN-FLIGHT", "SCHEDULED", "DEAD", "DONE", "WORKERS"
    );
    for (role, c, workers, _) in &rows {
        let oldest = c
            .oldest_pending_age_ms
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".to_owned());
        println!(
            "{role:<12} {:>9} {:>9} {:>9} {:>7} {:>10} {:>8}  {oldest}",
            c.pending,
            c.in_flight,
            c.scheduled,
            c.dead,
            c.succeeded,
            workers.len()
        );
    }
    for (role, c, _, _) in &rows {
        if c.pending_high + c.pending_low > 0 {
            println!(
                "{role} pending by lane: high {}, normal {}, low {}",
                c.pending_high, c.pending_normal, c.pending_low
            );
        }
    }
    for (role, _, workers, _) in &rows {
        if !workers.is_empty() {
            println!("{role} workers: {}", workers.join(", "));
        }
    }
    for (role, _, _, review) in &rows {
        if review.waiting > 0 {
            println!(
                "{role}: {} task(s) wait for review, the oldest for {:.1}s (agentfleet review list)",
                review.waiting,
                review.oldest_age_ms.unwrap_or(0) as f64 / 1000.0
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
