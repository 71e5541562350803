//! Fleet-wide LLM limits and budgets against a local provider that enforces its own limits:
//! it speaks OpenAI Chat Completions, answers 429 beyond 120 requests or 20,000 tokens in
//! any 60 s, counts every request and reports usage (prompt: bytes / 4; completion: the
//! request's `max_tokens`).

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentfleet_e2e::{Fleet, Worker, tempdir, wait_until};
use agentfleet_job::TaskStatus;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

const RPM: usize = 120;
const TPM: u64 = 20_000;

/// One request as the provider saw it.
#[derive(Debug, Clone)]
struct Call {
    at: Instant,
    key: String,
    status: u16,
    tokens: u64,
}

/// How the provider behaves; the test changes it as it goes.
struct Behaviour {
    latency: Duration,
    /// Answer every call with this status (401: a revoked key) while set.
    fail_all: AtomicU16,
    /// Answer the next call made with this key 429 `Retry-After: 5`.
    rate_limit_key_once: Mutex<Option<String>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    enforce: AtomicBool,
}

struct Provider {
    port: u16,
    calls: Arc<Mutex<Vec<Call>>>,
    behaviour: Arc<Behaviour>,
}

impl Provider {
    async fn start(latency: Duration) -> Self {
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let behaviour = Arc::new(Behaviour {
            latency,
            fail_all: AtomicU16::new(0),
            rate_limit_key_once: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            enforce: AtomicBool::new(true),
        });
        let state = (calls.clone(), behaviour.clone());
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            port,
            calls,
            behaviour,
        }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

type AppState = (Arc<Mutex<Vec<Call>>>, Arc<Behaviour>);

async fn answer(
    State((calls, behaviour)): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim_start_matches("Bearer ")
        .to_owned();
    let text_bytes: usize = body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| m["content"].as_str().unwrap_or("").len())
                .sum()
        })
        .unwrap_or(0);
    let prompt_tokens = text_bytes.div_ceil(4) as u64;
    let completion_tokens = body["max_tokens"].as_u64().unwrap_or(16);
    let now = Instant::now();
    let (status, retry_after) = {
        let mut calls = calls.lock().unwrap();
        let minute: Vec<&Call> = calls
            .iter()
            .filter(|c| now.duration_since(c.at) < Duration::from_secs(60))
            .collect();
        let requests = minute.len() + 1;
        let tokens: u64 =
            minute.iter().map(|c| c.tokens).sum::<u64>() + prompt_tokens + completion_tokens;
        let once = {
            let mut once = behaviour.rate_limit_key_once.lock().unwrap();
            if once.as_deref() == Some(key.as_str()) {
                once.take();
                true
            } else {
                false
            }
        };
        let fail = behaviour.fail_all.load(Ordering::SeqCst);
        let (status, retry_after) = if fail != 0 {
            (fail, None)
        } else if once {
            (429, Some(5))
        } else if behaviour.enforce.load(Ordering::SeqCst) && (requests > RPM || tokens > TPM) {
            (429, Some(1))
        } else {
            (200, None)
        };
        calls.push(Call {
            at: now,
            key: key.clone(),
            status,
            tokens: if status == 200 {
                prompt_tokens + completion_tokens
            } else {
                0
            },
        });
        (status, retry_after)
    };
    if status != 200 {
        let mut response = (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"error": {"message": format!("test provider says {status}"), "type": "error"}})),
        )
            .into_response();
        if let Some(s) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", s.to_string().parse().unwrap());
        }
        return response;
    }
    // Counted down on drop: a client killed mid-call drops this handler.
    struct InFlight(Arc<Behaviour>);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let n = behaviour.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    behaviour.max_in_flight.fetch_max(n, Ordering::SeqCst);
    let _in_flight = InFlight(behaviour.clone());
    tokio::time::sleep(behaviour.latency).await;
    Json(json!({
        "id": "chatcmpl-limits",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "A short answer."},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}
    }))
    .into_response()
}

