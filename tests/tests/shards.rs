//! Sharded queues (`--shards N`): real workers and the CLI on one Redis.

use std::time::Duration;

use agentfleet_e2e::{Fleet, wait_until};
use agentfleet_job::TaskStatus;
use redis::Commands;

/// A counter of one shard's stats hash (`succeeded`, `recovered`, ...), straight from Redis.
fn shard_stat(fleet: &Fleet, role: &str, shard: usize, field: &str) -> u64 {
    let key = fleet
        .ns()
        .queue_shard(role, shard)
        .expect("a valid role")
        .stats();
    let n: Option<u64> = fleet.conn().hget(key, field).expect("read stats");
    n.unwrap_or(0)
}

/// The per-shard breakdown `queues --json` adds for a sharded fleet.
fn per_shard(counts: &serde_json::Value, role_index: usize, field: &str) -> Vec<u64> {
    counts[role_index]["shards"]
        .as_array()
        .expect("a per-shard breakdown")
        .iter()
        .map(|s| s[field].as_u64().unwrap_or(0))
        .collect()
}

#[test]
fn three_shards_spread_the_work_and_the_counts_sum() {
    let fleet = Fleet::new("shards3").with_shards(3);
    let _r1 = fleet.worker("reasoning").arg("--concurrency", 16).spawn();
    let _r2 = fleet.worker("reasoning").arg("--concurrency", 16).spawn();
    let _s1 = fleet.worker("synthesis").arg("--concurrency", 16).spawn();
    let _s2 = fleet.worker("synthesis").arg("--concurrency", 16).spawn();
    let ids = fleet.enqueue_many(300, "Sharded work");
    assert_eq!(ids.len(), 300);
    assert!(
        wait_until(Duration::from_secs(60), || fleet
            .count_status(&ids, TaskStatus::Done)
            == 300),
        "not all tasks finished: {:?}",
        fleet.queue_counts()
    );
    let counts = fleet.settled_counts();
    for (i, role) in ["reasoning", "synthesis"].into_iter().enumerate() {
        assert_eq!(counts[i]["done"], 300, "{role}: {counts}");
        let done = per_shard(&counts, i, "done");
        assert_eq!(done.len(), 3, "{counts}");
        assert_eq!(done.iter().sum::<u64>(), 300, "{role}: {done:?}");
        for (shard, n) in done.iter().enumerate() {
            // FNV-1a over 300 random ids: each shard gets about 100.
            assert!(*n >= 50, "{role} shard {shard} got only {n}: {done:?}");
            assert_eq!(*n, shard_stat(&fleet, role, shard, "succeeded"));
        }
        assert_eq!(counts[i]["live_workers"].as_array().map(Vec::len), Some(2));
    }
    // Shard k >= 1 has a hash tag of its own.
    let keys = fleet.keys();
    for shard in 1..3 {
        let tag = format!("{{{}:reasoning:{shard}}}:", fleet.namespace);
        assert!(
            keys.iter().any(|k| k.starts_with(&tag)),
            "no key of {tag}: {keys:?}"
        );
    }
    // The table sums the shards too.
    let table = fleet.cli_ok(&["queues"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("reasoning") && l.contains(" 300 ")),
        "{table}"
    );
}

#[test]
fn a_process_with_another_shard_count_is_refused() {
    let fleet = Fleet::new("shards-mismatch").with_shards(3);
    // The first producer records the fleet's count.
    fleet.enqueue_many(1, "first");
    let mut worker = fleet.worker("reasoning").arg("--shards", 2).start();
    let code = worker.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(Some(64)), "{}", worker.log());
    let log = worker.log();
    assert!(
        log.contains("3 shards") && log.contains("given 2"),
        "the error names both counts: {log}"
    );
    // A fleet that has run with one shard records no count: joining it with 2 is refused.
    let single = Fleet::new("shards-was-one");
    single.enqueue_many(1, "first");
    assert!(
        !single.keys().iter().any(|k| k == &single.ns().shards()),
        "a one-shard fleet keeps its keys"
    );
    let mut joining = single.worker("reasoning").arg("--shards", 2).start();
    assert_eq!(
        joining.wait_exit(Duration::from_secs(10)),
        Some(Some(64)),
        "{}",
        joining.log()
    );
    assert!(
        joining.log().contains("1 shards") && joining.log().contains("given 2"),
        "{}",
        joining.log()
    );
    let out = fleet.cli_with(&["enqueue", "x"], &[("AGENTFLEET_SHARDS", "5")]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("3 shards") && stderr.contains("given 5"),
        "{stderr}"
    );
}

