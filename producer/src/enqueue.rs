use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
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
    /// The prompt of one task (or of each `--count` copy). For a long prompt use
    /// `--prompt-file` (no argument-length limit).
    #[arg(value_name = "PROMPT", conflicts_with_all = ["prompt_text", "prompt_file", "file"])]
    prompt: Option<String>,

    /// The prompt, as a flag (the same as PROMPT).
    #[arg(long = "prompt", id = "prompt_text", value_name = "PROMPT", conflicts_with_all = ["prompt_file", "file"])]
    prompt_text: Option<String>,

    /// Read the prompt from this file, whole (`-` for standard input).
    #[arg(long, value_name = "PATH", conflicts_with = "file")]
    prompt_file: Option<PathBuf>,

    /// A JSONL file of tasks (`-` for standard input): one {"prompt": ..., "metadata":
    /// {...}} per line, optionally with "priority", "deadline", "delay" or "at" as the flags
    /// spell them. Metadata values are strings, numbers or booleans (stored as text); other
    /// fields are refused. Every line is checked first: every bad line is reported and then
    /// nothing is enqueued. The tasks get a batch id (printed on stderr).
    #[arg(long, value_name = "PATH", conflicts_with = "count")]
    file: Option<PathBuf>,

    /// Load generation: enqueue N copies of the prompt (PROMPT, --prompt or --prompt-file).
    /// The tasks get a batch id (printed on stderr).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,

    /// Metadata of every task of this enqueue, KEY=VALUE (repeatable, each key once). A
    /// JSONL line's own metadata wins for its keys.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    metadata: Vec<(String, String)>,

    /// A key that makes a retried enqueue of the same task a no-op (single task only;
    /// refused with --file and --count): a repeat prints the first task's id and writes
    /// nothing, while that task's record lives.
    #[arg(long, value_name = "KEY", conflicts_with_all = ["file", "count"])]
    idempotency_key: Option<String>,

    #[command(flatten)]
    control: ControlArgs,

    /// Largest prompt, in bytes.
    #[arg(long, value_name = "BYTES", env = "AGENTFLEET_MAX_PROMPT_BYTES", default_value_t = Limits::DEFAULT_MAX_PROMPT_BYTES)]
    max_prompt_bytes: usize,

    /// Largest line of a --file, in bytes.
    #[arg(long, value_name = "BYTES", env = "AGENTFLEET_MAX_LINE_BYTES", default_value_t = 2 * 1024 * 1024)]
    max_line_bytes: usize,

    /// Most metadata entries of one task.
    #[arg(long, value_name = "N", env = "AGENTFLEET_MAX_METADATA_ENTRIES", default_value_t = Limits::DEFAULT_MAX_METADATA_ENTRIES)]
    max_metadata_entries: usize,

    /// Largest metadata entry, key plus value, in bytes.
    #[arg(long, value_name = "BYTES", env = "AGENTFLEET_MAX_METADATA_ENTRY_BYTES", default_value_t = Limits::DEFAULT_MAX_METADATA_ENTRY_BYTES)]
    max_metadata_entry_bytes: usize,

    #[command(flatten)]
    pub ns: agentfleet_queue::NamespaceArgs,

    #[command(flatten)]
    pub ttl: agentfleet_queue::RecordTtlArgs,
}

