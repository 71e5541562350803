use std::process::ExitCode;

use agentfleet_job::exit;
use agentfleet_job::{Envelope, StageJob, StageState, TaskId, TaskStatus};
use agentfleet_queue::DeadLetter;
use anyhow::Context;
use clap::Subcommand;
use serde_json::value::RawValue;

use crate::{Fleet, NotFound, usage};

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Dead letters of a role, newest first.
    List {
        role: String,
        /// At most this many (1 or more).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        limit: u64,
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long)]
        json: bool,
    },
    /// One dead letter (looked up in every role).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Re-enqueue dead letters with their attempts reset. Replaying twice enqueues once.
    Replay {
        role: String,
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters for good.
    Purge {
        role: String,
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
        /// Confirm: purged dead letters cannot be recovered.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(fleet: &Fleet, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DlqCommand::List {
            role,
            limit,
            offset,
            json,
        } => {
            let letters = fleet
                .queue(&role)?
                .dead_letters(offset, limit as usize)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else if letters.is_empty() {
                println!("no dead letters for {role}");
            } else {
                println!("{:<28} {:<10} {:>8}  ERROR", "ID", "CLASS", "ATTEMPTS");
                for l in &letters {
                    let error: String = l.error.chars().take(100).collect();
                    println!(
                        "{:<28} {:<10} {:>8}  {error}",
                        l.job_id,
                        l.error_class.to_string(),
                        l.attempts
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id, json } => {
            for role in fleet.pipeline.roles() {
                if let Some(letter) = fleet.queue(role)?.dead_letter(&id).await? {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&letter)?);
                    } else {
                        print_letter(&letter);
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
            for id in &missing {
                eprintln!(
                    "agentfleet: no dead letter {id} in {role} (already replayed or purged?)"
                );
            }
            println!("replayed {} dead letter(s) of {role}", replayed.len());
            Ok(ExitCode::from(if !missing.is_empty() {
                exit::NOT_FOUND
            } else {
                exit::OK
            }))
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
            let purged = queue.purge(&ids).await?;
            println!("purged {purged} dead letter(s) of {role}");
            let missing = ids.len() as u64 - purged.min(ids.len() as u64);
            if missing > 0 {
                eprintln!("agentfleet: {missing} of the ids given were not dead letters of {role}");
                return Ok(ExitCode::from(exit::NOT_FOUND));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
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

/// The entry to enqueue again: attempts back to zero, failure notes cleared. An entry that
/// is not an envelope is replayed as it is (it will be dead-lettered again, with the reason).
fn reset(payload: &str) -> String {
    match Envelope::<Box<RawValue>>::decode(payload.as_bytes()) {
        Ok(mut e) => {
            e.attempt = 0;
            e.first_failed_at_ms = None;
            e.last_error = None;
            e.encode()
        }
        Err(_) => payload.to_owned(),
    }
}

fn print_letter(l: &DeadLetter) {
    println!("id          {}", l.job_id);
    println!("role        {}", l.role);
    println!("class       {}", l.error_class);
    println!("error       {}", l.error);
    println!("attempts    {}", l.attempts);
    println!("first fail  {} ms", l.first_failed_at_ms);
    println!("last fail   {} ms", l.last_failed_at_ms);
    println!("worker      {}", l.worker_id);
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
