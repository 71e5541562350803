//! Retries, dead letters, crash recovery, graceful shutdown, poison input and Redis
//! outages, each with real worker processes, real signals and a real Redis.

use std::time::{Duration, Instant};

use agentfleet_e2e::{Fleet, PrivateRedis, wait_until};
use agentfleet_job::TaskStatus;
use nix::sys::signal::Signal;

fn in_flight(fleet: &Fleet, role_index: usize) -> u64 {
    fleet.queue_counts()[role_index]["in_flight"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn transient_failures_are_retried_until_every_task_is_done() {
    let fleet = Fleet::new("transient");
    let flaky = |role: &str| {
        fleet
            .worker(role)
            .arg("--concurrency", 20)
            .arg("--mock-fail-rate", 0.5)
            .arg("--mock-fail-kind", "transient")
            .arg("--max-attempts", 40)
            .arg("--backoff-base-ms", 5)
            .arg("--backoff-max-ms", 50)
            .spawn()
    };
    let _r = flaky("reasoning");
    let _s = flaky("synthesis");
    let ids = fleet.enqueue_many(200, "flaky");
    assert!(
        wait_until(Duration::from_secs(90), || fleet
            .count_status(&ids, TaskStatus::Done)
            == 200),
        "{:?}",
        fleet.queue_counts()
    );
    let counts = fleet.queue_counts();
    assert_eq!(counts[0]["dead"], 0);
    assert_eq!(counts[1]["dead"], 0);
    assert!(
        counts[0]["retried"].as_u64().unwrap() > 50,
        "a 50% failure rate must cause retries: {counts:?}"
    );
    // Attempts are recorded per stage: some task needed more than one.
    let most = ids
        .iter()
        .map(|id| fleet.record(id).stages["reasoning"].attempts)
        .max();
    assert!(most > Some(1));
}

#[test]
fn permanent_failures_are_dead_lettered_at_once_and_replay_brings_them_back() {
    let fleet = Fleet::new("permanent");
    let mut failing = fleet
        .worker("reasoning")
        .arg("--mock-fail-rate", 1)
        .arg("--mock-fail-kind", "permanent")
        .spawn();
    let ids = fleet.enqueue_many(20, "doomed");
    assert!(wait_until(Duration::from_secs(20), || fleet
        .count_status(&ids, TaskStatus::Dead)
        == 20));
    for id in &ids {
        let record = fleet.record(id);
        assert_eq!(
            record.stages["reasoning"].attempts, 1,
            "permanent errors get exactly one attempt"
        );
        assert!(
            record
                .last_error
                .as_deref()
                .unwrap_or_default()
                .contains("injected permanent failure")
        );
    }
    let listed: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["dlq", "list", "reasoning", "--json"])).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 20);
    assert!(
        listed
            .iter()
            .all(|l| l["error_class"] == "permanent" && l["attempts"] == 1)
    );
    assert!(
        listed
            .iter()
            .all(|l| l["worker_id"].as_str().is_some_and(|w| !w.is_empty()))
    );
    let shown = fleet.cli_ok(&["dlq", "show", &ids[0]]);
    assert!(shown.contains("injected permanent failure"), "{shown}");

    failing.signal(Signal::SIGTERM);
    assert_eq!(failing.wait_exit(Duration::from_secs(10)), Some(Some(0)));
    let _r = fleet.worker("reasoning").spawn();
    let _s = fleet.worker("synthesis").spawn();
    assert!(
        fleet
            .cli_ok(&["dlq", "replay", "reasoning", "--all"])
            .contains("replayed 20")
    );
    assert!(
        fleet
            .cli_ok(&["dlq", "replay", "reasoning", "--all"])
            .contains("replayed 0")
    );
    assert!(wait_until(Duration::from_secs(20), || fleet
        .count_status(&ids, TaskStatus::Done)
        == 20));
    let counts = fleet.settled_counts();
    assert_eq!(counts[0]["dead"], 0);
    assert_eq!(
        counts[0]["done"], 20,
        "replaying twice must not enqueue twice"
    );
    assert_eq!(counts[1]["done"], 20);
}

