//! Finding tasks: the tasks index (`<ns>:tasks`, ZSET of ids by enqueue time) read newest
//! first and filtered on the records' fields. The index is written in the producer's
//! enqueue round trip and trimmed there (a record lifetime, [`crate::TASKS_INDEX_CAP`]);
//! an id whose record has expired is skipped.

use std::collections::BTreeMap;

use agentfleet_job::{Pipeline, StageState, TaskStatus};
use redis::AsyncCommands;

use crate::{QueueError, TaskStore};

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    /// Every `KEY=VALUE` must be in the task's metadata.
    pub metadata: Vec<(String, String)>,
    /// The task's pipeline has this role.
    pub role: Option<String>,
    /// Enqueued at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// The id, or a metadata value, contains this text (the inspector's search box).
    pub text: Option<String>,
    pub limit: usize,
}

/// One line of the listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TaskSummary {
    pub task_id: String,
    pub status: String,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub pipeline: String,
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
}

/// Ids read from the index per round trip.
const PAGE: usize = 500;
/// Most ids examined per listing: a filter that matches little stops here rather than
/// reading a million records.
const MAX_EXAMINED: usize = 200_000;

impl TaskStore {
    /// Tasks matching `filter`, newest first, at most `filter.limit`.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskSummary>, QueueError> {
        let mut conn = self.conn();
        let index = self.namespace_ref().tasks_index();
        let min = filter
            .since_ms
            .map(|ms| ms.to_string())
            .unwrap_or_else(|| "-inf".to_owned());
        let mut found = Vec::new();
        let mut offset = 0;
        let mut gone = Vec::new();
        while found.len() < filter.limit && offset < MAX_EXAMINED {
            let ids: Vec<String> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(&index)
                .arg("+inf")
                .arg(&min)
                .arg("LIMIT")
                .arg(offset)
                .arg(PAGE)
                .query_async(&mut conn)
                .await?;
            if ids.is_empty() {
                break;
            }
            offset += ids.len();
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("HMGET").arg(self.key(id)).arg(&[
                    "status",
                    "created_at_ms",
                    "updated_at_ms",
                    "pipeline",
                    "metadata",
                    "lane",
                ]);
            }
            let rows: Vec<Vec<Option<String>>> = pipe.query_async(&mut conn).await?;
            for (id, row) in ids.into_iter().zip(rows) {
                let mut row = row.into_iter();
                let mut next = || row.next().flatten();
                let Some(status) = next() else {
                    gone.push(id);
                    continue;
                };
                let created_at_ms = next().and_then(|v| v.parse().ok()).unwrap_or(0);
                let updated_at_ms = next().and_then(|v| v.parse().ok()).unwrap_or(0);
                let pipeline = next().unwrap_or_default();
                let metadata: BTreeMap<String, String> = next()
                    .and_then(|m| serde_json::from_str(&m).ok())
                    .unwrap_or_default();
                let lane = next();
                if let Some(text) = &filter.text
                    && !id.contains(text.as_str())
                    && !metadata.values().any(|v| v.contains(text.as_str()))
                {
                    continue;
                }
                if filter.status.is_some_and(|s| s.as_str() != status) {
                    continue;
                }
                if !filter
                    .metadata
                    .iter()
                    .all(|(k, v)| metadata.get(k).is_some_and(|m| m == v))
                {
                    continue;
                }
                if let Some(role) = &filter.role {
                    let has = pipeline
                        .parse::<Pipeline>()
                        .map(|p| p.roles().any(|r| r == role.as_str()))
                        .unwrap_or(false);
                    if !has {
                        continue;
                    }
                }
                found.push(TaskSummary {
                    task_id: id,
                    status,
                    created_at_ms,
                    updated_at_ms,
                    pipeline,
                    metadata,
                    lane,
                });
                if found.len() >= filter.limit {
                    break;
                }
            }
        }
        if !gone.is_empty() {
            // Their records expired or were deleted: the index forgets them too.
            let _: i64 = conn.zrem(&index, &gone).await?;
        }
        Ok(found)
    }

    /// Tasks that wait for a job no queue holds: status `queued` or `running`, unchanged for
    /// `quiet_for`, and the job of a role their current stage still waits on is neither
    /// pending, scheduled nor in flight in that role's queue (`queues`, by role), on two
    /// looks in a row. Nothing moves them on: on a Redis Cluster, a failover can lose the
    /// writes the old master acknowledged but had not replicated (README, "Redis Cluster"),
    /// and this is where such tasks are reported. Newest first, at most `limit`.
    pub async fn stalled_tasks(
        &self,
        queues: &BTreeMap<String, crate::Queue>,
        quiet_for: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<TaskSummary>, QueueError> {
        let cutoff = agentfleet_job::now_ms().saturating_sub(quiet_for.as_millis() as u64);
        let mut candidates: Vec<(TaskSummary, Vec<String>)> = Vec::new();
        for status in [TaskStatus::Queued, TaskStatus::Running] {
            let filter = TaskFilter {
                status: Some(status),
                limit: MAX_EXAMINED,
                ..TaskFilter::default()
            };
            for summary in self.list_tasks(&filter).await? {
                if summary.updated_at_ms > cutoff {
                    continue;
                }
                let Some(record) = self.get(&summary.task_id).await? else {
                    continue;
                };
                let Ok(pipeline) = summary.pipeline.parse::<Pipeline>() else {
                    continue;
                };
                let stage = record.stage.unwrap_or(0) as usize;
                let waiting: Vec<String> = pipeline
                    .stage(stage)
                    .unwrap_or_default()
                    .iter()
                    .filter(|role| {
                        record
                            .stages
                            .get(role.as_str())
                            .is_none_or(|s| s.state != Some(StageState::Done))
                    })
                    .map(|role| role.to_string())
                    .collect();
                candidates.push((summary, waiting));
            }
        }
        for _look in 0..2 {
            let mut held: BTreeMap<&str, std::collections::HashSet<String>> = BTreeMap::new();
            for (role, queue) in queues {
                held.insert(role, queue.waiting_or_running_job_ids().await?);
            }
            candidates.retain(|(task, waiting)| {
                waiting.iter().any(|role| {
                    held.get(role.as_str())
                        .is_some_and(|ids| !ids.contains(&task.task_id))
                })
            });
        }
        let mut stalled: Vec<TaskSummary> = candidates.into_iter().map(|(t, _)| t).collect();
        stalled.sort_by_key(|t| std::cmp::Reverse(t.created_at_ms));
        stalled.truncate(limit);
        Ok(stalled)
    }

    /// Takes one id off the tasks index (a record deleted by its own enqueue).
    pub async fn forget_indexed(&self, task_id: &str) -> Result<(), QueueError> {
        let _: i64 = self
            .conn()
            .zrem(self.namespace_ref().tasks_index(), task_id)
            .await?;
        Ok(())
    }

    /// How many ids the tasks index holds.
    pub async fn indexed(&self) -> Result<u64, QueueError> {
        Ok(self
            .conn()
            .zcard(self.namespace_ref().tasks_index())
            .await?)
    }
}
