//! The CLI as a daily tool (issue 18), with the real `agentfleet` binary, real workers and a
//! real Redis: every flag takes effect or is refused (exit 64), prompts from files and
//! standard input, JSONL errors all at once, dead letters you can work with, batches, output
//! that is line-based when it is not a terminal, and errors that say where Redis is.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use agentfleet_e2e::{Fleet, bin, free_port, tempdir, wait_until};
use agentfleet_job::{TaskStatus, exit};
use nix::sys::signal::Signal;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The batch id `enqueue --file/--count` announces on stderr.
fn batch_of(out: &std::process::Output) -> String {
    let err = stderr(out);
    err.split("batch ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no batch id announced: {err}"))
}

/// The task ids of a batch, straight from Redis.
fn batch_ids(fleet: &Fleet, batch: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(fleet.ns().batch(batch))
        .arg(0)
        .arg(-1)
        .query(&mut fleet.conn())
        .expect("read the batch")
}

/// Task records under the namespace (none after a refused enqueue).
fn task_keys(fleet: &Fleet) -> usize {
    let prefix = fleet.ns().task("");
    fleet
        .keys()
        .iter()
        .filter(|k| k.starts_with(&prefix))
        .count()
}

#[test]
fn every_ignored_combination_is_refused_with_64() {
    let fleet = Fleet::new("cli-usage");
    let dir = tempdir();
    let file = dir.join("t.jsonl");
    std::fs::write(&file, "{\"prompt\": \"a\"}\n").unwrap();
    let file = file.to_str().unwrap();
    for args in [
        vec![
            "enqueue",
            "--count",
            "2",
            "--prompt",
            "x",
            "--idempotency-key",
            "k",
        ],
        vec!["enqueue", "--file", file, "--idempotency-key", "k"],
        vec!["enqueue", "x", "--meta", "a=1", "--meta", "a=2"],
        vec!["enqueue", "--count", "0", "--prompt", "x"],
        vec!["enqueue", "--file", file, "--prompt", "x"],
        vec!["enqueue", "x", "--prompt-file", file],
        vec!["enqueue", "--count", "2"],
        // Fleet flags only where they are used.
        vec!["status", "01NOTREAL", "--lease-timeout-secs", "3"],
        vec!["dlq", "list", "--record-ttl-secs", "5"],
        vec!["bench", "--namespace", "x"],
        vec!["queues", "--json", "--watch"],
        vec!["wait", "01NOTREAL", "--batch", "b"],
    ] {
        let out = fleet.cli(&args);
        assert_eq!(
            out.status.code(),
            Some(exit::USAGE as i32),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(!stderr(&out).is_empty(), "{args:?} says why");
    }
    assert_eq!(task_keys(&fleet), 0, "nothing was enqueued");

    // The worker refuses --concurrency 0.
    let out = Command::new(bin("reasoning-worker"))
        .args(["--concurrency", "0"])
        .envs(fleet.redis.to_env())
        .env("AGENTFLEET_NAMESPACE", &fleet.namespace)
        .output()
        .expect("run the worker");
    assert_eq!(
        out.status.code(),
        Some(exit::USAGE as i32),
        "{}",
        stderr(&out)
    );

    // --meta applies to every task of --file (a line's own key wins) and of --count.
    std::fs::write(
        dir.join("m.jsonl"),
        "{\"prompt\": \"a\", \"metadata\": {\"team\": \"own\"}}\n{\"prompt\": \"b\"}\n",
    )
    .unwrap();
    let ids = fleet.cli_ok(&[
        "enqueue",
        "--file",
        dir.join("m.jsonl").to_str().unwrap(),
        "--meta",
        "team=flag",
        "--meta",
        "env=test",
    ]);
    let ids: Vec<&str> = ids.lines().collect();
    assert_eq!(ids.len(), 2);
    let a = fleet.record(ids[0]);
    let b = fleet.record(ids[1]);
    assert_eq!(a.metadata["team"], "own");
    assert_eq!(a.metadata["env"], "test");
    assert_eq!(b.metadata["team"], "flag");
    let out = fleet.cli(&["enqueue", "--count", "3", "--prompt", "x", "--meta", "k=v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let members = batch_ids(&fleet, &batch_of(&out));
    assert_eq!(members.len(), 3);
    for id in &members {
        assert_eq!(fleet.record(id).metadata["k"], "v");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn prompt_file_and_standard_input() {
    let fleet = Fleet::new("cli-input");
    let dir = tempdir();
    // Over the kernel's 128 KiB limit of one argument: only a file can carry it.
    let big: String = "long prompt line\n".repeat(12_000);
    let path = dir.join("big.txt");
    std::fs::write(&path, &big).unwrap();
    let id = fleet.cli_ok(&["enqueue", "--prompt-file", path.to_str().unwrap()]);
    assert_eq!(fleet.record(id.trim()).prompt, big);

    let piped = |args: &[&str], input: &str| {
        let mut child = Command::new(bin("agentfleet"))
            .args(args)
            .envs(fleet.redis.to_env())
            .env("AGENTFLEET_NAMESPACE", &fleet.namespace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run agentfleet");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().expect("agentfleet exits")
    };
    let out = piped(
        &["enqueue", "--prompt-file", "-"],
        "from stdin\nwith two lines",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fleet.record(stdout(&out).trim()).prompt,
        "from stdin\nwith two lines"
    );

    let out = piped(
        &["enqueue", "--file", "-"],
        "{\"prompt\": \"one\", \"metadata\": {\"n\": 5, \"ok\": true, \"s\": \"x\"}}\n{\"prompt\": \"two\"}\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let ids: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), 2);
    let one = fleet.record(&ids[0]);
    assert_eq!(one.prompt, "one");
    assert_eq!(one.metadata["n"], "5", "numbers are stored as their text");
    assert_eq!(one.metadata["ok"], "true", "booleans too");
    assert_eq!(batch_ids(&fleet, &batch_of(&out)), ids);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn jsonl_with_four_bad_lines_reports_all_four_and_enqueues_nothing() {
    let fleet = Fleet::new("cli-jsonl");
    let dir = tempdir();
    let path = dir.join("tasks.jsonl");
    std::fs::write(
        &path,
        [
            r#"{"prompt": "good one"}"#,
            r#"{"prompt": "typo", "priorty": 5}"#,
            r#"not json"#,
            r#"{"prompt": "good two", "metadata": {"n": 1.5}}"#,
            r#"{"prompt": "nested", "metadata": {"k": {"a": 1}}}"#,
            r#"{"prompt": "   "}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out = fleet.cli(&["enqueue", "--file", path.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE as i32), "{err}");
    assert!(err.contains("4 bad line(s)"), "{err}");
    for line in [2, 3, 5, 6] {
        assert!(
            err.contains(&format!("tasks.jsonl:{line}:")),
            "line {line}: {err}"
        );
    }
    for line in [1, 4] {
        assert!(
            !err.contains(&format!("tasks.jsonl:{line}:")),
            "line {line}: {err}"
        );
    }
    assert!(err.contains("priorty"), "the unknown field is named: {err}");
    assert_eq!(task_keys(&fleet), 0, "nothing was enqueued");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn dead_letters_as_objects_replay_unknown_exits_3_and_replayed_age_restarts() {
    let fleet = Fleet::new("cli-dlq");
    let mut failing = fleet
        .worker("reasoning")
        .arg("--mock-fail-rate", 1)
        .arg("--mock-fail-kind", "permanent")
        .spawn();
    let out = fleet.cli(&[
        "enqueue", "--count", "2", "--prompt", "doomed", "--meta", "team=x",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ids = batch_ids(&fleet, &batch_of(&out));
    assert!(wait_until(Duration::from_secs(20), || fleet
        .count_status(&ids, TaskStatus::Dead)
        == 2));
    failing.signal(Signal::SIGTERM);
    assert_eq!(failing.wait_exit(Duration::from_secs(10)), Some(Some(0)));

    // Across roles (no role given), payloads as objects, with the task's prompt.
    let listed: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["dlq", "list", "--json"])).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for l in listed {
        assert!(l["payload"].is_object(), "payload is an object: {l}");
        assert_eq!(l["payload"]["attempt"], 1);
        assert_eq!(l["prompt"], "doomed");
        assert_eq!(l["metadata"]["team"], "x");
    }
    let shown: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["dlq", "show", &ids[0], "--json"])).unwrap();
    assert!(shown["payload"].is_object(), "{shown}");
    let none: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["dlq", "list", "--class", "transient", "--json"]))
            .unwrap();
    assert_eq!(none.as_array().map(Vec::len), Some(0), "filtered by class");
    let table = fleet.cli_ok(&[
        "dlq",
        "list",
        "reasoning",
        "--class",
        "permanent",
        "--since",
        "1h",
    ]);
    assert!(
        table.contains("doomed") && table.contains("team=x"),
        "{table}"
    );
    let human = fleet.cli_ok(&["dlq", "show", &ids[0]]);
    assert!(human.contains(" ago)"), "times with their age: {human}");

    // Unknown ids: named, exit 3.
    let out = fleet.cli(&["dlq", "replay", "reasoning", "01NOTREAL"]);
    assert_eq!(out.status.code(), Some(exit::NOT_FOUND as i32));
    assert!(stderr(&out).contains("01NOTREAL"), "{}", stderr(&out));
    let out = fleet.cli(&["dlq", "purge", "reasoning", "01NOTREAL", "--yes"]);
    assert_eq!(out.status.code(), Some(exit::NOT_FOUND as i32));
    assert!(stderr(&out).contains("01NOTREAL"), "{}", stderr(&out));

    // A replayed entry is enqueued now (no worker runs, so it stays pending).
    let died_at = listed[0]["dead_at_ms"].as_u64().unwrap();
    let original = listed[0]["payload"]["enqueued_at_ms"].as_u64().unwrap();
    let before_replay = agentfleet_job::now_ms();
    fleet.cli_ok(&["dlq", "replay", "reasoning", &ids[0]]);
    let pending: Vec<String> = redis::cmd("LRANGE")
        .arg(fleet.queue_keys("reasoning").pending())
        .arg(0)
        .arg(-1)
        .query(&mut fleet.conn())
        .unwrap();
    assert_eq!(pending.len(), 1);
    let entry: serde_json::Value = serde_json::from_str(&pending[0]).unwrap();
    let enqueued = entry["enqueued_at_ms"].as_u64().unwrap();
    assert!(
        enqueued >= before_replay && enqueued > original && enqueued >= died_at,
        "replayed entry enqueued at {enqueued}, replay at {before_replay}, first enqueue {original}"
    );
    assert_eq!(entry["attempt"], 0);
    let age = fleet.queue_counts()[0]["oldest_pending_age_ms"]
        .as_u64()
        .unwrap();
    let since_replay = agentfleet_job::now_ms() - before_replay;
    assert!(
        age <= since_replay + 1_000,
        "pending age {age} ms starts at the replay"
    );
    // The record keeps its history: created before the replay.
    assert!(fleet.record(&ids[0]).created_at_ms <= original);
}

#[test]
fn wait_batch_exits_0_when_the_batch_is_done() {
    let fleet = Fleet::new("cli-batch");
    let _r = fleet.worker("reasoning").spawn();
    let _s = fleet.worker("synthesis").spawn();
    let out = fleet.cli(&["enqueue", "--count", "5", "--prompt", "batched"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).is_empty(),
        "ids of --count are in the batch, not on stdout"
    );
    let batch = batch_of(&out);
    let waited = fleet.cli(&["wait", "--batch", &batch, "--timeout", "60"]);
    assert_eq!(waited.status.code(), Some(0), "{}", stderr(&waited));
    assert!(!stderr(&waited).contains('\r'), "no bar off a terminal");
    assert!(
        stdout(&waited).contains("finished  5/5"),
        "{}",
        stdout(&waited)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["status", "--batch", &batch, "--json"])).unwrap();
    assert_eq!(summary["tasks"], 5);
    assert_eq!(summary["by_status"]["done"], 5);
    assert!(summary["oldest_unfinished"].is_null());
    // The batch expires with the records.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(fleet.ns().batch(&batch))
        .query(&mut fleet.conn())
        .unwrap();
    assert!(ttl > 0 && ttl <= 7 * 24 * 3600 * 1000, "{ttl}");

    let out = fleet.cli(&["wait", "--batch", "01NOSUCHBATCH"]);
    assert_eq!(out.status.code(), Some(exit::NOT_FOUND as i32));
}

#[test]
fn progress_off_a_terminal_is_line_based() {
    let fleet = Fleet::new("cli-progress");
    let out = fleet.cli(&["enqueue", "--count", "20000", "--prompt", "load"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains('\r'), "no carriage returns: {err:?}");
    assert!(!err.contains('['), "no bar: {err}");
    assert!(
        err.lines().any(|l| l == "agentfleet: enqueued 20000/20000"),
        "a final progress line of its own: {err}"
    );
}

#[test]
fn queues_watch_refreshes_with_rates() {
    let fleet = Fleet::new("cli-watch");
    fleet.cli_ok(&["enqueue", "hello"]);
    let mut child = Command::new(bin("agentfleet"))
        .args(["queues", "--watch", "1"])
        .envs(fleet.redis.to_env())
        .env("AGENTFLEET_NAMESPACE", &fleet.namespace)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run agentfleet");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut headers = 0;
    let mut seen = Vec::new();
    while headers < 2 {
        let Some(Ok(line)) = lines.next() else { break };
        if line.starts_with("ROLE") {
            headers += 1;
            assert!(line.contains("RATE/s"), "{line}");
        }
        seen.push(line);
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGINT,
    );
    let status = child.wait().expect("watch exits");
    assert_eq!(headers, 2, "two refreshes: {seen:?}");
    assert_eq!(status.code(), Some(0), "Ctrl-C ends the watch cleanly");
}

#[test]
fn connection_error_names_the_address_once_without_the_password() {
    let fleet = Fleet::new("cli-conn");
    let port = free_port();
    let url = format!("redis://someone:canary-pw-123@127.0.0.1:{port}");
    let out = fleet.cli_with(&["queues"], &[("REDIS_URL", url.as_str())]);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(exit::REDIS_UNAVAILABLE as i32),
        "{err}"
    );
    let address = format!("127.0.0.1:{port}");
    assert_eq!(err.matches(&address).count(), 1, "the address once: {err}");
    assert!(!err.contains("canary-pw-123"), "{err}");
    assert!(
        err.matches("refused").count() <= 1,
        "the cause once, not repeated: {err}"
    );

    // An HTTP server where Redis should be: one clear line.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let url = format!("redis://127.0.0.1:{http}");
    let out = fleet.cli_with(&["queues"], &[("REDIS_URL", url.as_str())]);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(exit::REDIS_UNAVAILABLE as i32),
        "{err}"
    );
    assert_eq!(
        err.matches(&format!("127.0.0.1:{http}")).count(),
        1,
        "{err}"
    );
    assert!(err.lines().count() <= 2, "{err}");
}

#[test]
fn worker_start_line_says_where_once_and_an_idle_worker_exits_0_on_sigterm_without_redis() {
    let mut redis = agentfleet_e2e::PrivateRedis::start();
    let fleet = Fleet::on("cli-worker", &redis.url());
    let provider = agentfleet_e2e::FakeProvider::start("an answer".to_owned());
    let mut worker = fleet
        .worker("reasoning")
        .arg("--provider", "openai")
        .arg("--model", "gpt-test")
        .arg("--base-url", provider.base_url())
        .spawn();
    assert!(wait_until(Duration::from_secs(10), || worker
        .log()
        .contains("worker started")));
    let log = worker.log();
    let start: Vec<&str> = log.lines().filter(|l| l.contains("started")).collect();
    assert_eq!(start.len(), 1, "one start line: {log}");
    let line = start[0];
    let address = redis.url().trim_start_matches("redis://").to_owned();
    for part in [
        address.as_str(),
        fleet.namespace.as_str(),
        "reasoning",
        "openai",
        "gpt-test",
        provider.base_url().as_str(),
    ] {
        assert!(
            line.contains(part),
            "{part} missing from the start line: {line}"
        );
    }

    // Idle, Redis gone, SIGTERM: a clean exit.
    redis.stop();
    worker.signal(Signal::SIGTERM);
    assert_eq!(
        worker.wait_exit(Duration::from_secs(30)),
        Some(Some(0)),
        "{}",
        worker.log()
    );
}
