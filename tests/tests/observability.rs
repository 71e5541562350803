//! What operators see: metrics, health, logs.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use agentfleet_e2e::{Fleet, wait_until};
use agentfleet_job::TaskStatus;

fn promtool() -> Option<std::path::PathBuf> {
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/promtool");
    if local.exists() {
        return Some(local);
    }
    Command::new("promtool")
        .arg("--version")
        .output()
        .ok()
        .map(|_| "promtool".into())
}

#[test]
fn metrics_after_real_jobs_pass_promtool_and_carry_the_fixed_names() {
    let fleet = Fleet::new("metrics");
    let r = fleet
        .worker("reasoning")
        .arg("--mock-fail-rate", 0.3)
        .arg("--backoff-base-ms", 5)
        .arg("--backoff-max-ms", 20)
        .arg("--max-attempts", 30)
        .spawn();
    let s = fleet.worker("synthesis").spawn();
    let ids = fleet.enqueue_many(30, "observe");
    assert!(wait_until(Duration::from_secs(30), || fleet
        .count_status(&ids, TaskStatus::Done)
        == 30));
    // Queue gauges are sampled every 2 s.
    std::thread::sleep(Duration::from_millis(2_500));
    let text = r.metrics();
    // Every series carries the fleet (`namespace`); the LLM series the role that called.
    let ns = format!("namespace=\"{}\"", fleet.namespace);
    for name in [
        format!("agentfleet_jobs_total{{outcome=\"succeeded\",role=\"reasoning\",{ns}}} 30"),
        "agentfleet_job_duration_seconds_bucket".to_owned(),
        format!("agentfleet_jobs_in_flight{{role=\"reasoning\",{ns}}}"),
        format!(
            "agentfleet_queue_depth{{lane=\"normal\",role=\"reasoning\",state=\"pending\",{ns}}} 0"
        ),
        format!(
            "agentfleet_queue_depth{{lane=\"high\",role=\"reasoning\",state=\"pending\",{ns}}} 0"
        ),
        format!("agentfleet_queue_depth{{lane=\"\",role=\"reasoning\",state=\"scheduled\",{ns}}}"),
        format!("agentfleet_queue_depth{{lane=\"\",role=\"reasoning\",state=\"dead\",{ns}}} 0"),
        format!("agentfleet_oldest_pending_age_seconds{{role=\"reasoning\",{ns}}}"),
        format!(
            "agentfleet_llm_request_duration_seconds_bucket{{model=\"mock-1\",provider=\"mock\",role=\"reasoning\",{ns}"
        ),
        format!(
            "agentfleet_llm_errors_total{{class=\"transient\",model=\"mock-1\",provider=\"mock\",role=\"reasoning\",{ns}}}"
        ),
        format!(
            "agentfleet_llm_tokens_total{{kind=\"prompt\",model=\"mock-1\",provider=\"mock\",role=\"reasoning\",{ns}}}"
        ),
        "agentfleet_worker_info{role=\"reasoning\"".to_owned(),
        format!("agentfleet_workers_live{{role=\"reasoning\",{ns}}} 1"),
        format!("agentfleet_redis_up{{{ns}}} 1"),
    ] {
        assert!(text.contains(&name), "missing {name} in:\n{text}");
    }
    for line in text.lines().filter(|l| l.starts_with("agentfleet_")) {
        assert!(
            line.contains(&ns),
            "a series without the fleet's namespace: {line}"
        );
    }
    let retried = text
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "agentfleet_jobs_total{{outcome=\"retried\",role=\"reasoning\",{ns}}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(retried > 0.0, "a 30% failure rate must show retries");
    assert!(s.metrics().contains(&format!(
        "agentfleet_jobs_total{{outcome=\"succeeded\",role=\"synthesis\",{ns}}} 30"
    )));
    assert_eq!(r.http_status("/healthz"), Some(200));
    assert_eq!(r.http_status("/readyz"), Some(200));

    match promtool() {
        Some(promtool) => {
            let mut child = Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run promtool");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => {
            assert!(
                std::env::var("CI").is_err(),
                "CI must install promtool (.ci/install-deploy-tools.sh)"
            );
            eprintln!("promtool not installed: skipped `promtool check metrics` (CI runs it)");
        }
    }
}

#[test]
fn json_logs_carry_task_id_role_and_attempt_on_every_job_line() {
    let fleet = Fleet::new("jsonlogs");
    let r = fleet
        .worker("reasoning")
        .arg("--log-format", "json")
        .arg("--mock-fail-rate", 1)
        .arg("--mock-fail-kind", "permanent")
        .spawn();
    let ids = fleet.enqueue_many(1, "log me");
    assert!(wait_until(Duration::from_secs(10), || fleet
        .count_status(&ids, TaskStatus::Dead)
        == 1));
    let log = r.log();
    let dead_line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "job dead-lettered")
        .unwrap_or_else(|| panic!("no dead-letter line in:\n{log}"));
    assert_eq!(dead_line["span"]["task_id"], ids[0].as_str());
    assert_eq!(dead_line["span"]["role"], "reasoning");
    assert_eq!(dead_line["span"]["attempt"], 1);
    assert_eq!(
        dead_line["span"]["trace_id"].as_str().map(str::len),
        Some(32)
    );
}

