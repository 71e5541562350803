//! Task control with real workers: cancel (queued, scheduled, running, with every worker
//! stopped), deadlines, delayed tasks and priority lanes. The provider is a local HTTP
//! server speaking OpenAI Chat Completions that records when each request arrived and when
//! its connection closed, so "the call was aborted" is what the server saw.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentfleet_e2e::{Fleet, Worker, bin, tempdir, wait_until};
use agentfleet_job::TaskStatus;

/// One request as the provider saw it.
#[derive(Debug, Clone)]
struct Call {
    /// The user message (it holds the task's prompt).
    user: String,
    received: Instant,
    /// When the client closed the connection before the answer (an aborted call).
    aborted: Option<Instant>,
    answered: Option<Instant>,
}

/// A provider whose latency is set per request by the prompt: `sleep=<ms>` anywhere in it
/// (none: answers at once).
struct SlowProvider {
    port: u16,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl SlowProvider {
    fn start() -> Self {
        Self::serving(true)
    }

    /// One that answers at once whatever the prompt says (a later stage's message quotes
    /// the question, `sleep=` included).
    fn fast() -> Self {
        Self::serving(false)
    }

    fn serving(honour_sleep: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind provider");
        let port = listener.local_addr().expect("addr").port();
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let log = calls.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = log.clone();
                std::thread::spawn(move || serve(stream, log, honour_sleep));
            }
        });
        Self { port, calls }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn calls_for(&self, marker: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.user.contains(marker))
            .collect()
    }

    fn open_calls(&self) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.aborted.is_none() && c.answered.is_none())
            .count()
    }
}

fn serve(mut stream: TcpStream, log: Arc<Mutex<Vec<Call>>>, honour_sleep: bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        let Ok(n) = stream.read(&mut chunk) else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body: serde_json::Value =
        serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or_default();
    let user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let latency = user
        .split("sleep=")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .map(Duration::from_millis)
        .filter(|_| honour_sleep)
        .unwrap_or_default();
    let index = {
        let mut calls = log.lock().unwrap();
        calls.push(Call {
            user,
            received: Instant::now(),
            aborted: None,
            answered: None,
        });
        calls.len() - 1
    };
    // Wait out the latency while watching for the client to hang up.
    let until = Instant::now() + latency;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    while Instant::now() < until {
        match stream.read(&mut chunk) {
            Ok(0) => {
                log.lock().unwrap()[index].aborted = Some(Instant::now());
                return;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                log.lock().unwrap()[index].aborted = Some(Instant::now());
                return;
            }
        }
    }
    let answer = serde_json::json!({
        "id": "chatcmpl-control",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "An answer."},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    })
    .to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
    log.lock().unwrap()[index].answered = Some(Instant::now());
}

fn worker<'a>(
    fleet: &'a Fleet,
    role: &str,
    provider: &SlowProvider,
) -> agentfleet_e2e::WorkerBuilder<'a> {
    fleet
        .worker(role)
        .arg("--provider", "openai")
        .arg("--base-url", provider.base_url())
        .arg("--model", "test-model")
        .env("OPENAI_API_KEY", "sk-test")
}

