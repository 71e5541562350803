//! agentfleet on Redis Cluster (issue "Outgrow one Redis"): the local cluster `make test`
//! starts (scripts/redis-cluster.sh: three masters, one replica each), and for the test that
//! kills a master, a cluster of its own.

use std::time::{Duration, Instant};

use agentfleet_e2e::{Certs, Fleet, PrivateCluster, wait_until};
use agentfleet_job::TaskStatus;
use agentfleet_queue::RedisArgs;

/// The shared local cluster's seeds (`AGENTFLEET_TEST_REDIS_CLUSTER`, or the script's).
fn shared_cluster() -> RedisArgs {
    let seeds = std::env::var(agentfleet_e2e::CLUSTER_ENV)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002".to_owned()
        });
    RedisArgs::cluster(seeds)
}

fn in_flight(fleet: &Fleet, role: &str) -> u64 {
    fleet
        .queue_counts()
        .as_array()
        .and_then(|roles| roles.iter().find(|r| r["role"] == role))
        .and_then(|r| r["in_flight"].as_u64())
        .unwrap_or(0)
}

/// Waits until every task of `ids` is done; fails with the queues' counts otherwise.
fn wait_all_done(fleet: &Fleet, ids: &[String], timeout: Duration) {
    assert!(
        wait_until(timeout, || fleet.count_status(ids, TaskStatus::Done)
            == ids.len()),
        "{:?}",
        fleet.queue_counts()
    );
}

#[test]
fn the_pipeline_runs_on_the_cluster() {
    let fleet = Fleet::with("cl-pipe", shared_cluster());
    let _r1 = fleet.worker("reasoning").arg("--concurrency", 50).spawn();
    let _r2 = fleet.worker("reasoning").arg("--concurrency", 50).spawn();
    let _s1 = fleet.worker("synthesis").arg("--concurrency", 50).spawn();
    let _s2 = fleet.worker("synthesis").arg("--concurrency", 50).spawn();
    let ids = fleet.enqueue_many(2_000, "cluster");
    wait_all_done(&fleet, &ids, Duration::from_secs(60));
    let counts = fleet.settled_counts();
    for role in counts.as_array().unwrap() {
        assert_eq!(role["done"], 2_000, "{counts:?}");
        assert_eq!(role["dead"], 0, "{counts:?}");
    }
    let record = fleet.record(&ids[0]);
    assert!(record.answer.is_some_and(|a| !a.is_empty()));
    // The queue keys of a role share one slot: each script's keys are co-located.
    let keys = fleet.keys();
    let tag = format!("{{{}:reasoning}}", fleet.namespace);
    assert!(keys.iter().any(|k| k.starts_with(&tag)), "{keys:?}");
}

#[test]
fn a_worker_killed_on_the_cluster_has_its_jobs_recovered_within_the_lease() {
    let fleet = Fleet::with("cl-kill9", shared_cluster());
    let mut doomed = fleet
        .worker("reasoning")
        .arg("--concurrency", 30)
        .arg("--mock-latency-ms", 30_000)
        .arg("--lease-timeout-secs", 2)
        .spawn();
    let ids = fleet.enqueue_many(30, "crash");
    assert!(
        wait_until(Duration::from_secs(10), || in_flight(&fleet, "reasoning")
            == 30),
        "{:?}",
        fleet.queue_counts()
    );
    doomed.kill9();
    let killed_at = Instant::now();
    let _survivor = fleet
        .worker("reasoning")
        .arg("--concurrency", 30)
        .arg("--lease-timeout-secs", 2)
        .spawn();
    let _s = fleet.worker("synthesis").spawn();
    wait_all_done(&fleet, &ids, Duration::from_secs(30));
    let took = killed_at.elapsed();
    eprintln!("recovered all 30 jobs {took:?} after kill -9 (lease 2 s)");
    let counts = fleet.settled_counts();
    assert_eq!(counts[0]["recovered"], 30, "{counts:?}");
    assert_eq!(
        counts[1]["done"], 30,
        "one synthesis job per task: {counts:?}"
    );
}

