//! What every process of a fleet must be told alike: its namespace, lease and record
//! lifetime (`FleetArgs`, the defaults' one home), and its pipeline (`PipelineArgs`), which
//! the fleet also agrees on in Redis.

use std::path::PathBuf;
use std::time::Duration;

use crate::RedisConnection;
use agentfleet_job::{DEFAULT_PIPELINE, Pipeline};
use redis::AsyncCommands;

use crate::{Namespace, QueueError};

/// Default of `--lease-timeout-secs` (the one place it is written).
pub const DEFAULT_LEASE_TIMEOUT_SECS: u64 = 30;
/// Default of `--record-ttl-secs`: a week (the one place it is written).
pub const DEFAULT_RECORD_TTL_SECS: u64 = 7 * 24 * 3600;

/// The settings producers and workers of one fleet must share: the same flags, and the one
/// place their defaults are written. Workers take all three; the CLI flattens only the
/// groups a subcommand uses (so its `--help` shows nothing it ignores).
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    #[command(flatten)]
    pub namespace: NamespaceArgs,
    #[command(flatten)]
    pub lease: LeaseArgs,
    #[command(flatten)]
    pub record_ttl: RecordTtlArgs,
}

/// Which fleet: the prefix of its keys.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Fleet")]
pub struct NamespaceArgs {
    /// Prefix of every Redis key, so several fleets (or test runs) share one Redis.
    #[arg(
        long,
        global = true,
        env = "AGENTFLEET_NAMESPACE",
        value_name = "NAME",
        default_value = "agentfleet"
    )]
    pub namespace: String,

    /// Shards of every role's queue (one value for the whole fleet, all roles). Each shard
    /// is a hash tag of its own (its own Redis Cluster slot), so a busy role's queue spreads
    /// over the cluster's masters; a task's jobs go to the shard its id hashes to, and
    /// workers take from every shard. FIFO holds per shard only. Every producer and worker
    /// of a fleet must give the same value (the first records it; another is refused), and
    /// it must not change while the fleet has work: drain first.
    #[arg(
        long,
        global = true,
        env = "AGENTFLEET_SHARDS",
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_SHARDS as u64)
    )]
    pub shards: usize,
}

/// Most shards a role's queue may have (`--shards`): a worker keeps a blocking connection
/// per shard.
pub const MAX_SHARDS: usize = 64;

/// How long a silent worker is trusted.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Fleet")]
pub struct LeaseArgs {
    /// A worker silent (no heartbeat) for this long is presumed dead and its jobs are
    /// re-run by others; the CLI counts live workers by it.
    #[arg(
        long,
        global = true,
        env = "AGENTFLEET_LEASE_TIMEOUT_SECS",
        value_name = "SECS",
        default_value_t = DEFAULT_LEASE_TIMEOUT_SECS
    )]
    pub lease_timeout_secs: u64,
}

/// How long what a task leaves behind lives.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Fleet")]
pub struct RecordTtlArgs {
    /// Lifetime of task records, batches, dead letters and idempotency keys.
    #[arg(
        long,
        global = true,
        env = "AGENTFLEET_RECORD_TTL_SECS",
        value_name = "SECS",
        default_value_t = DEFAULT_RECORD_TTL_SECS
    )]
    pub record_ttl_secs: u64,

    /// Cap of the lifecycle event stream (`<namespace>:events`, trimmed approximately to
    /// this many events); 0 turns events off. Every process of a fleet should agree.
    #[arg(
        long,
        global = true,
        env = "AGENTFLEET_EVENTS_MAXLEN",
        value_name = "N",
        default_value_t = crate::DEFAULT_EVENTS_MAXLEN
    )]
    pub events_maxlen: u64,
}

impl NamespaceArgs {
    pub fn namespace(&self) -> Result<Namespace, QueueError> {
        Ok(Namespace::new(&self.namespace)?)
    }
}

impl LeaseArgs {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_timeout_secs.max(1))
    }

    /// The lease when no flag was given (a subcommand that does not take it).
    pub fn default_lease() -> Duration {
        Duration::from_secs(DEFAULT_LEASE_TIMEOUT_SECS)
    }
}

impl RecordTtlArgs {
    pub fn record_ttl(&self) -> Duration {
        Duration::from_secs(self.record_ttl_secs.max(1))
    }

    /// The lifetime when no flag was given (a subcommand that writes no record).
    pub fn default_record_ttl() -> Duration {
        Duration::from_secs(DEFAULT_RECORD_TTL_SECS)
    }
}

impl FleetArgs {
    pub fn namespace(&self) -> Result<Namespace, QueueError> {
        self.namespace.namespace()
    }

    pub fn lease(&self) -> Duration {
        self.lease.lease()
    }

    pub fn record_ttl(&self) -> Duration {
        self.record_ttl.record_ttl()
    }
}

/// How a producer or a worker is told the pipeline: the same flags for both.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Fleet")]
pub struct PipelineArgs {
    /// The pipeline's stages in order: `>` separates stages, `+` roles that run in parallel
    /// on the same input (joined before the next stage). The last stage is one role: its
    /// output is the answer.
    #[arg(
        long,
        global = true,
        env = "AGENTFLEET_PIPELINE",
        value_name = "STAGES",
        default_value = DEFAULT_PIPELINE
    )]
    pub pipeline: String,

    /// Read the pipeline from this file instead (the same syntax; lines are joined, `#`
    /// starts a comment).
    #[arg(
        long,
        global = true,
        env = "AGENTFLEET_PIPELINE_FILE",
        value_name = "PATH"
    )]
    pub pipeline_file: Option<PathBuf>,
}