/// Enqueues JSONL lines; returns the ids in order.
fn enqueue_lines(fleet: &Fleet, lines: &[serde_json::Value]) -> Vec<String> {
    let path = tempdir().join("tasks.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    fleet
        .cli_ok(&["enqueue", "--file", path.to_str().unwrap()])
        .lines()
        .map(str::to_owned)
        .collect()
}

fn task(prompt: String, meta: Option<(&str, &str)>) -> serde_json::Value {
    match meta {
        Some((k, v)) => serde_json::json!({"prompt": prompt, "metadata": {k: v}}),
        None => serde_json::json!({"prompt": prompt}),
    }
}

#[test]
fn cancel_by_metadata_aborts_running_calls_and_skips_queued_tasks() {
    let provider = SlowProvider::start();
    let fast = SlowProvider::fast();
    let fleet = Fleet::new("control-cancel");
    // 600 slots: the first 600 entries run (100 to cancel, the 500 to keep), the other 400
    // to cancel wait in the queue.
    let mut lines = Vec::new();
    for i in 0..100 {
        lines.push(task(
            format!("cancel-me {i} sleep=20000"),
            Some(("batch", "wrong")),
        ));
    }
    for i in 0..500 {
        lines.push(task(
            format!("keep-me {i} sleep=20000"),
            Some(("batch", "right")),
        ));
    }
    for i in 100..500 {
        lines.push(task(
            format!("cancel-me {i} sleep=20000"),
            Some(("batch", "wrong")),
        ));
    }
    let _workers: Vec<Worker> = vec![
        worker(&fleet, "reasoning", &provider)
            .arg("--concurrency", 300)
            .spawn(),
        worker(&fleet, "reasoning", &provider)
            .arg("--concurrency", 300)
            .spawn(),
        worker(&fleet, "synthesis", &fast)
            .arg("--concurrency", 100)
            .spawn(),
    ];
    // A provider account is tried one call at a time until it has answered once (the
    // limits' probe): warm it up, so that the 1,000 tasks start in their queue order.
    let warm_up = fleet.cli_ok(&["enqueue", "warm-up"]).trim().to_owned();
    assert!(wait_until(Duration::from_secs(20), || fleet
        .record(&warm_up)
        .status
        == TaskStatus::Done));
    let ids = enqueue_lines(&fleet, &lines);
    assert_eq!(ids.len(), 1_000);
    let (cancel_ids, keep_ids): (Vec<String>, Vec<String>) = {
        let mut cancel = ids[..100].to_vec();
        cancel.extend_from_slice(&ids[600..]);
        (cancel, ids[100..600].to_vec())
    };
    assert!(
        wait_until(Duration::from_secs(30), || provider.open_calls() == 600),
        "600 calls should be running, {} are",
        provider.open_calls()
    );
    let cancel_started = Instant::now();
    let out = fleet.cli(&["cancel", "--meta", "batch=wrong", "--json"]);
    let cancelled_at = Instant::now();
    assert!(out.status.success(), "{out:?}");
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(lines, 500, "one line per matching task");

    // Every running call of a cancelled task is dropped within a second.
    assert!(wait_until(Duration::from_secs(3), || {
        provider
            .calls_for("cancel-me")
            .iter()
            .all(|c| c.aborted.is_some() || c.answered.is_some())
    }));
    let running_cancelled = provider.calls_for("cancel-me");
    let before = running_cancelled
        .iter()
        .filter(|c| c.received < cancel_started)
        .count();
    assert_eq!(
        (running_cancelled.len(), before),
        (100, 100),
        "the 100 running ones reached the provider, all before the cancel"
    );
    for call in &running_cancelled {
        let closed = call.aborted.expect("aborted, not answered");
        assert!(
            closed <= cancelled_at + Duration::from_secs(1),
            "a call closed {:?} after the cancel returned",
            closed.duration_since(cancelled_at)
        );
    }

    // The 500 others finish; nothing of a cancelled task runs after the cancel.
    assert!(
        wait_until(Duration::from_secs(60), || fleet
            .count_status(&keep_ids, TaskStatus::Done)
            == 500),
        "the tasks not cancelled finish: {}",
        fleet.count_status(&keep_ids, TaskStatus::Done)
    );
    let late = provider
        .calls_for("cancel-me")
        .iter()
        .filter(|c| c.received >= cancel_started)
        .count();
    assert_eq!(
        late, 0,
        "provider calls for cancelled tasks after the cancel"
    );
    assert_eq!(fleet.count_status(&cancel_ids, TaskStatus::Cancelled), 500);
    // Every cancelled job was taken off the queue (skipped at its start) ...
    assert!(wait_until(Duration::from_secs(10), || {
        fleet.queue_counts()[0]["pending"] == 0 && fleet.queue_counts()[0]["in_flight"] == 0
    }));
    // ... and no synthesis job was ever pushed for one: the chain's idempotency key (the
    // task id) exists only for tasks that chained.
    let mut conn = fleet.conn();
    let synthesis = fleet.queue_keys("synthesis");
    for id in &cancel_ids {
        let chained: bool = redis::cmd("EXISTS")
            .arg(synthesis.idempotency(id))
            .query(&mut conn)
            .unwrap();
        assert!(
            !chained,
            "a synthesis job was pushed for cancelled task {id}"
        );
        assert!(!fleet.record(id).stages.contains_key("synthesis"));
    }
    let record = fleet.record(&cancel_ids[0]);
    assert!(
        record
            .stop_reason
            .as_deref()
            .unwrap_or_default()
            .starts_with("cancelled by"),
        "{record:?}"
    );
    assert!(
        fast.calls().len() >= 500,
        "the kept tasks' synthesis calls went to the fast provider"
    );
}

#[test]
fn a_cancel_made_while_every_worker_is_stopped_holds_when_they_start() {
    let provider = SlowProvider::start();
    let fleet = Fleet::new("control-offline");
    let lines: Vec<serde_json::Value> = (0..40)
        .map(|i| {
            task(
                format!("offline {i} {}", if i % 2 == 0 { "drop" } else { "run" }),
                None,
            )
        })
        .collect();
    let ids = enqueue_lines(&fleet, &lines);
    let (dropped, kept): (Vec<String>, Vec<String>) = {
        let dropped = ids.iter().step_by(2).cloned().collect();
        let kept = ids.iter().skip(1).step_by(2).cloned().collect();
        (dropped, kept)
    };
    let file = tempdir().join("ids.txt");
    std::fs::write(&file, dropped.join("\n")).unwrap();
    let out = fleet.cli_ok(&["cancel", "--file", file.to_str().unwrap()]);
    assert_eq!(
        out.lines().filter(|l| l.ends_with(": cancelled")).count(),
        20
    );

    let _workers = [
        worker(&fleet, "reasoning", &provider).spawn(),
        worker(&fleet, "synthesis", &provider).spawn(),
    ];
    assert!(wait_until(Duration::from_secs(30), || fleet
        .count_status(&kept, TaskStatus::Done)
        == 20));
    assert!(wait_until(Duration::from_secs(10), || fleet.queue_counts()
        [0]["pending"]
        == 0));
    assert_eq!(
        provider.calls_for(" drop").len(),
        0,
        "a cancelled task reached the provider"
    );
    assert_eq!(fleet.count_status(&dropped, TaskStatus::Cancelled), 20);

    // `wait` on a cancelled task exits 1 and says why.
    let out = fleet.cli(&["wait", &dropped[0]]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("is cancelled"), "{said}");
    // Cancelling a finished task is a no-op that says so.
    let out = fleet.cli_ok(&["cancel", &kept[0]]);
    assert!(out.contains("already done"), "{out}");
    assert_eq!(fleet.record(&kept[0]).status, TaskStatus::Done);
    // An unknown id is named, exit 3.
    let out = fleet.cli(&["cancel", "01JNOTAREALTASK0000000000"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn deadlines_expire_tasks_before_they_start_and_abort_calls_that_outlive_them() {
    let provider = SlowProvider::start();
    let fleet = Fleet::new("control-deadline");
    let fast = SlowProvider::fast();
    let _workers = [
        worker(&fleet, "reasoning", &provider)
            .arg("--concurrency", 1)
            .spawn(),
        worker(&fleet, "synthesis", &fast).spawn(),
    ];
    // A backlog of 4 s for the only slot, then a task worth 2 s.
    let backlog = fleet.cli_ok(&["enqueue", "backlog sleep=4000"]);
    let late = fleet
        .cli_ok(&["enqueue", "--deadline", "2s", "behind the backlog"])
        .trim()
        .to_owned();
    assert!(wait_until(Duration::from_secs(20), || fleet
        .record(&late)
        .status
        == TaskStatus::Expired));
    assert!(provider.calls_for("behind the backlog").is_empty());
    let record = fleet.record(&late);
    assert!(
        record
            .stop_reason
            .as_deref()
            .unwrap_or_default()
            .contains("deadline"),
        "{record:?}"
    );
    assert!(wait_until(Duration::from_secs(20), || fleet
        .record(backlog.trim())
        .status
        == TaskStatus::Done));

    // A call slower than the time left is aborted at the deadline.
    let enqueued = Instant::now();
    let slow = fleet
        .cli_ok(&["enqueue", "--deadline", "2s", "too slow sleep=20000"])
        .trim()
        .to_owned();
    assert!(wait_until(Duration::from_secs(10), || fleet
        .record(&slow)
        .status
        == TaskStatus::Expired));
    let calls = provider.calls_for("too slow");
    assert_eq!(calls.len(), 1);
    let closed = calls[0]
        .aborted
        .expect("the call was aborted, not answered");
    let after = closed.duration_since(enqueued);
    assert!(
        after >= Duration::from_millis(1_500) && after <= Duration::from_secs(3),
        "aborted {after:?} after the enqueue of a task with a 2 s deadline"
    );
    let out = fleet.cli(&["wait", &slow]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is expired"));
}

#[test]
fn a_delayed_task_starts_on_time() {
    let provider = SlowProvider::start();
    let fleet = Fleet::new("control-delay");
    let _workers = [
        worker(&fleet, "reasoning", &provider).spawn(),
        worker(&fleet, "synthesis", &provider).spawn(),
    ];
    let enqueued = Instant::now();
    let id = fleet
        .cli_ok(&["enqueue", "--delay", "3s", "later please"])
        .trim()
        .to_owned();
    let status = fleet.cli_ok(&["status", &id]);
    assert!(status.contains("delayed: starts in"), "{status}");
    assert!(wait_until(Duration::from_secs(10), || !provider
        .calls_for("later please")
        .is_empty()));
    let started = provider.calls_for("later please")[0]
        .received
        .duration_since(enqueued);
    assert!(
        started >= Duration::from_secs(3) && started <= Duration::from_secs(4),
        "a task delayed 3 s reached the provider after {started:?}"
    );
    assert!(wait_until(Duration::from_secs(10), || fleet
        .record(&id)
        .status
        == TaskStatus::Done));
}

/// Start times (ms) of the reasoning stage of `ids`, read from their records.
fn started_at(fleet: &Fleet, ids: &[String]) -> Vec<u64> {
    let mut conn = fleet.conn();
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.hget(fleet.ns().task(id), "reasoning.started_at_ms");
    }
    let times: Vec<Option<u64>> = pipe.query(&mut conn).unwrap();
    times.into_iter().map(|t| t.unwrap_or(u64::MAX)).collect()
}

#[test]
fn high_priority_goes_first_and_low_keeps_its_share() {
    let fleet = Fleet::new("control-lanes");
    let jsonl = |n: usize, lane: &str| -> Vec<serde_json::Value> {
        (0..n)
            .map(|i| serde_json::json!({"prompt": format!("{lane} {i}"), "priority": lane}))
            .collect()
    };
    let low = enqueue_lines(&fleet, &jsonl(10_000, "low"));
    let counts = fleet.cli_ok(&["queues", "--json"]);
    let counts: serde_json::Value = serde_json::from_str(&counts).unwrap();
    assert_eq!(counts[0]["pending_by_lane"]["low"], 10_000);

    // One worker, 10 slots, a 10 ms model: about 1,000 tasks a second.
    let _worker = fleet
        .worker("reasoning")
        .arg("--concurrency", 10)
        .arg("--mock-latency-ms", 10)
        .arg("--lane-shares", "normal=10,low=5")
        .spawn();
    assert!(wait_until(Duration::from_secs(20), || fleet
        .count_stage_done(&low[..500], "reasoning")
        >= 200));

    // 100 high tasks jump the backlog: while they wait, low tasks get only their 5% (plus
    // the 10 already in the worker's hands).
    let high = enqueue_lines(&fleet, &jsonl(100, "high"));
    assert!(wait_until(Duration::from_secs(20), || fleet
        .count_stage_done(&high, "reasoning")
        == 100));
    let high_started = started_at(&fleet, &high);
    let first_high = *high_started.iter().min().unwrap();
    let last_high = *high_started.iter().max().unwrap();
    let low_started = started_at(&fleet, &low);
    let low_between = low_started
        .iter()
        .filter(|&&t| t >= first_high && t <= last_high)
        .count();
    eprintln!(
        "100 high tasks started over {} ms; {low_between} low tasks meanwhile",
        last_high - first_high
    );
    assert!(
        low_between <= 20,
        "{low_between} low tasks started while 100 high ones waited"
    );

    // A long stream of high work: low keeps its guaranteed share (5%) throughout.
    let more_high = enqueue_lines(&fleet, &jsonl(2_000, "high"));
    assert!(wait_until(Duration::from_secs(60), || fleet
        .count_stage_done(&more_high, "reasoning")
        == 2_000));
    let high_started = started_at(&fleet, &more_high);
    let (first, last) = (
        *high_started.iter().min().unwrap(),
        *high_started.iter().max().unwrap(),
    );
    let low_started = started_at(&fleet, &low);
    let low_during = low_started
        .iter()
        .filter(|&&t| t >= first && t <= last)
        .count();
    let share = low_during as f64 / (low_during + 2_000) as f64;
    eprintln!(
        "during 2,000 high tasks: {low_during} low tasks ({:.1}%)",
        share * 100.0
    );
    assert!(
        (0.035..=0.08).contains(&share),
        "low's share while high work kept coming: {:.1}%",
        share * 100.0
    );
}

#[test]
fn the_next_stage_inherits_the_lane() {
    let fleet = Fleet::new("control-inherit");
    let id = fleet
        .cli_ok(&["enqueue", "--priority", "high", "urgent"])
        .trim()
        .to_owned();
    let _reasoning = fleet.worker("reasoning").spawn();
    // No synthesis worker: the chained job waits in synthesis's high lane.
    let synthesis = fleet.queue_keys("synthesis");
    let high_lane = synthesis.pending_lane(agentfleet_job::Lane::High);
    let mut conn = fleet.conn();
    assert!(wait_until(Duration::from_secs(10), || {
        redis::cmd("LLEN")
            .arg(&high_lane)
            .query::<u64>(&mut conn)
            .unwrap()
            == 1
    }));
    assert_eq!(fleet.record(&id).lane, agentfleet_job::Lane::High);
    let _synthesis = fleet.worker("synthesis").spawn();
    let out = Command::new(bin("agentfleet"))
        .args(["wait", "--timeout", "20", &id])
        .envs(fleet.redis.to_env())
        .env("AGENTFLEET_NAMESPACE", &fleet.namespace)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn under_a_fleet_limit_a_waiting_high_job_gets_the_next_slot() {
    let provider = SlowProvider::start();
    let fleet = Fleet::new("control-limit-lanes");
    // 20 jobs in the worker's hands, 2 calls at a time: 18 normal jobs always wait for the
    // limit inside the worker.
    let _reasoning = worker(&fleet, "reasoning", &provider)
        .arg("--concurrency", 20)
        .arg("--max-concurrent-requests", 2)
        .spawn();
    let warm_up = fleet.cli_ok(&["enqueue", "warm-up"]).trim().to_owned();
    assert!(wait_until(Duration::from_secs(20), || fleet
        .record(&warm_up)
        .status
        != TaskStatus::Queued
        && fleet.count_stage_done(
            std::slice::from_ref(&warm_up),
            "reasoning"
        ) == 1));
    let normal: Vec<serde_json::Value> = (0..60)
        .map(|i| serde_json::json!({"prompt": format!("normal {i} sleep=200")}))
        .collect();
    enqueue_lines(&fleet, &normal);
    assert!(wait_until(Duration::from_secs(10), || provider
        .calls_for("normal")
        .len()
        >= 6));
    let high: Vec<serde_json::Value> = (0..4)
        .map(|i| serde_json::json!({"prompt": format!("urgent {i} sleep=200"), "priority": "high"}))
        .collect();
    let asked = Instant::now();
    enqueue_lines(&fleet, &high);
    assert!(wait_until(Duration::from_secs(20), || provider
        .calls_for("urgent")
        .len()
        == 4));
    let last_high = provider
        .calls_for("urgent")
        .iter()
        .map(|c| c.received)
        .max()
        .unwrap();
    let normal_between = provider
        .calls_for("normal")
        .iter()
        .filter(|c| c.received > asked && c.received < last_high)
        .count();
    eprintln!("normal calls while 4 high jobs waited for the limit: {normal_between}");
    // Each high job waits for a worker slot (one frees every 100 ms), then takes the next
    // limit slot ahead of the 18 normal jobs already waiting for it.
    assert!(
        normal_between <= 6,
        "{normal_between} normal calls went before the high jobs"
    );
}
