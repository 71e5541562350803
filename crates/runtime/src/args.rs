use std::net::SocketAddr;
use std::time::Duration;

use agentfleet_job::Limits;
use agentfleet_providers::ProviderArgs;
use agentfleet_queue::{FailurePolicy, FleetArgs, PipelineArgs, RedisArgs};
use agentfleet_telemetry::LogFormat;
use clap::Args;

/// Flags of every worker binary. Each is also an environment variable (the Helm chart and
/// docker-compose configure workers that way); `tests/tests/deploy.rs` checks that the
/// deployment files set nothing else.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub pipeline: PipelineArgs,

    #[command(flatten)]
    pub fleet: FleetArgs,

    /// Jobs this process runs at once, 1 or more (LLM calls are I/O: hundreds are fine).
    #[arg(long, env = "AGENTFLEET_CONCURRENCY", value_name = "N", default_value_t = 50,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub concurrency: usize,

    /// Shares of this role's work guaranteed to the lower priority lanes while they have
    /// tasks waiting, in percent (`high` takes the rest first): `normal=10,low=5`.
    #[arg(long, env = "AGENTFLEET_LANE_SHARES", default_value_t = agentfleet_job::LaneShares::default(), value_name = "normal=PCT,low=PCT")]
    pub lane_shares: agentfleet_job::LaneShares,

    /// Name this worker reports (a random suffix is appended to make its id unique);
    /// default: the host name (in Kubernetes, set it to the pod name).
    #[arg(long, env = "AGENTFLEET_WORKER_NAME")]
    pub worker_name: Option<String>,

    /// Address for /metrics, /healthz and /readyz (default: 127.0.0.1:9464 for reasoning,
    /// 127.0.0.1:9465 for synthesis; port 0 picks a free one and logs it).
    #[arg(long, env = "AGENTFLEET_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Deliveries a job gets before it is dead-lettered (crashes count too).
    #[arg(long, env = "AGENTFLEET_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,

    /// First retry waits up to this long (full jitter), doubling per attempt.
    #[arg(long, env = "AGENTFLEET_BACKOFF_BASE_MS", default_value_t = 1000)]
    pub backoff_base_ms: u64,

    /// Longest wait before a retry.
    #[arg(long, env = "AGENTFLEET_BACKOFF_MAX_MS", default_value_t = 300_000)]
    pub backoff_max_ms: u64,

    /// On SIGTERM/SIGINT, how long in-flight jobs may take to finish before they are
    /// handed back to the queue.
    #[arg(long, env = "AGENTFLEET_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Log line format.
    #[arg(
        long,
        env = "AGENTFLEET_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Export spans to this OTLP/HTTP collector (e.g. http://127.0.0.1:4318); off when unset.
    #[arg(long, env = "AGENTFLEET_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Largest prompt (bytes) a task may carry; a larger one is dead-lettered (class
    /// `too_large`) without calling the provider.
    #[arg(long, env = "AGENTFLEET_MAX_PROMPT_BYTES", default_value_t = Limits::DEFAULT_MAX_PROMPT_BYTES)]
    pub max_prompt_bytes: usize,

    /// Most metadata entries a task may carry (more: dead-lettered, `too_large`).
    #[arg(long, env = "AGENTFLEET_MAX_METADATA_ENTRIES", default_value_t = Limits::DEFAULT_MAX_METADATA_ENTRIES)]
    pub max_metadata_entries: usize,

    /// Largest metadata entry, key plus value, in bytes.
    #[arg(long, env = "AGENTFLEET_MAX_METADATA_ENTRY_BYTES", default_value_t = Limits::DEFAULT_MAX_METADATA_ENTRY_BYTES)]
    pub max_metadata_entry_bytes: usize,

    /// Largest provider answer (bytes) a stage stores; a larger one is a permanent error.
    #[arg(long, env = "AGENTFLEET_MAX_OUTPUT_BYTES", default_value_t = Limits::DEFAULT_MAX_OUTPUT_BYTES)]
    pub max_output_bytes: usize,

    /// Guardrails file (TOML): per role, input and output rules, PII masking, and what a
    /// violation does (reject or review); README, "Guardrails and review".
    #[arg(long, env = "AGENTFLEET_GUARDRAILS", value_name = "FILE")]
    pub guardrails: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub provider: ProviderArgs,

    /// Fleet-wide LLM limits and budgets (agentfleet-limits).
    #[command(flatten)]
    pub llm_limits: agentfleet_limits::LimitArgs,
}

/// Parses a role binary's flags. A usage error exits with
/// [`agentfleet_job::exit::USAGE`] (clap's own code, 2, means "timed out" here); `--help`
/// and `--version` exit 0.
pub fn parse_args<P: clap::Parser>() -> P {
    match P::try_parse() {
        Ok(p) => p,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                i32::from(agentfleet_job::exit::USAGE)
            } else {
                0
            })
        }
    }
}

impl WorkerArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_prompt_bytes: self.max_prompt_bytes,
            max_metadata_entries: self.max_metadata_entries,
            max_metadata_entry_bytes: self.max_metadata_entry_bytes,
            max_output_bytes: self.max_output_bytes,
        }
    }

    pub fn lease(&self) -> Duration {
        self.fleet.lease()
    }

    pub fn record_ttl(&self) -> Duration {
        self.fleet.record_ttl()
    }

    pub fn policy(&self) -> FailurePolicy {
        FailurePolicy {
            max_attempts: self.max_attempts.max(1),
            backoff_base: Duration::from_millis(self.backoff_base_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms.max(self.backoff_base_ms)),
        }
    }
}