#[test]
fn a_killed_worker_s_jobs_on_every_shard_are_recovered() {
    let fleet = Fleet::new("shards-kill9").with_shards(2);
    let mut doomed = fleet
        .worker("reasoning")
        .arg("--concurrency", 40)
        .arg("--mock-latency-ms", 30_000)
        .arg("--lease-timeout-secs", 2)
        .spawn();
    let ids = fleet.enqueue_many(40, "crash");
    assert!(
        wait_until(
            Duration::from_secs(10),
            || fleet.queue_counts()[0]["in_flight"] == 40
        ),
        "{:?}",
        fleet.queue_counts()
    );
    let held = per_shard(&fleet.queue_counts(), 0, "in_flight");
    assert!(
        held.iter().all(|n| *n > 0),
        "the worker holds jobs of both shards: {held:?}"
    );
    doomed.kill9();
    let _survivor = fleet
        .worker("reasoning")
        .arg("--concurrency", 40)
        .arg("--lease-timeout-secs", 2)
        .spawn();
    let _s = fleet.worker("synthesis").spawn();
    assert!(
        wait_until(Duration::from_secs(30), || fleet
            .count_status(&ids, TaskStatus::Done)
            == 40),
        "{:?}",
        fleet.queue_counts()
    );
    let counts = fleet.settled_counts();
    assert_eq!(counts[0]["recovered"], 40, "{counts}");
    assert_eq!(per_shard(&counts, 0, "recovered"), held, "{counts}");
    assert_eq!(counts[1]["done"], 40, "{counts}");
}

#[test]
fn dead_letters_are_listed_across_shards_and_replayed_from_theirs() {
    let fleet = Fleet::new("shards-dlq").with_shards(2);
    let failing = fleet
        .worker("reasoning")
        .arg("--mock-fail-rate", 1)
        .arg("--mock-fail-kind", "permanent")
        .spawn();
    let ids = fleet.enqueue_many(12, "doomed");
    assert!(wait_until(Duration::from_secs(15), || fleet
        .count_status(&ids, TaskStatus::Dead)
        == 12));
    drop(failing);
    let ns = fleet.ns();
    let on_shard = |id: &String, shard: usize| -> bool {
        let key = ns.queue_shard("reasoning", shard).expect("role").dead();
        fleet.conn().hexists(key, id).expect("read dead letters")
    };
    let on_one: Vec<&String> = ids.iter().filter(|id| on_shard(id, 1)).collect();
    let on_zero = ids.iter().filter(|id| on_shard(id, 0)).count();
    assert!(
        !on_one.is_empty() && on_zero > 0 && on_zero + on_one.len() == 12,
        "dead letters on both shards: {} on 0, {} on 1",
        on_zero,
        on_one.len()
    );
    // One listing across both shards.
    let listed: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["dlq", "list", "reasoning", "--json"]))
            .expect("dlq list --json");
    let listed = listed.as_array().expect("a list");
    assert_eq!(listed.len(), 12);
    let mut listed_ids: Vec<&str> = listed
        .iter()
        .map(|l| l["job_id"].as_str().unwrap_or_default())
        .collect();
    listed_ids.sort_unstable();
    let mut all: Vec<&str> = ids.iter().map(String::as_str).collect();
    all.sort_unstable();
    assert_eq!(listed_ids, all);
    assert_eq!(fleet.queue_counts()[0]["dead"], 12);
    // Replaying a letter of shard 1 puts its job back on shard 1.
    let id = on_one[0].clone();
    assert!(
        fleet
            .cli_ok(&["dlq", "replay", "reasoning", &id])
            .contains("replayed 1")
    );
    assert!(!on_shard(&id, 1));
    let pending_1: u64 = fleet
        .conn()
        .llen(ns.queue_shard("reasoning", 1).expect("role").pending())
        .expect("read pending");
    assert_eq!(pending_1, 1);
    let counts = fleet.queue_counts();
    assert_eq!(counts[0]["dead"], 11);
    assert_eq!(counts[0]["pending"], 1);
    // Purge finds the rest wherever they are.
    assert!(
        fleet
            .cli_ok(&["dlq", "purge", "reasoning", "--all", "--yes"])
            .contains("purged 11")
    );
    assert_eq!(fleet.queue_counts()[0]["dead"], 0);
}