/// The test's own view of a fleet's task records during a failover: one long-lived cluster
/// connection, like a worker's, and a read that fails while the cluster changes hands counts
/// as "not known yet" (None). A read of 2,200 records is one pipeline split into ~2,000
/// single-slot sub-pipelines.
struct Observer {
    runtime: tokio::runtime::Runtime,
    conn: agentfleet_queue::RedisConnection,
    ns: agentfleet_queue::Namespace,
}

impl Observer {
    fn new(fleet: &Fleet) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let conn = runtime.block_on(async {
            agentfleet_queue::connect(&fleet.redis, &Default::default())
                .expect("connect to the cluster")
        });
        Self {
            runtime,
            conn,
            ns: fleet.ns(),
        }
    }

    /// `field` of every task's record, or None when the read failed.
    fn fields(&self, ids: &[String], field: &str) -> Option<Vec<Option<String>>> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hget(self.ns.task(id), field);
        }
        let mut conn = self.conn.clone();
        match self
            .runtime
            .block_on(async { pipe.query_async(&mut conn).await })
        {
            Ok(values) => Some(values),
            Err(e) => {
                eprintln!("observer: a read failed during the failover: {e}");
                None
            }
        }
    }

    fn count(&self, ids: &[String], field: &str, value: &str) -> Option<usize> {
        let values = self.fields(ids, field)?;
        Some(
            values
                .iter()
                .filter(|v| v.as_deref() == Some(value))
                .count(),
        )
    }

    fn stage_done(&self, ids: &[String], role: &str) -> Option<usize> {
        self.count(ids, &format!("{role}.state"), "done")
    }

    fn with_status(&self, ids: &[String], status: TaskStatus) -> Option<usize> {
        self.count(ids, "status", &status.to_string())
    }
}

/// A master SIGKILLed mid-drain: its replica takes over, the workers and the producer carry
/// on, and every task ends done, or is reported: a write the dead master acknowledged but had
/// not yet replicated is gone (Redis replicates asynchronously), and a task whose job was such
/// a write stays waiting with no job anywhere. `agentfleet tasks --stalled` lists those.
#[test]
fn a_master_killed_mid_drain_fails_over_and_no_task_is_silently_lost() {
    master_fault_mid_drain(7100, "cl-failover", "killed", |cluster, victim| {
        cluster.kill9(victim)
    });
}

/// A master frozen by `DEBUG SLEEP` past the workers' response timeout and the cluster's node
/// timeout: requests sent to it meanwhile commit when it wakes (after their callers gave up),
/// its replica is promoted while it sleeps, and it wakes as a stale master that the cluster
/// demotes. The same promise as for a killed master holds.
#[test]
fn a_master_frozen_past_the_response_timeout_fails_over_and_no_task_is_silently_lost() {
    master_fault_mid_drain(7400, "cl-frozen", "frozen", |cluster, victim| {
        cluster.debug_sleep(victim, Duration::from_secs(8))
    });
}

