//! `agentfleet`: the producer CLI. Output is for people by default and JSON with `--json`.
#![forbid(unsafe_code)]

mod cancel;
mod dlq;
mod enqueue;
mod inspect;
mod limits;
mod live;
mod progress;
mod review;
mod ui;

use std::process::ExitCode;
use std::time::Duration;

use agentfleet_job::{Pipeline, exit};
use agentfleet_queue::{
    ConnectOptions, LeaseArgs, Namespace, NamespaceArgs, PipelineArgs, Queue, QueueError,
    RecordTtlArgs, RedisArgs, TaskStore, agree_on_pipeline, connect, delete_namespace,
    record_pipeline, recorded_pipeline,
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
    pipeline: PipelineArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enqueue tasks: one PROMPT, a prompt file, a JSONL file, or N copies for load
    /// generation. Prints the task ids on stdout (and a batch id on stderr for several).
    Enqueue(enqueue::EnqueueArgs),
    /// Show one task's record, or a summary of a batch's tasks.
    Status {
        /// The task's id (printed by `enqueue`).
        #[arg(
            value_name = "TASK_ID",
            required_unless_present = "batch",
            conflicts_with = "batch"
        )]
        id: Option<String>,
        /// Summarise a batch instead (its id is printed by `enqueue --file/--count`).
        #[arg(long, value_name = "BATCH_ID")]
        batch: Option<String>,
        /// Print the record as JSON (nested JSON as objects).
        #[arg(long)]
        json: bool,
        /// Show long fields whole (prompt, outputs, answer); on a terminal they are cut.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        ns: NamespaceArgs,
    },
    /// Stop tasks wherever they are: queued or scheduled jobs never run, a running
    /// provider call is aborted within a second, nothing more is chained; the tasks end
    /// `cancelled`. Finished tasks are left as they are (said per id).
    Cancel(cancel::CancelArgs),
    /// Block until tasks finish. Exit 0 when all are done, 1 if any is dead, cancelled or
    /// expired, 2 on timeout, 3 if an id is unknown.
    Wait {
        /// Task ids to wait for.
        #[arg(
            value_name = "TASK_ID",
            required_unless_present = "batch",
            conflicts_with = "batch"
        )]
        ids: Vec<String>,
        /// Wait for every task of this batch instead (prints a summary, not the answers).
        #[arg(long, value_name = "BATCH_ID")]
        batch: Option<String>,
        /// Give up after this many seconds (default: wait forever).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Print the records as JSON lines instead of the answers.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ns: NamespaceArgs,
    },
    /// Per role: pending, in flight, scheduled, dead, done, live workers.
    Queues {
        /// Print the counts as JSON.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Refresh the table every SECS seconds (default 2) with rates per role, until
        /// interrupted.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2",
              value_parser = clap::value_parser!(u64).range(1..=3600))]
        watch: Option<u64>,
        #[command(flatten)]
        ns: NamespaceArgs,
        #[command(flatten)]
        lease: LeaseArgs,
    },
    /// Dead letters: list, show, replay, purge.
    Dlq {
        #[command(flatten)]
        ns: NamespaceArgs,
        #[command(subcommand)]
        cmd: dlq::DlqCommand,
    },
    /// Delete every key of the namespace: queues, records, dead letters, the pipeline (stop
    /// the workers first). Needs an ACL user allowed SCAN and UNLINK.
    DeleteNamespace {
        /// Confirm: this cannot be undone.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        ns: NamespaceArgs,
    },
    /// Show the fleet's pipeline, or change it with `set` (producers and workers given
    /// another are refused until they are restarted with this one).
    Pipeline {
        /// Record this pipeline as the fleet's (e.g. 'reasoning > critique + fact-check > synthesis').
        #[arg(long, value_name = "STAGES")]
        set: Option<String>,
        #[command(flatten)]
        ns: NamespaceArgs,
    },
    /// Fleet-wide LLM limits (use, headroom, cooldowns, paused accounts) and budgets.
    Limits {
        /// Print the limits as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ns: NamespaceArgs,
    },
    /// Measure throughput, latency, Redis cost, CPU and memory (see BENCHMARKS.md).
    Bench(agentfleet_bench::BenchArgs),
    /// Tasks a guardrail parked for review: list, show, approve, reject.
    Review {
        #[command(flatten)]
        ns: NamespaceArgs,
        #[command(subcommand)]
        cmd: review::ReviewCommand,
    },
    /// Live workers from the registry: role, host, version, provider, model, concurrency,
    /// in flight, done, failed, up since, last heartbeat.
    Workers {
        #[command(flatten)]
        ns: NamespaceArgs,
        #[command(flatten)]
        lease: LeaseArgs,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Tasks newest first from the tasks index, filtered by status, metadata, role, age.
    Tasks {
        #[command(flatten)]
        ns: NamespaceArgs,
        #[command(flatten)]
        args: live::TasksArgs,
    },
    /// Lifecycle events as they happen (a line each, and a throughput line per role on a
    /// terminal); `--task` follows one task to its end and exits as `wait` does.
    Watch {
        #[command(flatten)]
        ns: NamespaceArgs,
        #[command(flatten)]
        args: live::WatchArgs,
    },
    /// The web inspector: queues, live workers, tasks and their events, search, dead
    /// letters with replay and purge, live updates. Loopback only unless given a token.
    Ui {
        #[command(flatten)]
        ns: NamespaceArgs,
        #[command(flatten)]
        lease: LeaseArgs,
        #[command(flatten)]
        ttl: RecordTtlArgs,
        #[command(flatten)]
        args: ui::UiArgs,
    },
}