#[test]
fn dlq_purge_needs_confirmation_and_deletes() {
    let fleet = Fleet::new("purge");
    let _failing = fleet
        .worker("reasoning")
        .arg("--mock-fail-rate", 1)
        .arg("--mock-fail-kind", "permanent")
        .spawn();
    let ids = fleet.enqueue_many(3, "purge me");
    assert!(wait_until(Duration::from_secs(10), || fleet
        .count_status(&ids, TaskStatus::Dead)
        == 3));
    assert!(
        !fleet
            .cli(&["dlq", "purge", "reasoning", &ids[0]])
            .status
            .success()
    );
    assert!(
        fleet
            .cli_ok(&["dlq", "purge", "reasoning", &ids[0], "--yes"])
            .contains("purged 1")
    );
    assert_eq!(fleet.queue_counts()[0]["dead"], 2);
    assert!(
        fleet
            .cli_ok(&["dlq", "purge", "reasoning", "--all", "--yes"])
            .contains("purged 2")
    );
    assert_eq!(fleet.queue_counts()[0]["dead"], 0);
}

#[test]
fn kill_9_loses_nothing_and_chains_once() {
    let fleet = Fleet::new("kill9");
    let mut doomed = fleet
        .worker("reasoning")
        .arg("--concurrency", 40)
        .arg("--mock-latency-ms", 30_000)
        .arg("--lease-timeout-secs", 2)
        .spawn();
    let ids = fleet.enqueue_many(40, "crash");
    assert!(
        wait_until(Duration::from_secs(10), || in_flight(&fleet, 0) == 40),
        "{:?}",
        fleet.queue_counts()
    );
    doomed.kill9();
    let killed_at = Instant::now();
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
    eprintln!(
        "recovered all 40 jobs {:?} after kill -9 (lease 2 s)",
        killed_at.elapsed()
    );
    let counts = fleet.settled_counts();
    assert_eq!(counts[0]["recovered"], 40);
    assert_eq!(
        counts[1]["done"], 40,
        "exactly one synthesis job per task: {counts:?}"
    );
    for id in &ids {
        let record = fleet.record(id);
        assert_eq!(
            record.stages["reasoning"].attempts, 2,
            "the crash counts as a delivery"
        );
        assert_eq!(record.stages["synthesis"].attempts, 1);
    }
}

#[test]
fn a_job_that_keeps_killing_workers_ends_in_the_dead_letters() {
    let fleet = Fleet::new("poison");
    let spawn = || {
        fleet
            .worker("reasoning")
            .arg("--concurrency", 1)
            .arg("--mock-latency-ms", 60_000)
            .arg("--lease-timeout-secs", 1)
            .arg("--max-attempts", 2)
            .spawn()
    };
    let ids = fleet.enqueue_many(1, "poison");
    for delivery in 1..=2 {
        let mut worker = spawn();
        // The record notes each delivery's number as the worker starts on it.
        assert!(
            wait_until(Duration::from_secs(10), || {
                fleet
                    .record(&ids[0])
                    .stages
                    .get("reasoning")
                    .map(|s| s.attempts)
                    == Some(delivery)
            }),
            "delivery {delivery} did not happen: {:?}",
            fleet.queue_counts()
        );
        worker.kill9();
    }
    let _last = spawn();
    assert!(
        wait_until(Duration::from_secs(10), || fleet
            .count_status(&ids, TaskStatus::Dead)
            == 1),
        "{:?}",
        fleet.queue_counts()
    );
    let letter: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["dlq", "show", &ids[0], "--json"])).unwrap();
    assert_eq!(letter["error_class"], "crash");
    assert_eq!(letter["attempts"], 2);
    assert_eq!(fleet.queue_counts()[0]["pending"], 0);
}

