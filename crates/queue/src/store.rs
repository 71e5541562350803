use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use agentfleet_job::{StageRecord, TaskRecord, TaskStatus, TokenUsage, now_ms};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use crate::scripts::SCRIPTS;
use crate::{Namespace, QueueError};

/// Task records: one Redis HASH per task (`<namespace>:task:<id>`), flat fields so that
/// `HGETALL` in redis-cli reads like the record. Per-role fields are `<role>.<field>`.
#[derive(Clone)]
pub struct TaskStore {
    conn: ConnectionManager,
    namespace: Namespace,
    ttl: Duration,
}

/// A role starting on a task.
#[derive(Debug, Clone)]
pub struct StageStart<'a> {
    pub role: &'a str,
    pub attempt: u32,
    pub worker_id: &'a str,
    /// Status to show while this role works.
    pub status: TaskStatus,
    /// The record field this role writes its output to (`analysis`, `answer`).
    pub output_field: &'a str,
}

/// A role finishing a task's stage.
#[derive(Debug, Clone)]
pub struct StageFinish<'a> {
    pub role: &'a str,
    pub output_field: &'a str,
    pub output: &'a str,
    /// Status after this stage.
    pub status: TaskStatus,
    pub started_at_ms: u64,
    pub provider: &'a str,
    pub model: &'a str,
    pub usage: TokenUsage,
}

impl TaskStore {
    pub fn new(conn: ConnectionManager, namespace: Namespace, ttl: Duration) -> Self {
        Self {
            conn,
            namespace,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Adds the commands that create a queued task's record to `pipe`, so that the
    /// producer writes records and pushes jobs in one round trip.
    /// The key of a task's record.
    pub(crate) fn key(&self, task_id: &str) -> String {
        self.namespace.task(task_id)
    }

    pub fn create_into(
        &self,
        pipe: &mut redis::Pipeline,
        task_id: &str,
        prompt: &str,
        metadata: &BTreeMap<String, String>,
        created_at_ms: u64,
        traceparent: Option<&str>,
    ) {
        let key = self.namespace.task(task_id);
        let mut fields: Vec<(&str, String)> = vec![
            ("task_id", task_id.to_owned()),
            ("status", TaskStatus::Queued.as_str().to_owned()),
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
        pipe.hset_multiple(&key, &fields).ignore();
        pipe.pexpire(&key, self.ttl.as_millis() as i64).ignore();
    }

    /// Notes that a role started on the task. Returns the status before and the role's
    /// output if an earlier attempt already wrote it (a re-run then reuses it instead of
    /// calling the provider again). `None` when the record is gone (expired or never made).
    pub async fn start_stage(
        &self,
        task_id: &str,
        start: &StageStart<'_>,
    ) -> Result<Option<(Option<TaskStatus>, Option<String>)>, QueueError> {
        let (status, output): (Option<String>, Option<String>) = SCRIPTS
            .record_start
            .key(self.namespace.task(task_id))
            .arg(start.role)
            .arg(start.attempt)
            .arg(start.worker_id)
            .arg(now_ms())
            .arg(start.status.as_str())
            .arg(start.output_field)
            .invoke_async(&mut self.conn.clone())
            .await?;
        if status.is_none() && output.is_none() {
            return Ok(None);
        }
        Ok(Some((status.and_then(|s| s.parse().ok()), output)))
    }

    /// Writes a stage's output, once: a task already `done` is never changed. Returns false
    /// when it was already done (or the record is gone).
    pub async fn finish_stage(
        &self,
        task_id: &str,
        finish: &StageFinish<'_>,
    ) -> Result<bool, QueueError> {
        let now = now_ms();
        let role = finish.role;
        let written: i64 = SCRIPTS
            .record_finish
            .key(self.namespace.task(task_id))
            .arg(finish.output_field)
            .arg(finish.output)
            .arg(finish.status.as_str())
            // A finished task lives a full TTL from now; an intermediate stage keeps the
            // lifetime set at enqueue (one command fewer on the hot path).
            .arg(if finish.status.is_terminal() {
                self.ttl.as_millis() as u64
            } else {
                0
            })
            .arg("updated_at_ms")
            .arg(now)
            .arg(format!("{role}.finished_at_ms"))
            .arg(now)
            .arg(format!("{role}.started_at_ms"))
            .arg(finish.started_at_ms)
            .arg(format!("{role}.provider"))
            .arg(finish.provider)
            .arg(format!("{role}.model"))
            .arg(finish.model)
            .arg(format!("{role}.prompt_tokens"))
            .arg(finish.usage.prompt_tokens)
            .arg(format!("{role}.completion_tokens"))
            .arg(finish.usage.completion_tokens)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(written == 1)
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
            .arg(format!("{role}.attempts"))
            .arg(attempts)
            .arg(now_ms())
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(marked == 1)
    }

    /// Notes a failed attempt that will be retried.
    pub async fn note_error(&self, task_id: &str, reason: &str) -> Result<(), QueueError> {
        self.set_fields(task_id, &[("last_error", reason.to_owned())])
            .await
    }

    /// Shows a dead task as waiting again (its dead letter is being replayed). Call it
    /// before re-enqueueing: a worker may finish the job before a later write could land.
    pub async fn requeue_dead(
        &self,
        task_id: &str,
        status: TaskStatus,
    ) -> Result<bool, QueueError> {
        let changed: i64 = SCRIPTS
            .record_requeue
            .key(self.namespace.task(task_id))
            .arg(status.as_str())
            .arg(now_ms())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(changed == 1)
    }

    async fn set_fields(&self, task_id: &str, fields: &[(&str, String)]) -> Result<(), QueueError> {
        let key = self.namespace.task(task_id);
        let mut all: Vec<(&str, String)> = fields.to_vec();
        all.push(("updated_at_ms", now_ms().to_string()));
        // Only touch a record that exists: an expired record is not resurrected as a stub.
        let exists: bool = self.conn.clone().exists(&key).await?;
        if exists {
            let _: () = redis::pipe()
                .hset_multiple(&key, &all)
                .ignore()
                .pexpire(&key, self.ttl.as_millis() as i64)
                .ignore()
                .query_async(&mut self.conn.clone())
                .await?;
        }
        Ok(())
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

fn parse_record(task_id: &str, mut f: HashMap<String, String>) -> Result<TaskRecord, String> {
    let num = |f: &HashMap<String, String>, k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
    let status = f
        .get("status")
        .ok_or("no status field")?
        .parse::<TaskStatus>()?;
    let mut stages: BTreeMap<String, StageRecord> = BTreeMap::new();
    for (key, value) in &f {
        let Some((role, field)) = key.split_once('.') else {
            continue;
        };
        let stage = stages.entry(role.to_owned()).or_default();
        match field {
            "attempts" => stage.attempts = value.parse().unwrap_or(0),
            "started_at_ms" => stage.started_at_ms = value.parse().ok(),
            "finished_at_ms" => stage.finished_at_ms = value.parse().ok(),
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
    Ok(TaskRecord {
        task_id: task_id.to_owned(),
        status,
        created_at_ms: num(&f, "created_at_ms").unwrap_or(0),
        updated_at_ms: num(&f, "updated_at_ms").unwrap_or(0),
        prompt: f.remove("prompt").unwrap_or_default(),
        metadata: f
            .get("metadata")
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default(),
        traceparent: f.remove("traceparent"),
        analysis: f.remove("analysis"),
        answer: f.remove("answer"),
        last_error: f.remove("last_error"),
        stages,
    })
}