impl Command {
    /// The fleet flags this subcommand takes (`None`: it does not take them, the default
    /// applies).
    fn fleet_args(
        &self,
    ) -> (
        Option<&NamespaceArgs>,
        Option<&LeaseArgs>,
        Option<&RecordTtlArgs>,
    ) {
        match self {
            Command::Enqueue(a) => (Some(&a.ns), None, Some(&a.ttl)),
            Command::Cancel(a) => (Some(&a.ns), None, Some(&a.ttl)),
            Command::Queues { ns, lease, .. } | Command::Workers { ns, lease, .. } => {
                (Some(ns), Some(lease), None)
            }
            Command::Status { ns, .. }
            | Command::Wait { ns, .. }
            | Command::Dlq { ns, .. }
            | Command::DeleteNamespace { ns, .. }
            | Command::Pipeline { ns, .. }
            | Command::Limits { ns, .. }
            | Command::Review { ns, .. }
            | Command::Tasks { ns, .. }
            | Command::Watch { ns, .. } => (Some(ns), None, None),
            Command::Ui { ns, lease, ttl, .. } => (Some(ns), Some(lease), Some(ttl)),
            Command::Bench(_) => (None, None, None),
        }
    }
}

/// What every subcommand works with.
pub struct Fleet {
    pub namespace: Namespace,
    pub store: TaskStore,
    pub pipeline: Pipeline,
    pub lease: Duration,
    /// Shards of every role's queue: what the fleet recorded for readers, `--shards` for a
    /// producer (which must agree with the fleet's, `Fleet::agree`).
    pub shards: usize,
    conn: agentfleet_queue::RedisConnection,
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
            .with_shards(&self.namespace, self.shards)?
            .with_idempotency_ttl(self.store.ttl()))
    }

    pub fn connection(&self) -> agentfleet_queue::RedisConnection {
        self.conn.clone()
    }

    /// Records the fleet's pipeline, or checks that this producer's agrees with it: before
    /// a producer writes anything.
    pub async fn agree(&self) -> anyhow::Result<()> {
        // The shards first: a recorded pipeline without a shard count means one shard.
        agentfleet_queue::agree_on_shards(&self.conn, &self.namespace, self.shards).await?;
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
    // The bench makes its own namespaces (and its own Redis when none answers).
    let Cli {
        redis,
        pipeline: pipeline_args,
        command,
    } = cli;
    let command = match command {
        Command::Bench(args) => return agentfleet_bench::run(&redis, args).await,
        other => other,
    };
    let (ns, lease, ttl) = command.fleet_args();
    let namespace = Namespace::new(ns.map_or("agentfleet", |n| n.namespace.as_str()))
        .map_err(|e| usage!("--namespace: {e}"))?;
    let lease = lease.map_or_else(LeaseArgs::default_lease, LeaseArgs::lease);
    let events_maxlen = ttl.map_or(agentfleet_queue::DEFAULT_EVENTS_MAXLEN, |t| t.events_maxlen);
    let ttl = ttl.map_or_else(RecordTtlArgs::default_record_ttl, RecordTtlArgs::record_ttl);
    if redis.tls_insecure {
        eprintln!(
            "agentfleet: WARNING: --redis-tls-insecure: Redis's certificate is not verified (development only)"
        );
    }
    let conn = connect(&redis, &ConnectOptions::default())?;
    let given = pipeline_args.resolve()?;
    let pipeline = match &command {
        // A producer records the fleet's pipeline, or must agree with it, once its input
        // is checked (`Fleet::agree`).
        Command::Enqueue(_) => given,
        // Deleting needs no pipeline (not even a readable one).
        Command::DeleteNamespace { .. } => given,
        Command::Pipeline {
            set: Some(text), ..
        } => {
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
    let given_shards = ns.map_or(1, |n| n.shards);
    let shards = match &command {
        Command::Enqueue(_) | Command::DeleteNamespace { .. } => given_shards,
        // Readers (and dlq replay, which acts on the shard holding each letter) see every
        // shard the fleet recorded, whatever the flag says.
        _ => agentfleet_queue::recorded_shards(&conn, &namespace)
            .await?
            .unwrap_or(given_shards),
    };
    let fleet = Fleet {
        shards,
        store: TaskStore::new(conn.clone(), namespace.clone(), ttl)
            .with_events_maxlen(events_maxlen),
        namespace,
        pipeline,
        lease,
        conn,
    };
    match command {
        Command::Enqueue(args) => enqueue::run(&fleet, args).await,
        Command::Status {
            id,
            batch,
            json,
            full,
            ..
        } => match (id, batch) {
            (_, Some(batch)) => inspect::batch_status(&fleet, &batch, json).await,
            (Some(id), None) => inspect::status(&fleet, &id, json, full).await,
            (None, None) => Err(usage!("give a TASK_ID or --batch BATCH_ID")),
        },
        Command::Wait {
            ids,
            batch,
            timeout,
            json,
            ..
        } => {
            let timeout = timeout.map(Duration::from_secs);
            match batch {
                Some(batch) => inspect::wait_batch(&fleet, &batch, timeout, json).await,
                None => inspect::wait(&fleet, &ids, timeout, json).await,
            }
        }
        Command::Queues { json, watch, .. } => match watch {
            Some(secs) => inspect::watch_queues(&fleet, Duration::from_secs(secs)).await,
            None => inspect::queues(&fleet, json).await,
        },
        Command::Cancel(args) => cancel::run(&fleet, args).await,
        Command::Dlq { cmd, .. } => dlq::run(&fleet, cmd).await,
        Command::Pipeline { .. } => {
            println!("{}", fleet.pipeline);
            Ok(ExitCode::SUCCESS)
        }
        Command::DeleteNamespace { yes, .. } => {
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
        Command::Limits { json, .. } => limits::run(&fleet, json).await,
        Command::Review { cmd, .. } => review::run(&fleet, cmd).await,
        Command::Workers { json, .. } => live::workers(&fleet, json).await,
        Command::Tasks { args, .. } => live::tasks(&fleet, args).await,
        Command::Watch { args, .. } => live::watch(&fleet, args).await,
        Command::Ui { args, .. } => ui::run(fleet, args, redis.clone()).await,
        Command::Bench(args) => agentfleet_bench::run(&redis, args).await,
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

/// The error and its causes on one line, each said once: the Redis client's errors repeat
/// their source in their own text ("Connection refused (os error 111)" three times).
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        // A reply Redis's protocol cannot parse: the address is some other server's (an
        // HTTP port answers "HTTP/1.1 ..."), which the parser's own words do not say.
        let redis_error = cause.downcast_ref::<redis::RedisError>().or_else(|| {
            match cause.downcast_ref::<QueueError>() {
                Some(QueueError::Redis(r)) => Some(r),
                _ => None,
            }
        });
        if redis_error.is_some_and(|r| r.kind() == redis::ErrorKind::Parse) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str("the server does not speak the Redis protocol (an HTTP or other port?)");
            break;
        }
        let part = cause.to_string();
        // One line: causes that span lines are joined.
        let part = part.split_whitespace().collect::<Vec<_>>().join(" ");
        let part = part.as_str();
        if part.is_empty() || text.contains(part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(part);
    }
    text
}

/// One thread: the CLI is one client awaiting one round trip after another, and on a
/// multi-threaded runtime each of them hops between the main thread and the connection's
/// driver on a worker thread twice (two thread wake-ups per round trip; see BENCHMARKS.md,
/// "Re-measured on a slower machine").
#[tokio::main(flavor = "current_thread")]
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
    let redis = cli.redis.clone();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            let code = exit_code(&e);
            let mut text = describe(&e);
            if code == exit::REDIS_UNAVAILABLE {
                // A cluster that refused every connection says only "no connections found":
                // ask a seed why (a certificate or password names its flag).
                if let Some(refused) = redis.cluster_refusal().await {
                    text = refused.to_string();
                }
            }
            if code == exit::REDIS_UNAVAILABLE {
                // Say where, without the password.
                eprintln!("agentfleet: Redis at {url}: {text}");
            } else {
                eprintln!("agentfleet: {text}");
            }
            ExitCode::from(code)
        }
    }
}
