//! agentfleet's Redis queue.
//!
//! The only crate that knows Redis key names and the only one that changes queue state.
//! Every atomic transition is one Lua file under `src/lua/`; see ARCHITECTURE.md for the
//! data structures and the delivery guarantees they give.
//!
//! - [`Queue`]: one role's queue: push, fetch, ack, retry, dead-letter, recover, counts.
//! - [`TaskStore`]: task records (`status`, analysis, answer, timings, usage).
//! - [`RedisBackend`]: the queue as an apalis-core [`Backend`](apalis_core::backend::Backend),
//!   with its acknowledgement layer, heartbeats and maintenance.
#![forbid(unsafe_code)]

mod backend;
mod cluster_link;
mod connection;
mod dead_letter;
mod error;
mod events;
mod fleet;
mod keys;
mod queue;
mod review;
mod scripts;
mod store;
mod tasks;

pub use backend::{
    Delivery, Disposition, FailurePolicy, JobFailure, RedisBackend, WorkerHandle, WorkerOptions,
    WorkerStatus,
};
pub use connection::{
    ConnectOptions, RedisArgs, RedisConnection, RedisUrl, check_access, connect, connect_worker,
};
pub use dead_letter::DeadLetter;
pub use error::QueueError;
pub use events::{DEFAULT_EVENTS_MAXLEN, Event, Events, NewEvent};
pub use fleet::{
    FleetArgs, LeaseArgs, MAX_SHARDS, NamespaceArgs, PipelineArgs, RecordTtlArgs,
    agree_on_pipeline, agree_on_shards, delete_namespace, record_pipeline, recorded_pipeline,
    recorded_shards,
};
pub use keys::{BudgetKeys, InvalidName, LimitKeys, Namespace, QueueKeys};
pub use queue::{
    Enqueued, Fetched, NewTask, PushEntry, Queue, QueueCounts, RecoveredJobs, RecoveryReport,
    TaskControl, lane_of, shard_of, unreadable_id,
};
pub use review::{ParkedTask, ReviewCounts, ReviewWrite};
pub use store::{
    Finished, RoleFields, StageData, StageFinish, StageStart, Started, Stopped, TASKS_INDEX_CAP,
    TaskStore,
};
pub use tasks::{TaskFilter, TaskSummary};
