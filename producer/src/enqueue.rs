use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use agentfleet_job::{Lane, Limits, TaskSpec};
use agentfleet_queue::{Enqueued, NewTask, PushEntry, TaskControl};
use anyhow::Context;
use clap::Args;

use crate::{Fleet, usage};

/// Longest idempotency key (it becomes part of a Redis key name).
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

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

    /// A key that makes a retried enqueue of the same task a no-op (single task only): a
    /// repeat prints the first task's id and writes nothing, while that task's record lives.
    #[arg(long, conflicts_with_all = ["file", "count"])]
    idempotency_key: Option<String>,

    #[command(flatten)]
    control: ControlArgs,

    /// Largest prompt, in bytes.
    #[arg(long, env = "AGENTFLEET_MAX_PROMPT_BYTES", default_value_t = Limits::DEFAULT_MAX_PROMPT_BYTES)]
    max_prompt_bytes: usize,

    /// Largest line of a --file, in bytes.
    #[arg(long, env = "AGENTFLEET_MAX_LINE_BYTES", default_value_t = 2 * 1024 * 1024)]
    max_line_bytes: usize,

    /// Most metadata entries of one task.
    #[arg(long, env = "AGENTFLEET_MAX_METADATA_ENTRIES", default_value_t = Limits::DEFAULT_MAX_METADATA_ENTRIES)]
    max_metadata_entries: usize,

    /// Largest metadata entry, key plus value, in bytes.
    #[arg(long, env = "AGENTFLEET_MAX_METADATA_ENTRY_BYTES", default_value_t = Limits::DEFAULT_MAX_METADATA_ENTRY_BYTES)]
    max_metadata_entry_bytes: usize,
}

/// When and how urgently the tasks run (every task of this enqueue; a JSONL line's own
/// `priority`, `deadline`, `delay` or `at` wins for that line).
#[derive(Args, Default, Clone)]
pub struct ControlArgs {
    /// Priority lane: high, normal or low. Workers take high first, but keep a guaranteed
    /// share for the lower lanes (the workers' --lane-shares).
    #[arg(long, value_name = "LANE", default_value = "normal")]
    priority: Lane,

    /// When the task stops being worth doing: a duration from now (30s, 5m) or a time
    /// (2026-12-01T09:00:00Z). Past it nothing more of the task runs, a running call is
    /// aborted, and the task ends `expired`.
    #[arg(long, value_name = "DURATION|TIME", value_parser = parse_when)]
    deadline: Option<When>,

    /// Start the task this long from now (10s, 10m, 2h): it waits in the scheduled set.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "at")]
    delay: Option<std::time::Duration>,

    /// Start the task at this time (RFC 3339, e.g. 2026-12-01T09:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    at: Option<u64>,
}

/// A time given relative to now or absolutely (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    In(std::time::Duration),
    At(u64),
}

impl When {
    /// The absolute time on Redis's clock: a relative time counts from `redis_now`.
    fn resolve(self, redis_now: u64) -> u64 {
        match self {
            When::In(d) => redis_now + d.as_millis() as u64,
            When::At(ms) => ms,
        }
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e} (e.g. 30s, 10m, 2h)"))
}

fn parse_time(s: &str) -> Result<u64, String> {
    humantime::parse_rfc3339_weak(s.trim())
        .map_err(|e| format!("{s:?}: {e} (e.g. 2026-12-01T09:00:00Z)"))
        .and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .map_err(|_| format!("{s:?}: before 1970"))
        })
}

fn parse_when(s: &str) -> Result<When, String> {
    match parse_duration(s) {
        Ok(d) => Ok(When::In(d)),
        Err(_) => parse_time(s).map(When::At).map_err(|_| {
            format!("{s:?}: expected a duration (30s, 5m) or a time (2026-12-01T09:00:00Z)")
        }),
    }
}

/// One task's lane and times, before they are put on Redis's clock.
#[derive(Debug, Clone, Copy, Default)]
struct Timing {
    lane: Lane,
    deadline: Option<When>,
    start: Option<When>,
}

impl Timing {
    fn needs_clock(&self) -> bool {
        matches!(self.deadline, Some(When::In(_))) || matches!(self.start, Some(When::In(_)))
    }

    fn resolve(self, redis_now: u64) -> TaskControl {
        TaskControl {
            lane: self.lane,
            deadline_ms: self.deadline.map(|w| w.resolve(redis_now)),
            not_before_ms: self.start.map(|w| w.resolve(redis_now)),
        }
    }
}