/// The local Redis Cluster (3 masters, `scripts/redis-cluster.sh`), started if it is not up:
/// its seed list and a connection to its first node.
fn local_cluster() -> (String, redis::Connection) {
    let script = |what: &str| {
        let out = std::process::Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../scripts/redis-cluster.sh"
            ))
            .arg(what)
            .output()
            .expect("run scripts/redis-cluster.sh");
        assert!(
            out.status.success(),
            "redis-cluster.sh {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    script("start");
    let seeds = script("seeds");
    let first = seeds.split(',').next().expect("a seed").to_owned();
    let conn = redis::Client::open(first)
        .and_then(|c| c.get_connection())
        .expect("reach the cluster's first node");
    (seeds, conn)
}

/// Slot ranges of the cluster's masters: (first slot, last slot, master port).
fn slot_masters(conn: &mut redis::Connection) -> Vec<(u16, u16, u16)> {
    let slots: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(conn)
        .expect("CLUSTER SLOTS");
    slots
        .into_iter()
        .map(|range| {
            let start: u16 = redis::from_redis_value(range[0].clone()).expect("start slot");
            let end: u16 = redis::from_redis_value(range[1].clone()).expect("end slot");
            let master: Vec<redis::Value> =
                redis::from_redis_value(range[2].clone()).expect("master");
            let port: u16 = redis::from_redis_value(master[1].clone()).expect("port");
            (start, end, port)
        })
        .collect()
}

fn master_of(conn: &mut redis::Connection, masters: &[(u16, u16, u16)], key: &str) -> u16 {
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(conn)
        .expect("CLUSTER KEYSLOT");
    masters
        .iter()
        .find(|(start, end, _)| (*start..=*end).contains(&slot))
        .map(|(_, _, port)| *port)
        .expect("every slot has a master")
}

#[test]
fn on_a_cluster_the_shards_of_a_role_live_on_different_masters_and_all_work_is_done() {
    let (seeds, mut node) = local_cluster();
    let masters = slot_masters(&mut node);
    let roles = ["reasoning", "synthesis"];
    // A namespace whose 3 shards of each role hash to 3 different masters.
    let fleet = (0..1_000)
        .map(|_| Fleet::with("shards-cl", agentfleet_queue::RedisArgs::cluster(&seeds)))
        .find(|fleet| {
            roles.iter().all(|role| {
                let mut on: Vec<u16> = (0..3)
                    .map(|k| {
                        let keys = fleet.ns().queue_shard(role, k).expect("role");
                        master_of(&mut node, &masters, &keys.pending())
                    })
                    .collect();
                on.sort_unstable();
                on.dedup();
                on.len() == 3
            })
        })
        .expect("a namespace spreading the shards over the masters")
        .with_shards(3);
    for role in roles {
        for k in 0..3 {
            let keys = fleet.ns().queue_shard(role, k).expect("role");
            let slots: Vec<u16> = [keys.pending(), keys.inflight("w"), keys.dead(), keys.wake()]
                .iter()
                .map(|key| {
                    redis::cmd("CLUSTER")
                        .arg("KEYSLOT")
                        .arg(key)
                        .query(&mut node)
                        .expect("CLUSTER KEYSLOT")
                })
                .collect();
            assert!(
                slots.windows(2).all(|w| w[0] == w[1]),
                "{role} {k}: {slots:?}"
            );
        }
    }
    let _r1 = fleet.worker("reasoning").arg("--concurrency", 50).spawn();
    let _r2 = fleet.worker("reasoning").arg("--concurrency", 50).spawn();
    let _s1 = fleet.worker("synthesis").arg("--concurrency", 50).spawn();
    let _s2 = fleet.worker("synthesis").arg("--concurrency", 50).spawn();
    let ids = fleet.enqueue_many(2_000, "On a cluster");
    assert_eq!(ids.len(), 2_000);
    assert!(
        wait_until(Duration::from_secs(120), || fleet.queue_counts()[1]["done"]
            == 2_000),
        "not all tasks finished: {:?}\n{}",
        fleet.queue_counts(),
        fleet.cli_ok(&["dlq", "list", "--limit", "5"])
    );
    let counts = fleet.settled_counts();
    for i in 0..2 {
        assert_eq!(counts[i]["done"], 2_000, "{counts}");
        let done = per_shard(&counts, i, "done");
        assert!(done.iter().all(|n| *n > 400), "{done:?}");
    }
    for id in ids.iter().step_by(200) {
        assert_eq!(fleet.record(id).status, TaskStatus::Done);
    }
}
