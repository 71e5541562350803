//! `agentfleet ui`: the web inspector. A small axum server over the same data as the CLI
//! (queues, workers registry, tasks index, records, dead letters, the event stream), with
//! a page of plain HTML/JS/CSS embedded in the binary (no build step).
//!
//! Access: loopback by default; any other address needs a token (`--token`,
//! `--token-file`), asked of every request (a `Bearer` header, or the cookie the page sets
//! from `?token=`). State-changing requests (replay, purge) are POSTs that must come from
//! the inspector's own page: `Sec-Fetch-Site` same-origin (or absent) and an `Origin`, if
//! sent, naming the host asked; so another site cannot make a browser replay or purge.
//! On loopback the `Host` header must be a loopback name (a DNS-rebinding page cannot talk
//! to it either).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agentfleet_queue::{ConnectOptions, Events, RedisArgs, TaskFilter, connect};
use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::{Fleet, usage};

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");
const COOKIE: &str = "agentfleet_ui_token";

/// Flags of `agentfleet ui`.
#[derive(Debug, clap::Args)]
pub struct UiArgs {
    /// Where to listen. Anything but a loopback address needs a token.
    #[arg(long, default_value = "127.0.0.1:8080", env = "AGENTFLEET_UI_ADDR")]
    addr: SocketAddr,
    /// Token every request must carry (`Authorization: Bearer TOKEN`, or open
    /// `/?token=TOKEN` once in the browser). Prefer --token-file: arguments are visible in `ps`.
    #[arg(
        long,
        env = "AGENTFLEET_UI_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File holding the token (first line).
    #[arg(long, env = "AGENTFLEET_UI_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

struct App {
    fleet: Fleet,
    /// For the event stream's blocking reads: each live page gets a connection of its own
    /// (a blocked `XREAD` would hold up every other request on a shared one).
    redis: RedisArgs,
    token: Option<String>,
    loopback: bool,
}

type Shared = Arc<App>;

pub async fn run(fleet: Fleet, args: UiArgs, redis: RedisArgs) -> anyhow::Result<ExitCode> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.trim().to_owned()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| usage!("--token-file {}: {e}", path.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    if token.as_deref().is_some_and(|t| t.len() < 16) {
        return Err(usage!(
            "the inspector's token must be at least 16 characters"
        ));
    }
    let loopback = args.addr.ip().is_loopback();
    if !loopback && token.is_none() {
        return Err(usage!(
            "--addr {} is not a loopback address: give --token or --token-file",
            args.addr
        ));
    }
    let app = Arc::new(App {
        fleet,
        redis,
        token,
        loopback,
    });
    let router = Router::new()
        .route("/", get(page))
        .route("/tasks/{id}", get(page))
        .route("/dead/{role}/{id}", get(page))
        .route(
            "/app.js",
            get(|| async { asset(APP_JS, "text/javascript") }),
        )
        .route("/style.css", get(|| async { asset(STYLE_CSS, "text/css") }))
        .route("/api/queues", get(queues))
        .route("/api/workers", get(workers))
        .route("/api/tasks", get(tasks))
        .route("/api/tasks/{id}", get(task))
        .route("/api/dead", get(dead_letters))
        .route("/api/dead/{role}/{id}", get(dead_letter))
        .route("/api/dead/{role}/{id}/replay", post(replay))
        .route("/api/dead/{role}/{id}/purge", post(purge))
        .route("/api/events", get(events))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("listening on {}", args.addr))?;
    let bound = listener.local_addr()?;
    eprintln!("agentfleet inspector on http://{bound}/");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving the inspector")?;
    Ok(ExitCode::SUCCESS)
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Every route of the app: the HTML page is the same; its script reads the path.
async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain")],
        why.to_owned(),
    )
        .into_response()
}

/// Constant-time comparison: the token is not revealed a byte at a time.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

fn query_token(req: &Request) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "token").then(|| v.to_owned())
    })
}

/// Access control and the cross-site request check, before every handler.
async fn guard(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let headers = req.headers().clone();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if app.loopback {
        let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(&host);
        if !matches!(name, "127.0.0.1" | "localhost" | "[::1]") {
            return refuse(
                StatusCode::FORBIDDEN,
                "the inspector answers loopback names only",
            );
        }
    }
    let mut set_cookie = None;
    if let Some(token) = &app.token {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let from_query = query_token(&req).filter(|t| same(t, token));
        let ok = bearer.as_deref().is_some_and(|t| same(t, token))
            || cookie_token(&headers).is_some_and(|t| same(&t, token))
            || (from_query.is_some() && req.method() == Method::GET);
        if !ok {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "this inspector needs its token: open /?token=TOKEN once, or send Authorization: Bearer TOKEN",
            );
        }
        if from_query.is_some() {
            set_cookie = Some(format!(
                "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
            ));
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("same-origin");
        let origin_ok = match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
            None => true,
            Some(origin) => origin
                .split_once("://")
                .is_some_and(|(_, rest)| rest == host),
        };
        if site != "same-origin" || !origin_ok {
            return refuse(
                StatusCode::FORBIDDEN,
                "cross-site request refused: changes come from the inspector's own page",
            );
        }
    }
    let mut response = next.run(req).await;
    if let Some(cookie) = set_cookie
        && let Ok(value) = HeaderValue::from_str(&cookie)
    {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// An error as the API answers it: JSON with a message.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({"error": self.1}))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        let status = if e.chain().any(|c| c.is::<crate::Usage>()) {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        Self(status, format!("{e:#}"))
    }
}

