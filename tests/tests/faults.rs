//! The guarantees under the faults a production fleet meets: skewed clocks, Redis stopped
//! for longer than the lease, Redis stalled past the response timeout, `maxmemory`
//! refusals, panics, the job loop dying, and late copies of finished jobs. Real worker
//! processes, a real Redis (private ones where the test breaks it), real signals.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agentfleet_e2e::{Fleet, PrivateRedis, Worker, wait_until};
use agentfleet_job::TaskStatus;
use agentfleet_queue::Namespace;

/// How many `started` events of `role` the fleet's event stream holds: a stage appends it
/// once its first read of the task succeeded, i.e. once a Redis outage can no longer fail
/// that attempt before its provider call.
fn started(fleet: &Fleet, role: &str) -> usize {
    let events: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(fleet.ns().events())
        .arg("-")
        .arg("+")
        .query(&mut fleet.conn())
        .expect("read the event stream");
    events
        .iter()
        .filter(|(_, fields)| {
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|kv| kv[0] == name)
                    .and_then(|kv| kv.get(1))
                    .map(String::as_str)
            };
            field("kind") == Some("started") && field("role") == Some(role)
        })
        .count()
}

/// Reads a queue count of one role from `agentfleet queues --json`.
fn count(fleet: &Fleet, role: &str, field: &str) -> u64 {
    fleet
        .queue_counts()
        .as_array()
        .and_then(|roles| roles.iter().find(|r| r["role"] == role))
        .and_then(|r| match &r[field] {
            serde_json::Value::Array(items) => Some(items.len() as u64),
            value => value.as_u64(),
        })
        .unwrap_or(0)
}

/// Each task's delivery count per stage, straight from the records.
fn attempts(fleet: &Fleet, ids: &[String], role: &str) -> Vec<u32> {
    let namespace = Namespace::new(&fleet.namespace).expect("test namespace");
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.hget(namespace.task(id), format!("{role}.attempts"));
    }
    let raw: Vec<Option<u32>> = pipe.query(&mut fleet.conn()).expect("read attempts");
    raw.into_iter().map(|a| a.unwrap_or(0)).collect()
}

/// Every in-flight entry of `role` across workers: (entry, delivered at by Redis's clock).
fn in_flight_entries(fleet: &Fleet, role: &str) -> Vec<(String, u64)> {
    let keys = Namespace::new(&fleet.namespace)
        .and_then(|n| n.queue(role))
        .expect("queue keys");
    let mut conn = fleet.conn();
    let hashes: Vec<String> = redis::cmd("KEYS")
        .arg(keys.inflight("*"))
        .query(&mut conn)
        .expect("list in-flight hashes");
    let mut entries = Vec::new();
    for hash in hashes {
        let held: HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(&hash)
            .query(&mut conn)
            .expect("read in-flight hash");
        entries.extend(held);
    }
    entries
}

fn redis_time_ms(conn: &mut redis::Connection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(conn).expect("TIME");
    secs * 1000 + micros / 1000
}

#[test]
fn workers_with_skewed_clocks_neither_steal_nor_lose_jobs() {
    let fleet = Fleet::new("skew");
    let mut workers: Vec<Worker> = Vec::new();
    for role in ["reasoning", "synthesis"] {
        for skew in [Some("+60s"), Some("-60s"), None] {
            let mut worker = fleet
                .worker(role)
                .arg("--lease-timeout-secs", 3)
                .arg("--mock-latency-ms", 3000)
                .arg("--concurrency", 50);
            if let Some(skew) = skew {
                worker = worker.clock_offset(skew);
            }
            workers.push(worker.spawn());
        }
    }
    let ids = fleet.enqueue_many(300, "skewed");
    assert!(
        wait_until(Duration::from_secs(120), || fleet
            .count_status(&ids, TaskStatus::Done)
            == 300),
        "{:?}",
        fleet.queue_counts()
    );
    // The skew was real, and both skewed workers took part: their start stamps (the
    // worker's clock) are a minute off the producer's.
    let namespace = Namespace::new(&fleet.namespace).expect("test namespace");
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.cmd("HMGET")
            .arg(namespace.task(id))
            .arg("created_at_ms")
            .arg("reasoning.started_at_ms");
    }
    let stamps: Vec<(i64, i64)> = pipe.query(&mut fleet.conn()).expect("read stamps");
    let skews: Vec<i64> = stamps.iter().map(|(c, s)| s - c).collect();
    assert!(
        skews.iter().any(|d| *d > 50_000),
        "no job ran on the +60 s worker"
    );
    assert!(
        skews.iter().any(|d| *d < -50_000),
        "no job ran on the -60 s worker"
    );
    for role in ["reasoning", "synthesis"] {
        assert_eq!(
            count(&fleet, role, "recovered"),
            0,
            "{role}: no live worker's jobs taken"
        );
        assert_eq!(count(&fleet, role, "dead"), 0, "{role}: no dead letters");
        let attempts = attempts(&fleet, &ids, role);
        assert!(
            attempts.iter().all(|a| *a == 1),
            "{role}: every task delivered once, got {:?}",
            attempts.iter().filter(|a| **a != 1).collect::<Vec<_>>()
        );
    }
}

