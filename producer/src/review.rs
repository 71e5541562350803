//! `agentfleet review`: tasks a guardrail parked for a person's decision.

use std::process::ExitCode;

use agentfleet_job::{
    Envelope, ErrorClass, GuardSide, PendingReview, ReviewDecision, ReviewVerdict, StageJob,
    TaskId, TaskRecord, TraceContext, now_ms,
};
use agentfleet_queue::{DeadLetter, ParkedTask, Queue, ReviewWrite};
use anyhow::Context;
use clap::{Args, Subcommand};

use crate::{Fleet, NotFound, usage};

#[derive(Subcommand)]
pub enum ReviewCommand {
    /// Tasks waiting for review, oldest first: role, side, rules, how long, an excerpt.
    List {
        /// Only this role's (default: every role of the pipeline).
        #[arg(long, value_name = "ROLE")]
        role: Option<String>,
        /// At most this many (1 or more).
        #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        limit: u64,
        /// Skip this many first (paging).
        #[arg(long, value_name = "N", default_value_t = 0)]
        offset: usize,
        /// Print a JSON list.
        #[arg(long)]
        json: bool,
    },
    /// What one task waits for: the rules that failed, the excerpt, the answer waiting for
    /// approval, and the decisions taken on it so far.
    Show {
        /// The task's id.
        #[arg(value_name = "TASK_ID")]
        id: String,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve: the task resumes where it stopped. An answer waiting for approval becomes
    /// the stage's output as it is (the model is not called again) and the next stage runs;
    /// an input that failed its rules runs without those rules checked again.
    Approve(Decision),
    /// Reject: the task is dead-lettered (class guardrail) with the note.
    Reject(Decision),
}

#[derive(Args)]
pub struct Decision {
    /// The task id.
    #[arg(value_name = "TASK_ID")]
    id: String,
    /// The role whose stage to decide, when several roles of a parallel stage wait.
    #[arg(long, value_name = "ROLE")]
    role: Option<String>,
    /// Why: kept with the decision on the task (and in the dead letter on reject).
    #[arg(long, value_name = "TEXT")]
    note: Option<String>,
    /// Who decides (default: the OS user, $USER).
    #[arg(long, value_name = "USER", env = "AGENTFLEET_REVIEW_USER")]
    user: Option<String>,
}

pub async fn run(fleet: &Fleet, cmd: ReviewCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ReviewCommand::List {
            role,
            limit,
            offset,
            json,
        } => list(fleet, role.as_deref(), limit as usize, offset, json).await,
        ReviewCommand::Show { id, json } => show(fleet, &id, json).await,
        ReviewCommand::Approve(d) => decide(fleet, d, ReviewVerdict::Approved).await,
        ReviewCommand::Reject(d) => decide(fleet, d, ReviewVerdict::Rejected).await,
    }
}

/// Redis's time (ms): the review index is scored by it.
async fn redis_now(fleet: &Fleet) -> anyhow::Result<u64> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut fleet.connection())
        .await?;
    Ok(secs * 1000 + micros / 1000)
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