#[test]
fn sigterm_lets_in_flight_jobs_finish_and_exits_zero() {
    let fleet = Fleet::new("sigterm");
    let mut worker = fleet
        .worker("reasoning")
        .arg("--concurrency", 10)
        .arg("--mock-latency-ms", 1_500)
        .arg("--shutdown-grace-secs", 10)
        .spawn();
    let ids = fleet.enqueue_many(10, "graceful");
    assert!(wait_until(Duration::from_secs(10), || in_flight(&fleet, 0) == 10));
    let signalled = Instant::now();
    worker.signal(Signal::SIGTERM);
    assert!(wait_until(Duration::from_secs(3), || worker
        .http_status("/readyz")
        == Some(503)));
    assert_eq!(worker.wait_exit(Duration::from_secs(10)), Some(Some(0)));
    assert!(signalled.elapsed() < Duration::from_secs(10));
    // Reasoning finished for every task (no synthesis worker runs, so they wait there).
    assert_eq!(fleet.count_stage_done(&ids, "reasoning"), 10);
    assert_eq!(fleet.queue_counts()[1]["pending"], 10);
}

#[test]
fn sigterm_hands_back_unfinished_jobs_at_once_when_grace_runs_out() {
    let fleet = Fleet::new("handback");
    let mut worker = fleet
        .worker("reasoning")
        .arg("--concurrency", 5)
        .arg("--mock-latency-ms", 60_000)
        .arg("--shutdown-grace-secs", 1)
        .spawn();
    let ids = fleet.enqueue_many(5, "slow");
    assert!(wait_until(Duration::from_secs(10), || in_flight(&fleet, 0) == 5));
    worker.signal(Signal::SIGTERM);
    assert_eq!(worker.wait_exit(Duration::from_secs(5)), Some(Some(0)));
    let counts = fleet.queue_counts();
    assert_eq!(
        counts[0]["pending"], 5,
        "handed back, not left for the lease: {counts:?}"
    );
    assert_eq!(counts[0]["in_flight"], 0);
    // Handing back does not use up an attempt: the next delivery is attempt 1 again.
    let _r = fleet.worker("reasoning").spawn();
    let _s = fleet.worker("synthesis").spawn();
    assert!(wait_until(Duration::from_secs(20), || fleet
        .count_status(&ids, TaskStatus::Done)
        == 5));
    assert_eq!(fleet.record(&ids[0]).stages["reasoning"].attempts, 1);
}

#[test]
fn garbage_entries_are_dead_lettered_and_the_worker_keeps_going() {
    let fleet = Fleet::new("garbage");
    let _r = fleet.worker("reasoning").spawn();
    let _s = fleet.worker("synthesis").spawn();
    let mut conn = fleet.conn();
    let pending = fleet.queue_keys("reasoning").pending();
    let garbage: [&[u8]; 3] = [
        b"\xff\xfe not json at all",
        br#"{"attempt":0,"v":1,"id":"wrong-shape","enqueued_at_ms":1,"args":{"nope":true}}"#,
        br#"{"attempt":0,"v":7,"id":"future-version","enqueued_at_ms":1,"args":{}}"#,
    ];
    for g in garbage {
        let _: () = redis::cmd("LPUSH")
            .arg(&pending)
            .arg(g)
            .query(&mut conn)
            .unwrap();
    }
    let ids = fleet.enqueue_many(1, "after the garbage");
    assert!(wait_until(Duration::from_secs(10), || fleet
        .count_status(&ids, TaskStatus::Done)
        == 1));
    assert!(wait_until(Duration::from_secs(5), || fleet.queue_counts()
        [0]["dead"]
        == 3));
    let listed: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["dlq", "list", "reasoning", "--json"])).unwrap();
    let listed = listed.as_array().unwrap();
    assert!(listed.iter().all(|l| l["error_class"] == "decode"));
    let version = listed
        .iter()
        .find(|l| l["job_id"] == "future-version")
        .expect("dead-lettered by id");
    assert!(version["error"].as_str().unwrap().contains("version 7"));
    assert!(
        listed
            .iter()
            .any(|l| l["job_id"].as_str().unwrap().starts_with("unreadable-"))
    );
}