#[test]
fn an_outage_longer_than_the_lease_re_runs_nothing_and_still_recovers_the_dead() {
    let mut redis = PrivateRedis::start();
    let fleet = Fleet::on("outage", &redis.url());
    let lease = Duration::from_secs(2);
    let holder = |name: &str| {
        fleet
            .worker("reasoning")
            .arg("--worker-name", name)
            .arg("--lease-timeout-secs", lease.as_secs())
            .arg("--mock-latency-ms", 10_000)
            .arg("--concurrency", 10)
            .spawn()
    };
    let _a = holder("holder-a");
    let _b = holder("holder-b");
    let mut doomed = holder("doomed");
    let ids = fleet.enqueue_many(30, "through an outage");
    // Every job past its first read of the task: a job whose read the outage cuts fails
    // that attempt, rightly, and runs again. (Waiting for the entries alone failed 1 run in
    // 5 with both CPUs kept busy: ten `retried` events, "attempt 1: redis: broken pipe".)
    assert!(
        wait_until(Duration::from_secs(10), || count(
            &fleet,
            "reasoning",
            "in_flight"
        ) == 30
            && started(&fleet, "reasoning") == 30),
        "{:?}",
        fleet.queue_counts()
    );

    let outage = lease * 3;
    redis.stop();
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    doomed.kill9();
    let killed = Instant::now();
    std::thread::sleep(outage.saturating_sub(stopped.elapsed()));
    redis.restart();

    // The dead worker's ten jobs come back within lease + outage of its death (plus one
    // maintenance tick and this test's polling); the live workers' twenty never do.
    assert!(
        wait_until(outage + lease + Duration::from_secs(10), || count(
            &fleet,
            "reasoning",
            "recovered"
        ) >= 10),
        "{:?}",
        fleet.queue_counts()
    );
    let recovered_after = killed.elapsed();
    eprintln!(
        "recovered the dead worker's jobs {recovered_after:?} after its SIGKILL (outage {outage:?}, lease {lease:?})"
    );
    assert!(
        recovered_after <= outage + lease + Duration::from_secs(1),
        "recovered {recovered_after:?} after the kill; bound is outage {outage:?} + lease {lease:?}"
    );
    let _s = fleet.worker("synthesis").spawn();
    assert!(
        wait_until(Duration::from_secs(60), || fleet
            .count_status(&ids, TaskStatus::Done)
            == 30),
        "{:?}",
        fleet.queue_counts()
    );
    assert_eq!(count(&fleet, "reasoning", "recovered"), 10);
    let attempts = attempts(&fleet, &ids, "reasoning");
    assert_eq!(
        attempts.iter().filter(|a| **a == 1).count(),
        20,
        "the live workers' jobs ran once: {attempts:?}"
    );
    assert_eq!(
        attempts.iter().filter(|a| **a == 2).count(),
        10,
        "the dead worker's jobs ran again: {attempts:?}"
    );
}

