//! The live view: lifecycle events, the workers registry, the tasks index, `watch`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentfleet_e2e::{Fleet, bin, wait_until};
use agentfleet_job::TaskStatus;

/// A process whose stdout lines are collected as they come; killed on drop.
struct Reader {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    errors: Arc<Mutex<String>>,
}

impl Reader {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start reader");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        let errors = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = errors.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut all = sink.lock().expect("errors");
                all.push_str(&line);
                all.push('\n');
            }
        });
        Self {
            child,
            lines,
            errors,
        }
    }

    fn errors(&self) -> String {
        self.errors.lock().expect("errors").clone()
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    fn events(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
            .collect()
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli_command(fleet: &Fleet, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("agentfleet"));
    cmd.args(args)
        .envs(fleet.redis.to_env())
        .env("AGENTFLEET_NAMESPACE", &fleet.namespace);
    cmd
}

/// The stream id just before `id`: `--from` resumes after the id it is given.
fn before(id: &str) -> String {
    let (ms, seq) = id.split_once('-').expect("a stream id");
    let (ms, seq): (u64, u64) = (ms.parse().expect("ms"), seq.parse().expect("seq"));
    if seq > 0 {
        format!("{ms}-{}", seq - 1)
    } else {
        format!("{}-{}", ms - 1, u64::MAX)
    }
}

/// Kinds of one task's events, in the order a reader saw them.
fn by_task(events: &[serde_json::Value]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in events {
        let kind = e["kind"].as_str().expect("kind");
        let role = e["role"].as_str().unwrap_or("");
        out.entry(e["task"].as_str().expect("task").to_owned())
            .or_default()
            .push(if kind == "started" || kind == "stage_done" {
                format!("{kind}:{role}")
            } else {
                kind.to_owned()
            });
    }
    out
}

#[test]
fn readers_from_the_start_and_from_halfway_see_every_event_of_every_task_in_order() {
    let fleet = Fleet::new("live-events");
    let _r = fleet.worker("reasoning").arg("--concurrency", 16).spawn();
    let _s = fleet.worker("synthesis").arg("--concurrency", 16).spawn();
    let first = Reader::start(cli_command(&fleet, &["watch", "--json"]));
    // The first reader is reading (it says after which id) before anything happens.
    assert!(wait_until(Duration::from_secs(10), || first
        .errors()
        .contains("watching events after")));
    let ids = fleet.enqueue_many(500, "events");
    let per_task = 6;
    let total = ids.len() * per_task;
    assert!(
        wait_until(Duration::from_secs(60), || first.lines().len() >= total / 2),
        "the first reader saw {} events",
        first.lines().len()
    );
    let earliest = first.events()[0]["id"].as_str().expect("an id").to_owned();
    let second = Reader::start(cli_command(
        &fleet,
        &["watch", "--json", "--from", &before(&earliest)],
    ));
    assert!(
        wait_until(Duration::from_secs(120), || fleet
            .count_status(&ids, TaskStatus::Done)
            == ids.len()),
        "{:?}",
        fleet.queue_counts()
    );
    for reader in [&first, &second] {
        assert!(
            wait_until(Duration::from_secs(30), || reader.lines().len() >= total),
            "a reader saw {} of {total} events",
            reader.lines().len()
        );
    }
    let expected = [
        "enqueued",
        "started:reasoning",
        "stage_done:reasoning",
        "started:synthesis",
        "stage_done:synthesis",
        "done",
    ];
    let a = first.events();
    let b = second.events();
    assert_eq!(a.len(), total, "no event twice, none extra");
    assert_eq!(a, b, "both readers saw the same events in the same order");
    let tasks = by_task(&a);
    assert_eq!(tasks.len(), ids.len());
    for id in &ids {
        assert_eq!(tasks[id], expected, "events of {id}");
    }
    // Ids only grow: a reader resumes after the last one it saw.
    let ids_seen: Vec<&str> = a.iter().map(|e| e["id"].as_str().expect("id")).collect();
    let key = |id: &str| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').expect("id");
        (ms.parse().expect("ms"), seq.parse().expect("seq"))
    };
    assert!(ids_seen.windows(2).all(|w| key(w[0]) < key(w[1])));
    // Events carry who did what.
    let started = a
        .iter()
        .find(|e| e["kind"] == "started")
        .expect("a started event");
    assert!(started["worker"].as_str().is_some_and(|w| !w.is_empty()));
    assert_eq!(started["attempt"], "1");
}

