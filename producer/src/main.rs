//! `agentfleet`: the producer CLI. Output is for people by default and JSON with `--json`.
#![forbid(unsafe_code)]

mod bench;
mod dlq;
mod enqueue;
mod inspect;
mod limits;

use std::process::ExitCode;
use std::time::Duration;

use agentfleet_job::exit;
use agentfleet_queue::{
    ConnectOptions, Namespace, Queue, QueueError, RedisArgs, TaskStore, connect,
};
use clap::{Parser, Subcommand};

/// A usage error: bad flags or values, a bad input file, input over a limit (exit 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// An id that does not exist (exit 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

/// Shorthand: `Err(usage!(...))`.
#[macro_export]
macro_rules! usage {
    ($($t:tt)*) => { anyhow::Error::new($crate::Usage(format!($($t)*))) };
}

#[derive(Parser)]
#[command(
    name = "agentfleet",
    version,
    about = "Enqueue agent tasks and watch them run on an agentfleet fleet"
)]
struct Cli {
    #[command(flatten)]
    redis: RedisArgs,

    /// Key prefix of the fleet (as given to its workers).
    #[arg(
        long,
        global = true,
        env = "AGENTFLEET_NAMESPACE",
        default_value = "agentfleet"
    )]
    namespace: String,

    /// Roles of the pipeline, in order: the first receives new tasks.
    #[arg(
        long,
        global = true,
        env = "AGENTFLEET_ROLES",
        value_delimiter = ',',
        default_value = "reasoning,synthesis"
    )]
    roles: Vec<String>,

    /// A worker silent for longer than this is not counted as live (match the workers' flag).
    #[arg(
        long,
        global = true,
        env = "AGENTFLEET_LEASE_TIMEOUT_SECS",
        default_value_t = 30
    )]
    lease_timeout_secs: u64,

    /// Lifetime of task records (match the workers' flag).
    #[arg(long, global = true, env = "AGENTFLEET_RECORD_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    record_ttl_secs: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enqueue tasks: one PROMPT, a JSONL file, or N copies for load generation.
    Enqueue(enqueue::EnqueueArgs),
    /// Show one task's record.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Block until tasks finish. Exit 0 when all are done, 1 if any is dead, 2 on timeout,
    /// 3 if an id is unknown.
    Wait {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Give up after this many seconds (default: wait forever).
        #[arg(long)]
        timeout: Option<u64>,
        /// Print the records as JSON lines instead of the answers.
        #[arg(long)]
        json: bool,
    },
    /// Per role: pending, in flight, scheduled, dead, done, live workers.
    Queues {
        #[arg(long)]
        json: bool,
    },
    /// Dead letters: list, show, replay, purge.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Fleet-wide LLM limits (use, headroom, cooldowns, paused accounts) and budgets.
    Limits {
        #[arg(long)]
        json: bool,
    },
    /// Measure throughput, latency, Redis cost, CPU and memory (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
}

/// What every subcommand works with.
pub struct Fleet {
    pub namespace: Namespace,
    pub store: TaskStore,
    pub roles: Vec<String>,
    pub lease: Duration,
    conn: redis::aio::ConnectionManager,
}

impl Fleet {
    pub fn queue(&self, role: &str) -> anyhow::Result<Queue> {
        if !self.roles.iter().any(|r| r == role) {
            return Err(usage!(
                "unknown role {role:?}: this fleet's roles are {}",
                self.roles.join(", ")
            ));
        }
        Ok(Queue::new(self.conn.clone(), &self.namespace, role)?
            .with_idempotency_ttl(self.store.ttl()))
    }

    pub fn connection(&self) -> redis::aio::ConnectionManager {
        self.conn.clone()
    }

    /// The role that receives new tasks.
    pub fn entry_queue(&self) -> anyhow::Result<Queue> {
        let first = self
            .roles
            .first()
            .ok_or_else(|| usage!("--roles is empty"))?;
        self.queue(first)
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let namespace = Namespace::new(&cli.namespace).map_err(|e| usage!("--namespace: {e}"))?;
    if cli.redis.tls_insecure {
        eprintln!(
            "agentfleet: WARNING: --redis-tls-insecure: Redis's certificate is not verified (development only)"
        );
    }
    let conn = connect(&cli.redis, &ConnectOptions::default())?;
    let fleet = Fleet {
        store: TaskStore::new(
            conn.clone(),
            namespace.clone(),
            Duration::from_secs(cli.record_ttl_secs.max(1)),
        ),
        namespace,
        roles: cli.roles,
        lease: Duration::from_secs(cli.lease_timeout_secs.max(1)),
        conn,
    };
    match cli.command {
        Command::Enqueue(args) => enqueue::run(&fleet, args).await,
        Command::Status { id, json } => inspect::status(&fleet, &id, json).await,
        Command::Wait { ids, timeout, json } => {
            inspect::wait(&fleet, &ids, timeout.map(Duration::from_secs), json).await
        }
        Command::Queues { json } => inspect::queues(&fleet, json).await,
        Command::Dlq(cmd) => dlq::run(&fleet, cmd).await,
        Command::Limits { json } => limits::run(&fleet, json).await,
        // The bench makes its own namespaces (and its own Redis when none answers).
        Command::Bench(args) => bench::run(&cli.redis, args).await,
    }
}

/// The exit code for an error (README, "Exit codes"): the first cause that says.
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<Usage>() || cause.is::<agentfleet_queue::InvalidName>() {
            return exit::USAGE;
        }
        if cause.is::<NotFound>() {
            return exit::NOT_FOUND;
        }
        if cause.is::<redis::RedisError>() {
            return exit::REDIS_UNAVAILABLE;
        }
        if let Some(q) = cause.downcast_ref::<QueueError>() {
            return match q {
                QueueError::Redis(_) => exit::REDIS_UNAVAILABLE,
                QueueError::Config(_) | QueueError::InvalidName(_) => exit::USAGE,
                QueueError::NotFound(_) => exit::NOT_FOUND,
                QueueError::Corrupt { .. } => exit::INTERNAL,
            };
        }
    }
    exit::INTERNAL
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap's own usage code is 2, which here means "timed out".
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let url = cli.redis.url.clone();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            let code = exit_code(&e);
            if code == exit::REDIS_UNAVAILABLE {
                // Say where, without the password.
                eprintln!("agentfleet: {e:#} (Redis at {url})");
            } else {
                eprintln!("agentfleet: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}