/// Most bad JSONL lines reported one by one (the rest are counted).
const MAX_REPORTED_LINES: usize = 20;

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
/// Unknown fields are refused: a misspelt `"priorty"` must not pass silently.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonlTask {
    prompt: String,
    #[serde(default)]
    metadata: BTreeMap<String, serde_json::Value>,
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
    /// The task: the flags' metadata `base` under the line's own (which wins), values as
    /// text (strings, numbers and booleans only).
    fn spec(&mut self, base: &BTreeMap<String, String>) -> Result<TaskSpec, String> {
        let mut metadata = base.clone();
        for (k, v) in std::mem::take(&mut self.metadata) {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "metadata {k:?}: a {} is not allowed (strings, numbers and booleans only)",
                        match other {
                            serde_json::Value::Null => "null",
                            serde_json::Value::Array(_) => "list",
                            _ => "object",
                        }
                    ));
                }
            };
            metadata.insert(k, text);
        }
        Ok(TaskSpec {
            prompt: std::mem::take(&mut self.prompt),
            metadata,
        })
    }

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
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The `--meta` flags as a map: a key given twice is a usage error (which value was meant?).
fn meta_map(pairs: &[(String, String)]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        if map.insert(k.clone(), v.clone()).is_some() {
            return Err(usage!("--meta {k}: the key is given more than once"));
        }
    }
    Ok(map)
}

/// How a path given on the command line is named in messages (`-` is standard input).
fn shown(path: &Path) -> String {
    if path == Path::new("-") {
        "<stdin>".to_owned()
    } else {
        path.display().to_string()
    }
}

/// Opens `path`, or standard input for `-`.
fn open_input(path: &Path, flag: &str) -> anyhow::Result<Box<dyn BufRead>> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::BufReader::new(std::io::stdin())));
    }
    let file = std::fs::File::open(path)
        .map_err(|e| usage!("{flag} {}: cannot open: {e}", path.display()))?;
    Ok(Box::new(std::io::BufReader::new(file)))
}

/// The prompt of `--prompt-file` (`-`: standard input), read whole up to one byte over the
/// limit (enough to refuse it without holding an endless stream).
fn read_prompt_file(path: &Path, limits: &Limits) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    open_input(path, "--prompt-file")?
        .take(limits.max_prompt_bytes as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| usage!("--prompt-file {}: cannot read: {e}", shown(path)))?;
    String::from_utf8(buf).map_err(|_| usage!("--prompt-file {}: not UTF-8", shown(path)))
}

/// Reads and checks every line first: every bad line is reported with its number (the
/// first [`MAX_REPORTED_LINES`], the rest counted) and then nothing is enqueued. A line
/// longer than `max_line` is refused without being read whole.
fn read_jsonl(
    path: &Path,
    limits: &Limits,
    max_line: usize,
    base: Timing,
    meta: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<(TaskSpec, Timing)>> {
    let mut reader = open_input(path, "--file")?;
    let name = shown(path);
    let mut specs = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut bad = 0usize;
    let mut buf = Vec::new();
    for n in 1.. {
        buf.clear();
        // One byte over the limit is enough to know the line is too long.
        let read = (&mut reader)
            .take(max_line as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| usage!("{name}:{n}: cannot read: {e}"))?;
        if read == 0 {
            break;
        }
        let at = format!("{name}:{n}: ");
        let mut fail = |e: String| {
            bad += 1;
            if errors.len() < MAX_REPORTED_LINES {
                errors.push(e);
            }
        };
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if buf.len() > max_line {
            let mut rest = 0u64;
            loop {
                let chunk = reader
                    .fill_buf()
                    .map_err(|e| usage!("{at}cannot read: {e}"))?;
                if chunk.is_empty() {
                    break;
                }
                match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        rest += i as u64;
                        reader.consume(i + 1);
                        break;
                    }
                    None => {
                        rest += chunk.len() as u64;
                        let len = chunk.len();
                        reader.consume(len);
                    }
                }
            }
            fail(format!(
                "{at}line is {} bytes, over the limit of {max_line} (--max-line-bytes)",
                buf.len() as u64 + rest
            ));
            continue;
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            fail(format!("{at}not UTF-8"));
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        let checked = serde_json::from_str::<JsonlTask>(line)
            .map_err(|e| {
                format!("{at}not a task ({e}); want {{\"prompt\": \"...\", \"metadata\": {{...}}}}")
            })
            .and_then(|mut task| {
                let timing = task.timing(base).map_err(|e| format!("{at}{e}"))?;
                let spec = task.spec(meta).map_err(|e| format!("{at}{e}"))?;
                check(&spec, limits, &at).map_err(|e| e.to_string())?;
                Ok((spec, timing))
            });
        match checked {
            Ok(task) => specs.push(task),
            Err(e) => fail(e),
        }
    }
    if bad > 0 {
        let more = bad - errors.len();
        let more = if more > 0 {
            format!("\n  ... and {more} more")
        } else {
            String::new()
        };
        return Err(usage!(
            "{name}: {bad} bad line(s), nothing enqueued:\n  {}{more}",
            errors.join("\n  ")
        ));
    }
    if specs.is_empty() {
        return Err(usage!("{name}: no tasks in file"));
    }
    Ok(specs)
}

