//! Fleet-wide LLM limits and budgets, enforced in Redis.
//!
//! N replicas of any role share one provider quota and one spend cap. Every provider call
//! goes through [`LimitedProvider`], a decorator of [`agentfleet_providers::Provider`]:
//!
//! - **before** the call it reserves, in one Lua script per operation under the limit's own
//!   hash tag: one request and its estimated tokens against the rates (a GCRA on Redis's
//!   clock: calls are spaced, never bursty), one concurrency lease (expiring with the
//!   worker's lease, so a SIGKILLed worker leaks none), and the call's worst-case cost
//!   against the fleet's, the tenant's and the task's budgets;
//! - **after** it settles to what the provider reported, starts a fleet-wide cooldown on a
//!   429/529 or exhausted-quota headers, and counts account failures (401/403, failing
//!   calls) until the account is paused for every worker and probed back.
//!
//! A call that cannot get capacity waits briefly in process, then returns
//! [`ProviderError::Deferred`](agentfleet_providers::ProviderError::Deferred): the runtime
//! puts the job back in the scheduled set without counting an attempt. A call over a budget
//! returns [`ProviderError::Budget`](agentfleet_providers::ProviderError::Budget): the job is
//! dead-lettered with class `budget`.
#![forbid(unsafe_code)]

mod args;
mod budget;
mod config;
mod limiter;
mod prices;
mod provider;
mod scope;
mod status;

pub use args::LimitArgs;
pub use config::{Budgets, FileLimits, LimitsFile, ResolvedLimits};
pub use prices::{Price, PriceTable};
pub use provider::{LimitContext, LimitStatus, LimitedProvider, estimate_prompt_tokens, wrap};
pub use scope::JobScope;
pub use status::{BudgetStatus, FleetLimits, LimitState, fleet_limits};

/// A configuration the worker cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path} is not valid: {reason}")]
    Parse {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("--limit-key: {0}")]
    Key(#[from] agentfleet_queue::InvalidName),
    #[error(
        "a budget is set but the price table has no price for model {model:?}: add it to --prices-file"
    )]
    NoPrice { model: String },
    #[error("{flag} must be {expected}, got {value}")]
    Value {
        flag: &'static str,
        expected: &'static str,
        value: String,
    },
}

/// USD as stored in Redis: integer nano-dollars (exact sums in Lua).
pub(crate) fn to_nano(usd: f64) -> i64 {
    (usd * 1e9).round() as i64
}

pub(crate) fn from_nano(nano: i64) -> f64 {
    nano as f64 / 1e9
}
