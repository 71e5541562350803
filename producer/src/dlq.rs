use std::process::ExitCode;

use agentfleet_job::{Envelope, ErrorClass, StageJob, StageState, TaskId, TaskStatus};
use agentfleet_queue::DeadLetter;
use anyhow::Context;
use clap::Subcommand;
use serde_json::value::RawValue;

use crate::{Fleet, NotFound, usage};

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Dead letters, newest first: age, class, error, prompt and metadata excerpts. Of one
    /// role, or of every role of the pipeline when none is given.
    List {
        /// Only this role's dead letters (default: every role).
        #[arg(value_name = "ROLE")]
        role: Option<String>,
        /// Only dead letters of this class (transient, permanent, decode, crash, too_large,
        /// budget, guardrail).
        #[arg(long, value_name = "CLASS", value_parser = parse_class)]
        class: Option<ErrorClass>,
        /// Only dead letters younger than this (30s, 10m, 2h, 3d).
        #[arg(long, value_name = "DURATION", value_parser = parse_since)]
        since: Option<std::time::Duration>,
        /// At most this many (1 or more).
        #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        limit: u64,
        /// Skip this many matching dead letters first (paging).
        #[arg(long, value_name = "N", default_value_t = 0)]
        offset: usize,
        /// Print a JSON list (each payload a JSON object, with the task's prompt and
        /// metadata).
        #[arg(long)]
        json: bool,
    },
    /// One dead letter (looked up in every role).
    Show {
        /// The dead letter's id (the task id).
        #[arg(value_name = "TASK_ID")]
        id: String,
        /// Print it as JSON (the payload a JSON object).
        #[arg(long)]
        json: bool,
    },
    /// Re-enqueue dead letters with their attempts reset, as if enqueued now (the backlog
    /// age starts again); the task record keeps its history. Replaying twice enqueues once.
    /// Exit 3 if an id is not a dead letter of the role (named on stderr).
    Replay {
        /// The role whose dead letters to replay.
        #[arg(value_name = "ROLE")]
        role: String,
        /// Dead letter ids (task ids).
        #[arg(
            value_name = "TASK_ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        ids: Vec<String>,
        /// Replay every dead letter of the role.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters for good. Exit 3 if an id is not a dead letter of the role
    /// (named on stderr).
    Purge {
        /// The role whose dead letters to delete.
        #[arg(value_name = "ROLE")]
        role: String,
        /// Dead letter ids (task ids).
        #[arg(
            value_name = "TASK_ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        ids: Vec<String>,
        /// Delete every dead letter of the role.
        #[arg(long)]
        all: bool,
        /// Confirm: purged dead letters cannot be recovered.
        #[arg(long)]
        yes: bool,
    },
}

fn parse_class(s: &str) -> Result<ErrorClass, String> {
    serde_json::from_value(serde_json::Value::String(s.trim().to_owned())).map_err(|_| {
        format!("{s:?}: one of transient, permanent, decode, crash, too_large, budget, guardrail")
    })
}

fn parse_since(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e} (e.g. 30s, 10m, 2h)"))
}

/// A dead letter for `--json`: its fields, the payload as a JSON object when it is JSON
/// (a string only when it is not), and the task's prompt and metadata when its record lives.
fn letter_json(l: &DeadLetter, record: Option<&agentfleet_job::TaskRecord>) -> serde_json::Value {
    let mut v = serde_json::to_value(l).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(map) = &mut v {
        if let Ok(payload) = serde_json::from_str::<serde_json::Value>(&l.payload) {
            map.insert("payload".to_owned(), payload);
        }
        if let Some(r) = record {
            map.insert("prompt".to_owned(), r.prompt.clone().into());
            map.insert(
                "metadata".to_owned(),
                serde_json::to_value(&r.metadata).unwrap_or_default(),
            );
            map.insert("status".to_owned(), r.status.as_str().into());
        }
    }
    v
}

