use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a task is in the pipeline, as `agentfleet status` and `wait` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Reasoning,
    Synthesizing,
    Done,
    Dead,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Reasoning => "reasoning",
            Self::Synthesizing => "synthesizing",
            Self::Done => "done",
            Self::Dead => "dead",
        }
    }

    /// No worker will change a task in this state again (until a dead letter is replayed).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Dead)
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
            "reasoning" => Self::Reasoning,
            "synthesizing" => Self::Synthesizing,
            "done" => Self::Done,
            "dead" => Self::Dead,
            other => return Err(format!("unknown task status {other:?}")),
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
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analysis: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Per role (`reasoning`, `synthesis`, or any role added later).
    #[serde(default)]
    pub stages: BTreeMap<String, StageRecord>,
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
}