#[test]
fn a_reasoning_rerun_after_chaining_creates_no_second_synthesis_job() {
    let fleet = Fleet::new("rerun");
    let reasoning = fleet.worker("reasoning").spawn();
    let ids = fleet.enqueue_many(1, "chain once");
    assert!(wait_until(Duration::from_secs(10), || fleet
        .count_stage_done(&ids, "reasoning")
        == 1));
    assert_eq!(fleet.queue_counts()[1]["pending"], 1);
    let analysis = fleet.record(&ids[0]).stages["reasoning"].output.clone();
    // Force a re-run: deliver the same reasoning job again, as a crash before its ack would.
    let job = |stage: u32| {
        agentfleet_job::Envelope::new(
            ids[0].clone(),
            agentfleet_job::StageJob {
                task_id: ids[0].parse().unwrap(),
                stage,
                trace: None,
            },
        )
        .encode()
    };
    let mut conn = fleet.conn();
    let _: () = redis::cmd("LPUSH")
        .arg(fleet.queue_keys("reasoning").pending())
        .arg(job(0))
        .query(&mut conn)
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || fleet.queue_counts()
        [0]["done"]
        == 2));
    assert_eq!(
        fleet.queue_counts()[1]["pending"],
        1,
        "no second synthesis job"
    );
    assert!(reasoning.log().contains("already enqueued"));
    assert_eq!(
        fleet.record(&ids[0]).stages["reasoning"].output,
        analysis,
        "the analysis is reused, not recomputed"
    );
    let synthesis = fleet.worker("synthesis").spawn();
    assert!(wait_until(Duration::from_secs(10), || fleet
        .count_status(&ids, TaskStatus::Done)
        == 1));
    let answer = fleet.record(&ids[0]).answer;
    assert!(answer.is_some());
    // A late synthesis re-run (a copy delivered after the answer was written) is
    // acknowledged without running and does not touch the answer.
    let _: () = redis::cmd("LPUSH")
        .arg(fleet.queue_keys("synthesis").pending())
        .arg(job(1))
        .query(&mut conn)
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || fleet.queue_counts()
        [1]["done"]
        == 2));
    assert_eq!(fleet.record(&ids[0]).answer, answer);
    assert!(synthesis.log().contains("task already finished"));
}

#[test]
fn redis_stopped_and_restarted_mid_run_loses_no_task() {
    let mut redis = PrivateRedis::start();
    let fleet = Fleet::on("outage", &redis.url());
    let r = fleet
        .worker("reasoning")
        .arg("--concurrency", 20)
        .arg("--mock-latency-ms", 20)
        .arg("--lease-timeout-secs", 5)
        .spawn();
    let _s = fleet
        .worker("synthesis")
        .arg("--concurrency", 20)
        .arg("--mock-latency-ms", 20)
        .arg("--lease-timeout-secs", 5)
        .spawn();
    let ids = fleet.enqueue_many(300, "outage");
    assert!(wait_until(Duration::from_secs(20), || fleet
        .count_status(&ids, TaskStatus::Done)
        >= 20));
    redis.stop();
    assert!(
        wait_until(Duration::from_secs(10), || r.http_status("/readyz")
            == Some(503)),
        "readyz must report the outage"
    );
    std::thread::sleep(Duration::from_secs(2));
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(60), || fleet
            .count_status(&ids, TaskStatus::Done)
            == 300),
        "{:?}\n{}",
        fleet.queue_counts(),
        r.log()
    );
    assert!(wait_until(Duration::from_secs(10), || r
        .http_status("/readyz")
        == Some(200)));
    assert_eq!(fleet.queue_counts()[0]["dead"], 0);
}