#[test]
fn a_redis_stalled_past_the_response_timeout_strands_nothing() {
    let redis = PrivateRedis::start_with(&["--enable-debug-command", "local"]);
    let fleet = Fleet::on("stall", &redis.url());
    let lease = Duration::from_secs(3);
    let mut workers = Vec::new();
    for role in ["reasoning", "synthesis", "reasoning", "synthesis"] {
        workers.push(
            fleet
                .worker(role)
                .arg("--lease-timeout-secs", lease.as_secs())
                .spawn(),
        );
    }
    let ids = fleet.enqueue_many(30_000, "stalled");
    assert!(wait_until(Duration::from_secs(60), || count(
        &fleet,
        "reasoning",
        "done"
    ) >= 3_000));
    // Longer than the workers' 5 s response timeout: requests sent now commit when Redis
    // wakes, after their callers gave up on the replies.
    let _: () = redis::cmd("DEBUG")
        .arg("SLEEP")
        .arg(7)
        .query(&mut redis.conn())
        .expect("DEBUG SLEEP");
    let woke_at = redis_time_ms(&mut redis.conn());

    std::thread::sleep(lease + Duration::from_secs(1));
    for role in ["reasoning", "synthesis"] {
        let stale: Vec<_> = in_flight_entries(&fleet, role)
            .into_iter()
            .filter(|(_, delivered_at)| *delivered_at <= woke_at + 500)
            .collect();
        assert!(
            stale.is_empty(),
            "{role}: {} entries delivered around the stall are still in flight a lease later",
            stale.len()
        );
    }
    assert!(
        wait_until(Duration::from_secs(120), || fleet
            .count_status(&ids, TaskStatus::Done)
            == ids.len()),
        "{:?}",
        fleet.queue_counts()
    );
    for role in ["reasoning", "synthesis"] {
        assert!(in_flight_entries(&fleet, role).is_empty(), "{role}");
        assert_eq!(
            count(&fleet, role, "recovered"),
            0,
            "{role}: nothing re-run"
        );
        assert_eq!(count(&fleet, role, "dead"), 0, "{role}");
    }
}

#[test]
fn maxmemory_refusals_strand_nothing_and_re_run_nothing() {
    let redis = PrivateRedis::start();
    let fleet = Fleet::on("oom", &redis.url());
    let lease = Duration::from_secs(2);
    let mut workers = Vec::new();
    // Slow jobs: every slot busy, so the fetcher is idle and only the heartbeat keeps the
    // lease; jobs finish (and settle) while writes are refused.
    for role in ["reasoning", "synthesis", "reasoning", "synthesis"] {
        workers.push(
            fleet
                .worker(role)
                .arg("--lease-timeout-secs", lease.as_secs())
                .arg("--concurrency", 20)
                .arg("--mock-latency-ms", 2_500)
                .arg("--backoff-base-ms", 100)
                .arg("--backoff-max-ms", 500)
                .spawn(),
        );
    }
    let ids = fleet.enqueue_many(300, "out of memory");
    assert!(wait_until(Duration::from_secs(60), || count(
        &fleet,
        "reasoning",
        "done"
    ) >= 40));
    let mut admin = redis.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query(&mut admin)
        .expect("lower maxmemory");
    let refused: redis::RedisResult<()> = redis::cmd("SET").arg("probe").arg("x").query(&mut admin);
    assert!(
        refused.is_err_and(|e| e.to_string().contains("OOM")),
        "writes are refused"
    );
    // Refused for three leases: heartbeats fail all that time, and jobs finish meanwhile.
    std::thread::sleep(lease * 3);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query(&mut admin)
        .expect("raise maxmemory");
    assert!(
        wait_until(Duration::from_secs(120), || fleet
            .count_status(&ids, TaskStatus::Done)
            == ids.len()),
        "{:?}",
        fleet.queue_counts()
    );
    for role in ["reasoning", "synthesis"] {
        assert!(
            in_flight_entries(&fleet, role).is_empty(),
            "{role}: nothing stranded"
        );
        assert_eq!(
            count(&fleet, role, "recovered"),
            0,
            "{role}: nothing re-run"
        );
        assert_eq!(count(&fleet, role, "dead"), 0, "{role}");
    }
}