/// 2,000 tasks through two workers per role; after 300 are done, `fault` strikes the master
/// holding the reasoning queue. Then: a replica takes over, the workers carry on, 200 tasks
/// enqueued after the failover run too, and every task ends done or reported stalled.
fn master_fault_mid_drain(
    base: u16,
    namespace: &str,
    what: &str,
    fault: impl FnOnce(&PrivateCluster, u16),
) {
    let cluster = PrivateCluster::start(base);
    let fleet = Fleet::with(namespace, cluster.args());
    let worker = |role: &str| {
        fleet
            .worker(role)
            .arg("--concurrency", 20)
            .arg("--mock-latency-ms", 20)
            .arg("--lease-timeout-secs", 3)
            .spawn()
    };
    let _workers = [
        worker("reasoning"),
        worker("reasoning"),
        worker("synthesis"),
        worker("synthesis"),
    ];
    let ids = fleet.enqueue_many(2_000, "failover");
    let observer = Observer::new(&fleet);
    assert!(
        wait_until(Duration::from_secs(30), || observer
            .stage_done(&ids, "synthesis")
            .is_some_and(|n| n >= 300)),
        "{:?}",
        fleet.queue_counts()
    );
    let victim = cluster.master_of(&format!("{{{}:reasoning}}", fleet.namespace));
    fault(&cluster, victim);
    let killed_at = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || {
            // One reading: two could straddle the moment the victim is first suspected
            // (`fail?`), counting it as a master in one and as gone in the other.
            let masters = cluster.masters();
            masters.len() == 3 && !masters.contains(&victim) && cluster.state_ok()
        }),
        "a replica took over from {victim}"
    );
    eprintln!(
        "replica promoted {:?} after the master was {what}",
        killed_at.elapsed()
    );
    // The producer carries on: a second batch enqueued after the failover.
    let more = fleet.enqueue_many(200, "after");
    let all: Vec<String> = ids.iter().chain(&more).cloned().collect();
    // The workers carry on: tasks enqueued after the failover are worked. A read the observer
    // sent as the fault struck may wait out its 15 s bound first.
    assert!(
        wait_until(Duration::from_secs(40), || observer
            .stage_done(&more, "synthesis")
            .is_some_and(|n| n >= 100)),
        "the workers carry on after the failover: {:?}",
        fleet.queue_counts()
    );
    eprintln!(
        "workers carried on {:?} after the master was {what}",
        killed_at.elapsed()
    );
    let settled = |fleet: &Fleet| {
        let counts = fleet.queue_counts();
        counts.as_array().is_some_and(|roles| {
            roles
                .iter()
                .all(|r| r["pending"] == 0 && r["in_flight"] == 0 && r["scheduled"] == 0)
        })
    };
    assert!(
        wait_until(Duration::from_secs(90), || settled(&fleet)
            && observer
                .with_status(&all, TaskStatus::Done)
                .is_some_and(|done| done + stalled(&fleet).len() == all.len())),
        "{:?} done {} stalled {}",
        fleet.queue_counts(),
        fleet.count_status(&all, TaskStatus::Done),
        stalled(&fleet).len()
    );
    let lost = stalled(&fleet);
    eprintln!(
        "failover ({what}): {} of {} tasks done, {} reported stalled (writes lost in the replication window), {:?} after the fault",
        fleet.count_status(&all, TaskStatus::Done),
        all.len(),
        lost.len(),
        killed_at.elapsed()
    );
    assert_eq!(fleet.count_status(&all, TaskStatus::Dead), 0);
}

/// TLS on a cluster: the nodes speak only TLS (to clients, on the cluster bus and to their
/// replicas); workers and the CLI check every node they are redirected to against the test
/// CA and present the client certificate; with the wrong CA the CLI stops, naming the flag.
#[test]
fn the_pipeline_runs_on_a_tls_only_cluster() {
    let certs = Certs::generate();
    let cluster = PrivateCluster::start_tls(7300, &certs);
    let fleet = Fleet::with("cl-tls", cluster.args());
    let _r = fleet.worker("reasoning").arg("--concurrency", 20).spawn();
    let _s = fleet.worker("synthesis").arg("--concurrency", 20).spawn();
    let ids = fleet.enqueue_many(300, "over TLS on a cluster");
    wait_all_done(&fleet, &ids, Duration::from_secs(60));
    // 300 records on slots spread over the three masters: every node was reached over TLS.
    let out = fleet.cli_with(
        &["queues"],
        &[(
            "AGENTFLEET_REDIS_CA_FILE",
            certs.path("wrong-ca.crt").to_str().unwrap(),
        )],
    );
    assert_eq!(
        out.status.code(),
        Some(agentfleet_job::exit::REDIS_UNAVAILABLE as i32)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--redis-ca-file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Task ids `agentfleet tasks --stalled` reports (unchanged for 5 s).
fn stalled(fleet: &Fleet) -> Vec<String> {
    let out = fleet.cli_ok(&[
        "tasks",
        "--stalled",
        "--stalled-for",
        "5s",
        "--limit",
        "100000",
        "--json",
    ]);
    out.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|t| t["task_id"].as_str().map(str::to_owned))
        .collect()
}

/// The report itself, on one Redis: jobs deleted behind the fleet's back (as a failover loses
/// them) make their tasks stalled; a task whose job waits is not.
#[test]
fn tasks_whose_job_is_gone_are_reported_stalled() {
    let fleet = Fleet::new("stalled");
    let lost = fleet.enqueue_many(3, "lost");
    let _: () = redis::cmd("DEL")
        .arg(fleet.queue_keys("reasoning").pending())
        .query(&mut fleet.conn())
        .expect("drop the pending list");
    let kept = fleet.enqueue_many(1, "kept");
    let out = fleet.cli_ok(&["tasks", "--stalled", "--stalled-for", "0s", "--json"]);
    let mut reported: Vec<String> = out
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|t| t["task_id"].as_str().map(str::to_owned))
        .collect();
    reported.sort();
    let mut expected = lost.clone();
    expected.sort();
    assert_eq!(reported, expected, "kept: {kept:?}");
    // A task changed within --stalled-for is not judged yet.
    let out = fleet.cli_ok(&["tasks", "--stalled", "--stalled-for", "1h", "--json"]);
    assert_eq!(out.trim(), "");
}