impl From<agentfleet_queue::QueueError> for ApiError {
    fn from(e: agentfleet_queue::QueueError) -> Self {
        Self(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

fn json(value: impl serde::Serialize) -> ApiResult {
    Ok(axum::Json(value).into_response())
}

async fn queues(State(app): State<Shared>) -> ApiResult {
    let fleet = &app.fleet;
    // The same reads as `agentfleet queues` (one place for them), shaped for the page.
    let mut rows = Vec::new();
    for (role, c, workers, review) in crate::inspect::rows(fleet).await? {
        rows.push(serde_json::json!({
            "role": role,
            "pending": c.pending,
            "in_flight": c.in_flight,
            "scheduled": c.scheduled,
            "dead": c.dead,
            "done": c.succeeded,
            "retried": c.retried,
            "recovered": c.recovered,
            "oldest_pending_age_ms": c.oldest_pending_age_ms,
            "live_workers": workers.len(),
            "review": review.waiting,
        }));
    }
    json(serde_json::json!({
        "namespace": fleet.namespace.as_str(),
        "pipeline": fleet.pipeline.to_string(),
        "roles": rows,
    }))
}

async fn workers(State(app): State<Shared>) -> ApiResult {
    let mut all = Vec::new();
    for role in app.fleet.pipeline.roles() {
        all.extend(
            app.fleet
                .queue(role)?
                .registered_workers(app.fleet.lease)
                .await?,
        );
    }
    json(all)
}

#[derive(Deserialize)]
struct TaskQuery {
    q: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

async fn tasks(State(app): State<Shared>, Query(q): Query<TaskQuery>) -> ApiResult {
    let mut filter = TaskFilter {
        limit: q.limit.unwrap_or(50).clamp(1, 1_000),
        ..TaskFilter::default()
    };
    if let Some(status) = q.status.filter(|s| !s.is_empty()) {
        filter.status = Some(
            status
                .parse()
                .map_err(|e: String| ApiError(StatusCode::BAD_REQUEST, e))?,
        );
    }
    if let Some(text) = q.q.map(|q| q.trim().to_owned()).filter(|q| !q.is_empty()) {
        match text.split_once('=') {
            Some((k, v)) => filter.metadata = vec![(k.to_owned(), v.to_owned())],
            None => filter.text = Some(text),
        }
    }
    json(app.fleet.store.list_tasks(&filter).await?)
}

async fn task(State(app): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let Some(record) = app.fleet.store.get(&id).await? else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no task {id}")));
    };
    let events = app.fleet.store.events().of_task(&id, 20_000).await?;
    json(serde_json::json!({"record": record, "events": events}))
}

#[derive(Deserialize)]
struct DeadQuery {
    limit: Option<usize>,
}

async fn dead_letters(State(app): State<Shared>, Query(q): Query<DeadQuery>) -> ApiResult {
    let mut all = Vec::new();
    for role in app.fleet.pipeline.roles() {
        all.extend(
            app.fleet
                .queue(role)?
                .dead_letters(0, q.limit.unwrap_or(100).clamp(1, 1_000))
                .await?,
        );
    }
    json(all)
}

async fn dead_letter(
    State(app): State<Shared>,
    Path((role, id)): Path<(String, String)>,
) -> ApiResult {
    match app.fleet.queue(&role)?.dead_letter(&id).await? {
        Some(letter) => json(letter),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no dead letter {id} in {role}"),
        )),
    }
}

async fn replay(State(app): State<Shared>, Path((role, id)): Path<(String, String)>) -> ApiResult {
    let (replayed, _) = crate::dlq::replay(&app.fleet, &role, std::slice::from_ref(&id)).await?;
    if replayed.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no dead letter {id} in {role} (already replayed or purged?)"),
        ));
    }
    json(serde_json::json!({"replayed": replayed}))
}

async fn purge(State(app): State<Shared>, Path((role, id)): Path<(String, String)>) -> ApiResult {
    let purged = app
        .fleet
        .queue(&role)?
        .purge(std::slice::from_ref(&id))
        .await?;
    if purged == 0 {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no dead letter {id} in {role}"),
        ));
    }
    json(serde_json::json!({"purged": purged}))
}

/// Server-sent events from the stream: each event's id is its stream id, so a browser
/// that reconnects (`Last-Event-ID`) resumes where it was.
async fn events(State(app): State<Shared>, headers: HeaderMap) -> ApiResult {
    let conn = connect(&app.redis, &ConnectOptions::default())?;
    let stream = Events::new(conn, &app.fleet.namespace, 0);
    let mut after = match headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
    {
        Some(id) => id.to_owned(),
        None => stream.last_id().await?,
    };
    let body = futures_stream(move |tx| async move {
        loop {
            let batch = match stream.read(&after, 500, Some(Duration::from_secs(2))).await {
                Ok(batch) => batch,
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut chunk = String::new();
            for e in &batch {
                after = e.id.clone();
                chunk.push_str(&format!(
                    "id: {}\ndata: {}\n\n",
                    e.id,
                    serde_json::to_string(e).unwrap_or_default()
                ));
            }
            if chunk.is_empty() {
                chunk.push_str(": keep-alive\n\n");
            }
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

/// A streaming body fed by `producer` through a channel (ends when the client goes).
fn futures_stream<F, Fut>(producer: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<String, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(producer(tx));
    Body::from_stream(ReceiverStream(rx))
}

struct ReceiverStream(tokio::sync::mpsc::Receiver<Result<String, Infallible>>);

impl futures::Stream for ReceiverStream {
    type Item = Result<String, Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}
