//! `bench-noop-worker`: drains one role's queue and acknowledges every job without running
//! anything, so that `agentfleet bench`'s drain-noop scenarios measure the queue alone:
//! agentfleet's Redis backend (fetch, in-flight hash, batched acks, heartbeat, upkeep) under
//! apalis's worker, with no role handler, no provider and no task record.
//!
//! Built for the bench only (it is not in the production image): production workers carry no
//! benchmarking switch. Its per-job path is a production worker's minus the handler: the
//! same backend and options, the same job span and the same per-job metric, on the same
//! allocator, so that the figures stay comparable with earlier runs.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use agentfleet_queue::{
    Delivery, Disposition, FailurePolicy, FleetArgs, JobFailure, Queue, RedisArgs, RedisBackend,
    WorkerOptions, WorkerStatus, connect_worker,
};
use agentfleet_telemetry::{LogFormat, Metrics, init_logging, job_span};
use anyhow::Context as _;
use apalis::layers::WorkerBuilderExt;
use apalis_core::task::Task;
use apalis_core::worker::builder::WorkerBuilder;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// The workers' allocator (see workers/reasoning): worker CPU per job depends on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "bench-noop-worker",
    version,
    about = "agentfleet bench: drain a role's queue, acknowledging every job without running it"
)]
struct Args {
    #[command(flatten)]
    redis: RedisArgs,

    /// Namespace and lease (the fleet's flags and defaults).
    #[command(flatten)]
    fleet: FleetArgs,

    /// The role whose queue to drain.
    #[arg(long, default_value = "reasoning")]
    role: String,

    /// Jobs buffered or running at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,

    /// On SIGTERM/SIGINT, how long in-flight jobs may take before they are handed back.
    #[arg(long, default_value_t = 1)]
    shutdown_grace_secs: u64,
}

/// Acknowledges every job: `Ok(())` is a success, which the backend's `AckLayer` acks.
#[derive(Clone)]
struct Noop;

impl tower::Service<Task<Delivery>> for Noop {
    type Response = ();
    type Error = JobFailure;
    type Future = std::future::Ready<Result<(), JobFailure>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _task: Task<Delivery>) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let telemetry = init_logging(LogFormat::Text, None, "agentfleet-bench-noop")?;
    let namespace = args.fleet.namespace()?;
    // Metric labels borrow the role's name for the whole process, as in the runtime.
    let role: &'static str = Box::leak(args.role.clone().into_boxed_str());
    let worker_id = format!("bench-noop-{}", agentfleet_testkit::random_suffix(6));
    let concurrency = args.concurrency.max(1);

    // One blocking connection per shard: each shard's waiter parks on its own.
    let shards = args.fleet.namespace.shards;
    let (conn, blocking_conns) = connect_worker(&args.redis, shards).await?;

    let metrics = Metrics::new(namespace.as_str()).context("metrics registry")?;
    metrics.init_role(role, env!("CARGO_PKG_VERSION"), &worker_id);
    let observer_metrics = metrics.clone();
    let observer = Arc::new(move |disposition: Disposition, elapsed: Duration| {
        if !matches!(disposition, Disposition::LeaseLost | Disposition::Unsettled) {
            observer_metrics.observe_job(role, disposition.as_str(), elapsed);
        }
    });
    let status = Arc::new(WorkerStatus::default());
    let queue = Queue::new(conn, &namespace, role)?.with_shards(&namespace, shards)?;
    let worker_options = WorkerOptions {
        worker_id: worker_id.clone(),
        concurrency,
        lease: args.fleet.lease(),
        block_timeout: Duration::from_secs(1),
        // A worker's defaults; nothing here fails, so they never apply.
        policy: FailurePolicy {
            max_attempts: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        },
        dead_letter_retention: args.fleet.record_ttl(),
        registry: Vec::new(),
        job_span: Some(Arc::new(
            |task_id: &str, role: &str, attempt: u32, traceparent: Option<&str>| {
                job_span(task_id, role, attempt, traceparent)
            },
        )),
    };
    // No task store: the no-op never reads or writes a record.
    let (backend, handle) = RedisBackend::start(
        queue,
        None,
        blocking_conns,
        worker_options,
        status.clone(),
        Some(observer),
    );
    let worker = WorkerBuilder::new(worker_id.clone())
        .backend(backend)
        .concurrency(concurrency)
        .build(Noop);
    let mut worker_task = tokio::spawn(worker.run());
    tracing::info!(worker_id = %worker_id, role, concurrency, namespace = %namespace, "bench no-op worker started");

    let mut term = signal(SignalKind::terminate()).context("signal handlers")?;
    let mut int = signal(SignalKind::interrupt()).context("signal handlers")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        ended = &mut worker_task => {
            let _ = handle.finish(Duration::from_secs(5)).await;
            anyhow::bail!("the job loop ended unexpectedly: {ended:?}");
        }
    }
    handle.stop_fetching();
    handle
        .wait_idle(Duration::from_secs(args.shutdown_grace_secs))
        .await;
    worker_task.abort();
    let handed_back = handle.finish(Duration::from_secs(5)).await?;
    tracing::info!(handed_back, "bench no-op worker stopped");
    telemetry.shutdown();
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-noop-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}