pub async fn run(fleet: &Fleet, args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    let limits = args.limits();
    let meta = meta_map(&args.metadata)?;
    if let Some(path) = &args.file {
        let specs = read_jsonl(
            path,
            &limits,
            args.max_line_bytes,
            args.control.timing(),
            &meta,
        )?;
        let now = redis_now(fleet, specs.iter().map(|(_, t)| *t)).await?;
        let batch = new_batch_id();
        let tasks: Vec<NewTask> = specs
            .into_iter()
            .map(|(s, t)| {
                NewTask::with_control(s, None, &fleet.pipeline, t.resolve(now)).in_batch(&batch)
            })
            .collect();
        enqueue_all(fleet, &tasks).await?;
        let mut out = std::io::stdout().lock();
        for t in &tasks {
            writeln!(out, "{}", t.task_id)?;
        }
        announce_batch(&batch, tasks.len() as u64);
        return Ok(ExitCode::SUCCESS);
    }
    let prompt = match (args.prompt, args.prompt_text, &args.prompt_file) {
        (Some(p), _, _) | (None, Some(p), _) => p,
        (None, None, Some(path)) => read_prompt_file(path, &limits)?,
        (None, None, None) => {
            return Err(usage!(
                "give a PROMPT (or --prompt, --prompt-file PATH), --file FILE, or --count N with a prompt"
            ));
        }
    };
    let spec = TaskSpec {
        prompt,
        metadata: meta,
    };
    check(&spec, &limits, "")?;
    if let Some(count) = args.count {
        let timing = args.control.timing();
        let control = timing.resolve(redis_now(fleet, std::iter::once(timing)).await?);
        return load(fleet, count, &spec, control).await;
    }
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

/// A fresh batch id: a ULID, so batches sort by when they were made.
fn new_batch_id() -> String {
    agentfleet_job::TaskId::new().to_string()
}

/// Tells the person (stderr: stdout holds the task ids) how to follow the batch.
fn announce_batch(batch: &str, tasks: u64) {
    eprintln!(
        "agentfleet: batch {batch}: {tasks} task(s); follow it with `agentfleet status --batch {batch}` or `agentfleet wait --batch {batch}`"
    );
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

/// Load generation: `count` copies of `spec` in chunks of 8,000, one batch. Progress is a
/// bar on a terminal, a plain line every few seconds otherwise (a log or a pipe gets lines,
/// not carriage returns).
async fn load(
    fleet: &Fleet,
    count: u64,
    spec: &TaskSpec,
    control: TaskControl,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let batch = new_batch_id();
    let mut progress = crate::progress::Progress::new(count, "enqueued");
    let mut done = 0u64;
    while done < count {
        let n = (count - done).min(8_000);
        let tasks: Vec<NewTask> = (0..n)
            .map(|_| {
                NewTask::with_control(spec.clone(), None, &fleet.pipeline, control).in_batch(&batch)
            })
            .collect();
        enqueue_all(fleet, &tasks).await?;
        done += n;
        progress.set(done);
    }
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "enqueued {count} tasks in {secs:.2}s ({:.0} tasks/s)",
        count as f64 / secs.max(1e-9)
    );
    announce_batch(&batch, count);
    Ok(ExitCode::SUCCESS)
}
