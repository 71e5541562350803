//! Each provider against a local server speaking its wire format: request shape, answers,
//! and every error class.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentfleet_providers::{
    CompletionRequest, FailKind, ProviderArgs, ProviderError, ProviderKind, build,
};
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;

const KEY: &str = "sk-test-canary-93c1f0e7";

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        headers: vec![],
        body: body.to_owned(),
        delay: Duration::ZERO,
    }
}

type Seen = Arc<Mutex<Vec<(HeaderMap, serde_json::Value)>>>;

async fn server(path: &'static str, r: Reply) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let app = Router::new().route(
        path,
        post(move |headers: HeaderMap, body: Bytes| {
            let r = r.clone();
            let log = log.clone();
            async move {
                let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                log.lock().unwrap().push((headers, json));
                tokio::time::sleep(r.delay).await;
                let mut resp = (StatusCode::from_u16(r.status).unwrap(), r.body).into_response();
                for (k, v) in r.headers {
                    resp.headers_mut().insert(k, v.parse().unwrap());
                }
                resp
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

fn args(kind: ProviderKind, base: &str, key_file: &std::path::Path) -> ProviderArgs {
    ProviderArgs {
        provider: kind,
        model: Some("test-model".into()),
        base_url: Some(base.into()),
        system_prompt: None,
        system_prompt_file: None,
        max_tokens: 64,
        temperature: Some(0.2),
        request_timeout_secs: 1,
        connect_timeout_secs: 1,
        api_key_file: Some(key_file.to_owned()),
        mock_latency_ms: 0,
        mock_fail_rate: 0.0,
        mock_fail_kind: FailKind::Transient,
    }
}

fn key_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("agentfleet-key-{}", fastrand::u64(..)));
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    path
}

async fn call(
    kind: ProviderKind,
    r: Reply,
) -> (
    Result<agentfleet_providers::Completion, ProviderError>,
    Seen,
) {
    let path = match kind {
        ProviderKind::Anthropic => "/v1/messages",
        _ => "/v1/chat/completions",
    };
    let (url, seen) = server(path, r).await;
    let file = key_file();
    let provider = build(&args(kind, &url, &file)).expect("provider builds");
    let result = provider
        .complete(CompletionRequest {
            system: "be systematic".into(),
            user: "why queues?".into(),
        })
        .await;
    let _ = std::fs::remove_file(file);
    if let Err(e) = &result {
        assert!(
            !e.to_string().contains(KEY),
            "the key leaked into an error: {e}"
        );
    }
    (result, seen)
}

const OPENAI_OK: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"test-model","choices":[{"index":0,"message":{"role":"assistant","content":"forty-two"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#;
const ANTHROPIC_OK: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"test-model","content":[{"type":"text","text":"forty"},{"type":"text","text":"-two"}],"stop_reason":"end_turn","usage":{"input_tokens":7,"output_tokens":5}}"#;

#[tokio::test]
async fn openai_request_shape_and_answer() {
    let (result, seen) = call(ProviderKind::Openai, reply(200, OPENAI_OK)).await;
    let done = result.unwrap();
    assert_eq!(done.text, "forty-two");
    assert_eq!(
        (done.usage.prompt_tokens, done.usage.completion_tokens),
        (9, 3)
    );
    let seen = seen.lock().unwrap();
    let (headers, body) = &seen[0];
    assert_eq!(headers["authorization"], format!("Bearer {KEY}"));
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(
        body["messages"][0],
        serde_json::json!({"role": "system", "content": "be systematic"})
    );
    assert_eq!(
        body["messages"][1],
        serde_json::json!({"role": "user", "content": "why queues?"})
    );
}

#[tokio::test]
async fn anthropic_request_shape_and_answer() {
    let (result, seen) = call(ProviderKind::Anthropic, reply(200, ANTHROPIC_OK)).await;
    let done = result.unwrap();
    assert_eq!(done.text, "forty-two");
    assert_eq!(
        (done.usage.prompt_tokens, done.usage.completion_tokens),
        (7, 5)
    );
    let seen = seen.lock().unwrap();
    let (headers, body) = &seen[0];
    assert_eq!(headers["x-api-key"], KEY);
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert_eq!(body["system"], "be systematic");
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["messages"][0]["content"], "why queues?");
}

#[tokio::test]
async fn rate_limits_carry_retry_after_in_seconds_or_as_a_date() {
    for kind in [ProviderKind::Openai, ProviderKind::Anthropic] {
        let mut r = reply(
            429,
            r#"{"error":{"type":"rate_limit_error","message":"slow down"}}"#,
        );
        r.headers = vec![("retry-after", "7".into())];
        match call(kind, r).await.0 {
            Err(ProviderError::RateLimited {
                retry_after,
                message,
                ..
            }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)));
                assert_eq!(message, "slow down");
            }
            other => panic!("{kind:?}: {other:?}"),
        }
        let mut r = reply(429, "{}");
        let at = std::time::SystemTime::now() + Duration::from_secs(30);
        r.headers = vec![("retry-after", httpdate::fmt_http_date(at))];
        match call(kind, r).await.0 {
            Err(ProviderError::RateLimited {
                retry_after: Some(wait),
                ..
            }) => {
                assert!(
                    wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
                    "{wait:?}"
                )
            }
            other => panic!("{kind:?}: {other:?}"),
        }
    }
    // Without Retry-After, OpenAI's reset headers tell the wait.
    let mut r = reply(429, "{}");
    r.headers = vec![
        ("x-ratelimit-reset-requests", "1m30s".into()),
        ("x-ratelimit-reset-tokens", "20ms".into()),
    ];
    match call(ProviderKind::Openai, r).await.0 {
        Err(ProviderError::RateLimited { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(90)))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn server_errors_and_overload_are_transient() {
    for kind in [ProviderKind::Openai, ProviderKind::Anthropic] {
        let e = call(kind, reply(500, r#"{"error":{"message":"boom"}}"#))
            .await
            .0
            .unwrap_err();
        assert!(
            matches!(e, ProviderError::Transient { .. }) && e.is_retryable(),
            "{e:?}"
        );
    }
    let e = call(
        ProviderKind::Anthropic,
        reply(
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ),
    )
    .await
    .0
    .unwrap_err();
    assert!(
        matches!(e, ProviderError::Overloaded { status: 529, .. }) && e.is_retryable(),
        "{e:?}"
    );
}

#[tokio::test]
async fn client_errors_are_permanent_and_keep_the_providers_message() {
    for kind in [ProviderKind::Openai, ProviderKind::Anthropic] {
        for status in [400, 401, 403, 404, 413, 422] {
            let body = format!(
                r#"{{"type":"error","error":{{"type":"invalid_request_error","message":"bad thing {status}"}}}}"#
            );
            match call(kind, reply(status, &body)).await.0 {
                Err(e @ ProviderError::Permanent { .. }) => {
                    assert!(!e.is_retryable());
                    assert!(
                        e.to_string().contains(&format!("bad thing {status}")),
                        "{e}"
                    );
                }
                other => panic!("{kind:?} {status}: {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn timeouts_malformed_and_empty_bodies_are_transient() {
    for kind in [ProviderKind::Openai, ProviderKind::Anthropic] {
        let mut slow = reply(200, OPENAI_OK);
        slow.delay = Duration::from_secs(3);
        let e = call(kind, slow).await.0.unwrap_err();
        assert!(
            matches!(e, ProviderError::Transient { .. }),
            "{kind:?} timeout: {e:?}"
        );
        assert!(e.to_string().contains("timed out"), "{e}");
        for body in ["{not json", "", r#"{"choices":[]}"#, r#"{"content":[]}"#] {
            let e = call(kind, reply(200, body)).await.0.unwrap_err();
            assert!(
                matches!(e, ProviderError::Transient { .. }),
                "{kind:?} {body:?}: {e:?}"
            );
        }
    }
}

#[test]
fn a_missing_key_is_a_start_up_error_and_debug_never_shows_a_key() {
    let mut a = args(
        ProviderKind::Anthropic,
        "http://127.0.0.1:9",
        std::path::Path::new("/nonexistent/key"),
    );
    let err = build(&a).expect_err("unreadable key file");
    assert!(err.to_string().contains("/nonexistent/key"));
    a.api_key_file = None;
    if std::env::var("ANTHROPIC_API_KEY").is_err() {
        let err = build(&a).expect_err("no key");
        assert!(err.to_string().contains("ANTHROPIC_API_KEY"), "{err}");
    }
    let file = key_file();
    let o = args(ProviderKind::Openai, "http://127.0.0.1:9", &file);
    let provider = build(&o).unwrap();
    let _ = std::fs::remove_file(file);
    assert!(!format!("{provider:?}").contains(KEY));
    assert!(!format!("{o:?}").contains(KEY));
    let bad = args(
        ProviderKind::Openai,
        "ftp://nowhere",
        std::path::Path::new("/dev/null"),
    );
    assert!(build(&bad).is_err());
}