fn worker<'a>(
    fleet: &'a Fleet,
    role: &str,
    provider: &Provider,
) -> agentfleet_e2e::WorkerBuilder<'a> {
    fleet
        .worker(role)
        .arg("--provider", "openai")
        .arg("--base-url", provider.base_url())
        .arg("--model", "test-model")
        .arg("--max-tokens", 40)
        .env("OPENAI_API_KEY", "sk-test-shared")
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Most events in any window of `width` starting at an event: (count, sum of weights).
fn busiest_window(events: &[(Instant, u64)], width: Duration) -> (usize, u64) {
    let mut best = (0, 0);
    for (i, (start, _)) in events.iter().enumerate() {
        let inside = events[i..]
            .iter()
            .take_while(|(at, _)| at.duration_since(*start) < width);
        let (n, w) = inside.fold((0, 0), |(n, w), (_, t)| (n + 1, w + t));
        best = (best.0.max(n), best.1.max(w));
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_of_two_roles_share_one_quota_for_a_minute_without_a_429() {
    let provider = Provider::start(Duration::from_millis(150)).await;
    let fleet = Fleet::new("limits-load");
    let limited = |role: &str| {
        worker(&fleet, role, &provider)
            .arg("--concurrency", 50)
            .arg("--rpm", RPM)
            .arg("--tpm", TPM)
    };
    let _workers: Vec<Worker> = vec![
        limited("reasoning").spawn(),
        limited("reasoning").spawn(),
        limited("synthesis").spawn(),
    ];
    let ids = fleet.enqueue_many(300, "Rate limits");
    let started = Instant::now();
    blocking(|| wait_until(Duration::from_secs(10), || provider.count() > 0));
    let first = provider.calls()[0].at;
    blocking(|| {
        std::thread::sleep(Duration::from_secs(60).saturating_sub(first.duration_since(started)))
    });
    let in_minute: Vec<Call> = provider
        .calls()
        .into_iter()
        .filter(|c| c.at.duration_since(first) < Duration::from_secs(60))
        .collect();
    let limited_calls = in_minute.iter().filter(|c| c.status == 429).count();
    let events: Vec<(Instant, u64)> = in_minute.iter().map(|c| (c.at, c.tokens)).collect();
    let (max_requests, max_tokens) = busiest_window(&events, Duration::from_secs(1));
    let requests = in_minute.len();
    let tokens: u64 = in_minute.iter().map(|c| c.tokens).sum();
    let done = fleet.count_status(&ids, TaskStatus::Done);
    eprintln!(
        "60 s: {requests} requests ({:.1}% of {RPM}), {tokens} tokens ({:.1}% of {TPM}), busiest 1 s: {max_requests} requests, {max_tokens} tokens; 429s: {limited_calls}; tasks done: {done}",
        requests as f64 * 100.0 / RPM as f64,
        tokens as f64 * 100.0 / TPM as f64
    );
    assert_eq!(limited_calls, 0, "the provider answered 429");
    let share_requests = RPM as f64 / 60.0 * 1.1;
    let share_tokens = TPM as f64 / 60.0 * 1.1;
    assert!(
        max_requests as f64 <= share_requests,
        "a 1 s window saw {max_requests} requests; the share is {share_requests:.1}"
    );
    assert!(
        max_tokens as f64 <= share_tokens,
        "a 1 s window saw {max_tokens} tokens; the share is {share_tokens:.0}"
    );
    assert!(
        requests * 10 >= RPM * 9,
        "only {requests} requests in the minute: under 90% of {RPM}"
    );
    let dead = fleet.queue_counts();
    assert!(
        dead.as_array().unwrap().iter().all(|r| r["dead"] == 0),
        "{dead}"
    );
}

fn leases(fleet: &Fleet, key: &str) -> std::collections::HashMap<String, i64> {
    redis::cmd("HGETALL")
        .arg(format!("{{{}:limit:{key}}}:leases", fleet.namespace))
        .query(&mut fleet.conn())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkilled_workers_concurrency_leases_return_within_the_lease() {
    let provider = Provider::start(Duration::from_millis(1500)).await;
    provider.behaviour.enforce.store(false, Ordering::SeqCst);
    let fleet = Fleet::new("limits-kill");
    let lease = Duration::from_secs(3);
    let start = |name: &str| {
        worker(&fleet, "reasoning", &provider)
            .arg("--worker-name", name)
            .arg("--concurrency", 10)
            .arg("--limit-key", "acct")
            .arg("--max-concurrent-requests", 4)
            .arg("--lease-timeout-secs", lease.as_secs())
            .spawn()
    };
    let mut doomed = start("doomed");
    let ids = fleet.enqueue_many(40, "Leases");
    let held = blocking(|| {
        wait_until(Duration::from_secs(10), || {
            leases(&fleet, "acct")
                .iter()
                .any(|(w, n)| w.starts_with("doomed-") && *n == 4)
        })
    });
    assert!(held, "{:?}\n{}", leases(&fleet, "acct"), doomed.log());
    let survivor = start("survivor");
    doomed.kill9();
    let killed = Instant::now();
    let returned = blocking(|| {
        wait_until(lease * 3, || {
            !leases(&fleet, "acct")
                .keys()
                .any(|w| w.starts_with("doomed-"))
        })
    });
    let took = killed.elapsed();
    assert!(returned, "{:?}", leases(&fleet, "acct"));
    eprintln!("leases of the killed worker returned after {took:?} (lease {lease:?})");
    assert!(
        took <= lease + Duration::from_secs(2),
        "the leases came back after {took:?}; the lease is {lease:?}"
    );
    // Throughput recovers: the survivor runs the full concurrency and finishes everything.
    provider.behaviour.max_in_flight.store(0, Ordering::SeqCst);
    let full = blocking(|| {
        wait_until(Duration::from_secs(10), || {
            provider.behaviour.max_in_flight.load(Ordering::SeqCst) == 4
        })
    });
    assert!(
        full,
        "the survivor never got back to 4 concurrent calls: {:?} {}\n{}",
        leases(&fleet, "acct"),
        fleet.queue_counts(),
        survivor.log()
    );
    let recovered_at = killed.elapsed();
    let all = blocking(|| {
        wait_until(Duration::from_secs(60), || {
            fleet.count_stage_done(&ids, "reasoning") == ids.len()
        })
    });
    assert!(all, "{}", fleet.queue_counts());
    eprintln!("full concurrency again {recovered_at:?} after the kill");
    assert!(
        provider.behaviour.max_in_flight.load(Ordering::SeqCst) <= 4,
        "more than 4 calls ran at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_429_cools_down_every_worker_for_its_retry_after() {
    let provider = Provider::start(Duration::from_millis(20)).await;
    provider.behaviour.enforce.store(false, Ordering::SeqCst);
    let fleet = Fleet::new("limits-429");
    let shared = |role: &str, key: &str| {
        worker(&fleet, role, &provider)
            .arg("--concurrency", 5)
            .arg("--limit-key", "acct")
            .env("OPENAI_API_KEY", key)
            .spawn()
    };
    let _a = shared("reasoning", "sk-a");
    let _b = shared("reasoning", "sk-b");
    let _c = shared("synthesis", "sk-b");
    let ids = fleet.enqueue_many(400, "Cooldown");
    blocking(|| wait_until(Duration::from_secs(10), || provider.count() > 50));
    *provider.behaviour.rate_limit_key_once.lock().unwrap() = Some("sk-a".to_owned());
    let limited = blocking(|| {
        wait_until(Duration::from_secs(10), || {
            provider.calls().iter().any(|c| c.status == 429)
        })
    });
    assert!(limited);
    blocking(|| std::thread::sleep(Duration::from_secs(6)));
    let calls = provider.calls();
    let at = calls.iter().find(|c| c.status == 429).unwrap().at;
    // Calls already on the wire when the 429 was answered may still arrive a moment later.
    let during: Vec<&Call> = calls
        .iter()
        .filter(|c| c.at > at + Duration::from_millis(250) && c.at < at + Duration::from_secs(5))
        .collect();
    let after = calls
        .iter()
        .filter(|c| c.at >= at + Duration::from_secs(5))
        .map(|c| c.at.duration_since(at))
        .min();
    eprintln!(
        "after the 429: {} calls within 5 s; first call again after {after:?}",
        during.len()
    );
    assert!(
        during.is_empty(),
        "{} calls within the 5 s cooldown, by keys {:?}",
        during.len(),
        during.iter().map(|c| &c.key).collect::<Vec<_>>()
    );
    assert!(after.is_some(), "work did not resume after the cooldown");
    let done = blocking(|| {
        wait_until(Duration::from_secs(60), || {
            fleet.count_status(&ids, TaskStatus::Done) == ids.len()
        })
    });
    assert!(done, "{}", fleet.queue_counts());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_for_capacity_uses_no_attempt() {
    let provider = Provider::start(Duration::from_millis(10)).await;
    let fleet = Fleet::new("limits-wait");
    // One delivery allowed: any counted wait would dead-letter the job.
    let start = |role: &str| {
        worker(&fleet, role, &provider)
            .arg("--rpm", 120)
            .arg("--limit-wait-ms", 100)
            .arg("--max-attempts", 1)
            .spawn()
    };
    let _r = start("reasoning");
    let _s = start("synthesis");
    let ids = fleet.enqueue_many(10, "Patience");
    let done = blocking(|| {
        wait_until(Duration::from_secs(60), || {
            fleet.count_status(&ids, TaskStatus::Done) == ids.len()
        })
    });
    assert!(done, "{}", fleet.queue_counts());
    for id in &ids {
        let record = fleet.record(id);
        for role in ["reasoning", "synthesis"] {
            assert_eq!(record.stages[role].attempts, 1, "{id} {role}");
        }
    }
    let deferred: u64 = redis::cmd("HGET")
        .arg(fleet.queue_keys("reasoning").stats())
        .arg("deferred")
        .query::<Option<u64>>(&mut fleet.conn())
        .unwrap()
        .unwrap_or(0);
    assert!(deferred > 0, "no job had to wait: the test proves nothing");
}

fn limits_json(fleet: &Fleet) -> Value {
    serde_json::from_str(&fleet.cli_ok(&["limits", "--json"])).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daily_budget_is_never_overshot_and_replay_after_raising_it_finishes_the_rest() {
    let provider = Provider::start(Duration::from_millis(50)).await;
    provider.behaviour.enforce.store(false, Ordering::SeqCst);
    let fleet = Fleet::new("limits-budget");
    let dir = tempdir();
    let prices = dir.join("prices.json");
    // $20 per million tokens both ways: a reasoning call of ~120 tokens costs ~$0.0024.
    std::fs::write(
        &prices,
        r#"{"models": {"test-model": {"input_per_mtok": 20.0, "output_per_mtok": 20.0}}}"#,
    )
    .unwrap();
    let start = |role: &str, budget: &str| {
        worker(&fleet, role, &provider)
            .arg("--concurrency", 500)
            .arg("--prices-file", prices.display())
            .arg("--budget-daily-usd", budget)
            .spawn()
    };
    let r = start("reasoning", "0.50");
    let s = start("synthesis", "0.50");
    let ids = fleet.enqueue_many(500, "Budget");
    let settled = blocking(|| {
        wait_until(Duration::from_secs(60), || {
            let done = fleet.count_status(&ids, TaskStatus::Done);
            let dead = fleet.count_status(&ids, TaskStatus::Dead);
            done + dead == ids.len()
        })
    });
    assert!(settled, "{}", fleet.queue_counts());
    let limits = limits_json(&fleet);
    let spent = limits["budgets"][0]["spent_usd"].as_f64().unwrap();
    let provider_cost: f64 = provider
        .calls()
        .iter()
        .map(|c| c.tokens as f64 * 20.0 / 1e6)
        .sum();
    let done = fleet.count_status(&ids, TaskStatus::Done);
    eprintln!(
        "budget $0.50: settled ${spent:.4}, provider-side cost ${provider_cost:.4}, {done} tasks done, {} calls",
        provider.count()
    );
    assert!(spent <= 0.50 + 1e-9, "settled ${spent}");
    assert!(
        provider_cost <= 0.50 + 1e-9,
        "the provider served ${provider_cost}"
    );
    assert!(spent > 0.40, "the budget was hardly used: ${spent}");
    let mut dead = Vec::new();
    for role in ["reasoning", "synthesis"] {
        let out = fleet.cli_ok(&["dlq", "list", role, "--json", "--limit", "1000"]);
        let letters: Vec<Value> = serde_json::from_str(&out).unwrap();
        for l in &letters {
            assert_eq!(l["error_class"], "budget", "{l}");
        }
        dead.extend(letters.into_iter().map(|l| (role, l)));
    }
    assert_eq!(
        dead.len(),
        ids.len() - done,
        "every unfinished task is a budget dead letter"
    );
    drop((r, s));
    let _r = start("reasoning", "100");
    let _s = start("synthesis", "100");
    for role in ["reasoning", "synthesis"] {
        fleet.cli_ok(&["dlq", "replay", role, "--all"]);
    }
    let finished = blocking(|| {
        wait_until(Duration::from_secs(60), || {
            fleet.count_status(&ids, TaskStatus::Done) == ids.len()
        })
    });
    assert!(finished, "{}", fleet.queue_counts());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_key_pauses_the_account_without_dead_letters_until_it_works_again() {
    let provider = Provider::start(Duration::from_millis(5)).await;
    provider.behaviour.enforce.store(false, Ordering::SeqCst);
    provider.behaviour.fail_all.store(401, Ordering::SeqCst);
    let fleet = Fleet::new("limits-401");
    let start = |role: &str| {
        worker(&fleet, role, &provider)
            .arg("--concurrency", 50)
            .arg("--account-failure-threshold", 3)
            .arg("--account-probe-secs", 2)
            .spawn()
    };
    let r = start("reasoning");
    let _s = start("synthesis");
    let ids = fleet.enqueue_many(2000, "Revoked");
    let started = Instant::now();
    let paused = blocking(|| {
        wait_until(Duration::from_secs(20), || {
            agentfleet_e2e::http_get(r.port, "/readyz")
                .is_some_and(|(status, body)| status == 503 && body.contains("paused"))
        })
    });
    assert!(
        paused,
        "{:?}\n{}",
        agentfleet_e2e::http_get(r.port, "/readyz"),
        r.log()
    );
    blocking(|| std::thread::sleep(Duration::from_secs(4)));
    let elapsed = started.elapsed();
    let calls = provider.count();
    // The threshold, then one probe per probe interval.
    let allowed = 3 + (elapsed.as_secs() / 2) as usize + 1;
    eprintln!("{calls} calls reached the provider in {elapsed:?} (allowed {allowed})");
    assert!(
        calls <= allowed,
        "{calls} calls reached a provider answering 401"
    );
    let limits = limits_json(&fleet);
    assert_eq!(limits["limits"][0]["account_paused"], true, "{limits}");
    assert!(
        r.metrics()
            .contains("agentfleet_limit_account_paused{limit_key="),
        "no paused-account metric"
    );
    assert!(
        r.metrics()
            .contains(&format!("namespace=\"{}\"", fleet.namespace)),
        "no paused-account metric"
    );
    let counts = fleet.queue_counts();
    assert!(
        counts.as_array().unwrap().iter().all(|r| r["dead"] == 0),
        "{counts}"
    );
    provider.behaviour.fail_all.store(0, Ordering::SeqCst);
    let resumed = Instant::now();
    let done = blocking(|| {
        wait_until(Duration::from_secs(120), || {
            fleet.count_status(&ids, TaskStatus::Done) == ids.len()
        })
    });
    assert!(done, "{}", fleet.queue_counts());
    eprintln!(
        "all 2000 tasks done {:?} after the key worked again",
        resumed.elapsed()
    );
    assert_eq!(
        agentfleet_e2e::http_get(r.port, "/readyz").map(|(s, _)| s),
        Some(200)
    );
}
