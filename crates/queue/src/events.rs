//! The fleet's lifecycle events: one capped Redis Stream per namespace (`<ns>:events`).
//!
//! Why one stream written right after each transition rather than inside its script: a
//! transition's script touches either a queue (hash tag `{ns:role}`) or a task record (its
//! own slot), and a script's keys must share one slot, so no single stream can be declared
//! by both kinds. The event is appended by the process that ran the transition, after the
//! transition's reply says it happened: a reader never sees an event for something that did
//! not happen, and one task's events are in order because its transitions are sequential
//! (each is appended before the next transition of the task can start). A process killed
//! between a transition and its event loses that one event; the record stays the truth.
//! Events never fail the transition they describe: a failed append is logged and dropped.
//!
//! Appends are group-committed: a process's events go through one writer task that sends
//! everything waiting as one pipeline, and each caller awaits the round trip that carried
//! its events. So a job pays a channel send instead of a Redis round trip of its own for
//! each event (about a fifth of a worker's CPU per stage before, with two per stage), and
//! the order above still holds: one process's events leave in the order they were
//! emitted, and a caller continues only once its events are in the stream.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::RedisConnection;
use redis::Value;
use serde::Serialize;

use crate::{Namespace, QueueError};

/// The default cap of the stream (`--events-maxlen`): about 5 events per task (enqueued,
/// started and stage done per stage, done), so the last ~20,000 tasks.
pub const DEFAULT_EVENTS_MAXLEN: u64 = 100_000;

/// One event as read back from the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// The stream id (`<ms>-<seq>`, Redis's clock): resume reading after it.
    pub id: String,
    /// `enqueued`, `started`, `stage_done`, `done`, `retried`, `dead`, `recovered`,
    /// `cancelled`, `expired`, `parked`, `approved`, `rejected`, `replayed`.
    pub kind: String,
    pub task: String,
    /// Everything else the event carries: `role`, `worker`, `attempt`, `delay_ms`,
    /// `class`, `error`, `lane`, ...
    #[serde(flatten)]
    pub fields: BTreeMap<String, String>,
}

impl Event {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// Milliseconds (Redis's clock) at which the event was appended, from its id.
    pub fn at_ms(&self) -> u64 {
        self.id
            .split('-')
            .next()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0)
    }
}

/// An event to append: kind, task, and its fields in order.
#[derive(Debug, Clone)]
pub struct NewEvent {
    kind: &'static str,
    task: String,
    fields: Vec<(&'static str, String)>,
}

impl NewEvent {
    pub fn new(kind: &'static str, task: impl Into<String>) -> Self {
        Self {
            kind,
            task: task.into(),
            fields: Vec::new(),
        }
    }

    pub fn with(mut self, name: &'static str, value: impl ToString) -> Self {
        self.fields.push((name, value.to_string()));
        self
    }
}

/// The writer and reader of a namespace's event stream. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    conn: RedisConnection,
    key: String,
    /// 0: events are off (nothing is appended; readers see nothing new).
    maxlen: u64,
    /// The group-committing writer, shared by the clones; started on the first append
    /// (an append runs in a Tokio runtime, a constructor may not) and again if the runtime
    /// it ran on has ended.
    writer: Arc<Mutex<Option<mpsc::UnboundedSender<Append>>>>,
}

/// Events waiting for the writer, and who waits for them to land.
struct Append {
    commands: Vec<redis::Cmd>,
    landed: oneshot::Sender<()>,
}

/// At most this many `XADD`s per pipeline.
const MAX_APPENDS_PER_TRIP: usize = 1_000;

impl Events {
    pub fn new(conn: RedisConnection, namespace: &Namespace, maxlen: u64) -> Self {
        Self {
            conn,
            key: namespace.events(),
            maxlen,
            writer: Arc::new(Mutex::new(None)),
        }
    }

    pub fn enabled(&self) -> bool {
        self.maxlen > 0
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Adds the `XADD` of `event` to `pipe` (the producer appends `enqueued` in the
    /// round trip that writes the record and pushes the job).
    pub fn add_to(&self, pipe: &mut redis::Pipeline, event: &NewEvent) {
        if self.enabled() {
            pipe.add_command(self.xadd(event)).ignore();
        }
    }

    fn xadd(&self, event: &NewEvent) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.maxlen)
            .arg("*")
            .arg("kind")
            .arg(event.kind)
            .arg("task")
            .arg(&event.task);
        for (name, value) in &event.fields {
            cmd.arg(*name).arg(value);
        }
        cmd
    }