async fn list(
    fleet: &Fleet,
    role: Option<&str>,
    limit: usize,
    offset: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let roles: Vec<String> = match role {
        Some(r) => {
            fleet.queue(r)?;
            vec![r.to_owned()]
        }
        None => fleet.pipeline.roles().map(str::to_owned).collect(),
    };
    let mut total = 0;
    let mut parked: Vec<ParkedTask> = Vec::new();
    for r in &roles {
        let queue = fleet.queue(r)?;
        total += queue.review_counts().await?.waiting;
        parked.extend(queue.parked(0, offset + limit).await?);
    }
    parked.sort_by_key(|p| (p.parked_at_ms, p.task_id.clone()));
    let page: Vec<ParkedTask> = parked.into_iter().skip(offset).take(limit).collect();
    let keys: Vec<(String, String)> = page
        .iter()
        .map(|p| (p.task_id.clone(), p.role.clone()))
        .collect();
    let reviews = fleet.store.pending_reviews(&keys).await?;
    let now = redis_now(fleet).await?;
    if json {
        let tasks: Vec<_> = page
            .iter()
            .zip(&reviews)
            .map(|(p, r)| {
                serde_json::json!({
                    "task_id": p.task_id,
                    "role": p.role,
                    "parked_at_ms": p.parked_at_ms,
                    "waiting_ms": now.saturating_sub(p.parked_at_ms),
                    "review": r,
                })
            })
            .collect();
        let out = serde_json::json!({"total": total, "offset": offset, "tasks": tasks});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if page.is_empty() {
        println!("no task waits for review");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<28} {:<12} {:<7} {:<24} {:>9}  EXCERPT",
        "TASK", "ROLE", "SIDE", "RULES", "WAITING"
    );
    for (p, r) in page.iter().zip(&reviews) {
        let (side, rules, excerpt) = match r {
            Some(r) => (
                r.side.as_str(),
                r.rules.join(","),
                r.excerpt.chars().take(60).collect::<String>(),
            ),
            None => ("-", "(decided, finishing)".to_owned(), String::new()),
        };
        println!(
            "{:<28} {:<12} {:<7} {:<24} {:>9}  {excerpt:?}",
            p.task_id,
            p.role,
            side,
            rules,
            seconds(now.saturating_sub(p.parked_at_ms))
        );
    }
    println!(
        "{total} task(s) wait for review; shown {}-{}",
        offset + 1,
        offset + page.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// The task's record and the roles whose review index lists it (with when it was parked).
async fn parked_roles(
    fleet: &Fleet,
    id: &str,
) -> anyhow::Result<(Option<TaskRecord>, Vec<(String, u64)>)> {
    let record = fleet
        .store
        .get(id)
        .await
        .context("reading the task record")?;
    let mut roles = Vec::new();
    for role in fleet.pipeline.roles() {
        if let Some(at) = fleet.queue(role)?.parked_at(id).await? {
            roles.push((role.to_owned(), at));
        }
    }
    Ok((record, roles))
}

async fn show(fleet: &Fleet, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let (record, roles) = parked_roles(fleet, id).await?;
    let Some(record) = record else {
        return Err(anyhow::Error::new(NotFound(format!(
            "task {id} not found: never enqueued in this namespace, or its record expired"
        ))));
    };
    let waiting: Vec<(String, u64, Option<PendingReview>)> = roles
        .into_iter()
        .map(|(role, at)| {
            let pending = record.stages.get(&role).and_then(|s| s.review.clone());
            (role, at, pending)
        })
        .collect();
    if json {
        let out = serde_json::json!({
            "task_id": record.task_id,
            "status": record.status,
            "prompt": record.prompt,
            "waiting": waiting.iter().map(|(role, at, review)| serde_json::json!({
                "role": role, "parked_at_ms": at, "review": review,
            })).collect::<Vec<_>>(),
            "reviews": record.reviews,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = redis_now(fleet).await?;
    println!("task      {}", record.task_id);
    println!("status    {}", record.status);
    println!("prompt    {}", record.prompt);
    if waiting.is_empty() {
        println!("\nnot waiting for review");
    }
    for (role, at, pending) in &waiting {
        println!(
            "\n[{role}] waits for review for {}",
            seconds(now.saturating_sub(*at))
        );
        match pending {
            Some(p) => {
                println!("  side     {}", p.side);
                println!("  rules    {}", p.rules.join(", "));
                println!("  reason   {}", p.reason);
                if !p.excerpt.is_empty() {
                    println!("  excerpt  {:?}", p.excerpt);
                }
                if let Some(output) = &p.output {
                    println!("  answer waiting for approval:\n{output}");
                }
            }
            None => println!("  decided; finishing (repeat the decision to complete it)"),
        }
    }
    if !record.reviews.is_empty() {
        println!("\ndecisions:");
        for d in &record.reviews {
            let note = d
                .note
                .as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default();
            println!(
                "  {} by {} at {} ms ({} {} rules {}){note}",
                d.verdict,
                d.by,
                d.at_ms,
                d.role,
                d.side,
                d.rules.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn not_waiting(id: &str, why: &str) -> anyhow::Error {
    anyhow::Error::new(NotFound(format!(
        "task {id} is not waiting for review ({why})"
    )))
}

/// Who decides: `--user`, else the OS user.
fn reviewer(user: Option<String>) -> String {
    user.or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

async fn decide(fleet: &Fleet, d: Decision, verdict: ReviewVerdict) -> anyhow::Result<ExitCode> {
    let id = d.id.as_str();
    let task_id: TaskId = id
        .parse()
        .map_err(|e| usage!("{id:?} is not a task id: {e}"))?;
    let (record, roles) = parked_roles(fleet, id).await?;
    let role = match (&d.role, roles.as_slice()) {
        (_, []) => {
            let why = match &record {
                Some(r) => format!("status {}", r.status),
                None => "no such task, or its record expired".to_owned(),
            };
            return Err(not_waiting(id, &why));
        }
        (Some(role), roles) => {
            fleet.queue(role)?;
            if !roles.iter().any(|(r, _)| r == role) {
                return Err(not_waiting(id, &format!("not at role {role}")));
            }
            role.clone()
        }
        (None, [(role, _)]) => role.clone(),
        (None, roles) => {
            return Err(usage!(
                "task {id} waits for review at several roles ({}): choose one with --role",
                roles
                    .iter()
                    .map(|(r, _)| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    };
    let queue = fleet.queue(&role)?;
    let Some(record) = record else {
        queue.forget_parked(id).await?;
        return Err(not_waiting(id, "its record expired"));
    };
    let stage_record = record.stages.get(&role);
    let pending = stage_record.and_then(|s| s.review.clone());
    let stage = pending
        .as_ref()
        .map(|p| p.stage)
        .or_else(|| fleet.pipeline.stage_of(&role).map(|s| s as u32))
        .unwrap_or(0);
    // An earlier decision whose second step did not land: its logged decision.
    let logged = record
        .reviews
        .iter()
        .rev()
        .find(|r| r.role == role)
        .cloned();
    let decision = ReviewDecision {
        role: role.clone(),
        side: pending
            .as_ref()
            .map(|p| p.side)
            .or(logged.as_ref().map(|l| l.side))
            .unwrap_or(GuardSide::Output),
        rules: pending
            .as_ref()
            .map(|p| p.rules.clone())
            .or(logged.as_ref().map(|l| l.rules.clone()))
            .unwrap_or_default(),
        verdict,
        by: reviewer(d.user),
        at_ms: now_ms(),
        note: d.note.filter(|n| !n.is_empty()),
    };
    let trace = record
        .traceparent
        .clone()
        .map(|traceparent| TraceContext { traceparent }.child());
    // The task's lane, as every job of it.
    let entry = Envelope::new(
        id.to_owned(),
        StageJob {
            task_id,
            stage,
            trace,
        },
    )
    .in_lane(record.lane)
    .encode();
    let written = match verdict {
        ReviewVerdict::Approved => {
            // An input review's rules join the ones approved before for this role.
            let approved: Option<Vec<String>> = (decision.side == GuardSide::Input).then(|| {
                let mut rules = stage_record
                    .map(|s| s.approved_rules.clone())
                    .unwrap_or_default();
                for r in &decision.rules {
                    if !rules.contains(r) {
                        rules.push(r.clone());
                    }
                }
                rules
            });
            let stage_roles = fleet.pipeline.stage(stage as usize).unwrap_or_default();
            fleet
                .store
                .approve_review(id, &decision, approved.as_deref(), stage_roles)
                .await?
        }
        ReviewVerdict::Rejected => {
            let reason = format!("{role}: guardrail: {}", rejection(&decision, &pending));
            fleet.store.reject_review(id, &decision, &reason).await?
        }
    };
    match written {
        ReviewWrite::Written | ReviewWrite::Already => {}
        ReviewWrite::NotWaiting => {
            queue.forget_parked(id).await?;
            return Err(not_waiting(id, &format!("{role} is not parked")));
        }
        ReviewWrite::Finished(status) => {
            queue.forget_parked(id).await?;
            return Err(not_waiting(id, &format!("status {status}")));
        }
        ReviewWrite::Gone => {
            queue.forget_parked(id).await?;
            return Err(not_waiting(id, "its record expired"));
        }
    }
    let decided_before = written == ReviewWrite::Already;
    let moved = match verdict {
        ReviewVerdict::Approved => queue.unpark(id, &entry).await?,
        ReviewVerdict::Rejected => {
            bury(&queue, id, &role, entry, &decision, &pending, &record).await?
        }
    };
    let what = match (verdict, decision.side) {
        (ReviewVerdict::Approved, GuardSide::Output) => {
            format!("its {role} answer is kept and the task resumes after {role}")
        }
        (ReviewVerdict::Approved, GuardSide::Input) => {
            format!("{role} runs without the approved rules checked")
        }
        (ReviewVerdict::Rejected, _) => "dead-lettered (class guardrail)".to_owned(),
    };
    if moved {
        println!("{verdict} {id} by {}: {what}", decision.by);
    } else if decided_before {
        println!("{id} was already {verdict}");
    } else {
        println!(
            "{verdict} {id} by {}; its job had already been moved",
            decision.by
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A rejection's words: who, the note, and what had failed.
fn rejection(decision: &ReviewDecision, pending: &Option<PendingReview>) -> String {
    let note = decision
        .note
        .as_deref()
        .map(|n| format!(": {n}"))
        .unwrap_or_default();
    let failed = match pending {
        Some(p) => format!(" ({} rules {}: {})", p.side, p.rules.join(", "), p.reason),
        None => format!(" ({} rules {})", decision.side, decision.rules.join(", ")),
    };
    format!("rejected in review by {}{note}{failed}", decision.by)
}

async fn bury(
    queue: &Queue,
    id: &str,
    role: &str,
    entry: String,
    decision: &ReviewDecision,
    pending: &Option<PendingReview>,
    record: &TaskRecord,
) -> anyhow::Result<bool> {
    let now = now_ms();
    let letter = DeadLetter {
        job_id: id.to_owned(),
        role: role.to_owned(),
        // The stage's job: `dlq replay` runs the stage again from the start.
        payload: entry,
        error_class: ErrorClass::Guardrail,
        error: rejection(decision, pending),
        attempts: record.stages.get(role).map_or(0, |s| s.attempts),
        first_failed_at_ms: pending.as_ref().map_or(now, |p| p.at_ms),
        last_failed_at_ms: now,
        worker_id: format!("review:{}", decision.by),
        dead_at_ms: now,
    };
    Ok(queue.bury_parked(&letter).await?)
}