impl ControlArgs {
    fn timing(&self) -> Timing {
        Timing {
            lane: self.priority,
            deadline: self.deadline,
            start: self.delay.map(When::In).or(self.at.map(When::At)),
        }
    }
}

/// Redis's time when any relative time needs it (one round trip), else 0 (unused).
async fn redis_now(fleet: &Fleet, timings: impl Iterator<Item = Timing>) -> anyhow::Result<u64> {
    let mut timings = timings;
    if !timings.any(|t| t.needs_clock()) {
        return Ok(0);
    }
    let queues = fleet.entry_queues()?;
    Ok(queues[0].redis_time_ms().await?)
}

/// A JSONL line: the task, and optionally its own lane and times (as the flags spell them).
#[derive(serde::Deserialize)]
struct JsonlTask {
    #[serde(flatten)]
    spec: TaskSpec,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    deadline: Option<String>,
    #[serde(default)]
    delay: Option<String>,
    #[serde(default)]
    at: Option<String>,
}

impl JsonlTask {
    /// The line's timing over the flags' `base`.
    fn timing(&self, base: Timing) -> Result<Timing, String> {
        let mut t = base;
        if let Some(p) = &self.priority {
            t.lane = p.parse().map_err(|e| format!("priority: {e}"))?;
        }
        if let Some(d) = &self.deadline {
            t.deadline = Some(parse_when(d).map_err(|e| format!("deadline: {e}"))?);
        }
        match (&self.delay, &self.at) {
            (Some(_), Some(_)) => return Err("give delay or at, not both".to_owned()),
            (Some(d), None) => {
                t.start = Some(When::In(
                    parse_duration(d).map_err(|e| format!("delay: {e}"))?,
                ))
            }
            (None, Some(a)) => {
                t.start = Some(When::At(parse_time(a).map_err(|e| format!("at: {e}"))?))
            }
            (None, None) => {}
        }
        Ok(t)
    }
}

impl EnqueueArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_prompt_bytes: self.max_prompt_bytes,
            max_metadata_entries: self.max_metadata_entries,
            max_metadata_entry_bytes: self.max_metadata_entry_bytes,
            ..Limits::default()
        }
    }
}

