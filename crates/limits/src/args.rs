use std::path::PathBuf;

use clap::Args;

/// Fleet-wide LLM limits and budgets, flattened into every worker's flags. Each is also an
/// environment variable. Limits given both here and in `--limits-file`: the tightest wins.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// The provider account this worker's calls count against, shared by every worker
    /// that names it (default: provider and base URL host, e.g. `openai:api.openai.com`).
    #[arg(long, env = "AGENTFLEET_LIMIT_KEY")]
    pub limit_key: Option<String>,

    /// Requests per minute allowed on the account, for the whole fleet.
    #[arg(long, env = "AGENTFLEET_RPM")]
    pub rpm: Option<u64>,

    /// Tokens (input + output) per minute allowed on the account, for the whole fleet.
    #[arg(long, env = "AGENTFLEET_TPM")]
    pub tpm: Option<u64>,

    /// Provider calls in flight at once on the account, for the whole fleet.
    #[arg(long, env = "AGENTFLEET_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<u64>,

    /// A JSON file of limits and budgets shared by the fleet (README, "Limits file").
    #[arg(long, env = "AGENTFLEET_LIMITS_FILE")]
    pub limits_file: Option<PathBuf>,

    /// A JSON price table overriding the shipped prices (README, "Price table").
    #[arg(long, env = "AGENTFLEET_PRICES_FILE")]
    pub prices_file: Option<PathBuf>,

    /// USD the whole fleet may spend per UTC day.
    #[arg(long, env = "AGENTFLEET_BUDGET_DAILY_USD")]
    pub budget_daily_usd: Option<f64>,

    /// USD each tenant (a task's `tenant` metadata) may spend per UTC day.
    #[arg(long, env = "AGENTFLEET_BUDGET_TENANT_DAILY_USD")]
    pub budget_tenant_daily_usd: Option<f64>,

    /// USD one task may spend over all its stages.
    #[arg(long, env = "AGENTFLEET_BUDGET_TASK_USD")]
    pub budget_task_usd: Option<f64>,

    /// Consecutive account failures (401, 403, calls failing with 5xx or no answer) after
    /// which every worker pauses the account; 0 turns account pausing off (a 401 is then
    /// the job's permanent failure).
    #[arg(
        long,
        env = "AGENTFLEET_ACCOUNT_FAILURE_THRESHOLD",
        default_value_t = 3
    )]
    pub account_failure_threshold: u32,

    /// While an account is paused, one probe call this often (seconds) checks whether the
    /// provider accepts it again.
    #[arg(long, env = "AGENTFLEET_ACCOUNT_PROBE_SECS", default_value_t = 10)]
    pub account_probe_secs: u64,

    /// Longest a call waits in process for capacity (ms); a longer wait puts the job back in
    /// the scheduled set, uncounted, freeing its worker slot.
    #[arg(long, env = "AGENTFLEET_LIMIT_WAIT_MS", default_value_t = 1000)]
    pub limit_wait_ms: u64,

    /// Calls are paced this many percent under --rpm/--tpm, so that the jitter between
    /// Redis's clock and the provider's arrival times never makes a minute look over.
    #[arg(long, env = "AGENTFLEET_LIMIT_HEADROOM_PCT", default_value_t = 5.0)]
    pub limit_headroom_pct: f64,
}