/// README's least-rights ACL users, created on every node of the cluster (ACLs are per node),
/// run the pipeline (workers) and the CLI.
#[test]
fn the_readme_acl_users_run_the_pipeline_on_the_cluster() {
    let admin = Fleet::with("cl-acl", shared_cluster());
    let ns = admin.namespace.clone();
    let suffix = ns.rsplit('-').next().unwrap_or("x").to_owned();
    let ports = 7000..7006u16;
    let mut users = Vec::new();
    for (readme_user, password) in [
        ("agentfleet-worker", "w0rker-pw"),
        ("agentfleet-cli", "cl1-pw"),
    ] {
        let mut rule = agentfleet_e2e::readme_acl(readme_user, &ns, password);
        let user = format!("{readme_user}-{suffix}");
        rule[2] = user.clone();
        for port in ports.clone() {
            let out = std::process::Command::new("redis-cli")
                .arg("-p")
                .arg(port.to_string())
                .args(&rule)
                .output()
                .expect("redis-cli");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "OK",
                "{rule:?} on {port}"
            );
        }
        users.push((user, password));
    }
    let _deluser = DelUsers(users.iter().map(|(u, _)| u.clone()).collect());
    let as_user = |(user, password): &(String, &str)| {
        let seeds: Vec<String> = [7000, 7001, 7002]
            .iter()
            .map(|p| format!("redis://{user}:{password}@127.0.0.1:{p}"))
            .collect();
        let mut fleet = Fleet::with("cl-acl", RedisArgs::cluster(seeds.join(",")));
        fleet.namespace = ns.clone();
        fleet
    };
    let workers = as_user(&users[0]);
    let cli = as_user(&users[1]);
    let _r = workers.worker("reasoning").spawn();
    let _s = workers.worker("synthesis").spawn();
    let ids = cli.enqueue_many(200, "acl");
    wait_all_done(&cli, &ids, Duration::from_secs(30));
    assert!(cli.record(&ids[0]).answer.is_some());
    let counts = cli.settled_counts();
    assert_eq!(counts[1]["done"], 200, "{counts:?}");
    cli.cli_ok(&["tasks", "--limit", "5"]);
    cli.cli_ok(&["dlq", "list"]);
    cli.cli_ok(&["workers"]);
}

/// Deletes the test's ACL users from every node of the shared cluster when the test ends.
struct DelUsers(Vec<String>);

impl Drop for DelUsers {
    fn drop(&mut self) {
        for port in 7000..7006u16 {
            let _ = std::process::Command::new("redis-cli")
                .arg("-p")
                .arg(port.to_string())
                .arg("ACL")
                .arg("DELUSER")
                .args(&self.0)
                .output();
        }
    }
}