#[test]
fn handler_panics_are_retried_and_the_worker_keeps_its_concurrency() {
    let fleet = Fleet::new("panics");
    let concurrency = 4;
    let reasoning = fleet
        .worker("reasoning")
        .arg("--concurrency", concurrency)
        .arg("--mock-fail-rate", 0.5)
        .arg("--mock-fail-kind", "panic")
        .arg("--mock-latency-ms", 200)
        .arg("--max-attempts", 60)
        .arg("--backoff-base-ms", 1)
        .arg("--backoff-max-ms", 10)
        .spawn();
    let _s = fleet.worker("synthesis").spawn();
    let ids = fleet.enqueue_many(40, "panicky");
    assert!(
        wait_until(Duration::from_secs(90), || fleet
            .count_status(&ids, TaskStatus::Done)
            == 40),
        "{:?}\n{}",
        fleet.queue_counts(),
        reasoning.log()
    );
    let panics = count(&fleet, "reasoning", "retried");
    assert!(
        panics > concurrency,
        "more panics ({panics}) than slots ({concurrency}), so a leaked slot would show"
    );
    assert!(reasoning.log().contains("handler panicked"));
    // After all those panics every slot still works: a new backlog fills all of them.
    let more = fleet.enqueue_many(40, "after the panics");
    let in_flight = |w: &Worker| {
        w.metrics()
            .lines()
            .find(|l| l.starts_with("agentfleet_jobs_in_flight{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        wait_until(Duration::from_secs(30), || in_flight(&reasoning)
            >= concurrency as f64),
        "the worker never ran {concurrency} jobs at once again"
    );
    assert!(wait_until(Duration::from_secs(90), || fleet
        .count_status(&more, TaskStatus::Done)
        == 40));
    assert_eq!(count(&fleet, "reasoning", "dead"), 0);
}

#[test]
fn the_job_loop_ending_hands_back_its_jobs_and_exits_non_zero() {
    let fleet = Fleet::new("loop-ends");
    // A fail point compiled in by `make test` (feature agentfleet-runtime/failpoints):
    // the first job's dispatch panics outside the handler's containment, which ends the
    // apalis worker as any bug in it would.
    let mut broken = fleet
        .worker("reasoning")
        .arg("--concurrency", 10)
        .env("FAILPOINTS", "job-loop-panic=panic")
        .spawn();
    let ids = fleet.enqueue_many(10, "orphaned");
    let exit = broken.wait_exit(Duration::from_secs(10));
    assert!(
        matches!(exit, Some(Some(code)) if code != 0),
        "exit {exit:?} (binaries built without --features agentfleet-runtime/failpoints?)\n{}",
        broken.log()
    );
    assert!(
        broken.log().contains("job loop ended unexpectedly"),
        "{}",
        broken.log()
    );
    assert!(
        in_flight_entries(&fleet, "reasoning").is_empty(),
        "handed back"
    );
    assert_eq!(count(&fleet, "reasoning", "pending"), 10);
    assert_eq!(
        count(&fleet, "reasoning", "live_workers"),
        0,
        "unregistered"
    );

    let _r = fleet.worker("reasoning").spawn();
    let _s = fleet.worker("synthesis").spawn();
    assert!(wait_until(Duration::from_secs(30), || fleet
        .count_status(&ids, TaskStatus::Done)
        == 10));
    assert!(
        attempts(&fleet, &ids, "reasoning").iter().all(|a| *a == 1),
        "a hand-back is not an attempt"
    );
}

#[test]
fn a_late_copy_of_a_dead_tasks_job_leaves_it_dead() {
    let fleet = Fleet::new("stays-dead");
    let mut failing = fleet
        .worker("reasoning")
        .arg("--mock-fail-rate", 1)
        .arg("--mock-fail-kind", "permanent")
        .spawn();
    let ids = fleet.enqueue_many(1, "dies once");
    assert!(wait_until(Duration::from_secs(20), || fleet
        .count_status(&ids, TaskStatus::Dead)
        == 1));
    failing.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(failing.wait_exit(Duration::from_secs(10)), Some(Some(0)));

    // A copy of its job comes back, as a recovered duplicate would.
    // The entry byte for byte, as stored (`dlq show --json` shows it as an object).
    let keys = Namespace::new(&fleet.namespace)
        .and_then(|n| n.queue("reasoning"))
        .unwrap();
    let stored: String = redis::cmd("HGET")
        .arg(keys.dead())
        .arg(&ids[0])
        .query(&mut fleet.conn())
        .unwrap();
    let letter: serde_json::Value = serde_json::from_str(&stored).unwrap();
    let payload = letter["payload"].as_str().expect("payload").to_owned();
    let _: () = redis::cmd("LPUSH")
        .arg(keys.pending())
        .arg(&payload)
        .query(&mut fleet.conn())
        .unwrap();
    let _r = fleet.worker("reasoning").spawn();
    assert!(wait_until(Duration::from_secs(20), || count(
        &fleet,
        "reasoning",
        "done"
    ) == 1));

    assert_eq!(fleet.statuses(&ids), vec![Some(TaskStatus::Dead)]);
    assert_eq!(count(&fleet, "synthesis", "pending"), 0, "nothing chained");
    let waited = fleet.cli(&["wait", &ids[0], "--timeout", "5"]);
    assert_eq!(waited.status.code(), Some(1), "wait exits 1 on a dead task");
}