/// The first `n` characters of `text` on one line.
fn excerpt(text: &str, n: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= n {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(n.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Matching dead letters of `roles`, newest first, after `offset`, at most `limit`: reads
/// each role's index a page at a time, stopping at the first letter older than `since`.
async fn matching(
    fleet: &Fleet,
    roles: &[String],
    class: Option<ErrorClass>,
    since: Option<std::time::Duration>,
    offset: usize,
    limit: usize,
) -> anyhow::Result<Vec<DeadLetter>> {
    const PAGE: usize = 500;
    let cutoff = since.map(|d| agentfleet_job::now_ms().saturating_sub(d.as_millis() as u64));
    let want = offset + limit;
    let mut found = Vec::new();
    for role in roles {
        let queue = fleet.queue(role)?;
        let mut from = 0;
        let mut taken = 0;
        'pages: loop {
            let page = queue.dead_letters(from, PAGE).await?;
            for l in &page {
                if cutoff.is_some_and(|c| l.dead_at_ms < c) {
                    break 'pages;
                }
                if class.is_none_or(|c| l.error_class == c) {
                    found.push(l.clone());
                    taken += 1;
                    // Newest first across roles: each role gives at most `want`.
                    if taken >= want {
                        break 'pages;
                    }
                }
            }
            if page.len() < PAGE {
                break;
            }
            from += PAGE;
        }
    }
    found.sort_by_key(|l| std::cmp::Reverse(l.dead_at_ms));
    Ok(found.into_iter().skip(offset).take(limit).collect())
}

pub async fn run(fleet: &Fleet, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DlqCommand::List {
            role,
            class,
            since,
            limit,
            offset,
            json,
        } => {
            let roles: Vec<String> = match &role {
                Some(r) => {
                    fleet.queue(r)?;
                    vec![r.clone()]
                }
                None => fleet.pipeline.roles().map(str::to_owned).collect(),
            };
            let letters = matching(fleet, &roles, class, since, offset, limit as usize).await?;
            let mut records = Vec::with_capacity(letters.len());
            for l in &letters {
                records.push(fleet.store.get(&l.job_id).await?);
            }
            if json {
                let out: Vec<serde_json::Value> = letters
                    .iter()
                    .zip(&records)
                    .map(|(l, r)| letter_json(l, r.as_ref()))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else if letters.is_empty() {
                let whose = role.as_deref().unwrap_or("any role");
                println!("no dead letters for {whose}");
            } else {
                let now = agentfleet_job::now_ms();
                println!(
                    "{:<26} {:<10} {:>9} {:<10} {:>3}  {:<40} {:<30} META",
                    "ID", "ROLE", "AGE", "CLASS", "ATT", "ERROR", "PROMPT"
                );
                for (l, r) in letters.iter().zip(&records) {
                    let (prompt, meta) = match r {
                        Some(r) => (
                            excerpt(&r.prompt, 30),
                            excerpt(
                                &r.metadata
                                    .iter()
                                    .map(|(k, v)| format!("{k}={v}"))
                                    .collect::<Vec<_>>()
                                    .join(" "),
                                40,
                            ),
                        ),
                        None => ("(record expired)".to_owned(), String::new()),
                    };
                    println!(
                        "{:<26} {:<10} {:>9} {:<10} {:>3}  {:<40} {:<30} {meta}",
                        l.job_id,
                        excerpt(&l.role, 10),
                        crate::inspect::span(now.saturating_sub(l.dead_at_ms)),
                        l.error_class.to_string(),
                        l.attempts,
                        excerpt(&l.error, 40),
                        prompt,
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id, json } => {
            for role in fleet.pipeline.roles() {
                if let Some(letter) = fleet.queue(role)?.dead_letter(&id).await? {
                    let record = fleet.store.get(&id).await?;
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&letter_json(&letter, record.as_ref()))?
                        );
                    } else {
                        print_letter(&letter, record.as_ref());
                    }
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Err(anyhow::Error::new(NotFound(format!(
                "no dead letter {id} in any role ({})",
                fleet.pipeline.roles().collect::<Vec<_>>().join(", ")
            ))))
        }
        DlqCommand::Replay { role, ids, all } => {
            let queue = fleet.queue(&role)?;
            let ids = if all {
                queue.dead_letter_ids().await?
            } else {
                ids
            };
            let (replayed, missing) = replay(fleet, &role, &ids).await?;
            println!("replayed {} dead letter(s) of {role}", replayed.len());
            not_found_ids(&missing, &role, "replayed")
        }
        DlqCommand::Purge {
            role,
            ids,
            all,
            yes,
        } => {
            if !yes {
                return Err(usage!(
                    "purging deletes dead letters for good: add --yes to confirm"
                ));
            }
            let queue = fleet.queue(&role)?;
            let ids = if all {
                queue.dead_letter_ids().await?
            } else {
                ids
            };
            let mut known = Vec::with_capacity(ids.len());
            let mut missing = Vec::new();
            for id in ids {
                if queue.dead_letter(&id).await?.is_some() {
                    known.push(id);
                } else {
                    missing.push(id);
                }
            }
            let purged = queue.purge(&known).await?;
            println!("purged {purged} dead letter(s) of {role}");
            not_found_ids(&missing, &role, "purged")
        }
    }
}

/// Exit 3 naming the ids that were not dead letters of `role`, or 0.
fn not_found_ids(missing: &[String], role: &str, what: &str) -> anyhow::Result<ExitCode> {
    if missing.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    Err(anyhow::Error::new(NotFound(format!(
        "not {what}: no dead letter {} in {role} (never dead, already replayed or purged, or expired)",
        missing.join(", ")
    ))))
}

/// Replays dead letters of `role` (attempts reset): returns the ids replayed and the ids
/// that were not dead letters of it. Shared by `dlq replay` and the inspector.
pub async fn replay(
    fleet: &Fleet,
    role: &str,
    ids: &[String],
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let queue = fleet.queue(role)?;
    let mut pairs = Vec::with_capacity(ids.len());
    let mut missing = Vec::new();
    for id in ids {
        let Some(letter) = queue.dead_letter(id).await? else {
            missing.push(id.clone());
            continue;
        };
        pairs.push((id.clone(), reset(&letter.payload)));
    }
    // A task waiting for its first stage is `queued`; for a later one, `running`.
    // Set before the push: a worker may finish the job before a later write lands.
    let status = if fleet.pipeline.stage_of(role) == Some(0) {
        TaskStatus::Queued
    } else {
        TaskStatus::Running
    };
    for (id, _) in &pairs {
        fleet.store.requeue_dead(id, status, role).await?;
    }
    let replayed = queue.replay(&pairs).await.context("replay failed")?;
    restart_unfinished_branches(fleet, role, &replayed).await?;
    Ok((replayed, missing))
}

/// The entry to enqueue again: attempts back to zero, enqueued now, failure notes cleared. An entry that
/// is not an envelope is replayed as it is (it will be dead-lettered again, with the reason).
fn reset(payload: &str) -> String {
    match Envelope::<Box<RawValue>>::decode(payload.as_bytes()) {
        Ok(mut e) => {
            e.attempt = 0;
            // Enqueued now: the backlog age starts again (the dead letter and the task
            // record keep the original times).
            e.enqueued_at_ms = agentfleet_job::now_ms();
            e.first_failed_at_ms = None;
            e.last_error = None;
            e.encode()
        }
        Err(_) => payload.to_owned(),
    }
}

fn print_letter(l: &DeadLetter, record: Option<&agentfleet_job::TaskRecord>) {
    use crate::inspect::moment;
    println!("id          {}", l.job_id);
    println!("role        {}", l.role);
    println!("class       {}", l.error_class);
    println!("error       {}", l.error);
    println!("attempts    {}", l.attempts);
    println!("first fail  {}", moment(l.first_failed_at_ms));
    println!("last fail   {}", moment(l.last_failed_at_ms));
    println!("dead        {}", moment(l.dead_at_ms));
    println!("worker      {}", l.worker_id);
    match record {
        Some(r) => {
            println!("status      {}", r.status);
            println!("prompt      {}", crate::inspect::cut(&r.prompt, false));
            for (k, v) in &r.metadata {
                println!("meta        {k}={v}");
            }
        }
        None => println!("record      expired"),
    }
    println!("payload     {}", l.payload);
}

/// A replayed role of a parallel stage can only complete its stage if its sibling branches
/// finish too; a sibling whose job arrived while the task was dead was acknowledged without
/// running. Enqueue such siblings again (their stored outputs, if any, are kept; a sibling
/// that did finish is skipped).
async fn restart_unfinished_branches(
    fleet: &Fleet,
    role: &str,
    task_ids: &[String],
) -> anyhow::Result<()> {
    let Some(stage) = fleet.pipeline.stage_of(role) else {
        return Ok(());
    };
    let siblings: Vec<&String> = fleet
        .pipeline
        .stage(stage)
        .unwrap_or_default()
        .iter()
        .filter(|r| r.as_str() != role)
        .collect();
    if siblings.is_empty() {
        return Ok(());
    }
    for id in task_ids {
        let Some(record) = fleet.store.get(id).await? else {
            continue;
        };
        let Ok(task_id) = id.parse::<TaskId>() else {
            continue;
        };
        for sibling in &siblings {
            let done =
                record.stages.get(sibling.as_str()).and_then(|s| s.state) == Some(StageState::Done);
            if done {
                continue;
            }
            let entry = Envelope::new(
                id.clone(),
                StageJob {
                    task_id,
                    stage: stage as u32,
                    trace: None,
                },
            )
            .encode();
            fleet
                .queue(sibling)?
                .push(agentfleet_queue::PushEntry {
                    entry,
                    idempotency_key: None,
                    due_ms: None,
                })
                .await?;
            println!("re-enqueued {sibling} for {id} (its branch of the stage had not finished)");
        }
    }
    Ok(())
}