#[test]
fn workers_lists_three_live_workers_then_two_within_the_lease_after_a_sigkill() {
    let fleet = Fleet::new("live-workers");
    let lease = 3;
    let worker = |role: &str| {
        fleet
            .worker(role)
            .arg("--lease-timeout-secs", lease)
            .arg("--concurrency", 4)
            .spawn()
    };
    let mut r1 = worker("reasoning");
    let _r2 = worker("reasoning");
    let _s = worker("synthesis");
    let listed = || -> Vec<serde_json::Value> {
        let out = fleet.cli_ok(&[
            "workers",
            "--lease-timeout-secs",
            &lease.to_string(),
            "--json",
        ]);
        serde_json::from_str(&out).expect("JSON list")
    };
    assert!(
        wait_until(Duration::from_secs(10), || listed().len() == 3),
        "{:?}",
        listed()
    );
    let ids = fleet.enqueue_many(20, "registry");
    assert!(wait_until(Duration::from_secs(30), || fleet
        .count_status(&ids, TaskStatus::Done)
        == 20));
    // Counters arrive with the next heartbeat (every third of a lease).
    assert!(
        wait_until(Duration::from_secs(5), || {
            let all = listed();
            let done = |role: &str| -> u64 {
                all.iter()
                    .filter(|w| w["role"] == role)
                    .map(|w| {
                        w["done"]
                            .as_str()
                            .and_then(|d| d.parse::<u64>().ok())
                            .unwrap_or(0)
                    })
                    .sum()
            };
            done("reasoning") == 20 && done("synthesis") == 20
        }),
        "{:?}",
        listed()
    );
    for w in listed() {
        for field in [
            "id",
            "role",
            "host",
            "version",
            "provider",
            "model",
            "concurrency",
            "in_flight",
            "done",
            "failed",
            "started_at_ms",
            "last_heartbeat_ms",
        ] {
            assert!(
                w[field].as_str().is_some_and(|v| !v.is_empty()),
                "{field} of {w}"
            );
        }
        assert_eq!(w["provider"], "mock");
        assert_eq!(w["concurrency"], "4");
    }
    let table = fleet.cli_ok(&["workers", "--lease-timeout-secs", &lease.to_string()]);
    assert_eq!(table.lines().count(), 4, "{table}");
    r1.kill9();
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(lease + 2), || listed().len() == 2),
        "{:?}",
        listed()
    );
    // Within the lease (its last heartbeat was before the kill), plus one CLI run's time
    // to see it.
    assert!(
        killed.elapsed() <= Duration::from_secs(lease) + Duration::from_secs(1),
        "gone after {:?}",
        killed.elapsed()
    );
}

