use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::RedisConnection;
use agentfleet_job::{
    PendingReview, Pipeline, StageRecord, TaskRecord, TaskStatus, TokenUsage, now_ms,
};
use redis::AsyncCommands;

use crate::scripts::SCRIPTS;
use crate::{Events, Namespace, NewEvent, QueueError};

/// Most task ids the tasks index keeps (newest first); older ones still have their records
/// until they expire, but `agentfleet tasks` and the inspector's search no longer list them.
pub const TASKS_INDEX_CAP: usize = 1_000_000;

/// Task records: one Redis HASH per task (`<namespace>:task:<id>`), flat fields so that
/// `HGETALL` in redis-cli reads like the record. Per-role fields are `<role>.<field>`.
#[derive(Clone)]
pub struct TaskStore {
    conn: RedisConnection,
    namespace: Namespace,
    ttl: Duration,
    /// Where each transition's lifecycle event goes, right after it.
    events: Events,
    /// When this process last trimmed the tasks index (ms, its own clock: only ever
    /// compared with itself), shared by the store's clones.
    index_trimmed_at_ms: Arc<AtomicU64>,
}

/// How often one process trims the tasks index while it enqueues: the trim is three
/// commands, as many as the rest of an awaited one-task enqueue, and the index needs it
/// only as it nears a record lifetime or [`TASKS_INDEX_CAP`]. Between trims the index can
/// hold what one second of enqueues adds beyond the cap.
const INDEX_TRIM_INTERVAL_MS: u64 = 1_000;

/// The record's field names of one role (`<role>.output`, ...), made once per worker
/// rather than once per job.
#[derive(Debug, Clone)]
pub struct RoleFields {
    pub role: String,
    state: String,
    output: String,
    attempts: String,
    worker_id: String,
    started_at_ms: String,
    provider: String,
    model: String,
    prompt_tokens: String,
    completion_tokens: String,
}

impl RoleFields {
    pub fn new(role: &str) -> Self {
        let field = |name: &str| format!("{role}.{name}");
        Self {
            role: role.to_owned(),
            state: field("state"),
            output: field("output"),
            attempts: field("attempts"),
            worker_id: field("worker_id"),
            started_at_ms: field("started_at_ms"),
            provider: field("provider"),
            model: field("model"),
            prompt_tokens: field("prompt_tokens"),
            completion_tokens: field("completion_tokens"),
        }
    }

    pub fn output(&self) -> &str {
        &self.output
    }
}

/// A role starting on a task.
#[derive(Debug, Clone)]
pub struct StageStart<'a> {
    pub role: &'a str,
    pub attempt: u32,
    pub worker_id: &'a str,
    /// The role's stage index in the pipeline.
    pub stage: u32,
    /// The roles whose outputs it reads: the stage before (none for the first).
    pub inputs: &'a [String],
}

/// What a role works from, as [`TaskStore::start_stage`] found the record.
#[derive(Debug, Clone, PartialEq)]
pub enum Started {
    /// The record is gone (expired or deleted): there is nowhere to write a result.
    Gone,
    /// The task is `done` or `dead`: nothing may change it.
    Finished(TaskStatus),
    Ready(StageData),
    /// This role's stage of the task is parked for review: only a person's decision moves it.
    Parked,
}

/// The task as a stage sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageData {
    /// Time left until the task's deadline (by Redis's clock when the stage started), if
    /// it has one: the stage is aborted when it runs out.
    pub deadline_in: Option<Duration>,
    pub prompt: String,
    pub metadata: BTreeMap<String, String>,
    /// This role's output, if an earlier attempt stored it (a re-run reuses it).
    pub own_output: Option<String>,
    /// The outputs of the stage before, by role.
    pub inputs: BTreeMap<String, String>,
}

/// A role finishing a task's stage.
#[derive(Debug, Clone)]
pub struct StageFinish<'a> {
    pub role: &'a RoleFields,
    pub output: &'a str,
    /// Every role of this stage (parallel roles are joined: the stage completes when all
    /// have finished).
    pub stage_roles: &'a [String],
    /// The pipeline's last stage: completing it makes the task `done`.
    pub last: bool,
    /// The role's stage index in the pipeline.
    pub stage: u32,
    pub attempt: u32,
    pub worker_id: &'a str,
    pub started_at_ms: u64,
    pub provider: &'a str,
    pub model: &'a str,
    pub usage: TokenUsage,
}

