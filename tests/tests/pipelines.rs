//! Pipelines as data: a parallel stage joined exactly once through worker crashes, new roles
//! on the generic `agent-worker`, and a fleet that refuses a process of another pipeline.

use std::time::Duration;

use agentfleet_e2e::{Fleet, wait_until};
use agentfleet_job::{TaskStatus, exit};

const FAN_OUT: &str = "reasoning > critique + fact-check > synthesis";

#[test]
fn a_parallel_stage_joins_exactly_once_through_worker_crashes() {
    let fleet = Fleet::new("fanout").with_pipeline(FAN_OUT);
    let lease = 2;
    let _reasoning = fleet
        .worker("reasoning")
        .arg("--lease-timeout-secs", lease)
        .spawn();
    let branch = |role: &str| {
        fleet
            .agent(role)
            .arg("--lease-timeout-secs", lease)
            .arg("--concurrency", 20)
            .arg("--mock-latency-ms", 300)
            .spawn()
    };
    let mut critique = [branch("critique"), branch("critique")];
    let mut fact_check = [branch("fact-check"), branch("fact-check")];
    let _synthesis = fleet
        .worker("synthesis")
        .arg("--lease-timeout-secs", lease)
        .spawn();
    let ids = fleet.enqueue_many(300, "fan out and join");

    // Kill a worker of each branch while the parallel stage is busy, twice.
    for round in 1..=2 {
        assert!(wait_until(Duration::from_secs(60), || {
            fleet.count_stage_done(&ids, "critique") >= 60 * round
        }));
        critique[0].kill9();
        fact_check[0].kill9();
        critique[0] = branch("critique");
        fact_check[0] = branch("fact-check");
    }
    assert!(
        wait_until(Duration::from_secs(120), || fleet
            .count_status(&ids, TaskStatus::Done)
            == ids.len()),
        "{:?}",
        fleet.queue_counts()
    );
    for id in &ids {
        let record = fleet.record(id);
        for role in ["reasoning", "critique", "fact-check", "synthesis"] {
            assert!(
                record.output(role).is_some_and(|o| !o.is_empty()),
                "{id}: no {role} output"
            );
        }
        assert_eq!(record.answer.as_deref(), record.output("synthesis"));
        assert_eq!(record.pipeline.as_deref(), Some(FAN_OUT));
    }
    // The crashes happened: some branch jobs were recovered from the killed workers...
    let counts = fleet.settled_counts();
    let role = |name: &str| {
        counts
            .as_array()
            .and_then(|roles| roles.iter().find(|r| r["role"] == name))
            .cloned()
            .unwrap_or_default()
    };
    let recovered = role("critique")["recovered"].as_u64().unwrap_or(0)
        + role("fact-check")["recovered"].as_u64().unwrap_or(0);
    assert!(
        recovered > 0,
        "the kills hit running branch jobs: {counts:?}"
    );
    // ...and still exactly one synthesis job ran per task.
    assert_eq!(
        role("synthesis")["done"],
        ids.len(),
        "one synthesis job per task: {counts:?}"
    );
    assert_eq!(role("synthesis")["dead"], 0);
}

#[test]
fn the_synthesis_of_a_parallel_stage_sees_every_branch() {
    let fleet = Fleet::new("join-input").with_pipeline(FAN_OUT);
    let _r = fleet.worker("reasoning").spawn();
    let _c = fleet.agent("critique").spawn();
    let _f = fleet.agent("fact-check").spawn();
    let _s = fleet.worker("synthesis").spawn();
    let id = fleet.cli_ok(&["enqueue", "what joins?"]).trim().to_owned();
    let out = fleet.cli(&["wait", &id, "--timeout", "30"]);
    assert_eq!(out.status.code(), Some(0));
    let record = fleet.record(&id);
    // The mock model's answer counts the words of what it was sent: the synthesis request
    // carried both branches' outputs, each branch's request only reasoning's.
    let words = |role: &str| {
        record
            .output(role)
            .and_then(|o| o.split(" in ").nth(1))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
    };
    assert!(
        words("synthesis") > words("critique").max(words("fact-check")) + 10,
        "{record:?}"
    );
    let shown = fleet.cli_ok(&["status", &id]);
    for role in ["reasoning", "critique", "fact-check", "synthesis"] {
        assert!(shown.contains(&format!("[{role}] done")), "{shown}");
    }
}

#[test]
fn a_dead_branch_makes_the_task_dead_naming_it() {
    let fleet = Fleet::new("dead-branch").with_pipeline(FAN_OUT);
    let _r = fleet.worker("reasoning").spawn();
    let _c = fleet.agent("critique").spawn();
    let failing = fleet
        .agent("fact-check")
        .arg("--mock-fail-rate", 1)
        .arg("--mock-fail-kind", "permanent")
        .spawn();
    let _s = fleet.worker("synthesis").spawn();
    let id = fleet
        .cli_ok(&["enqueue", "doomed branch"])
        .trim()
        .to_owned();
    let out = fleet.cli(&["wait", &id, "--timeout", "30"]);
    assert_eq!(out.status.code(), Some(i32::from(exit::TASK_DEAD)));
    let record = fleet.record(&id);
    assert!(
        record
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("fact-check:")),
        "{record:?}"
    );
    // Critique may or may not have run: a job of a task already dead is not started.
    assert!(record.output("synthesis").is_none(), "no synthesis ran");
    // Replay brings it back through the failed branch (and a sibling that never ran).
    drop(failing);
    let _fixed = fleet.agent("fact-check").spawn();
    fleet.cli_ok(&["dlq", "replay", "fact-check", &id]);
    let out = fleet.cli(&["wait", &id, "--timeout", "30"]);
    assert_eq!(out.status.code(), Some(0));
    let record = fleet.record(&id);
    for role in ["reasoning", "critique", "fact-check", "synthesis"] {
        assert!(record.output(role).is_some(), "{role}: {record:?}");
    }
}

#[test]
fn a_process_of_another_pipeline_is_refused() {
    let fleet = Fleet::new("mismatch").with_pipeline(FAN_OUT);
    fleet.cli_ok(&["enqueue", "records the pipeline"]);
    assert_eq!(fleet.cli_ok(&["pipeline"]).trim(), FAN_OUT);

    let mut other = Fleet::on("mismatch", &fleet.redis_url).with_pipeline("reasoning > synthesis");
    other.namespace = fleet.namespace.clone();
    let out = other.cli(&["enqueue", "wrong pipeline"]);
    assert_eq!(out.status.code(), Some(i32::from(exit::USAGE)));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(FAN_OUT),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut worker = other.worker("reasoning").start();
    assert_eq!(
        worker.wait_exit(Duration::from_secs(10)),
        Some(Some(i32::from(exit::USAGE))),
        "{}",
        worker.log()
    );
    assert!(worker.log().contains("this fleet's pipeline is"));
    // A role that is not in the pipeline is refused too.
    let mut stray = fleet.agent("translator").start();
    assert_eq!(
        stray.wait_exit(Duration::from_secs(10)),
        Some(Some(i32::from(exit::USAGE)))
    );
}
