//! Human review of guardrail violations: what waits for a decision, and the decisions taken.
//! Kept on the task record (`<role>.review`, `<role>.review_output`, `reviews`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which side of a model call a guardrail rule checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardSide {
    /// The task's text before the provider call (prompt, earlier stages' outputs, metadata).
    Input,
    /// The model's answer after the call.
    Output,
}

impl GuardSide {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
        }
    }
}

impl fmt::Display for GuardSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role's stage parked for a person's decision (`<role>.review` on the record, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReview {
    pub side: GuardSide,
    /// The rules that failed (their names in the guardrails file).
    pub rules: Vec<String>,
    /// What each rule said, for the reviewer.
    pub reason: String,
    /// The offending text around the first failure, capped.
    pub excerpt: String,
    /// The stage index the role runs at (where the task resumes).
    pub stage: u32,
    /// When it was parked (the worker's clock: for people, never compared).
    pub at_ms: u64,
    /// The output waiting for approval (output side only; `<role>.review_output`): approving
    /// stores it as the role's output without calling the model again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// What a reviewer decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewVerdict {
    Approved,
    Rejected,
}

impl ReviewVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }
}

impl fmt::Display for ReviewVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One decision taken in review, kept on the task record for audit (`reviews`, a JSON list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewDecision {
    pub role: String,
    pub side: GuardSide,
    pub rules: Vec<String>,
    pub verdict: ReviewVerdict,
    /// Who decided: `--user`, else the OS user.
    pub by: String,
    /// When (the deciding machine's clock, ms since the epoch).
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}