/// What stopping a task did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Stopped now, with this status.
    Now(TaskStatus),
    /// It had already ended with this status; nothing changed.
    Already(TaskStatus),
}

/// What storing a stage's output did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The record is gone.
    Gone,
    /// The task was already `done` or `dead`; nothing changed.
    Terminal(TaskStatus),
    /// Stored; a parallel role of the stage has not finished yet.
    Waiting,
    /// Every role of the stage has finished: chain the next stage (or the task is done).
    Complete,
}

impl TaskStore {
    /// A store whose transitions append events to a stream capped at
    /// [`crate::DEFAULT_EVENTS_MAXLEN`]; see [`TaskStore::with_events_maxlen`].
    pub fn new(conn: RedisConnection, namespace: Namespace, ttl: Duration) -> Self {
        let events = Events::new(conn.clone(), &namespace, crate::DEFAULT_EVENTS_MAXLEN);
        Self {
            conn,
            namespace,
            ttl,
            events,
            index_trimmed_at_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Caps the event stream at `maxlen` (`--events-maxlen`; 0 turns events off).
    pub fn with_events_maxlen(mut self, maxlen: u64) -> Self {
        self.events = Events::new(self.conn.clone(), &self.namespace, maxlen);
        self
    }

    /// The namespace's event stream (reading, and appending the events of transitions made
    /// outside the store: enqueue, recovery).
    pub fn events(&self) -> &Events {
        &self.events
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub(crate) fn namespace_ref(&self) -> &Namespace {
        &self.namespace
    }

    pub(crate) fn conn(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// The key of a task's record.
    pub(crate) fn key(&self, task_id: &str) -> String {
        self.namespace.task(task_id)
    }

    /// Adds `task_ids` to batch `batch_id` in `pipe` (the pipeline that writes their
    /// records): the batch lives as long as the records written with it, its TTL renewed
    /// with every chunk.
    pub fn add_to_batch_into(&self, pipe: &mut redis::Pipeline, batch_id: &str, task_ids: &[&str]) {
        if task_ids.is_empty() {
            return;
        }
        let key = self.namespace.batch(batch_id);
        pipe.rpush(&key, task_ids).ignore();
        pipe.pexpire(&key, self.ttl.as_millis() as i64).ignore();
    }

    /// The task ids of a batch in enqueue order; `None` for an unknown (or expired) batch.
    pub async fn batch_members(&self, batch_id: &str) -> Result<Option<Vec<String>>, QueueError> {
        let ids: Vec<String> = self
            .conn
            .clone()
            .lrange(self.namespace.batch(batch_id), 0, -1)
            .await?;
        Ok((!ids.is_empty()).then_some(ids))
    }

    /// The creation and last-update times (ms) of many tasks in one round trip, for batch
    /// summaries (`None` for unknown ids).
    pub async fn times(&self, task_ids: &[String]) -> Result<Vec<Option<(u64, u64)>>, QueueError> {
        let mut pipe = redis::pipe();
        for id in task_ids {
            pipe.cmd("HMGET")
                .arg(self.namespace.task(id))
                .arg("created_at_ms")
                .arg("updated_at_ms");
        }
        let raw: Vec<(Option<u64>, Option<u64>)> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(raw
            .into_iter()
            .map(|(c, u)| c.map(|c| (c, u.unwrap_or(c))))
            .collect())
    }

    /// Adds the commands that create a queued task's record to `pipe`, so that the
    /// producer writes records and pushes jobs in one round trip (the tasks index is
    /// added for the whole round trip by [`TaskStore::index_into`]).
    #[allow(clippy::too_many_arguments)]
    pub fn create_into(
        &self,
        pipe: &mut redis::Pipeline,
        task_id: &str,
        prompt: &str,
        metadata: &BTreeMap<String, String>,
        pipeline: &str,
        created_at_ms: u64,
        traceparent: Option<&str>,
        control: &crate::TaskControl,
    ) {
        let key = self.namespace.task(task_id);
        let mut fields: Vec<(&str, String)> = vec![
            ("task_id", task_id.to_owned()),
            ("status", TaskStatus::Queued.as_str().to_owned()),
            ("pipeline", pipeline.to_owned()),
            ("prompt", prompt.to_owned()),
            ("created_at_ms", created_at_ms.to_string()),
            ("updated_at_ms", created_at_ms.to_string()),
        ];
        if !metadata.is_empty() {
            fields.push((
                "metadata",
                serde_json::to_string(metadata).unwrap_or_default(),
            ));
        }
        if let Some(tp) = traceparent {
            fields.push(("traceparent", tp.to_owned()));
        }
        if !control.lane.is_normal() {
            fields.push(("lane", control.lane.as_str().to_owned()));
        }
        if let Some(deadline) = control.deadline_ms {
            fields.push(("deadline_ms", deadline.to_string()));
        }
        if let Some(due) = control.not_before_ms {
            fields.push(("not_before_ms", due.to_string()));
        }
        pipe.hset_multiple(&key, &fields).ignore();
        pipe.pexpire(&key, self.ttl.as_millis() as i64).ignore();
        let mut event = NewEvent::new("enqueued", task_id);
        if !control.lane.is_normal() {
            event = event.with("lane", control.lane.as_str());
        }
        self.events.add_to(pipe, &event);
    }

    /// Adds the ids of tasks created in `pipe` (id, enqueue time) to the tasks index, one
    /// `ZADD` for them all, and, at most once per [`INDEX_TRIM_INTERVAL_MS`] per process,
    /// the index's trim: ids older than a record lifetime go (their records expired with
    /// them), then the oldest beyond [`TASKS_INDEX_CAP`]; the index itself lives a record
    /// lifetime after the last trim.
    pub fn index_into(&self, pipe: &mut redis::Pipeline, created: &[(u64, &str)], now_ms: u64) {
        let index = self.namespace.tasks_index();
        if !created.is_empty() {
            pipe.zadd_multiple(&index, created).ignore();
        }
        let last = self.index_trimmed_at_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < INDEX_TRIM_INTERVAL_MS
            || self
                .index_trimmed_at_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let oldest = now_ms.saturating_sub(self.ttl.as_millis() as u64);
        pipe.zrembyscore(&index, "-inf", format!("({oldest}"))
            .ignore();
        pipe.zremrangebyrank(&index, 0, -(TASKS_INDEX_CAP as isize) - 1)
            .ignore();
        pipe.pexpire(&index, self.ttl.as_millis() as i64).ignore();
    }

    /// Reads what a role works from with one plain `HMGET`, writing nothing: the start of
    /// most stages (a first attempt of a task with no deadline), whose start the finish
    /// writes (`record_finish.lua`) or, for a stage still running after a second,
    /// [`TaskStore::start_stage`]. `None` when the stage must start with
    /// `start_stage` instead: a deadline to check on Redis's clock, a re-run (the role has
    /// a state or an output), a task in review.
    pub async fn read_stage(
        &self,
        task_id: &str,
        role: &RoleFields,
        input_outputs: &[String],
        worker_id: &str,
        attempt: u32,
    ) -> Result<Option<Started>, QueueError> {
        let key = self.namespace.task(task_id);
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&key)
            .arg("status")
            .arg("deadline_ms")
            .arg(&role.state)
            .arg(&role.output)
            .arg("prompt")
            .arg("metadata");
        for field in input_outputs {
            cmd.arg(field);
        }
        let values: Vec<Option<String>> = cmd.query_async(&mut self.conn.clone()).await?;
        let mut values = values.into_iter();
        let Some(status) = values.next().flatten() else {
            return Ok(Some(Started::Gone));
        };
        let status: TaskStatus = status
            .parse()
            .map_err(|reason| QueueError::Corrupt { key, reason })?;
        if status.is_terminal() {
            return Ok(Some(Started::Finished(status)));
        }
        let deadline = values.next().flatten();
        let state = values.next().flatten();
        let own_output = values.next().flatten();
        if status == TaskStatus::Review
            || deadline.is_some()
            || state.is_some()
            || own_output.is_some()
        {
            return Ok(None);
        }
        let prompt = values.next().flatten().unwrap_or_default();
        let metadata = metadata_of(values.next().flatten());
        let inputs = input_outputs
            .iter()
            .zip(values)
            .filter_map(|(field, output)| {
                let role = field.strip_suffix(".output").unwrap_or(field);
                Some((role.to_owned(), output?))
            })
            .collect();
        self.events
            .emit_one(
                NewEvent::new("started", task_id)
                    .with("role", role.role.as_str())
                    .with("worker", worker_id)
                    .with("attempt", attempt),
            )
            .await;
        Ok(Some(Started::Ready(StageData {
            deadline_in: None,
            prompt,
            metadata,
            own_output: None,
            inputs,
        })))
    }

    /// Notes that a role started on the task and reads what it works from: prompt,
    /// metadata, the outputs of the stage before, and its own output if an earlier attempt
    /// stored one. One round trip.
    pub async fn start_stage(
        &self,
        task_id: &str,
        start: &StageStart<'_>,
    ) -> Result<Started, QueueError> {
        self.start_stage_noting(task_id, start, true).await
    }

    /// Notes the start of a stage that began with [`TaskStore::read_stage`] and still runs:
    /// the same write as [`TaskStore::start_stage`], without a second `started` event.
    pub async fn note_start(
        &self,
        task_id: &str,
        start: &StageStart<'_>,
    ) -> Result<Started, QueueError> {
        self.start_stage_noting(task_id, start, false).await
    }

    async fn start_stage_noting(
        &self,
        task_id: &str,
        start: &StageStart<'_>,
        event: bool,
    ) -> Result<Started, QueueError> {
        let mut inv = SCRIPTS.record_start.key(self.namespace.task(task_id));
        inv.arg(start.role)
            .arg(start.attempt)
            .arg(start.worker_id)
            .arg(now_ms())
            .arg(start.stage)
            .arg(self.ttl.as_millis() as u64);
        for role in start.inputs {
            inv.arg(role);
        }
        let mut values: Vec<Option<String>> = inv.invoke_async(&mut self.conn.clone()).await?;
        let Some(Some(status)) = values.first().cloned() else {
            return Ok(Started::Gone);
        };
        let status: TaskStatus = status.parse().map_err(|reason| QueueError::Corrupt {
            key: self.namespace.task(task_id),
            reason,
        })?;
        if status.is_terminal() {
            return Ok(Started::Finished(status));
        }
        if status == TaskStatus::Review && values.len() == 1 {
            return Ok(Started::Parked);
        }
        values.resize(6 + start.inputs.len(), None);
        let mut values = values.into_iter().skip(2);
        let prompt = values.next().flatten().unwrap_or_default();
        let metadata = metadata_of(values.next().flatten());
        let own_output = values.next().flatten();
        let deadline_in = values
            .next()
            .flatten()
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(Duration::from_millis);
        let inputs = start
            .inputs
            .iter()
            .zip(values)
            .filter_map(|(role, output)| Some((role.clone(), output?)))
            .collect();
        if event {
            self.events
                .emit_one(
                    NewEvent::new("started", task_id)
                        .with("role", start.role)
                        .with("worker", start.worker_id)
                        .with("attempt", start.attempt),
                )
                .await;
        }
        Ok(Started::Ready(StageData {
            deadline_in,
            prompt,
            metadata,
            own_output,
            inputs,
        }))
    }

    /// Stores a stage's output, once (a re-run keeps the first), and says whether the
    /// stage is complete. A `done` or `dead` task is never changed.
    pub async fn finish_stage(
        &self,
        task_id: &str,
        finish: &StageFinish<'_>,
    ) -> Result<Finished, QueueError> {
        let now = now_ms();
        let fields = finish.role;
        let mut inv = SCRIPTS.record_finish.key(self.namespace.task(task_id));
        inv.arg(&fields.role)
            .arg(finish.output)
            .arg(now)
            .arg(if finish.last { "1" } else { "0" })
            // A finished task lives a full TTL from now.
            .arg(self.ttl.as_millis() as u64)
            .arg(finish.stage)
            .arg(finish.stage_roles.len());
        for r in finish.stage_roles {
            inv.arg(r);
        }
        inv.arg(&fields.attempts)
            .arg(finish.attempt)
            .arg(&fields.worker_id)
            .arg(finish.worker_id)
            .arg(&fields.started_at_ms)
            .arg(finish.started_at_ms)
            .arg(&fields.provider)
            .arg(finish.provider)
            .arg(&fields.model)
            .arg(finish.model)
            .arg(&fields.prompt_tokens)
            .arg(finish.usage.prompt_tokens)
            .arg(&fields.completion_tokens)
            .arg(finish.usage.completion_tokens);
        let outcome: String = inv.invoke_async(&mut self.conn.clone()).await?;
        if outcome == "waiting" || outcome == "complete" {
            let mut events = vec![
                NewEvent::new("stage_done", task_id)
                    .with("role", fields.role.as_str())
                    .with("worker", finish.worker_id)
                    .with("ms", now.saturating_sub(finish.started_at_ms))
                    .with(
                        "tokens",
                        finish.usage.prompt_tokens + finish.usage.completion_tokens,
                    ),
            ];
            if outcome == "complete" && finish.last {
                events.push(NewEvent::new("done", task_id).with("role", fields.role.as_str()));
            }
            self.events.emit(&events).await;
        }
        Ok(match outcome.as_str() {
            "gone" => Finished::Gone,
            "waiting" => Finished::Waiting,
            "complete" => Finished::Complete,
            other => Finished::Terminal(other.parse().map_err(|reason| QueueError::Corrupt {
                key: self.namespace.task(task_id),
                reason,
            })?),
        })
    }

    /// Marks the task dead with the reason (a dead letter holds the rest). A `done` task
    /// stays done and a record that is gone stays gone: returns whether it was marked.
    pub async fn mark_dead(
        &self,
        task_id: &str,
        role: &str,
        attempts: u32,
        reason: &str,
    ) -> Result<bool, QueueError> {
        let marked: i64 = SCRIPTS
            .record_dead
            .key(self.namespace.task(task_id))
            .arg(reason)
            .arg(role)
            .arg(attempts)
            .arg(now_ms())
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        if marked == 1 {
            self.events
                .emit_one(
                    NewEvent::new("dead", task_id)
                        .with("role", role)
                        .with("attempt", attempts)
                        .with("error", capped(reason)),
                )
                .await;
        }
        Ok(marked == 1)
    }

    /// Notes a role's failed attempt that will be retried after `delay`: the error is kept
    /// as the role's history, not as the task's state.
    pub async fn note_retry(
        &self,
        task_id: &str,
        role: &str,
        error: &str,
        delay: Duration,
    ) -> Result<bool, QueueError> {
        let now = now_ms();
        let noted: i64 = SCRIPTS
            .record_retry
            .key(self.namespace.task(task_id))
            .arg(role)
            .arg(error)
            .arg(now + delay.as_millis() as u64)
            .arg(now)
            .invoke_async(&mut self.conn.clone())
            .await?;
        if noted == 1 {
            self.events
                .emit_one(
                    NewEvent::new("retried", task_id)
                        .with("role", role)
                        .with("delay_ms", delay.as_millis())
                        .with("error", capped(error)),
                )
                .await;
        }
        Ok(noted == 1)
    }

    /// Stops a task that has not ended: `Cancelled` or `Expired` (any other status is
    /// refused). Returns what the task is now: the new status, or the terminal status it
    /// already had (unchanged); `None` for an unknown task.
    pub async fn stop(
        &self,
        task_id: &str,
        status: TaskStatus,
        reason: &str,
    ) -> Result<Option<Stopped>, QueueError> {
        let outcome = self
            .stop_many(&[task_id.to_owned()], status, reason)
            .await?;
        Ok(outcome.into_iter().next().flatten())
    }

    /// [`TaskStore::stop`] for many tasks, pipelined; then, when any was stopped, moves
    /// the fleet's cancellation counter so that workers running them look (within their
    /// poll interval) and abort their calls.
    pub async fn stop_many(
        &self,
        task_ids: &[String],
        status: TaskStatus,
        reason: &str,
    ) -> Result<Vec<Option<Stopped>>, QueueError> {
        assert!(
            matches!(status, TaskStatus::Cancelled | TaskStatus::Expired),
            "only cancelled and expired stop a task"
        );
        let mut out = Vec::with_capacity(task_ids.len());
        let mut conn = self.conn.clone();
        for chunk in task_ids.chunks(1_000) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.invoke_script(
                    SCRIPTS
                        .record_stop
                        .key(self.namespace.task(id))
                        .arg(status.as_str())
                        .arg(reason)
                        .arg(self.ttl.as_millis() as u64),
                );
            }
            let replies: Vec<String> = match pipe.query_async(&mut conn).await {
                Ok(r) => r,
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    SCRIPTS.record_stop.load_async(&mut conn).await?;
                    pipe.query_async(&mut conn).await?
                }
                Err(e) => return Err(e.into()),
            };
            for (id, reply) in chunk.iter().zip(replies) {
                out.push(match reply.as_str() {
                    "gone" => None,
                    other => {
                        let now: TaskStatus =
                            other.parse().map_err(|reason| QueueError::Corrupt {
                                key: self.namespace.task(id),
                                reason,
                            })?;
                        Some(if now == status {
                            Stopped::Now(now)
                        } else {
                            Stopped::Already(now)
                        })
                    }
                });
            }
        }
        let stopped: Vec<NewEvent> = task_ids
            .iter()
            .zip(&out)
            .filter(|(_, o)| matches!(o, Some(Stopped::Now(_))))
            .map(|(id, _)| {
                NewEvent::new(status.as_str(), id.as_str()).with("reason", capped(reason))
            })
            .collect();
        for chunk in stopped.chunks(1_000) {
            self.events.emit(chunk).await;
        }
        if out.iter().any(|o| matches!(o, Some(Stopped::Now(_)))) {
            let _: i64 = conn.incr(self.namespace.cancel_seq(), 1).await?;
        }
        Ok(out)
    }

