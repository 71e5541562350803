//! `agentfleet`: the producer CLI. Output is for people by default and JSON with `--json`.
#![forbid(unsafe_code)]

mod cancel;
mod dlq;
mod enqueue;
mod inspect;
mod limits;
mod live;
mod review;
mod ui;

use std::process::ExitCode;
use std::time::Duration;

use agentfleet_job::{Pipeline, exit};
use agentfleet_queue::{
    ConnectOptions, FleetArgs, Namespace, PipelineArgs, Queue, QueueError, RedisArgs, TaskStore,
    agree_on_pipeline, connect, delete_namespace, record_pipeline, recorded_pipeline,
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

    #[command(flatten)]
    fleet: FleetArgs,

    #[command(flatten)]
    pipeline: PipelineArgs,

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
    /// Stop tasks wherever they are: queued or scheduled jobs never run, a running
    /// provider call is aborted within a second, nothing more is chained; the tasks end
    /// `cancelled`. Finished tasks are left as they are (said per id).
    Cancel(cancel::CancelArgs),
    /// Block until tasks finish. Exit 0 when all are done, 1 if any is dead, cancelled or
    /// expired, 2 on timeout, 3 if an id is unknown.
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
    /// Delete every key of the namespace: queues, records, dead letters, the pipeline (stop
    /// the workers first). Needs an ACL user allowed SCAN and UNLINK.
    DeleteNamespace {
        /// Confirm: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Show the fleet's pipeline, or change it with `set` (producers and workers given
    /// another are refused until they are restarted with this one).
    Pipeline {
        /// Record this pipeline as the fleet's (e.g. 'reasoning > critique + fact-check > synthesis').
        #[arg(long, value_name = "STAGES")]
        set: Option<String>,
    },
    /// Fleet-wide LLM limits (use, headroom, cooldowns, paused accounts) and budgets.
    Limits {
        #[arg(long)]
        json: bool,
    },
    /// Measure throughput, latency, Redis cost, CPU and memory (see BENCHMARKS.md).
    Bench(agentfleet_bench::BenchArgs),
    /// Tasks a guardrail parked for review: list, show, approve, reject.
    #[command(subcommand)]
    Review(review::ReviewCommand),
    /// Live workers from the registry: role, host, version, provider, model, concurrency,
    /// in flight, done, failed, up since, last heartbeat.
    Workers {
        #[arg(long)]
        json: bool,
    },
    /// Tasks newest first from the tasks index, filtered by status, metadata, role, age.
    Tasks(live::TasksArgs),
    /// Lifecycle events as they happen (a line each, and a throughput line per role on a
    /// terminal); `--task` follows one task to its end and exits as `wait` does.
    Watch(live::WatchArgs),
    /// The web inspector: queues, live workers, tasks and their events, search, dead
    /// letters with replay and purge, live updates. Loopback only unless given a token.
    Ui(ui::UiArgs),
}

/// What every subcommand works with.
pub struct Fleet {
    pub namespace: Namespace,
    pub store: TaskStore,
    pub pipeline: Pipeline,
    pub lease: Duration,
    conn: redis::aio::ConnectionManager,
}

impl Fleet {
    pub fn queue(&self, role: &str) -> anyhow::Result<Queue> {
        if self.pipeline.stage_of(role).is_none() {
            return Err(usage!(
                "unknown role {role:?}: this fleet's roles are {}",
                self.pipeline.roles().collect::<Vec<_>>().join(", ")
            ));
        }
        Ok(Queue::new(self.conn.clone(), &self.namespace, role)?
            .with_idempotency_ttl(self.store.ttl()))
    }

    pub fn connection(&self) -> redis::aio::ConnectionManager {
        self.conn.clone()
    }

    /// Records the fleet's pipeline, or checks that this producer's agrees with it: before
    /// a producer writes anything.
    pub async fn agree(&self) -> anyhow::Result<()> {
        agree_on_pipeline(&self.conn, &self.namespace, &self.pipeline).await?;
        Ok(())
    }

    /// The queues of the roles that receive new tasks (several when the first stage runs
    /// roles in parallel).
    pub fn entry_queues(&self) -> anyhow::Result<Vec<Queue>> {
        self.pipeline
            .first()
            .iter()
            .map(|role| self.queue(role))
            .collect()
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let namespace = Namespace::new(&cli.fleet.namespace).map_err(|e| usage!("--namespace: {e}"))?;
    if cli.redis.tls_insecure {
        eprintln!(
            "agentfleet: WARNING: --redis-tls-insecure: Redis's certificate is not verified (development only)"
        );
    }
    let conn = connect(&cli.redis, &ConnectOptions::default())?;
    let given = cli.pipeline.resolve()?;
    let pipeline = match &cli.command {
        // A producer records the fleet's pipeline, or must agree with it, once its input
        // is checked (`Fleet::agree`).
        Command::Enqueue(_) => given,
        // Deleting needs no pipeline (not even a readable one).
        Command::DeleteNamespace { .. } => given,
        Command::Pipeline { set: Some(text) } => {
            let pipeline: Pipeline = text.parse().map_err(|e| usage!("--set {text:?}: {e}"))?;
            record_pipeline(&conn, &namespace, &pipeline).await?;
            println!("{pipeline}");
            return Ok(ExitCode::SUCCESS);
        }
        // Readers use what the fleet recorded, so that no flag is needed to see every role.
        _ => match recorded_pipeline(&conn, &namespace).await? {
            Some(text) => text.parse().map_err(|e| {
                anyhow::Error::new(QueueError::Corrupt {
                    key: namespace.pipeline(),
                    reason: format!("{e}"),
                })
            })?,
            None => given,
        },
    };
    let fleet = Fleet {
        store: TaskStore::new(conn.clone(), namespace.clone(), cli.fleet.record_ttl())
            .with_events_maxlen(cli.fleet.events_maxlen),
        namespace,
        pipeline,
        lease: cli.fleet.lease(),
        conn,
    };
    match cli.command {
        Command::Enqueue(args) => enqueue::run(&fleet, args).await,
        Command::Status { id, json } => inspect::status(&fleet, &id, json).await,
        Command::Wait { ids, timeout, json } => {
            inspect::wait(&fleet, &ids, timeout.map(Duration::from_secs), json).await
        }
        Command::Queues { json } => inspect::queues(&fleet, json).await,
        Command::Cancel(args) => cancel::run(&fleet, args).await,
        Command::Dlq(cmd) => dlq::run(&fleet, cmd).await,
        Command::Pipeline { .. } => {
            println!("{}", fleet.pipeline);
            Ok(ExitCode::SUCCESS)
        }
        Command::DeleteNamespace { yes } => {
            if !yes {
                return Err(usage!(
                    "deleting namespace {} removes every task, queue and dead letter of it: add --yes to confirm",
                    fleet.namespace
                ));
            }
            let deleted = delete_namespace(&fleet.conn, &fleet.namespace).await?;
            println!("deleted {deleted} keys of namespace {}", fleet.namespace);
            Ok(ExitCode::SUCCESS)
        }
        Command::Limits { json } => limits::run(&fleet, json).await,
        Command::Review(cmd) => review::run(&fleet, cmd).await,
        Command::Workers { json } => live::workers(&fleet, json).await,
        Command::Tasks(args) => live::tasks(&fleet, args).await,
        Command::Watch(args) => live::watch(&fleet, args).await,
        Command::Ui(args) => ui::run(fleet, args, cli.redis.clone()).await,
        // The bench makes its own namespaces (and its own Redis when none answers).
        Command::Bench(args) => agentfleet_bench::run(&cli.redis, args).await,
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