/// Keys that are not per task: the queues' fixed structures (stats, worker registries,
/// and lists or sets that still hold entries).
fn fixed_keys(fleet: &Fleet) -> Vec<String> {
    let ns = fleet.ns();
    fleet
        .keys()
        .into_iter()
        .filter(|k| !ns.is_per_task_key(k))
        .collect()
}

/// The event stream's cap in the 100,000-task run.
const EVENTS_CAP: u64 = 10_000;

#[test]
fn after_100k_tasks_only_expiring_per_task_keys_remain() {
    let fleet = Fleet::new("bounded");
    let ttl: i64 = 3_600;
    let worker = |role: &str| {
        fleet
            .worker(role)
            .arg("--concurrency", 200)
            .arg("--record-ttl-secs", ttl)
            .arg("--events-maxlen", EVENTS_CAP)
            .spawn()
    };
    let _r = worker("reasoning");
    let _s = worker("synthesis");
    let out = fleet.cli(&[
        "enqueue",
        "--record-ttl-secs",
        &ttl.to_string(),
        "--events-maxlen",
        &EVENTS_CAP.to_string(),
        "--count",
        "100000",
        "--prompt",
        "bounded",
    ]);
    assert!(out.status.success());
    assert!(
        wait_until(Duration::from_secs(300), || fleet.queue_counts()[1]["done"]
            == 100_000),
        "{:?}",
        fleet.queue_counts()
    );
    // Finished jobs leave nothing behind: what is not a per-task key is a small fixed set
    // (now with the event stream, the tasks index and the two live workers' registry hashes).
    let fixed = fixed_keys(&fleet);
    assert!(fixed.len() <= 12, "{} fixed keys: {fixed:?}", fixed.len());
    // 600,000 events went through the stream; it holds its cap (trimmed by whole nodes of
    // at most 100 entries, `MAXLEN ~`).
    let len: u64 = redis::cmd("XLEN")
        .arg(fleet.ns().events())
        .query(&mut fleet.conn())
        .expect("XLEN");
    assert!(
        (EVENTS_CAP..=EVENTS_CAP + 100).contains(&len),
        "the event stream holds {len}"
    );
    // Every per-task key (record, idempotency key) expires within the record lifetime.
    let keys = fleet.keys();
    assert!(
        keys.len() >= 200_000,
        "records and idempotency keys: {}",
        keys.len()
    );
    let mut conn = fleet.conn();
    let ns = fleet.ns();
    for chunk in keys.chunks(5_000) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.pttl(k);
        }
        let ttls: Vec<i64> = pipe.query(&mut conn).unwrap();
        for (k, t) in chunk.iter().zip(ttls) {
            if ns.is_per_task_key(k) {
                assert!(t > 0 && t <= ttl * 1000, "{k} has no lifetime (pttl {t})");
            }
        }
    }
}

#[test]
fn records_and_idempotency_keys_expire_after_their_lifetime() {
    let fleet = Fleet::new("expiry");
    let _r = fleet
        .worker("reasoning")
        .arg("--record-ttl-secs", 6)
        .spawn();
    let _s = fleet
        .worker("synthesis")
        .arg("--record-ttl-secs", 6)
        .spawn();
    let out = fleet.cli(&[
        "enqueue",
        "--record-ttl-secs",
        "6",
        "--count",
        "50",
        "--prompt",
        "short-lived",
    ]);
    assert!(out.status.success());
    assert!(wait_until(Duration::from_secs(20), || fleet.queue_counts()
        [1]["done"]
        == 50));
    assert!(fleet.keys().len() > 8);
    let gone = wait_until(Duration::from_secs(20), || fleet.keys().len() <= 8);
    assert!(gone, "left after the lifetime: {:?}", fleet.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_otlp_on_one_task_is_one_trace_across_both_roles() {
    use axum::body::Bytes;
    use axum::routing::post;
    use std::sync::{Arc, Mutex};

    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let sink = bodies.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let fleet = Fleet::new("otlp");
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut r = fleet
        .worker("reasoning")
        .arg("--otlp-endpoint", &endpoint)
        .spawn();
    let mut s = fleet
        .worker("synthesis")
        .arg("--otlp-endpoint", &endpoint)
        .spawn();
    let ids = fleet.enqueue_many(1, "trace me");
    let done = tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(20), || {
            fleet.count_status(&ids, TaskStatus::Done) == 1
        })
    });
    assert!(done);
    // Shutting down flushes the exporters.
    for w in [&mut r, &mut s] {
        w.signal(nix::sys::signal::Signal::SIGTERM);
        let code = tokio::task::block_in_place(|| w.wait_exit(Duration::from_secs(10)));
        assert_eq!(code, Some(Some(0)));
    }
    let traceparent = fleet
        .record(&ids[0])
        .traceparent
        .expect("traceparent on the record");
    let trace_hex = traceparent.split('-').nth(1).unwrap();
    let trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let bodies = bodies.lock().unwrap();
    let with_trace = |service: &str| {
        bodies.iter().any(|b| {
            b.windows(service.len()).any(|w| w == service.as_bytes())
                && b.windows(16).any(|w| w == trace_id.as_slice())
        })
    };
    assert!(
        with_trace("agentfleet-reasoning"),
        "reasoning spans missing the task's trace id ({} export requests); worker log:\n{}",
        bodies.len(),
        r.log()
    );
    assert!(
        with_trace("agentfleet-synthesis"),
        "synthesis spans missing the task's trace id"
    );
}