    /// Ids of the namespace's tasks whose metadata has every `KEY=VALUE` of `wanted`, read
    /// by scanning the task records (SCAN, then their metadata pipelined 1,000 at a time).
    pub async fn find_by_metadata(
        &self,
        wanted: &[(String, String)],
    ) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        let prefix = self.namespace.task("");
        let mut found = Vec::new();
        let keys = self.conn.scan_match(&self.namespace.task_pattern()).await?;
        for keys in keys.chunks(1_000) {
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.hget(key, "metadata");
            }
            let metas: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
            for (key, meta) in keys.iter().zip(metas) {
                let Some(meta) =
                    meta.and_then(|m| serde_json::from_str::<BTreeMap<String, String>>(&m).ok())
                else {
                    continue;
                };
                if wanted
                    .iter()
                    .all(|(k, v)| meta.get(k).is_some_and(|m| m == v))
                    && let Some(id) = key.strip_prefix(&prefix)
                {
                    found.push(id.to_owned());
                }
            }
        }
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// The fleet's cancellation counter (0 before the first cancel).
    pub async fn cancel_seq(&self) -> Result<u64, QueueError> {
        let seq: Option<u64> = self.conn.clone().get(self.namespace.cancel_seq()).await?;
        Ok(seq.unwrap_or(0))
    }

    /// Shows a dead task as waiting again for `role` (its dead letter is being replayed).
    /// Call it before re-enqueueing: a worker may finish the job before a later write could
    /// land.
    pub async fn requeue_dead(
        &self,
        task_id: &str,
        status: TaskStatus,
        role: &str,
    ) -> Result<bool, QueueError> {
        let changed: i64 = SCRIPTS
            .record_requeue
            .key(self.namespace.task(task_id))
            .arg(status.as_str())
            .arg(now_ms())
            .arg(role)
            .invoke_async(&mut self.conn.clone())
            .await?;
        if changed == 1 {
            self.events
                .emit_one(NewEvent::new("replayed", task_id).with("role", role))
                .await;
        }
        Ok(changed == 1)
    }

    /// The whole record, or `None` for an unknown (or expired) task.
    pub async fn get(&self, task_id: &str) -> Result<Option<TaskRecord>, QueueError> {
        let key = self.namespace.task(task_id);
        let fields: HashMap<String, String> = self.conn.clone().hgetall(&key).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        parse_record(task_id, fields)
            .map(Some)
            .map_err(|reason| QueueError::Corrupt { key, reason })
    }

    /// Status of many tasks in one round trip (`None` for unknown ids).
    pub async fn statuses(
        &self,
        task_ids: &[String],
    ) -> Result<Vec<Option<TaskStatus>>, QueueError> {
        let mut pipe = redis::pipe();
        for id in task_ids {
            pipe.hget(self.namespace.task(id), "status");
        }
        let raw: Vec<Option<String>> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(raw
            .into_iter()
            .map(|s| s.and_then(|s| s.parse().ok()))
            .collect())
    }
}