/// A task's prompt and metadata against the limits: a usage error naming `at`.
fn check(spec: &TaskSpec, limits: &Limits, at: &str) -> anyhow::Result<()> {
    if spec.prompt.trim().is_empty() {
        return Err(usage!("{at}prompt is empty"));
    }
    limits
        .check_prompt(&spec.prompt)
        .and_then(|()| limits.check_metadata(&spec.metadata))
        .map_err(|e| usage!("{at}{e}"))
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Reads and checks every line first: a bad line is reported with its number and nothing
/// is enqueued. A line longer than `max_line` is refused without being read whole.
fn read_jsonl(
    path: &PathBuf,
    limits: &Limits,
    max_line: usize,
    base: Timing,
) -> anyhow::Result<Vec<(TaskSpec, Timing)>> {
    let file =
        std::fs::File::open(path).map_err(|e| usage!("cannot open {}: {e}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let mut specs = Vec::new();
    let mut buf = Vec::new();
    for n in 1.. {
        buf.clear();
        // One byte over the limit is enough to know the line is too long.
        let read = (&mut reader)
            .take(max_line as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| usage!("{}:{n}: cannot read: {e}", path.display()))?;
        if read == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if buf.len() > max_line {
            let mut rest = 0u64;
            loop {
                let chunk = reader
                    .fill_buf()
                    .map_err(|e| usage!("{}:{n}: cannot read: {e}", path.display()))?;
                if chunk.is_empty() {
                    break;
                }
                match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        rest += i as u64;
                        break;
                    }
                    None => {
                        rest += chunk.len() as u64;
                        let len = chunk.len();
                        reader.consume(len);
                    }
                }
            }
            return Err(usage!(
                "{}:{n}: line is {} bytes, over the limit of {max_line} (--max-line-bytes)",
                path.display(),
                buf.len() as u64 + rest
            ));
        }
        let at = format!("{}:{n}: ", path.display());
        let line = std::str::from_utf8(&buf).map_err(|_| usage!("{at}not UTF-8"))?;
        if line.trim().is_empty() {
            continue;
        }
        let task: JsonlTask = serde_json::from_str(line).map_err(|e| {
            usage!("{at}not a task ({e}); want {{\"prompt\": \"...\", \"metadata\": {{...}}}}")
        })?;
        let timing = task.timing(base).map_err(|e| usage!("{at}{e}"))?;
        check(&task.spec, limits, &at)?;
        specs.push((task.spec, timing));
    }
    if specs.is_empty() {
        return Err(usage!("{}: no tasks in file", path.display()));
    }
    Ok(specs)
}

pub async fn run(fleet: &Fleet, args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    let limits = args.limits();
    if let Some(path) = &args.file {
        let specs = read_jsonl(path, &limits, args.max_line_bytes, args.control.timing())?;
        let now = redis_now(fleet, specs.iter().map(|(_, t)| *t)).await?;
        let tasks: Vec<NewTask> = specs
            .into_iter()
            .map(|(s, t)| NewTask::with_control(s, None, &fleet.pipeline, t.resolve(now)))
            .collect();
        enqueue_all(fleet, &tasks).await?;
        let mut out = std::io::stdout().lock();
        for t in &tasks {
            writeln!(out, "{}", t.task_id)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(count) = args.count {
        let prompt = args.prompt_text.unwrap_or_default();
        let spec = TaskSpec {
            prompt,
            metadata: BTreeMap::new(),
        };
        check(&spec, &limits, "")?;
        let timing = args.control.timing();
        let control = timing.resolve(redis_now(fleet, std::iter::once(timing)).await?);
        return load(fleet, count, &spec.prompt, control).await;
    }
    let Some(prompt) = args.prompt.or(args.prompt_text) else {
        return Err(usage!(
            "give a PROMPT, --file FILE, or --count N --prompt P"
        ));
    };
    let spec = TaskSpec {
        prompt,
        metadata: args.metadata.into_iter().collect::<BTreeMap<_, _>>(),
    };
    check(&spec, &limits, "")?;
    if let Some(key) = &args.idempotency_key
        && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES)
    {
        return Err(usage!(
            "--idempotency-key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes"
        ));
    }
    fleet.agree().await?;
    let queues = fleet.entry_queues()?;
    let timing = args.control.timing();
    let control = timing.resolve(redis_now(fleet, std::iter::once(timing)).await?);
    let task = NewTask::with_control(spec, args.idempotency_key, &fleet.pipeline, control);
    let id = match queues[0]
        .enqueue_idempotent(&fleet.store, &task)
        .await
        .context("enqueue failed")?
    {
        Enqueued::New(id) => {
            push_to_parallel_roles(&queues[1..], std::slice::from_ref(&task)).await?;
            id
        }
        Enqueued::Existing(id) => {
            eprintln!("agentfleet: idempotency key already used by task {id}; nothing enqueued");
            id
        }
    };
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

/// Writes the tasks' records and pushes their first stage's jobs: records and the first
/// role's entries in one round trip per 1,000 tasks, then the entries of any parallel role
/// of the first stage (their records exist by then).
async fn enqueue_all(fleet: &Fleet, tasks: &[NewTask]) -> anyhow::Result<()> {
    fleet.agree().await?;
    let queues = fleet.entry_queues()?;
    queues[0]
        .enqueue_tasks(&fleet.store, tasks)
        .await
        .context("enqueue failed")?;
    push_to_parallel_roles(&queues[1..], tasks).await
}

async fn push_to_parallel_roles(
    queues: &[agentfleet_queue::Queue],
    tasks: &[NewTask],
) -> anyhow::Result<()> {
    for queue in queues {
        let entries: Vec<PushEntry> = tasks
            .iter()
            .map(|t| PushEntry {
                entry: t.push.entry.clone(),
                idempotency_key: None,
                due_ms: t.push.due_ms,
            })
            .collect();
        queue.push_many(&entries).await.context("enqueue failed")?;
    }
    Ok(())
}

async fn load(
    fleet: &Fleet,
    count: u64,
    prompt: &str,
    control: TaskControl,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut done = 0u64;
    let mut last_report = Instant::now();
    let mut err = std::io::stderr();
    while done < count {
        let n = (count - done).min(8_000);
        let tasks: Vec<NewTask> = (0..n)
            .map(|_| {
                NewTask::with_control(
                    TaskSpec {
                        prompt: prompt.to_owned(),
                        metadata: BTreeMap::new(),
                    },
                    None,
                    &fleet.pipeline,
                    control,
                )
            })
            .collect();
        enqueue_all(fleet, &tasks).await?;
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
