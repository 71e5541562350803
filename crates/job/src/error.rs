use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a job handler says went wrong, and so what the queue does next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// Worth trying again: the job is scheduled for a later attempt with backoff, waiting
    /// at least `retry_after` when the cause (a provider's `Retry-After`) says so.
    #[error("transient: {message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help: the job is dead-lettered at once.
    #[error("permanent: {message}")]
    Permanent { message: String },
    /// The input is over a size limit: dead-lettered at once, nothing else is tried.
    #[error("too large: {message}")]
    TooLarge { message: String },
    /// Not a failure: the job could not get capacity (a fleet-wide LLM limit, a cooldown,
    /// a paused provider account) and waits `delay` in the scheduled set. Its delivery is
    /// not counted as an attempt, so waiting never uses up its retries.
    #[error("deferred for {delay:?}: {reason}")]
    Deferred { delay: Duration, reason: String },
    /// Running it would exceed a spending budget: dead-lettered at once with class
    /// `budget` (replayable once the budget resets at UTC midnight or is raised).
    #[error("budget: {message}")]
    Budget { message: String },
    /// Not a failure: the task was cancelled or its deadline passed (`status` says which,
    /// already on the record), so the job ends here, acknowledged, and nothing chains.
    #[error("{status}: {message}")]
    Stopped {
        status: crate::TaskStatus,
        message: String,
    },
    /// A guardrail rule whose action is `reject` failed (input, or output after its
    /// re-asks): dead-lettered at once with class `guardrail`.
    #[error("guardrail: {message}")]
    Guardrail { message: String },
}

impl JobError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent {
            message: message.into(),
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Transient { .. } => ErrorClass::Transient,
            Self::Permanent { .. } => ErrorClass::Permanent,
            Self::TooLarge { .. } => ErrorClass::TooLarge,
            Self::Deferred { .. } => ErrorClass::Deferred,
            Self::Budget { .. } => ErrorClass::Budget,
            Self::Stopped { .. } => ErrorClass::Stopped,
            Self::Guardrail { .. } => ErrorClass::Guardrail,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Transient { message, .. }
            | Self::Permanent { message }
            | Self::TooLarge { message }
            | Self::Budget { message }
            | Self::Stopped { message, .. }
            | Self::Guardrail { message }
            | Self::Deferred {
                reason: message, ..
            } => message,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            Self::Deferred { delay, .. } => Some(*delay),
            Self::Permanent { .. }
            | Self::TooLarge { .. }
            | Self::Budget { .. }
            | Self::Stopped { .. } => None,
            Self::Guardrail { .. } => None,
        }
    }
}

/// The class a dead letter records: why the job stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Failed with a retryable error on its last allowed attempt.
    Transient,
    /// Failed with an error that retrying cannot fix.
    Permanent,
    /// The entry could not be decoded as a job of this role.
    Decode,
    /// Its worker died (stopped heartbeating) while running it, on its last allowed attempt.
    Crash,
    /// The entry (or its prompt or metadata) is over the worker's size limits.
    TooLarge,
    /// Running it would have exceeded a spending budget (fleet, tenant or task).
    Budget,
    /// Waiting for capacity: never a dead letter's class, the job is rescheduled uncounted.
    Deferred,
    /// The task was cancelled or expired: never a dead letter's class, the job is
    /// acknowledged.
    Stopped,
    /// A guardrail rule rejected its input or output, or a person rejected it in review.
    Guardrail,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::Decode => "decode",
            Self::Crash => "crash",
            Self::TooLarge => "too_large",
            Self::Budget => "budget",
            Self::Deferred => "deferred",
            Self::Stopped => "stopped",
            Self::Guardrail => "guardrail",
        })
    }
}
