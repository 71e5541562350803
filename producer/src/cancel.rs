//! `agentfleet cancel`: stop tasks by id, from a file of ids, or by metadata.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use agentfleet_job::TaskStatus;
use agentfleet_queue::Stopped;
use anyhow::Context;
use clap::Args;

use crate::{Fleet, usage};

#[derive(Args)]
pub struct CancelArgs {
    /// Task ids to cancel.
    #[arg(value_name = "ID")]
    ids: Vec<String>,

    /// A file of task ids, one per line (`-` for standard input).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,

    /// Cancel every task of the namespace whose metadata has KEY=VALUE (repeatable: all
    /// must match). Scans the namespace's task records.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    metadata: Vec<(String, String)>,

    /// Why (kept on each task's record with who asked).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,

    /// One JSON object per task instead of a line for people.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    pub ns: agentfleet_queue::NamespaceArgs,

    #[command(flatten)]
    pub ttl: agentfleet_queue::RecordTtlArgs,
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

pub async fn run(fleet: &Fleet, args: CancelArgs) -> anyhow::Result<ExitCode> {
    let mut ids: BTreeSet<String> = args.ids.iter().cloned().collect();
    if let Some(path) = &args.file {
        let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            let file = std::fs::File::open(path)
                .map_err(|e| usage!("cannot open {}: {e}", path.display()))?;
            Box::new(std::io::BufReader::new(file))
        };
        for line in reader.lines() {
            let line = line.map_err(|e| usage!("cannot read {}: {e}", path.display()))?;
            let id = line.trim();
            if !id.is_empty() {
                ids.insert(id.to_owned());
            }
        }
    }
    if !args.metadata.is_empty() {
        let matching = fleet
            .store
            .find_by_metadata(&args.metadata)
            .await
            .context("finding tasks by metadata")?;
        ids.extend(matching);
    } else if ids.is_empty() {
        return Err(usage!("give task ids, --file PATH or --meta KEY=VALUE"));
    }
    let who = std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned());
    let reason = match &args.reason {
        Some(r) => format!("cancelled by {who}: {r}"),
        None => format!("cancelled by {who}"),
    };
    let ids: Vec<String> = ids.into_iter().collect();
    let outcomes = fleet
        .store
        .stop_many(&ids, TaskStatus::Cancelled, &reason)
        .await
        .context("cancelling")?;
    // A cancelled task waits for no review any more.
    let stopped: Vec<String> = ids
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| matches!(o, Some(Stopped::Now(_))))
        .map(|(id, _)| id.clone())
        .collect();
    if !stopped.is_empty() {
        for role in fleet.pipeline.roles() {
            fleet.queue(role)?.forget_parked_many(&stopped).await?;
        }
    }
    let (mut cancelled, mut finished, mut unknown) = (0, 0, 0);
    for (id, outcome) in ids.iter().zip(&outcomes) {
        let (state, text) = match outcome {
            Some(Stopped::Now(_)) => {
                cancelled += 1;
                ("cancelled", "cancelled".to_owned())
            }
            Some(Stopped::Already(status)) => {
                finished += 1;
                (
                    status.as_str(),
                    format!("already {status}: nothing to cancel"),
                )
            }
            None => {
                unknown += 1;
                (
                    "unknown",
                    "not found (never enqueued here, or its record expired)".to_owned(),
                )
            }
        };
        if args.json {
            println!("{}", serde_json::json!({"task_id": id, "outcome": state}));
        } else if ids.len() <= 100 || !matches!(outcome, Some(Stopped::Now(_))) {
            println!("{id}: {text}");
        }
    }
    if !args.json {
        eprintln!(
            "agentfleet: {cancelled} cancelled, {finished} already finished, {unknown} not found"
        );
    }
    // Ids given by hand that do not exist are an error (exit 3); a metadata match that
    // finds nothing is not.
    Ok(if unknown > 0 {
        ExitCode::from(agentfleet_job::exit::NOT_FOUND)
    } else {
        ExitCode::SUCCESS
    })
}
