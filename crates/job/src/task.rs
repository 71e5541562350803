use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::TraceContext;

/// A task's identity: a ULID, so ids sort by creation time in redis-cli and in the CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(ulid::Ulid);

impl TaskId {
    pub fn new() -> Self {
        Self(ulid::Ulid::new())
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = ulid::DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s).map(Self)
    }
}

/// What a user asks for: the prompt and their own metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub prompt: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// One role's job for one task at one stage of the pipeline. Deliberately small: the
/// task's prompt, metadata and the outputs of earlier stages live on the task record, which
/// the runtime reads when the job starts (one round trip it makes anyway), so entries stay a
/// few hundred bytes however long the texts, and a replayed entry never carries stale data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageJob {
    pub task_id: TaskId,
    /// Index of the stage in the fleet's pipeline (0 for the first).
    pub stage: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}
