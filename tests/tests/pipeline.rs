//! The core pipeline end to end: CLI → reasoning worker → synthesis worker, real processes.

use std::time::Duration;

use agentfleet_e2e::{Fleet, tempdir, wait_until};
use agentfleet_job::TaskStatus;

#[test]
fn two_hundred_tasks_flow_through_both_roles() {
    let fleet = Fleet::new("pipeline200");
    let _r = fleet.worker("reasoning").arg("--concurrency", 16).spawn();
    let _s = fleet.worker("synthesis").arg("--concurrency", 16).spawn();
    let ids = fleet.enqueue_many(200, "Why do distributed queues need visibility timeouts?");
    assert_eq!(ids.len(), 200);
    assert!(
        wait_until(Duration::from_secs(60), || fleet
            .count_status(&ids, TaskStatus::Done)
            == 200),
        "not all tasks finished: {:?}",
        fleet.queue_counts()
    );
    for id in ids.iter().step_by(20) {
        let record = fleet.record(id);
        assert_eq!(record.status, TaskStatus::Done);
        assert!(record.output("reasoning").is_some_and(|a| !a.is_empty()));
        assert!(record.answer.as_deref().is_some_and(|a| !a.is_empty()));
        assert_eq!(record.stages["reasoning"].attempts, 1);
        assert_eq!(record.stages["synthesis"].attempts, 1);
        assert!(record.stages["synthesis"].usage.is_some());
        assert!(record.traceparent.is_some());
    }
    // `wait` prints the answer and exits 0 once done.
    let out = fleet.cli(&["wait", &ids[0], "--timeout", "5"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("[mock"));
    let counts = fleet.settled_counts();
    assert_eq!(counts[0]["done"], 200);
    assert_eq!(counts[1]["done"], 200);
    assert_eq!(counts[0]["pending"], 0);
}

#[test]
fn namespaces_on_one_redis_do_not_see_each_other() {
    let a = Fleet::new("ns-a");
    let b = Fleet::new("ns-b");
    let _ra = a.worker("reasoning").spawn();
    let _sa = a.worker("synthesis").spawn();
    let in_a = a.enqueue_many(5, "in a");
    let in_b = b.enqueue_many(3, "in b");
    assert!(wait_until(Duration::from_secs(20), || a
        .count_status(&in_a, TaskStatus::Done)
        == 5));
    // a's workers are done and idle; b has none: its tasks stay queued and untouched, and
    // nothing of a (a worker, a delivery, a counter) shows up in b.
    let a_counts = a.settled_counts();
    assert_eq!(a_counts[1]["done"], 5);
    assert_eq!(b.count_status(&in_b, TaskStatus::Queued), 3);
    for role in b.queue_counts().as_array().expect("roles") {
        let touched = ["in_flight", "done", "retried", "recovered", "dead"]
            .iter()
            .any(|f| role[*f] != 0)
            || role["live_workers"] != serde_json::json!([]);
        assert!(!touched, "a's workers touched b: {role}");
    }
    assert_eq!(b.queue_counts()[0]["pending"], 3);
    // Each namespace's CLI sees only its own tasks, and no key of one is under the other.
    let out = b.cli(&["status", &in_a[0]]);
    assert!(!out.status.success());
    let b_keys = b.keys();
    assert!(
        a.keys().iter().all(|k| !b_keys.contains(k)),
        "the namespaces share keys"
    );
}

#[test]
fn a_bad_line_in_a_file_enqueues_nothing_and_is_named() {
    let fleet = Fleet::new("badfile");
    let dir = tempdir();
    let path = dir.join("tasks.jsonl");
    std::fs::write(
        &path,
        "{\"prompt\": \"fine\"}\n{\"prompt\": \"also fine\", \"metadata\": {\"k\": \"v\"}}\n{\"prompt\": 42}\n{\"prompt\": \"never reached\"}\n",
    )
    .unwrap();
    let out = fleet.cli(&["enqueue", "--file", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(":3:"), "error should name line 3: {stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(fleet.queue_counts()[0]["pending"], 0);
    assert!(
        fleet.keys().is_empty(),
        "nothing may be written: {:?}",
        fleet.keys()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn status_of_an_unknown_id_is_a_clear_error() {
    let fleet = Fleet::new("unknown");
    for id in ["01JAAAAAAAAAAAAAAAAAAAAAAA", "not-a-ulid"] {
        let out = fleet.cli(&["status", id]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(stderr.contains("not found"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let out = fleet.cli(&["wait", "01JAAAAAAAAAAAAAAAAAAAAAAA", "--timeout", "1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[test]
fn wait_times_out_with_exit_code_2() {
    let fleet = Fleet::new("waittimeout");
    let id = fleet
        .cli_ok(&["enqueue", "no worker will take this"])
        .trim()
        .to_owned();
    let out = fleet.cli(&["wait", &id, "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(fleet.record(&id).status, TaskStatus::Queued);
}

#[test]
fn a_worker_started_before_redis_answers_connects_when_it_does() {
    let mut redis = agentfleet_e2e::PrivateRedis::start();
    let fleet = Fleet::on("lateredis", &redis.url());
    redis.stop();
    let worker = fleet
        .worker("reasoning")
        .arg("--lease-timeout-secs", 3)
        .spawn();
    assert!(wait_until(Duration::from_secs(5), || worker
        .http_status("/readyz")
        == Some(503)));
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(15), || worker.http_status("/readyz")
            == Some(200)),
        "worker did not become ready after redis came up:\n{}",
        worker.log()
    );
    let _s = fleet.worker("synthesis").spawn();
    let ids = fleet.enqueue_many(3, "late");
    assert!(wait_until(Duration::from_secs(20), || fleet
        .count_status(&ids, TaskStatus::Done)
        == 3));
}
