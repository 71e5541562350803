use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a task is, as `agentfleet status` and `wait` report it. Generic: which stage a
/// running task is in is on the record (`stage`, and each role's [`StageState`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Running,
    Done,
    Dead,
    /// Stopped by `agentfleet cancel`: nothing more of it runs.
    Cancelled,
    /// Its deadline passed before it was done: nothing more of it runs.
    Expired,
    /// Parked by a guardrail whose action is `review`: holds no worker slot until a person
    /// approves (the task resumes where it stopped) or rejects it (it is dead-lettered).
    Review,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Review => "review",
        }
    }

    /// No worker will change a task in this state again (until a dead letter is replayed).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Done | Self::Dead | Self::Cancelled | Self::Expired
        )
    }

    /// Terminal without an answer: what `wait` exits 1 on.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Dead | Self::Cancelled | Self::Expired)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "done" => Self::Done,
            "dead" => Self::Dead,
            "cancelled" => Self::Cancelled,
            "expired" => Self::Expired,
            "review" => Self::Review,
            other => return Err(format!("unknown task status {other:?}")),
        })
    }
}

/// Where one role is with a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    /// A worker is running it.
    Running,
    /// An attempt failed; the next is due at `retry_at_ms`.
    Retrying,
    /// Its output is stored.
    Done,
    /// Dead-lettered: the task is dead with it.
    Dead,
    /// A guardrail parked it for a person's decision (`agentfleet review`).
    Review,
    /// A person approved it in review; its job is queued to resume the stage.
    Approved,
}

impl StageState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Done => "done",
            Self::Dead => "dead",
            Self::Review => "review",
            Self::Approved => "approved",
        }
    }
}

impl FromStr for StageState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "running" => Self::Running,
            "retrying" => Self::Retrying,
            "done" => Self::Done,
            "dead" => Self::Dead,
            "review" => Self::Review,
            "approved" => Self::Approved,
            other => return Err(format!("unknown stage state {other:?}")),
        })
    }
}

/// Tokens a provider reported for one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// What one role did for a task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<StageState>,
    /// The role's output, once stored (written once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<TokenUsage>,
    /// When the next attempt is due, while `state` is `retrying` (the worker's clock: for
    /// people, never compared).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<u64>,
    /// The last failed attempt's error: history, not the task's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What waits for a person's decision, while `state` is `review`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<crate::PendingReview>,
    /// Input guardrail rules a person approved for this role: not checked again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_rules: Vec<String>,
}

impl StageRecord {
    /// Wall time of the successful attempt, when both ends are known.
    pub fn duration_ms(&self) -> Option<u64> {
        Some(self.finished_at_ms?.saturating_sub(self.started_at_ms?))
    }
}

/// Everything known about one task: what `agentfleet status --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    pub status: TaskStatus,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The pipeline the task was enqueued into (canonical form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// Index of the stage the task has reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<u32>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The last stage's output, once the task is done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Why the task is dead, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The priority lane its jobs wait in.
    #[serde(default)]
    pub lane: crate::Lane,
    /// When the task stops being worth doing (ms, compared on Redis's clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// When a delayed task's first job is due (ms, Redis's clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// When the task was cancelled or expired, and why (who asked, or the deadline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// Per role of the pipeline.
    #[serde(default)]
    pub stages: BTreeMap<String, StageRecord>,
    /// Every review decision taken on the task, oldest first: who, when, what.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reviews: Vec<crate::ReviewDecision>,
}

impl TaskRecord {
    /// Enqueue to done, when done.
    pub fn total_ms(&self) -> Option<u64> {
        if self.status != TaskStatus::Done {
            return None;
        }
        let done = self
            .stages
            .values()
            .filter_map(|s| s.finished_at_ms)
            .max()?;
        Some(done.saturating_sub(self.created_at_ms))
    }

    /// A role's output, if stored.
    pub fn output(&self, role: &str) -> Option<&str> {
        self.stages.get(role)?.output.as_deref()
    }
}
