//! The data model every agentfleet process agrees on.
//!
//! Nothing here talks to Redis or to a provider: this crate only says what a task, a job
//! envelope, a task record and a job error *are*, so that the producer, the queue and every
//! worker role read and write the same bytes.
#![forbid(unsafe_code)]

mod envelope;
mod error;
pub mod exit;
mod lane;
mod limits;
mod pipeline;
mod record;
mod review;
mod task;
mod trace;

pub use envelope::{DecodeError, ENVELOPE_VERSION, Envelope, peek_id};
pub use error::{ErrorClass, JobError};
pub use lane::{Lane, LaneShares};
pub use limits::{LimitError, Limits};
pub use pipeline::{DEFAULT_PIPELINE, Pipeline, PipelineError};
pub use record::{StageRecord, StageState, TaskRecord, TaskStatus, TokenUsage};
pub use review::{GuardSide, PendingReview, ReviewDecision, ReviewVerdict};
pub use task::{StageJob, TaskId, TaskSpec};
pub use trace::TraceContext;

/// Milliseconds since the Unix epoch: the one clock unit stored in Redis.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
