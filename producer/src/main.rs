//! `agentfleet`: the producer CLI. Output is for people by default and JSON with `--json`.
#![forbid(unsafe_code)]

mod bench;
mod dlq;
mod enqueue;
mod inspect;

use std::process::ExitCode;
use std::time::Duration;

use agentfleet_queue::{ConnectOptions, Namespace, Queue, TaskStore, connect};
use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "agentfleet",
    version,
    about = "Enqueue agent tasks and watch them run on an agentfleet fleet"
)]
struct Cli {
    /// Redis the fleet runs on.
    #[arg(
        long,
        global = true,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,

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
    /// Block until tasks finish. Exit 0 when all are done, 1 if any is dead, 2 on timeout.
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
        anyhow::ensure!(
            self.roles.iter().any(|r| r == role),
            "unknown role {role:?}: this fleet's roles are {}",
            self.roles.join(", ")
        );
        Ok(Queue::new(self.conn.clone(), &self.namespace, role)?)
    }

    /// The role that receives new tasks.
    pub fn entry_queue(&self) -> anyhow::Result<Queue> {
        let first = self.roles.first().context("--roles is empty")?;
        self.queue(first)
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let namespace = Namespace::new(&cli.namespace)?;
    let conn = connect(&cli.redis_url, &ConnectOptions::default())
        .with_context(|| format!("cannot use redis at {}", cli.redis_url))?;
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
        // The bench makes its own namespaces (and its own Redis when none answers).
        Command::Bench(args) => bench::run(&cli.redis_url, args).await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentfleet: {e:#}");
            ExitCode::FAILURE
        }
    }
}
