//! Workers against local HTTP servers speaking the real provider wire formats: Anthropic
//! Messages for reasoning, OpenAI Chat Completions for synthesis.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentfleet_e2e::{Fleet, wait_until};
use agentfleet_job::TaskStatus;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

const ANTHROPIC_KEY: &str = "sk-ant-canary-7f3e9d2c1b";
const OPENAI_KEY: &str = "sk-openai-canary-4a8b6c0e2f";

/// What a fake provider saw, and how it should answer the n-th request.
#[derive(Default)]
struct Seen {
    requests: Vec<(Instant, HeaderMap, Value)>,
}

type Shared = Arc<Mutex<Seen>>;
type Script = Arc<dyn Fn(usize) -> (StatusCode, Vec<(&'static str, String)>, Value) + Send + Sync>;

async fn serve(path: &'static str, script: Script) -> (u16, Shared) {
    let seen: Shared = Arc::default();
    let state = (seen.clone(), script);
    let app = Router::new()
        .route(
            path,
            post(
                |State((seen, script)): State<(Shared, Script)>,
                 headers: HeaderMap,
                 Json(body): Json<Value>| async move {
                    let n = {
                        let mut s = seen.lock().unwrap();
                        s.requests.push((Instant::now(), headers, body));
                        s.requests.len()
                    };
                    let (status, extra, body) = script(n);
                    let mut response = (status, Json(body)).into_response();
                    for (k, v) in extra {
                        response.headers_mut().insert(k, v.parse().unwrap());
                    }
                    response
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, seen)
}

fn anthropic_message(text: &str) -> Value {
    json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": 11, "output_tokens": 22}
    })
}

fn openai_completion(text: &str) -> Value {
    json!({
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 33, "completion_tokens": 44, "total_tokens": 77}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reasoning_on_anthropic_and_synthesis_on_openai_finish_a_task_with_usage() {
    let (anthropic, a_seen) = serve(
        "/v1/messages",
        Arc::new(|_| {
            (
                StatusCode::OK,
                vec![],
                anthropic_message("ANALYSIS FROM CLAUDE"),
            )
        }),
    )
    .await;
    let (openai, o_seen) = serve(
        "/v1/chat/completions",
        Arc::new(|_| (StatusCode::OK, vec![], openai_completion("ANSWER FROM GPT"))),
    )
    .await;
    let fleet = Fleet::new("providers");
    let _r = fleet
        .worker("reasoning")
        .arg("--provider", "anthropic")
        .arg("--base-url", format!("http://127.0.0.1:{anthropic}"))
        .arg("--model", "claude-test")
        .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .spawn();
    let _s = fleet
        .worker("synthesis")
        .arg("--provider", "openai")
        .arg("--base-url", format!("http://127.0.0.1:{openai}"))
        .arg("--model", "gpt-test")
        .env("OPENAI_API_KEY", OPENAI_KEY)
        .spawn();
    let ids = fleet.enqueue_many(1, "Compare two queue designs");
    let done = tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(20), || {
            fleet.count_status(&ids, TaskStatus::Done) == 1
        })
    });
    assert!(done, "{:?}", fleet.queue_counts());
    let record = fleet.record(&ids[0]);
    assert_eq!(record.output("reasoning"), Some("ANALYSIS FROM CLAUDE"));
    assert_eq!(record.answer.as_deref(), Some("ANSWER FROM GPT"));
    let r = &record.stages["reasoning"];
    let s = &record.stages["synthesis"];
    assert_eq!(
        (r.provider.as_deref(), r.model.as_deref()),
        (Some("anthropic"), Some("claude-test"))
    );
    assert_eq!(
        r.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
        Some((11, 22))
    );
    assert_eq!(
        (s.provider.as_deref(), s.model.as_deref()),
        (Some("openai"), Some("gpt-test"))
    );
    assert_eq!(
        s.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
        Some((33, 44))
    );

    let a = a_seen.lock().unwrap();
    let (_, headers, body) = &a.requests[0];
    assert_eq!(headers["x-api-key"], ANTHROPIC_KEY);
    assert!(headers.contains_key("anthropic-version"));
    assert_eq!(body["model"], "claude-test");
    assert!(body["max_tokens"].as_u64().is_some());
    assert!(body["system"].as_str().is_some_and(|s| s.contains("analy")));
    assert_eq!(body["messages"][0]["role"], "user");
    assert!(
        body["messages"][0]["content"]
            .to_string()
            .contains("Compare two queue designs")
    );
    let o = o_seen.lock().unwrap();
    let (_, headers, body) = &o.requests[0];
    assert_eq!(headers["authorization"], format!("Bearer {OPENAI_KEY}"));
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(body["messages"][0]["role"], "system");
    assert!(
        body["messages"][1]["content"]
            .to_string()
            .contains("ANALYSIS FROM CLAUDE")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_retry_waits_for_retry_after_and_then_succeeds() {
    let (anthropic, seen) = serve(
        "/v1/messages",
        Arc::new(|n| {
            if n == 1 {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    vec![("retry-after", "2".to_owned())],
                    json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit"}}),
                )
            } else {
                (StatusCode::OK, vec![], anthropic_message("after the wait"))
            }
        }),
    )
    .await;
    let fleet = Fleet::new("ratelimit");
    let _r = fleet
        .worker("reasoning")
        .arg("--provider", "anthropic")
        .arg("--base-url", format!("http://127.0.0.1:{anthropic}"))
        .arg("--backoff-base-ms", 10)
        // The provider's wait wins over the jittered backoff, up to --backoff-max-ms.
        .arg("--backoff-max-ms", 5_000)
        .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .spawn();
    let ids = fleet.enqueue_many(1, "rate limited");
    let ok = tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(20), || {
            fleet.count_stage_done(&ids, "reasoning") == 1
        })
    });
    assert!(ok, "{:?}", fleet.queue_counts());
    let s = seen.lock().unwrap();
    assert_eq!(s.requests.len(), 2);
    let waited = s.requests[1].0 - s.requests[0].0;
    assert!(
        waited >= Duration::from_secs(2),
        "the retry came after {waited:?}, Retry-After said 2 s"
    );
    // A 429 is waiting, not failing (agentfleet-limits): the retry uses no attempt.
    assert_eq!(fleet.record(&ids[0]).stages["reasoning"].attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_401_is_dead_lettered_at_once_with_the_providers_message_and_no_key_anywhere() {
    let (openai, seen) = serve(
        "/v1/chat/completions",
        Arc::new(|_| {
            (
                StatusCode::UNAUTHORIZED,
                vec![],
                json!({"error": {"message": "Incorrect API key provided: sk-op***2f.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
            )
        }),
    )
    .await;
    let fleet = Fleet::new("secret");
    let worker = fleet
        .worker("reasoning")
        .arg("--provider", "openai")
        .arg("--base-url", format!("http://127.0.0.1:{openai}"))
        .env("OPENAI_API_KEY", OPENAI_KEY)
        .env("RUST_LOG", "trace")
        // Account pausing off: a 401 is then the job's permanent failure.
        .arg("--account-failure-threshold", 0)
        .spawn();
    let ids = fleet.enqueue_many(1, "secret");
    let dead = tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(20), || {
            fleet.count_status(&ids, TaskStatus::Dead) == 1
        })
    });
    assert!(dead, "{:?}", fleet.queue_counts());
    assert_eq!(
        seen.lock().unwrap().requests.len(),
        1,
        "a 401 is not retried"
    );
    let letter = fleet.cli_ok(&["dlq", "show", &ids[0], "--json"]);
    assert!(letter.contains("Incorrect API key provided"), "{letter}");
    assert!(letter.contains("\"permanent\""), "{letter}");
    let record = fleet.cli_ok(&["status", &ids[0], "--json"]);
    let mut keys_dump = String::new();
    let mut conn = fleet.conn();
    for key in fleet.keys() {
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(&key)
            .query(&mut conn)
            .unwrap_or_default();
        keys_dump.push_str(&String::from_utf8_lossy(&dump));
    }
    for (what, text) in [
        ("log", worker.log()),
        ("dead letter", letter),
        ("record", record),
        ("redis", keys_dump),
    ] {
        assert!(
            !text.contains(OPENAI_KEY),
            "the API key leaked into the {what}"
        );
    }
}

#[test]
fn a_real_provider_without_a_key_fails_at_start_up() {
    for (provider, var) in [
        ("openai", "OPENAI_API_KEY"),
        ("anthropic", "ANTHROPIC_API_KEY"),
    ] {
        let out = std::process::Command::new(agentfleet_e2e::bin("reasoning-worker"))
            .args(["--provider", provider, "--metrics-addr", "127.0.0.1:0"])
            .env_remove("OPENAI_API_KEY")
            .env_remove("ANTHROPIC_API_KEY")
            .env("REDIS_URL", agentfleet_e2e::redis_url())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(var), "{provider}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn absurd_wait_headers_are_clamped_to_the_backoff_cap_without_a_panic() {
    let (openai, seen) = serve(
        "/v1/chat/completions",
        Arc::new(|n| {
            let rate_limited = json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}});
            match n {
                1 => (
                    StatusCode::TOO_MANY_REQUESTS,
                    vec![("retry-after", "1e30".to_owned())],
                    rate_limited,
                ),
                2 => (
                    StatusCode::TOO_MANY_REQUESTS,
                    vec![(
                        "x-ratelimit-reset-requests",
                        "99999999999999999999999h".to_owned(),
                    )],
                    rate_limited,
                ),
                _ => (StatusCode::OK, vec![], openai_completion("after two absurd waits")),
            }
        }),
    )
    .await;
    let fleet = Fleet::new("absurd-wait");
    let backoff_max = Duration::from_millis(400);
    let worker = fleet
        .worker("reasoning")
        .arg("--provider", "openai")
        .arg("--base-url", format!("http://127.0.0.1:{openai}"))
        .arg("--backoff-base-ms", 10)
        .arg("--backoff-max-ms", backoff_max.as_millis())
        .arg("--lease-timeout-secs", 3)
        .env("OPENAI_API_KEY", OPENAI_KEY)
        .spawn();
    let ids = fleet.enqueue_many(1, "hostile headers");
    let ok = tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(20), || {
            fleet.count_stage_done(&ids, "reasoning") == 1
        })
    });
    assert!(ok, "{:?}\n{}", fleet.queue_counts(), worker.log());
    let s = seen.lock().unwrap();
    assert_eq!(s.requests.len(), 3);
    for pair in s.requests.windows(2) {
        let waited = pair[1].0 - pair[0].0;
        // The cap, plus at most one maintenance tick (lease / 10) before the retry is due.
        assert!(
            waited <= backoff_max + Duration::from_millis(300) + Duration::from_secs(1),
            "a retry waited {waited:?}; the cap is {backoff_max:?}"
        );
    }
    // Each 429 cooled the account down and deferred the job: no attempt used.
    assert_eq!(fleet.record(&ids[0]).stages["reasoning"].attempts, 1);
    assert!(!worker.log().contains("panicked"), "{}", worker.log());
}