impl PipelineArgs {
    /// The pipeline these flags give. Errors name the flag.
    pub fn resolve(&self) -> Result<Pipeline, QueueError> {
        let (text, from) = match &self.pipeline_file {
            Some(path) => {
                let raw = std::fs::read_to_string(path).map_err(|e| {
                    QueueError::Config(format!("--pipeline-file {}: {e}", path.display()))
                })?;
                let joined: Vec<&str> = raw
                    .lines()
                    .map(|l| l.split('#').next().unwrap_or_default().trim())
                    .filter(|l| !l.is_empty())
                    .collect();
                (joined.join(" "), "--pipeline-file")
            }
            None => (self.pipeline.clone(), "--pipeline"),
        };
        text.parse()
            .map_err(|e| QueueError::Config(format!("{from} {text:?}: {e}")))
    }
}

/// Makes sure this process and the fleet agree on the pipeline: the first producer or worker
/// of a namespace records it (`<namespace>:pipeline`); every later one must give the same
/// (canonical form), or it is refused, since a producer and workers that disagree would
/// strand tasks between stages. `agentfleet pipeline set` changes it on purpose.
pub async fn agree_on_pipeline(
    conn: &RedisConnection,
    namespace: &Namespace,
    pipeline: &Pipeline,
) -> Result<(), QueueError> {
    let mut conn = conn.clone();
    let key = namespace.pipeline();
    let given = pipeline.to_string();
    // `SET .. NX` rather than SETNX: one command the ACL rules already grant.
    let (_, stored): (Option<String>, String) = redis::pipe()
        .cmd("SET")
        .arg(&key)
        .arg(&given)
        .arg("NX")
        .get(&key)
        .query_async(&mut conn)
        .await?;
    if stored != given {
        return Err(QueueError::Config(format!(
            "this fleet's pipeline is {stored:?} but this process was given {given:?} (--pipeline / AGENTFLEET_PIPELINE); give the same, or change the fleet's with `agentfleet pipeline set`"
        )));
    }
    Ok(())
}

/// Makes sure this process and the fleet agree on the shard count (`--shards`), before it
/// agrees on the pipeline: the first producer or worker with N > 1 records N
/// (`<namespace>:shards`); a later one with another count is refused, since it would push
/// to or take from other shards than the fleet's (entries of a dropped shard would be
/// stranded). No key means 1, so a one-shard fleet keeps exactly its keys: a process with
/// N > 1 that finds no key but a recorded pipeline joins a fleet that has run with one
/// shard, and is refused too.
pub async fn agree_on_shards(
    conn: &RedisConnection,
    namespace: &Namespace,
    shards: usize,
) -> Result<(), QueueError> {
    let mut conn = conn.clone();
    let key = namespace.shards();
    let refused = |stored: &str| {
        QueueError::Config(format!(
            "this fleet has {stored} shards per queue but this process was given {shards} (--shards / AGENTFLEET_SHARDS); give the same (changing it strands the entries of dropped shards: drain the fleet, stop every process, then `SET {key} N`, or DEL it for 1)"
        ))
    };
    let (stored, ran): (Option<String>, bool) = redis::pipe()
        .get(&key)
        .exists(namespace.pipeline())
        .query_async(&mut conn)
        .await?;
    match stored {
        Some(stored) if stored == shards.to_string() => Ok(()),
        Some(stored) => Err(refused(&stored)),
        None if shards == 1 => Ok(()),
        None if ran => Err(refused("1")),
        None => {
            // `SET .. NX` rather than SETNX: one command the ACL rules already grant.
            let (_, stored): (Option<String>, String) = redis::pipe()
                .cmd("SET")
                .arg(&key)
                .arg(shards)
                .arg("NX")
                .get(&key)
                .query_async(&mut conn)
                .await?;
            if stored == shards.to_string() {
                Ok(())
            } else {
                Err(refused(&stored))
            }
        }
    }
}

/// The fleet's recorded shard count, if any process recorded one yet.
pub async fn recorded_shards(
    conn: &RedisConnection,
    namespace: &Namespace,
) -> Result<Option<usize>, QueueError> {
    let raw: Option<String> = conn.clone().get(namespace.shards()).await?;
    raw.map(|text| {
        text.parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_SHARDS).contains(n))
            .ok_or_else(|| QueueError::Corrupt {
                key: namespace.shards(),
                reason: format!("not a shard count: {text:?}"),
            })
    })
    .transpose()
}

/// The fleet's recorded pipeline, if any process recorded one yet.
pub async fn recorded_pipeline(
    conn: &RedisConnection,
    namespace: &Namespace,
) -> Result<Option<String>, QueueError> {
    Ok(conn.clone().get(namespace.pipeline()).await?)
}

/// Records `pipeline` as the fleet's, replacing what was there (an operator's decision).
pub async fn record_pipeline(
    conn: &RedisConnection,
    namespace: &Namespace,
    pipeline: &Pipeline,
) -> Result<(), QueueError> {
    let _: () = conn
        .clone()
        .set(namespace.pipeline(), pipeline.to_string())
        .await?;
    Ok(())
}

/// Deletes every key of a namespace (queues, records, dead letters, the pipeline): for tests,
/// benchmarks and an operator tearing a fleet down. `SCAN` + `UNLINK`, 1,000 keys at a time,
/// so Redis never blocks on it. Returns how many keys were deleted.
pub async fn delete_namespace(
    conn: &RedisConnection,
    namespace: &Namespace,
) -> Result<u64, QueueError> {
    let mut deleted = 0;
    for pattern in namespace.key_patterns() {
        let keys = conn.scan_match(&pattern).await?;
        for chunk in keys.chunks(1_000) {
            // On a cluster the connection splits a multi-key UNLINK by slot.
            deleted += redis::cmd("UNLINK")
                .arg(chunk)
                .query_async::<u64>(&mut conn.clone())
                .await?;
        }
    }
    Ok(deleted)
}
