//! What every agentfleet worker process shares.
//!
//! A role binary is a [`RoleSpec`] plus a [`RoleHandler`]; [`run`] does the rest: flags,
//! logging, the provider, the Redis connections, the apalis worker over the Redis backend,
//! `/metrics` `/healthz` `/readyz`, queue-depth sampling, and graceful shutdown on SIGTERM
//! or SIGINT. Adding a role costs one small crate (see ARCHITECTURE.md).
#![forbid(unsafe_code)]

mod args;
mod chain;
mod context;
mod control;
mod guard;
mod run;

pub use args::{WorkerArgs, parse_args};
pub use context::{Llm, PromptRole, RoleContext, StageInput, StageOutput, redis_failure};
pub use run::{RoleHandler, RoleSpec, RuntimeError, main, role_main, run};

pub use agentfleet_queue::{Delivery, JobFailure};
pub use agentfleet_telemetry::current_traceparent;