    /// Appends events, in one round trip shared with whatever else this process appends
    /// meanwhile, and returns once they are in the stream. A failure is logged, not
    /// returned: the transition the events describe has happened and must not be retried
    /// for their sake.
    pub async fn emit(&self, events: &[NewEvent]) {
        if !self.enabled() || events.is_empty() {
            return;
        }
        let (landed, wait) = oneshot::channel();
        let append = Append {
            commands: events.iter().map(|e| self.xadd(e)).collect(),
            landed,
        };
        if self.writer().send(append).is_ok() {
            // Err: the writer ended with its runtime; the events went with it.
            let _ = wait.await;
        }
    }

    /// The running writer, started when there is none (or its runtime has ended).
    fn writer(&self) -> mpsc::UnboundedSender<Append> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        match writer.as_ref() {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(write_appends(self.conn.clone(), rx));
                *writer = Some(tx.clone());
                tx
            }
        }
    }

    /// Appends one event.
    pub async fn emit_one(&self, event: NewEvent) {
        self.emit(std::slice::from_ref(&event)).await;
    }

    /// Events after `after` (an id; `0` for the oldest kept, `$` for only new ones), up to
    /// `count`, waiting up to `block` for the first one (`None`: do not wait).
    pub async fn read(
        &self,
        after: &str,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Event>, QueueError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(count.max(1));
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&self.key).arg(after);
        let reply: Value = cmd.query_async(&mut self.conn.clone()).await?;
        Ok(parse_xread(reply))
    }

    /// The id of the newest event, or `0-0` when the stream is empty: a reader that wants
    /// only events from now on starts after it.
    pub async fn last_id(&self) -> Result<String, QueueError> {
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(&self.key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(parse_entries(reply)
            .into_iter()
            .next()
            .map(|e| e.id)
            .unwrap_or_else(|| "0-0".to_owned()))
    }

    /// The newest `count` events, newest first.
    pub async fn recent(&self, count: usize) -> Result<Vec<Event>, QueueError> {
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(&self.key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(parse_entries(reply))
    }

    /// The events of one task still in the stream, oldest first, from the newest `scan`
    /// events (the stream has no per-task index; a task page looks back this far).
    pub async fn of_task(&self, task: &str, scan: usize) -> Result<Vec<Event>, QueueError> {
        let mut found: Vec<Event> = self
            .recent(scan)
            .await?
            .into_iter()
            .filter(|e| e.task == task)
            .collect();
        found.reverse();
        Ok(found)
    }

    /// How many events the stream holds now.
    pub async fn len(&self) -> Result<u64, QueueError> {
        Ok(redis::cmd("XLEN")
            .arg(&self.key)
            .query_async(&mut self.conn.clone())
            .await?)
    }

    pub async fn is_empty(&self) -> Result<bool, QueueError> {
        Ok(self.len().await? == 0)
    }
}

/// The writer: everything waiting goes in one pipeline, the next pipeline after it lands.
/// Ends when every [`Events`] clone is gone.
async fn write_appends(conn: RedisConnection, mut rx: mpsc::UnboundedReceiver<Append>) {
    let mut batch: Vec<Append> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut commands = first.commands.len();
        batch.push(first);
        while commands < MAX_APPENDS_PER_TRIP {
            match rx.try_recv() {
                Ok(append) => {
                    commands += append.commands.len();
                    batch.push(append);
                }
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        for append in &mut batch {
            for cmd in append.commands.drain(..) {
                pipe.add_command(cmd).ignore();
            }
        }
        let result: Result<(), redis::RedisError> = pipe.query_async(&mut conn.clone()).await;
        if let Err(e) = result {
            tracing::warn!(error = %e, events = commands, "could not append lifecycle events; they are lost (the transitions happened)");
        }
        for append in batch.drain(..) {
            let _ = append.landed.send(());
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// XREAD's reply, RESP2 (`[[key, entries]]`) or RESP3 (`{key: entries}`), or nil.
fn parse_xread(reply: Value) -> Vec<Event> {
    match reply {
        Value::Array(streams) => streams
            .into_iter()
            .flat_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => parse_entries(pair.remove(1)),
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(streams) => streams
            .into_iter()
            .flat_map(|(_, entries)| parse_entries(entries))
            .collect(),
        _ => Vec::new(),
    }
}

/// `[[id, [field, value, ...]], ...]`; an entry without `kind` and `task` is skipped.
fn parse_entries(reply: Value) -> Vec<Event> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(mut pair) = entry else {
                return None;
            };
            if pair.len() != 2 {
                return None;
            }
            let body = pair.pop()?;
            let id = text(&pair[0])?;
            let mut fields: BTreeMap<String, String> = match body {
                Value::Array(items) => items
                    .chunks(2)
                    .filter_map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?)))
                    .collect(),
                Value::Map(items) => items
                    .iter()
                    .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
                    .collect(),
                _ => return None,
            };
            let kind = fields.remove("kind")?;
            let task = fields.remove("task")?;
            Some(Event {
                id,
                kind,
                task,
                fields,
            })
        })
        .collect()
}