#[test]
fn tasks_lists_newest_first_by_status_metadata_and_role() {
    let fleet = Fleet::new("live-tasks");
    let mut ids = Vec::new();
    for (i, tenant) in ["acme", "globex", "acme"].iter().enumerate() {
        let out = fleet.cli_ok(&[
            "enqueue",
            "--meta",
            &format!("tenant={tenant}"),
            &format!("prompt {i}"),
        ]);
        ids.push(out.trim().to_owned());
    }
    let list = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["tasks", "--json"];
        all.extend_from_slice(args);
        fleet
            .cli_ok(&all)
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    };
    let listed: Vec<String> = list(&[])
        .iter()
        .map(|t| t["task_id"].as_str().expect("id").to_owned())
        .collect();
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(listed, newest_first);
    let acme = list(&["--meta", "tenant=acme"]);
    assert_eq!(acme.len(), 2);
    assert_eq!(acme[0]["task_id"], ids[2].as_str());
    assert_eq!(acme[1]["task_id"], ids[0].as_str());
    assert_eq!(list(&["--limit", "1"]).len(), 1);
    assert_eq!(list(&["--status", "queued"]).len(), 3);
    assert!(list(&["--status", "done"]).is_empty());
    assert_eq!(list(&["--role", "synthesis"]).len(), 3);
    assert_eq!(list(&["--since", "1h"]).len(), 3);
    // Run them: the status filter follows the records.
    let _r = fleet.worker("reasoning").spawn();
    let _s = fleet.worker("synthesis").spawn();
    assert!(wait_until(Duration::from_secs(20), || list(&[
        "--status", "done"
    ])
    .len()
        == 3));
    let table = fleet.cli_ok(&["tasks", "--meta", "tenant=globex"]);
    assert!(
        table.contains(&ids[1]) && table.contains("tenant=globex"),
        "{table}"
    );
    // An unknown role is a usage error.
    assert_eq!(
        fleet.cli(&["tasks", "--role", "nope"]).status.code(),
        Some(64)
    );
}

/// Runs `agentfleet ARGS` in a pseudo-terminal (`script`), collecting what it prints.
fn in_pty(fleet: &Fleet, args: &[&str]) -> Reader {
    let line = std::iter::once(bin("agentfleet").display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("script");
    cmd.args(["-qefc", &line, "/dev/null"])
        .envs(fleet.redis.to_env())
        .env("AGENTFLEET_NAMESPACE", &fleet.namespace);
    Reader::start(cmd)
}

#[test]
fn watch_follows_a_task_to_its_end_with_waits_codes_and_shows_throughput_on_a_terminal() {
    let fleet = Fleet::new("live-watch");
    let _r = fleet.worker("reasoning").spawn();
    let _s = fleet.worker("synthesis").spawn();
    // On a terminal: a line per event and a throughput line per role.
    let all = in_pty(&fleet, &["watch"]);
    assert!(wait_until(Duration::from_secs(10), || all
        .lines()
        .iter()
        .any(|l| l.contains("-- throughput"))));
    let ok = fleet.cli_ok(&["enqueue", "--meta", "case=ok", "fine"]);
    let ok = ok.trim();
    let mut follow = in_pty(&fleet, &["watch", "--task", ok]);
    assert_eq!(follow.wait_exit(Duration::from_secs(30)), Some(0));
    let out = follow.lines().join("\n");
    for kind in ["started", "stage_done", "done"] {
        assert!(out.contains(kind), "{kind} missing from:\n{out}");
    }
    assert!(out.contains(ok));
    assert!(
        wait_until(Duration::from_secs(10), || all
            .lines()
            .iter()
            .any(|l| l.contains("-- throughput") && l.contains("synthesis"))),
        "{:?}",
        all.lines()
    );
    let lines = all.lines();
    assert!(
        lines.iter().any(|l| l.contains(" done ") && l.contains(ok)),
        "{lines:?}"
    );
    // A finished task: watch says so at once with wait's code.
    let mut again = in_pty(&fleet, &["watch", "--task", ok]);
    assert_eq!(again.wait_exit(Duration::from_secs(10)), Some(0));
    // A dead-lettered task exits 1; an unknown one 3.
    let failing = Fleet::new("live-watch-dead");
    let _fr = failing
        .worker("reasoning")
        .arg("--mock-fail-rate", 1)
        .arg("--mock-fail-kind", "permanent")
        .spawn();
    let bad = failing.cli_ok(&["enqueue", "doomed"]);
    let bad = bad.trim();
    let mut dead = in_pty(&failing, &["watch", "--task", bad]);
    assert_eq!(dead.wait_exit(Duration::from_secs(30)), Some(1));
    assert!(dead.lines().join("\n").contains("dead"));
    let mut unknown = in_pty(&failing, &["watch", "--task", "01NOSUCHTASK00000000000000"]);
    assert_eq!(unknown.wait_exit(Duration::from_secs(10)), Some(3));
}
