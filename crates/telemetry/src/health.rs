use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::Metrics;

/// Answers `/readyz` (ready when Redis is reachable and the worker is not draining) and
/// `/healthz` (alive unless the worker can no longer work: then it should be restarted).
pub trait Readiness: Send + Sync + 'static {
    /// `Err(reason)` when not ready.
    fn ready(&self) -> Result<(), String>;
    /// `Err(reason)` when broken for good.
    fn alive(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The running HTTP server.
pub struct HealthServer {
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HealthServer {
    pub fn abort(&self) {
        self.task.abort();
    }
}

struct AppState {
    metrics: Metrics,
    readiness: Arc<dyn Readiness>,
    before_scrape: Box<dyn Fn() + Send + Sync>,
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` until aborted.
/// `before_scrape` runs before each `/metrics` render (to refresh cheap gauges).
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Arc<dyn Readiness>,
    before_scrape: impl Fn() + Send + Sync + 'static,
) -> std::io::Result<HealthServer> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        metrics,
        readiness,
        before_scrape: Box::new(before_scrape),
    });
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health server stopped");
        }
    });
    Ok(HealthServer { local_addr, task })
}

async fn metrics_handler(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (state.before_scrape)();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn healthz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    match state.readiness.alive() {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {reason}\n"),
        ),
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    match state.readiness.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}
