use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use agentfleet_job::{Envelope, ReasoningJob, TaskId, TaskSpec, TraceContext, now_ms};
use agentfleet_queue::{NewTask, PushEntry};
use anyhow::{Context, bail};
use clap::Args;

use crate::Fleet;

#[derive(Args)]
pub struct EnqueueArgs {
    /// The prompt of one task.
    #[arg(conflicts_with_all = ["file", "count"])]
    prompt: Option<String>,

    /// A JSONL file: one {"prompt": ..., "metadata": {...}} per line. Every line is checked
    /// before anything is enqueued.
    #[arg(long, conflicts_with = "count")]
    file: Option<PathBuf>,

    /// Load generation: enqueue N copies of --prompt.
    #[arg(long, requires = "prompt_text")]
    count: Option<u64>,

    /// The prompt for --count.
    #[arg(long = "prompt", id = "prompt_text")]
    prompt_text: Option<String>,

    /// Metadata for a single task, KEY=VALUE (repeatable).
    #[arg(long = "meta", value_parser = parse_meta)]
    metadata: Vec<(String, String)>,

    /// A key that makes a retried enqueue of the same task a no-op (single task only).
    #[arg(long)]
    idempotency_key: Option<String>,
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// A new task as the CLI makes it: its record fields and its reasoning job, with a fresh
/// W3C trace context.
pub(crate) fn new_task(spec: TaskSpec, idempotency_key: Option<String>) -> NewTask {
    let task_id = TaskId::new();
    let created_at_ms = now_ms();
    let trace = TraceContext::new_root();
    let traceparent = trace.traceparent.clone();
    let entry = Envelope::new(
        task_id.to_string(),
        ReasoningJob {
            task_id,
            prompt: spec.prompt.clone(),
            metadata: spec.metadata.clone(),
            created_at_ms,
            trace: Some(trace),
        },
    )
    .encode();
    NewTask {
        task_id: task_id.to_string(),
        prompt: spec.prompt,
        metadata: spec.metadata,
        created_at_ms,
        traceparent: Some(traceparent),
        push: PushEntry {
            entry,
            idempotency_key,
        },
    }
}

/// Reads and checks every line first: a bad line is reported with its number and nothing
/// is enqueued.
fn read_jsonl(path: &PathBuf) -> anyhow::Result<Vec<TaskSpec>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut specs = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{}:{n}: cannot read line", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let spec: TaskSpec = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}:{n}: not a task (want {{\"prompt\": \"...\", \"metadata\": {{...}}}})",
                path.display()
            )
        })?;
        if spec.prompt.trim().is_empty() {
            bail!("{}:{n}: prompt is empty", path.display());
        }
        specs.push(spec);
    }
    if specs.is_empty() {
        bail!("{}: no tasks in file", path.display());
    }
    Ok(specs)
}

pub async fn run(fleet: &Fleet, args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    let queue = fleet.entry_queue()?;
    if let Some(path) = &args.file {
        let specs = read_jsonl(path)?;
        let tasks: Vec<NewTask> = specs.into_iter().map(|s| new_task(s, None)).collect();
        queue
            .enqueue_tasks(&fleet.store, &tasks)
            .await
            .context("enqueue failed")?;
        let mut out = std::io::stdout().lock();
        for t in &tasks {
            writeln!(out, "{}", t.task_id)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(count) = args.count {
        let prompt = args.prompt_text.unwrap_or_default();
        return load(fleet, &queue, count, &prompt).await;
    }
    let Some(prompt) = args.prompt.or(args.prompt_text) else {
        bail!("give a PROMPT, --file FILE, or --count N --prompt P");
    };
    if prompt.trim().is_empty() {
        bail!("prompt is empty");
    }
    let spec = TaskSpec {
        prompt,
        metadata: args.metadata.into_iter().collect::<BTreeMap<_, _>>(),
    };
    let task = new_task(spec, args.idempotency_key);
    let pushed = queue
        .enqueue_tasks(&fleet.store, std::slice::from_ref(&task))
        .await
        .context("enqueue failed")?;
    if pushed == 0 {
        eprintln!("agentfleet: idempotency key already used; nothing enqueued");
        return Ok(ExitCode::FAILURE);
    }
    println!("{}", task.task_id);
    Ok(ExitCode::SUCCESS)
}

async fn load(
    fleet: &Fleet,
    queue: &agentfleet_queue::Queue,
    count: u64,
    prompt: &str,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut done = 0u64;
    let mut last_report = Instant::now();
    let mut err = std::io::stderr();
    while done < count {
        let n = (count - done).min(8_000);
        let tasks: Vec<NewTask> = (0..n)
            .map(|_| {
                new_task(
                    TaskSpec {
                        prompt: prompt.to_owned(),
                        metadata: BTreeMap::new(),
                    },
                    None,
                )
            })
            .collect();
        queue
            .enqueue_tasks(&fleet.store, &tasks)
            .await
            .context("enqueue failed")?;
        done += n;
        if last_report.elapsed().as_millis() >= 200 || done == count {
            last_report = Instant::now();
            let width = 30;
            let filled = (done * width / count.max(1)) as usize;
            let _ = write!(
                err,
                "\r[{}{}] {done}/{count}",
                "#".repeat(filled),
                " ".repeat(width as usize - filled)
            );
            let _ = err.flush();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = writeln!(err);
    eprintln!(
        "enqueued {count} tasks in {secs:.2}s ({:.0} tasks/s)",
        count as f64 / secs.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}
