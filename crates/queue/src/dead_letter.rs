use agentfleet_job::ErrorClass;
use serde::{Deserialize, Serialize};

/// A job that stopped for good, with everything needed to understand and replay it.
/// Written by the worker (`dead.lua`) or by crash recovery (`recover.lua`, which builds the
/// same fields in Lua: keep the two in step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub job_id: String,
    pub role: String,
    /// The queue entry exactly as it was last delivered (it may be undecodable bytes).
    pub payload: String,
    pub error_class: ErrorClass,
    pub error: String,
    pub attempts: u32,
    pub first_failed_at_ms: u64,
    pub last_failed_at_ms: u64,
    pub worker_id: String,
    pub dead_at_ms: u64,
}
