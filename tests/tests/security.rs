//! Production Redis and hostile input: TLS (server-only and mutual), least-privilege ACL
//! users, passwords never printed, size limits, and every exit code of README's table.
//! Real redis-servers (private ones, so the shared Redis is never reconfigured), real
//! certificates made with openssl, real worker and CLI processes.

use std::time::Duration;

use agentfleet_e2e::{Certs, FakeProvider, Fleet, PrivateRedis, TlsRedis, tempdir, wait_until};
use agentfleet_job::{Envelope, StageJob, TaskId, TaskStatus, exit};
use agentfleet_queue::RedisArgs;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Both roles on `fleet`, `n` tasks through them, `wait` and `status` on the CLI.
fn pipeline_completes(fleet: &Fleet, n: usize) {
    let _r = fleet.worker("reasoning").spawn();
    let _s = fleet.worker("synthesis").spawn();
    let ids = fleet.enqueue_many(n, "over a secured connection");
    assert_eq!(ids.len(), n);
    assert!(
        wait_until(Duration::from_secs(30), || fleet
            .count_status(&ids, TaskStatus::Done)
            == n),
        "tasks did not finish: {:?}",
        fleet.statuses(&ids)
    );
    let out = fleet.cli(&["wait", &ids[0], "--timeout", "5"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(fleet.record(&ids[0]).status, TaskStatus::Done);
}

#[test]
fn the_pipeline_runs_over_tls_then_mutual_tls() {
    let certs = Certs::generate();

    // Server-only TLS: the client checks the server against --redis-ca-file.
    let server_only = TlsRedis::start(&certs, false);
    let fleet = Fleet::with("tls", server_only.args(&certs));
    pipeline_completes(&fleet, 5);

    // Mutual TLS: the server also checks our certificate.
    let mutual = TlsRedis::start(&certs, true);
    let fleet = Fleet::with("mtls", mutual.mutual_args(&certs));
    pipeline_completes(&fleet, 5);

    // Without a client certificate the mutual-TLS server refuses us: Redis exit code, and
    // the message says which flags to look at.
    let mut no_cert = fleet.redis.clone();
    no_cert.client_cert = None;
    no_cert.client_key = None;
    let out = std::process::Command::new(agentfleet_e2e::bin("agentfleet"))
        .args(["queues"])
        .envs(no_cert.to_env())
        .env("AGENTFLEET_NAMESPACE", &fleet.namespace)
        .output()
        .expect("run agentfleet");
    assert_eq!(out.status.code(), Some(exit::REDIS_UNAVAILABLE as i32));
    assert!(
        stderr(&out).contains("--redis-client-cert"),
        "{}",
        stderr(&out)
    );

    // A plain-TCP client cannot talk to a TLS-only port: refused, not hung.
    let plain = Fleet::with(
        "tls-plain",
        RedisArgs::plain(format!("redis://127.0.0.1:{}", mutual.port)),
    );
    let out = plain.cli(&["queues"]);
    assert_eq!(
        out.status.code(),
        Some(exit::REDIS_UNAVAILABLE as i32),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_wrong_ca_stops_workers_and_the_cli_at_start_up_naming_the_flag() {
    let certs = Certs::generate();
    let redis = TlsRedis::start(&certs, false);
    let fleet = Fleet::with("wrongca", redis.args(&certs));
    let mut wrong = redis.args(&certs);
    wrong.ca_file = Some(certs.path("wrong-ca.crt"));

    for role in ["reasoning", "synthesis"] {
        let mut worker = fleet
            .worker(role)
            .env(
                "AGENTFLEET_REDIS_CA_FILE",
                wrong.ca_file.as_ref().unwrap().display(),
            )
            .start();
        let code = worker.wait_exit(Duration::from_secs(15));
        assert_eq!(
            code,
            Some(Some(exit::REDIS_UNAVAILABLE as i32)),
            "{role} worker with the wrong CA must stop at start-up:\n{}",
            worker.log()
        );
        assert!(
            wait_until(Duration::from_secs(2), || worker
                .log()
                .contains("--redis-ca-file")),
            "{}",
            worker.log()
        );
    }
    let out = fleet.cli_with(
        &["queues"],
        &[(
            "AGENTFLEET_REDIS_CA_FILE",
            wrong.ca_file.as_ref().unwrap().to_str().unwrap(),
        )],
    );
    assert_eq!(out.status.code(), Some(exit::REDIS_UNAVAILABLE as i32));
    assert!(stderr(&out).contains("--redis-ca-file"), "{}", stderr(&out));

    // A CA file that is no certificate at all is a usage error, named, before connecting.
    let dir = tempdir();
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let out = fleet.cli_with(
        &["queues"],
        &[("AGENTFLEET_REDIS_CA_FILE", junk.to_str().unwrap())],
    );
    assert_eq!(
        out.status.code(),
        Some(exit::USAGE as i32),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--redis-ca-file"), "{}", stderr(&out));
    let mut worker = fleet
        .worker("reasoning")
        .env("AGENTFLEET_REDIS_CA_FILE", junk.display())
        .start();
    assert_eq!(
        worker.wait_exit(Duration::from_secs(15)),
        Some(Some(exit::USAGE as i32))
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_pipeline_runs_as_the_readme_acl_users_and_fails_clearly_without_them() {
    let redis = PrivateRedis::start();
    let admin = Fleet::on("acl", &redis.url());
    let ns = admin.namespace.clone();
    for (user, password) in [
        ("agentfleet-worker", "w0rker-pw"),
        ("agentfleet-cli", "cl1-pw"),
    ] {
        let rule = agentfleet_e2e::readme_acl(user, &ns, password);
        let args: Vec<&str> = rule.iter().map(String::as_str).collect();
        redis
            .admin(&args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }
    let worker_url = redis.user_url("agentfleet-worker", "w0rker-pw");
    let cli_url = redis.user_url("agentfleet-cli", "cl1-pw");

    // Workers as the worker user, the CLI as the CLI user.
    let mut as_workers = Fleet::on("acl", &worker_url);
    as_workers.namespace = ns.clone();
    let mut as_cli = Fleet::on("acl", &cli_url);
    as_cli.namespace = ns.clone();
    // Guardrails that park one task for review, so that the review commands run too.
    let dir = agentfleet_e2e::tempdir();
    let guardrails = dir.join("guardrails.toml");
    std::fs::write(
        &guardrails,
        "[reasoning.input]\ndeny = [\"park me\"]\naction = \"review\"\n",
    )
    .unwrap();
    let r = as_workers
        .worker("reasoning")
        .arg("--guardrails", guardrails.display())
        .spawn();
    let s = as_workers.worker("synthesis").spawn();
    let ids = as_cli.enqueue_many(5, "least privilege");
    let single = as_cli.cli_ok(&["enqueue", "one more", "--idempotency-key", "acl-k"]);
    assert_eq!(
        as_cli.cli_ok(&["enqueue", "one more", "--idempotency-key", "acl-k"]),
        single
    );
    assert!(
        wait_until(Duration::from_secs(30), || as_cli
            .count_status(&ids, TaskStatus::Done)
            == 5),
        "{}\n{}",
        r.log(),
        s.log()
    );
    as_cli.cli_ok(&["wait", single.trim(), "--timeout", "30"]);
    as_cli.cli_ok(&["status", &ids[0], "--json"]);
    as_cli.cli_ok(&["queues", "--json"]);

    // A dead letter (an entry pushed by someone else), handled with every dlq command.
    redis
        .admin(&[
            "LPUSH",
            &admin.queue_keys("reasoning").pending(),
            "not json",
        ])
        .unwrap();
    assert!(wait_until(Duration::from_secs(15), || as_cli
        .queue_counts()[0]["dead"]
        == 1));
    let listed: serde_json::Value =
        serde_json::from_str(&as_cli.cli_ok(&["dlq", "list", "reasoning", "--json"])).unwrap();
    let dead_id = listed[0]["job_id"].as_str().unwrap().to_owned();
    as_cli.cli_ok(&["dlq", "show", &dead_id]);
    as_cli.cli_ok(&["dlq", "replay", "reasoning", &dead_id]);
    assert!(wait_until(Duration::from_secs(15), || as_cli
        .queue_counts()[0]["dead"]
        == 1));
    as_cli.cli_ok(&["dlq", "purge", "reasoning", "--all", "--yes"]);

    // Review: park, list, show, reject one; park, approve another and see it finish.
    for verdict in ["reject", "approve"] {
        let parked = as_cli
            .cli_ok(&["enqueue", "please park me"])
            .trim()
            .to_owned();
        assert!(wait_until(Duration::from_secs(15), || as_cli.count_status(
            std::slice::from_ref(&parked),
            TaskStatus::Review
        ) == 1));
        as_cli.cli_ok(&["review", "list"]);
        as_cli.cli_ok(&["review", "show", &parked]);
        as_cli.cli_ok(&[
            "review",
            verdict,
            &parked,
            "--user",
            "acl",
            "--note",
            "least privilege",
        ]);
        let end = if verdict == "reject" {
            TaskStatus::Dead
        } else {
            TaskStatus::Done
        };
        assert!(wait_until(Duration::from_secs(15), || as_cli
            .count_status(std::slice::from_ref(&parked), end)
            == 1));
    }
    let _ = std::fs::remove_dir_all(dir);
    // Nothing either user did was refused (redis-rs, for one, ignores a refused
    // CLIENT SETINFO; the ACL log still records it).
    let log = redis.admin(&["ACL", "LOG"]).unwrap();
    assert_eq!(log, redis::Value::Array(Vec::new()), "refused: {log:?}");

    // A user without the rule's rights: the CLI says Redis refused, with the reason.
    redis
        .admin(&[
            "ACL",
            "SETUSER",
            "nobody",
            "on",
            ">n0body-pw",
            "~other:*",
            "+@all",
        ])
        .unwrap();
    let mut as_nobody = Fleet::on("acl", &redis.user_url("nobody", "n0body-pw"));
    as_nobody.namespace = ns.clone();
    let out = as_nobody.cli(&["enqueue", "not allowed"]);
    assert_eq!(
        out.status.code(),
        Some(exit::REDIS_UNAVAILABLE as i32),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).to_lowercase().contains("noperm"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("ACL"), "{}", stderr(&out));
    // ... and a wrong password stops a worker at start-up.
    let mut worker = as_workers
        .worker("reasoning")
        .env("REDIS_URL", redis.user_url("agentfleet-worker", "wrong"))
        .start();
    assert_eq!(
        worker.wait_exit(Duration::from_secs(15)),
        Some(Some(exit::REDIS_UNAVAILABLE as i32)),
        "{}",
        worker.log()
    );
}

const CANARY: &str = "canary-pw-5e1f0c";

#[test]
fn a_redis_password_appears_in_no_output_of_any_command() {
    let redis = PrivateRedis::start_with_password(Some(CANARY));
    let fleet = Fleet::on("canary", &redis.url());
    assert!(fleet.redis_url.contains(CANARY));
    let mut outputs: Vec<(String, String)> = Vec::new();
    let both = |out: std::process::Output| format!("{}{}", stdout(&out), stderr(&out));

    let reasoning = fleet.worker("reasoning").env("RUST_LOG", "trace").spawn();
    let synthesis = fleet.worker("synthesis").env("RUST_LOG", "trace").spawn();
    let ids = fleet.enqueue_many(3, "keep a secret");
    assert!(wait_until(Duration::from_secs(30), || fleet
        .count_status(&ids, TaskStatus::Done)
        == 3));
    for args in [
        vec!["enqueue", "one", "--idempotency-key", "k"],
        vec!["status", &ids[0]],
        vec!["wait", &ids[0]],
        vec!["queues"],
        vec!["dlq", "list", "reasoning"],
        vec!["--help"],
        vec!["enqueue", "--help"],
        // Error paths: unknown id, usage error, no Redis there, refused password.
        vec!["status", "01JAAAAAAAAAAAAAAAAAAAAAAA"],
        vec!["dlq", "list", "reasoning", "--limit", "0"],
        vec!["bench", "--quick", "--scenario", "enqueue-single"],
    ] {
        outputs.push((format!("{args:?}"), both(fleet.cli(&args))));
    }
    let unreachable = format!(
        "redis://:{CANARY}@127.0.0.1:{}",
        agentfleet_e2e::free_port()
    );
    let wrong = format!("redis://:{CANARY}-wrong@127.0.0.1:{}", redis.port);
    let bad = format!("redis://:{CANARY}@[::1");
    for url in [&unreachable, &wrong, &bad] {
        let out = fleet.cli_with(&["queues"], &[("REDIS_URL", url)]);
        assert_ne!(out.status.code(), Some(0));
        outputs.push((format!("queues at {url}"), both(out)));
        let mut w = fleet
            .worker("reasoning")
            .env("REDIS_URL", url)
            .env("RUST_LOG", "trace")
            .start();
        if url != &unreachable {
            assert!(
                w.wait_exit(Duration::from_secs(15)).is_some(),
                "{}",
                w.log()
            );
        } else {
            assert!(wait_until(Duration::from_secs(10), || w
                .http_status("/readyz")
                == Some(503)));
            outputs.push(("metrics of a worker waiting for Redis".into(), w.metrics()));
        }
        outputs.push((format!("worker at {url}"), w.log()));
    }
    outputs.push(("reasoning /metrics".into(), reasoning.metrics()));
    outputs.push(("synthesis /metrics".into(), synthesis.metrics()));
    outputs.push(("reasoning log".into(), reasoning.log()));
    outputs.push(("synthesis log".into(), synthesis.log()));
    drop(reasoning);
    drop(synthesis);

    for (what, text) in &outputs {
        assert!(
            !text.contains(CANARY),
            "{what} printed the password:\n{text}"
        );
    }
    // They did print something, and the URL where it helps, redacted.
    let all: String = outputs.iter().map(|(_, t)| t.as_str()).collect();
    assert!(all.contains(":***@127.0.0.1"), "no redacted URL anywhere");
    assert!(
        all.contains("TRACE") || all.contains("trace"),
        "trace logs were on"
    );
}

/// A task written straight into Redis, as a producer other than the CLI might write it: its
/// record (with `prompt`) and its first entry, padded with `padding` bytes of junk that a
/// reader ignores.
fn raw_task(fleet: &Fleet, prompt: String, padding: usize) -> (String, String) {
    let task_id = TaskId::new();
    let namespace = agentfleet_queue::Namespace::new(&fleet.namespace).unwrap();
    let _: () = redis::cmd("HSET")
        .arg(namespace.task(&task_id.to_string()))
        .arg("status")
        .arg("queued")
        .arg("prompt")
        .arg(prompt)
        .arg("pipeline")
        .arg(agentfleet_job::DEFAULT_PIPELINE)
        .query(&mut fleet.conn())
        .unwrap();
    let mut entry = serde_json::to_value(Envelope::new(
        task_id.to_string(),
        StageJob {
            task_id,
            stage: 0,
            trace: None,
        },
    ))
    .unwrap();
    entry["args"]["padding"] = serde_json::Value::String("h".repeat(padding));
    (task_id.to_string(), entry.to_string())
}

#[test]
fn oversize_input_is_refused_by_the_cli_and_dead_lettered_by_workers_without_a_provider_call() {
    let fleet = Fleet::new("oversize");
    // The CLI: a prompt one byte over, on the command line and on line 2 of a file.
    let limit = "1000";
    let env = [("AGENTFLEET_MAX_PROMPT_BYTES", limit)];
    let out = fleet.cli_with(&["enqueue", &"x".repeat(1001)], &env);
    assert_eq!(out.status.code(), Some(exit::USAGE as i32));
    assert!(
        stderr(&out).contains("1001 bytes") && stderr(&out).contains("1000"),
        "{}",
        stderr(&out)
    );
    let dir = tempdir();
    let file = dir.join("tasks.jsonl");
    let ok = serde_json::json!({"prompt": "fine"}).to_string();
    let big = serde_json::json!({"prompt": "y".repeat(1001)}).to_string();
    std::fs::write(&file, format!("{ok}\n{big}\n{ok}\n")).unwrap();
    let out = fleet.cli_with(&["enqueue", "--file", file.to_str().unwrap()], &env);
    assert_eq!(out.status.code(), Some(exit::USAGE as i32));
    assert!(
        stderr(&out).contains("tasks.jsonl:2:") && stderr(&out).contains("1001 bytes"),
        "{}",
        stderr(&out)
    );
    // A line over --max-line-bytes is named with its size, without being parsed.
    let long = serde_json::json!({"prompt": "z".repeat(5000)}).to_string();
    std::fs::write(&file, format!("{ok}\n{ok}\n{long}\n")).unwrap();
    let out = fleet.cli_with(
        &[
            "enqueue",
            "--file",
            file.to_str().unwrap(),
            "--max-line-bytes",
            "4096",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(exit::USAGE as i32));
    let msg = stderr(&out);
    assert!(
        msg.contains("tasks.jsonl:3:")
            && msg.contains(&format!("{} bytes", long.len()))
            && msg.contains("--max-line-bytes"),
        "{msg}"
    );
    // Metadata: too many entries, and one too big.
    let out = fleet.cli_with(
        &["enqueue", "p", "--meta", "a=1", "--meta", "b=2"],
        &[("AGENTFLEET_MAX_METADATA_ENTRIES", "1")],
    );
    assert_eq!(
        out.status.code(),
        Some(exit::USAGE as i32),
        "{}",
        stderr(&out)
    );
    let out = fleet.cli(&["enqueue", "p", "--meta", &format!("k={}", "v".repeat(2000))]);
    assert_eq!(
        out.status.code(),
        Some(exit::USAGE as i32),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("2001 bytes"), "{}", stderr(&out));
    assert!(
        fleet.keys().is_empty(),
        "nothing may be enqueued: {:?}",
        fleet.keys()
    );
    let _ = std::fs::remove_dir_all(dir);

    // Workers: entries pushed straight into Redis, over the prompt limit and over any
    // entry a task within the limits makes.
    let provider = FakeProvider::start("an answer".to_owned());
    let (over_prompt, entry1) = raw_task(&fleet, "p".repeat(1001), 0);
    let (huge, entry2) = raw_task(&fleet, "fine".to_owned(), 4 * 1024 * 1024);
    let mut conn = fleet.conn();
    let _: () = redis::cmd("LPUSH")
        .arg(fleet.queue_keys("reasoning").pending())
        .arg(&entry1)
        .arg(&entry2)
        .query(&mut conn)
        .unwrap();
    let _r = fleet
        .worker("reasoning")
        .arg("--provider", "openai")
        .arg("--base-url", provider.base_url())
        .arg("--max-prompt-bytes", limit)
        .spawn();
    assert!(wait_until(Duration::from_secs(15), || fleet.queue_counts()
        [0]["dead"]
        == 2));
    for (id, size) in [(&over_prompt, "1001 bytes"), (&huge, "bytes")] {
        let letter: serde_json::Value =
            serde_json::from_str(&fleet.cli_ok(&["dlq", "show", id, "--json"])).unwrap();
        assert_eq!(letter["error_class"], "too_large", "{letter}");
        assert!(letter["error"].as_str().unwrap().contains(size), "{letter}");
    }
    assert_eq!(provider.calls(), 0, "the provider must not be called");
}

#[test]
fn an_oversize_provider_answer_is_dead_lettered_with_both_sizes() {
    let fleet = Fleet::new("bigansw");
    let provider = FakeProvider::start("a".repeat(3000));
    let _r = fleet
        .worker("reasoning")
        .arg("--provider", "openai")
        .arg("--base-url", provider.base_url())
        .arg("--max-output-bytes", 2000)
        .spawn();
    let id = fleet.cli_ok(&["enqueue", "say a lot"]).trim().to_owned();
    assert!(wait_until(Duration::from_secs(15), || fleet.queue_counts()
        [0]["dead"]
        == 1));
    let letter: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["dlq", "show", &id, "--json"])).unwrap();
    let error = letter["error"].as_str().unwrap();
    assert!(
        error.contains("3000 bytes") && error.contains("2000"),
        "{letter}"
    );
    assert_eq!(letter["error_class"], "permanent");
    assert_eq!(letter["attempts"], 1, "not retried");
    assert_eq!(provider.calls(), 1);
    let out = fleet.cli(&["wait", &id, "--timeout", "10"]);
    assert_eq!(out.status.code(), Some(exit::TASK_DEAD as i32));
}

#[test]
fn a_repeated_idempotent_enqueue_prints_the_first_id_and_writes_nothing() {
    let fleet = Fleet::new("idem");
    let first = fleet.cli_ok(&["enqueue", "once", "--idempotency-key", "K"]);
    let keys_after_first = {
        let mut k = fleet.keys();
        k.sort();
        k
    };
    let out = fleet.cli(&["enqueue", "once, again", "--idempotency-key", "K"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), first, "the original id, and only it");
    let mut keys = fleet.keys();
    keys.sort();
    assert_eq!(keys, keys_after_first, "nothing written");
    let task_prefix = fleet.ns().task("");
    let tasks: Vec<_> = keys
        .iter()
        .filter(|k| k.starts_with(&task_prefix))
        .collect();
    assert_eq!(tasks.len(), 1, "{keys:?}");
    assert_eq!(fleet.queue_counts()[0]["pending"], 1);
    // The key holds the task id and lives as long as the record.
    let mut conn = fleet.conn();
    let idem = fleet.queue_keys("reasoning").idempotency("K");
    let held: String = redis::cmd("GET").arg(&idem).query(&mut conn).unwrap();
    assert_eq!(held, first.trim());
    let key_ttl: i64 = redis::cmd("PTTL").arg(&idem).query(&mut conn).unwrap();
    let record_ttl: i64 = redis::cmd("PTTL").arg(tasks[0]).query(&mut conn).unwrap();
    assert!(
        (key_ttl - record_ttl).abs() < 60_000,
        "key {key_ttl} ms, record {record_ttl} ms"
    );
    assert!(
        record_ttl > 24 * 3600 * 1000,
        "the record TTL (7 days), not 24 h"
    );
}

#[test]
fn every_exit_code_of_the_table_comes_from_a_real_invocation() {
    let fleet = Fleet::new("exitcodes");
    let code = |out: std::process::Output| out.status.code();
    // 0: success.
    let id = fleet.cli_ok(&["enqueue", "exit codes"]).trim().to_owned();
    assert_eq!(code(fleet.cli(&["status", &id])), Some(0));
    // 2: wait timed out (no worker).
    assert_eq!(
        code(fleet.cli(&["wait", &id, "--timeout", "1"])),
        Some(exit::TIMED_OUT as i32)
    );
    // 1: a task is dead.
    let _r = fleet
        .worker("reasoning")
        .arg("--mock-fail-rate", 1)
        .arg("--mock-fail-kind", "permanent")
        .spawn();
    assert_eq!(
        code(fleet.cli(&["wait", &id, "--timeout", "20"])),
        Some(exit::TASK_DEAD as i32)
    );
    // 3: an id not found, in every command that takes ids.
    let unknown = "01JAAAAAAAAAAAAAAAAAAAAAAA";
    for args in [
        vec!["status", unknown],
        vec!["wait", unknown, "--timeout", "1"],
        vec!["dlq", "show", unknown],
        vec!["dlq", "replay", "reasoning", unknown],
        vec!["dlq", "purge", "reasoning", unknown, "--yes"],
    ] {
        let out = fleet.cli(&args);
        assert_eq!(code(out), Some(exit::NOT_FOUND as i32), "{args:?}");
    }
    // 64: usage errors: bad flags, bad values, bad file, --limit 0, an unknown role.
    let dir = tempdir();
    for args in [
        vec!["enqueue"],
        vec!["frobnicate"],
        vec!["dlq", "list", "reasoning", "--limit", "0"],
        vec!["dlq", "list", "nosuchrole"],
        vec!["dlq", "purge", "reasoning", "--all"],
        vec!["enqueue", "--file", "/nonexistent/tasks.jsonl"],
        vec!["queues", "--namespace", "bad{name}"],
        vec!["wait", &id, "--timeout", "soon"],
    ] {
        let out = fleet.cli(&args);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(exit::USAGE as i32),
            "{args:?}: {err}"
        );
        assert!(!err.is_empty(), "{args:?} says why");
    }
    let _ = std::fs::remove_dir_all(dir);
    let out = std::process::Command::new(agentfleet_e2e::bin("reasoning-worker"))
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit::USAGE as i32));
    // 69: Redis unreachable.
    let out = fleet.cli_with(
        &["queues"],
        &[(
            "REDIS_URL",
            &format!("redis://127.0.0.1:{}", agentfleet_e2e::free_port()),
        )],
    );
    assert_eq!(out.status.code(), Some(exit::REDIS_UNAVAILABLE as i32));
    // Each message says a thing once.
    let err = stderr(&out);
    let first_line = err.lines().next().unwrap_or_default();
    let parts: Vec<&str> = first_line.split(": ").collect();
    for pair in parts.windows(2) {
        assert_ne!(pair[0], pair[1], "repeated: {first_line}");
    }
}
