//! Metrics, health endpoints and logging for agentfleet workers.
//!
//! [`Metrics`] owns the Prometheus registry with the metric names the dashboard, the alerts
//! and the chart rely on (they are fixed: renaming one breaks them). [`serve`] exposes
//! `/metrics`, `/healthz` and `/readyz`. [`init_logging`] sets up `tracing`.
#![forbid(unsafe_code)]

mod health;
mod logging;
mod metrics;

pub use health::{HealthServer, Readiness, serve};
pub use logging::{
    LogFormat, Telemetry, TracingError, current_traceparent, init_logging, job_span,
};
pub use metrics::{GuardrailMetrics, LimitMetrics, Metrics};
