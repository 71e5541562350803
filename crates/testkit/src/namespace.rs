//! Scratch namespaces: one per test or bench scenario, so that several share one Redis
//! without seeing each other, deleted when they end. Key names come from `crates/queue`
//! ([`Namespace::key_patterns`]); this module only scans and deletes them.

use std::time::Duration;

use agentfleet_queue::{Namespace, RedisArgs};

use crate::{TestkitError, random_suffix};

/// A fresh namespace name: `<prefix>-<random>`.
pub fn scratch_name(prefix: &str) -> String {
    format!("{prefix}-{}", random_suffix(8))
}

/// Every key of `namespace` (SCAN over its key patterns) on one node, on a blocking
/// connection so that it also works from `Drop`.
pub fn namespace_keys(
    conn: &mut redis::Connection,
    namespace: &Namespace,
) -> Result<Vec<String>, TestkitError> {
    let mut keys = Vec::new();
    for pattern in namespace.key_patterns() {
        let iter: redis::Iter<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1_000)
            .clone()
            .iter(conn)?;
        keys.extend(iter.filter_map(Result::ok));
    }
    Ok(keys)
}

/// Every key of `namespace` on the Redis `redis` reaches: on a cluster, on every master.
pub fn all_namespace_keys(
    redis: &RedisArgs,
    namespace: &Namespace,
) -> Result<Vec<String>, TestkitError> {
    let mut keys = Vec::new();
    for client in redis.master_clients()? {
        keys.extend(namespace_keys(&mut node_connection(&client)?, namespace)?);
    }
    Ok(keys)
}

fn node_connection(client: &redis::Client) -> Result<redis::Connection, TestkitError> {
    let conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(conn)
}

/// Deletes every key of `namespace`, on blocking connections of its own (usable from
/// `Drop`, where the async `agentfleet_queue::delete_namespace` cannot run): node by node on
/// a cluster, one `DEL` per key pipelined 1,000 at a time (a cluster refuses one command
/// over several slots). `DEL`, not `UNLINK`: the tests' restricted ACL users are granted it.
/// Returns how many keys were deleted.
pub fn delete_namespace_keys(
    redis: &RedisArgs,
    namespace: &Namespace,
) -> Result<u64, TestkitError> {
    let mut deleted = 0;
    for client in redis.master_clients()? {
        let mut conn = node_connection(&client)?;
        let keys = namespace_keys(&mut conn, namespace)?;
        for chunk in keys.chunks(1_000) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.del(key);
            }
            let counts: Vec<u64> = pipe.query(&mut conn)?;
            deleted += counts.iter().sum::<u64>();
        }
    }
    Ok(deleted)
}

/// A namespace of its own on a (possibly shared) Redis, whose keys are deleted on drop.
/// Stop the processes working in it first: one still running could write again.
pub struct ScratchNamespace {
    namespace: Namespace,
    redis: RedisArgs,
}

impl ScratchNamespace {
    /// `<prefix>-<random>` on the Redis `redis` reaches.
    pub fn new(prefix: &str, redis: RedisArgs) -> Result<Self, TestkitError> {
        Ok(Self {
            namespace: Namespace::new(&scratch_name(prefix))?,
            redis,
        })
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    pub fn redis(&self) -> &RedisArgs {
        &self.redis
    }

    /// Deletes the namespace's keys now (drop does it again, finding none).
    pub fn delete(&self) -> Result<u64, TestkitError> {
        delete_namespace_keys(&self.redis, &self.namespace)
    }
}

impl Drop for ScratchNamespace {
    fn drop(&mut self) {
        // Quietly: a restricted ACL user (or an unreachable Redis) may not scan; whoever
        // must report a failure calls `delete` first.
        let _ = self.delete();
    }
}