/// A record's `metadata` field (a JSON object of strings); absent or unreadable: none.
fn metadata_of(field: Option<String>) -> BTreeMap<String, String> {
    field
        .and_then(|m| serde_json::from_str(&m).ok())
        .unwrap_or_default()
}

/// An error or reason as an event carries it: its first 300 characters.
fn capped(text: &str) -> String {
    text.chars().take(300).collect()
}

fn parse_record(task_id: &str, mut f: HashMap<String, String>) -> Result<TaskRecord, String> {
    let num = |f: &HashMap<String, String>, k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
    let status = f
        .get("status")
        .ok_or("no status field")?
        .parse::<TaskStatus>()?;
    let mut stages: BTreeMap<String, StageRecord> = BTreeMap::new();
    // `<role>.review_output` read before `<role>.review` (hash order is arbitrary).
    let mut pending_outputs: Vec<(String, String)> = Vec::new();
    for (key, value) in &mut f {
        let Some((role, field)) = key.split_once('.') else {
            continue;
        };
        let stage = stages.entry(role.to_owned()).or_default();
        match field {
            "state" => stage.state = value.parse().ok(),
            "output" => stage.output = Some(std::mem::take(value)),
            "attempts" => stage.attempts = value.parse().unwrap_or(0),
            "started_at_ms" => stage.started_at_ms = value.parse().ok(),
            "finished_at_ms" => stage.finished_at_ms = value.parse().ok(),
            "retry_at_ms" => stage.retry_at_ms = value.parse().ok(),
            "last_error" => stage.last_error = Some(value.clone()),
            "review" => stage.review = serde_json::from_str::<PendingReview>(value).ok(),
            "review_output" => match &mut stage.review {
                Some(review) => review.output = Some(std::mem::take(value)),
                None => pending_outputs.push((role.to_owned(), std::mem::take(value))),
            },
            "approved" => stage.approved_rules = serde_json::from_str(value).unwrap_or_default(),
            "worker_id" => stage.worker_id = Some(value.clone()),
            "provider" => stage.provider = Some(value.clone()),
            "model" => stage.model = Some(value.clone()),
            "prompt_tokens" | "completion_tokens" => {
                let usage = stage.usage.get_or_insert_with(TokenUsage::default);
                let n = value.parse().unwrap_or(0);
                if field == "prompt_tokens" {
                    usage.prompt_tokens = n;
                } else {
                    usage.completion_tokens = n;
                }
            }
            _ => {}
        }
    }
    for (role, output) in pending_outputs {
        if let Some(review) = stages.get_mut(&role).and_then(|s| s.review.as_mut()) {
            review.output = Some(output);
        }
    }
    let pipeline = f.remove("pipeline");
    // The answer is the last stage's output, once the task is done.
    let answer = pipeline
        .as_deref()
        .and_then(|p| p.parse::<Pipeline>().ok())
        .filter(|_| status == TaskStatus::Done)
        .and_then(|p| stages.get(p.last_role())?.output.clone());
    Ok(TaskRecord {
        task_id: task_id.to_owned(),
        status,
        created_at_ms: num(&f, "created_at_ms").unwrap_or(0),
        updated_at_ms: num(&f, "updated_at_ms").unwrap_or(0),
        stage: f.get("stage").and_then(|s| s.parse().ok()),
        prompt: f.remove("prompt").unwrap_or_default(),
        metadata: f
            .get("metadata")
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default(),
        pipeline,
        traceparent: f.remove("traceparent"),
        answer,
        last_error: f.remove("last_error"),
        lane: f
            .get("lane")
            .and_then(|l| l.parse().ok())
            .unwrap_or_default(),
        deadline_ms: num(&f, "deadline_ms"),
        not_before_ms: num(&f, "not_before_ms"),
        stopped_at_ms: num(&f, "stopped_at_ms"),
        stop_reason: f.remove("stop_reason"),
        stages,
        reviews: f
            .get("reviews")
            .and_then(|r| serde_json::from_str(r).ok())
            .unwrap_or_default(),
    })
}
