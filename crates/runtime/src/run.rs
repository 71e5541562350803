use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use agentfleet_job::JobError;
use agentfleet_queue::{
    Delivery, Disposition, JobFailure, Namespace, Queue, QueueError, RedisBackend, TaskStore,
    WorkerOptions, WorkerStatus, agree_on_pipeline, agree_on_shards, connect_worker,
};
use agentfleet_telemetry::{Metrics, Readiness, init_logging, job_span, serve};
use apalis::layers::WorkerBuilderExt;
use apalis_core::task::Task;
use apalis_core::worker::builder::WorkerBuilder;
use futures::FutureExt;
use futures::future::BoxFuture;
use std::panic::AssertUnwindSafe;
use tokio::signal::unix::{SignalKind, signal};

use crate::{Llm, RoleContext, StageInput, StageOutput, WorkerArgs};

/// What makes a role a role.
#[derive(Debug, Clone)]
pub struct RoleSpec {
    /// Queue name and metrics label: `reasoning`, `synthesis`, ...
    pub name: String,
    /// Where `/metrics` listens when `--metrics-addr` is not given.
    pub default_metrics_addr: &'static str,
    /// Instruction given to the model when `--system-prompt` is not.
    pub default_system_prompt: String,
}

/// A role's own logic: given the task and the outputs of the stage before, produce this
/// role's output (usually one call to `ctx.llm`). Everything else (reading and writing the
/// task record, reusing an earlier attempt's output, chaining the next stage, retries and
/// dead letters) is the runtime's.
pub trait RoleHandler: Send + Sync + 'static {
    fn run<'a>(
        &'a self,
        ctx: &'a RoleContext,
        input: &'a StageInput,
    ) -> BoxFuture<'a, Result<StageOutput, JobError>>;
}

/// Start-up failures: reported before the worker takes any job.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("provider configuration: {0}")]
    Provider(#[from] agentfleet_providers::ConfigError),
    #[error("cannot read the system prompt file: {0}")]
    SystemPrompt(std::io::Error),
    #[error(transparent)]
    Queue(#[from] agentfleet_queue::QueueError),
    #[error(transparent)]
    Name(#[from] agentfleet_queue::InvalidName),
    #[error("LLM limits: {0}")]
    Limits(#[from] agentfleet_limits::LimitError),
    #[error("--guardrails: {0}")]
    Guardrails(#[from] agentfleet_guardrails::GuardrailError),
    #[error("metrics registry: {0}")]
    Metrics(String),
    #[error("cannot listen on {addr} for /metrics, /healthz, /readyz: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("role {role:?} is not in the pipeline {pipeline:?} (--pipeline)")]
    NotInPipeline { role: String, pipeline: String },
    #[error("bad default metrics address {0:?}")]
    DefaultAddr(&'static str),
    #[error(transparent)]
    Tracing(#[from] agentfleet_telemetry::TracingError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("handing back unfinished jobs failed: {0}")]
    HandBack(agentfleet_queue::QueueError),
    /// The apalis worker stopped on its own: the process cannot take work any more, so it
    /// exits (non-zero) for its supervisor to restart it.
    #[error("the job loop ended unexpectedly ({reason}); its jobs were handed back")]
    WorkerEnded { reason: String },
}

impl RuntimeError {
    /// The exit code of a worker that stops on this (README, "Exit codes").
    pub fn exit_code(&self) -> u8 {
        use agentfleet_job::exit;
        match self {
            Self::Provider(_)
            | Self::SystemPrompt(_)
            | Self::Name(_)
            | Self::Limits(_)
            | Self::Guardrails(_)
            | Self::NotInPipeline { .. } => exit::USAGE,
            Self::Queue(agentfleet_queue::QueueError::Config(_)) => exit::USAGE,
            Self::Queue(agentfleet_queue::QueueError::InvalidName(_)) => exit::USAGE,
            Self::Queue(_) | Self::HandBack(_) => exit::REDIS_UNAVAILABLE,
            _ => exit::INTERNAL,
        }
    }
}

/// `worker-name` (or host name) plus a random suffix: recovery tells workers apart by it,
/// so two processes must never share one, even on one host or after a restart.
fn worker_id(name: Option<&str>) -> String {
    let base = name
        .map(str::to_owned)
        .or_else(|| hostname::get().ok().and_then(|h| h.into_string().ok()))
        .unwrap_or_else(|| "worker".to_owned());
    let base: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    let suffix: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(6)
        .collect();
    format!("{base}-{}", suffix.to_ascii_lowercase())
}

struct WorkerReadiness(Arc<WorkerStatus>, Arc<agentfleet_limits::LimitStatus>);

impl Readiness for WorkerReadiness {
    fn ready(&self) -> Result<(), String> {
        self.alive()?;
        // A provider account paused for the fleet (a revoked key): not ready, and why.
        self.1.check()?;
        if self.0.draining() {
            Err("draining (shutting down)".to_owned())
        } else if let Some(error) = self.0.redis_error() {
            Err(format!("redis: {error}"))
        } else if !self.0.redis_up() {
            Err("redis not reached yet".to_owned())
        } else {
            Ok(())
        }
    }

    fn alive(&self) -> Result<(), String> {
        match self.0.failure() {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }
}

/// The apalis service: runs the role's handler inside a span carrying the job's identity.
struct RoleService<H> {
    handler: Arc<H>,
    ctx: Arc<RoleContext>,
}

impl<H> Clone for RoleService<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            ctx: self.ctx.clone(),
        }
    }
}

impl<H: RoleHandler> tower::Service<Task<Delivery>> for RoleService<H> {
    type Response = ();
    type Error = JobFailure;
    type Future = BoxFuture<'static, Result<(), JobFailure>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: Task<Delivery>) -> Self::Future {
        // A fault no outside event can cause: a panic outside the handler's containment,
        // which ends the apalis worker (see the supervision in `run`).
        fail::fail_point!("job-loop-panic");
        let handler = self.handler.clone();
        let ctx = self.ctx.clone();
        let delivery = task.args;
        // Decoded once: the stage's job, and the job's identity for the LLM limits and
        // budgets (agentfleet-limits); an entry that does not decode has no scope, and its
        // handler reports the error.
        let job = delivery.decode::<agentfleet_job::StageJob>();
        let scope = match &job {
            Ok(job) => agentfleet_limits::JobScope {
                task_id: Some(job.id.clone()),
                tenant: None,
                lane: job.lane,
            },
            Err(_) => agentfleet_limits::JobScope::default(),
        };
        Box::pin(scope.run(async move {
            // A panic in a handler or a provider is that job's transient failure: the job
            // is settled (retried) and its slot freed, and the worker keeps its concurrency.
            match AssertUnwindSafe(ctx.run_stage(handler.as_ref(), &delivery, job))
                .catch_unwind()
                .await
            {
                Ok(result) => result,
                Err(panic) => {
                    let message = panic_message(panic.as_ref());
                    tracing::error!(panic = %message, "job handler panicked; the job will be retried");
                    Err(JobFailure::Job(JobError::transient(format!(
                        "handler panicked: {message}"
                    ))))
                }
            }
        }))
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Runs a worker of `spec`'s role until SIGTERM or SIGINT, then shuts down gracefully:
/// stop fetching, `/readyz` 503, let in-flight jobs finish within the grace period, hand
/// back the rest at once, exit.
pub async fn run<H: RoleHandler>(
    spec: RoleSpec,
    args: WorkerArgs,
    handler: H,
) -> Result<(), RuntimeError> {
    let _fail_points = fail::FailScenario::setup();
    // Metric labels and log fields borrow the role's name for the whole process.
    let role: &'static str = Box::leak(spec.name.clone().into_boxed_str());
    let telemetry = init_logging(
        args.log_format,
        args.otlp_endpoint.as_deref(),
        &format!("agentfleet-{role}"),
    )?;
    let provider = agentfleet_providers::build(&args.provider)?;
    // Where the calls go, for the start line (the limits wrapper hides it).
    let endpoint = provider.endpoint().unwrap_or("-").to_owned();
    let system_prompt = args
        .provider
        .system_prompt_or(&spec.default_system_prompt)
        .map_err(RuntimeError::SystemPrompt)?;
    let namespace = args.fleet.namespace()?;
    let pipeline = Arc::new(args.pipeline.resolve()?);
    let stage = pipeline
        .stage_of(role)
        .ok_or_else(|| RuntimeError::NotInPipeline {
            role: role.to_owned(),
            pipeline: pipeline.to_string(),
        })?;
    let worker_id = worker_id(args.worker_name.as_deref());
    let version = env!("CARGO_PKG_VERSION");
    let guard_rules = load_guardrails(args.guardrails.as_deref(), role, &pipeline)?;

    // A certificate, password or ACL that Redis refuses stops the worker now, with the
    // reason; Redis merely being away does not (it connects when Redis answers).
    // One blocking connection per shard: each shard's waiter parks on its own.
    let shards = args.fleet.namespace.shards;
    let (conn, blocking_conns) = connect_worker(&args.redis, shards).await?;

    let metrics =
        Metrics::new(namespace.as_str()).map_err(|e| RuntimeError::Metrics(e.to_string()))?;
    metrics.init_role(role, version, &worker_id);
    let guard = guard_rules.map(|rules| {
        let names = rules.rule_names();
        metrics.guardrails.init_rules(
            role,
            names
                .iter()
                .map(|(side, rule)| (side.as_str(), rule.as_str())),
        );
        crate::guard::StageGuard {
            rules,
            metrics: metrics.clone(),
        }
    });
    let status = Arc::new(WorkerStatus::default());
    let limit_status = Arc::new(agentfleet_limits::LimitStatus::default());

    let queue = Queue::new(conn.clone(), &namespace, role)?
        .with_shards(&namespace, shards)?
        .with_idempotency_ttl(args.record_ttl())
        .with_lane_shares(args.lane_shares);
    let store = TaskStore::new(conn.clone(), namespace.clone(), args.record_ttl())
        .with_events_maxlen(args.fleet.record_ttl.events_maxlen);

    let addr = match args.metrics_addr {
        Some(addr) => addr,
        None => spec
            .default_metrics_addr
            .parse()
            .map_err(|_| RuntimeError::DefaultAddr(spec.default_metrics_addr))?,
    };
    let scrape_metrics = metrics.clone();
    let scrape_status = status.clone();
    let health = serve(
        addr,
        metrics.clone(),
        Arc::new(WorkerReadiness(status.clone(), limit_status.clone())),
        move || {
            scrape_metrics
                .jobs_in_flight
                .with_label_values(&[role])
                .set(scrape_status.running() as i64);
            scrape_metrics
                .redis_up
                .set(i64::from(scrape_status.redis_up()));
            scrape_metrics
                .worker_draining
                .set(i64::from(scrape_status.draining()));
        },
    )
    .await
    .map_err(|source| RuntimeError::Listen { addr, source })?;

    let mut term = signal(SignalKind::terminate()).map_err(RuntimeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RuntimeError::Signals)?;
    // Take no job before this worker and the fleet agree on the pipeline: a worker of
    // another pipeline would run the wrong stage.
    tokio::select! {
        agreed = agree_with_fleet(&conn, &namespace, &pipeline, shards) => agreed?,
        _ = term.recv() => return Ok(()),
        _ = int.recv() => return Ok(()),
    }

    // Every provider call respects the fleet-wide LLM limits and budgets.
    let provider = agentfleet_limits::wrap(
        provider,
        &args.llm_limits,
        agentfleet_limits::LimitContext {
            conn: conn.clone(),
            namespace: &namespace,
            worker_id: &worker_id,
            role,
            lease: args.lease(),
            metrics: metrics.clone(),
            provider: &args.provider,
            store: store.clone(),
            record_ttl: args.record_ttl(),
            status: limit_status,
            longest_cooldown: args.policy().backoff_max,
        },
    )?;
    let registry = vec![
        ("role", role.to_owned()),
        (
            "host",
            hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
        ),
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ("provider", provider.name().to_owned()),
        ("model", provider.model().to_owned()),
        ("concurrency", args.concurrency.max(1).to_string()),
        ("started_at_ms", agentfleet_job::now_ms().to_string()),
    ];
    let observer_metrics = metrics.clone();
    let observer = Arc::new(move |disposition: Disposition, elapsed: Duration| {
        if !matches!(disposition, Disposition::LeaseLost | Disposition::Unsettled) {
            observer_metrics.observe_job(role, disposition.as_str(), elapsed);
        }
    });
    let worker_options = WorkerOptions {
        worker_id: worker_id.clone(),
        concurrency: args.concurrency.max(1),
        lease: args.lease(),
        block_timeout: Duration::from_secs(1),
        policy: args.policy(),
        dead_letter_retention: args.record_ttl(),
        job_span: Some(Arc::new(
            |task_id: &str, role: &str, attempt: u32, traceparent: Option<&str>| {
                job_span(task_id, role, attempt, traceparent)
            },
        )),
        registry,
    };
    let (backend, handle) = RedisBackend::start(
        queue.clone(),
        Some(store.clone()),
        blocking_conns,
        worker_options,
        status.clone(),
        Some(observer),
    );

    let running = Arc::new(crate::control::RunningTasks::default());
    let pipeline_roles = pipeline.clone();
    let chain = Arc::new(crate::chain::ChainPushers::spawn(
        &conn,
        &namespace,
        pipeline.stage(stage + 1).unwrap_or_default(),
        shards,
        args.record_ttl(),
    )?);
    let ctx_store = store.clone();
    let ctx = Arc::new(RoleContext {
        role,
        worker_id: worker_id.clone(),
        namespace: namespace.clone(),
        store,
        llm: Llm::new(role, provider.clone(), system_prompt, metrics.clone()),
        limits: args.limits(),
        pipeline,
        stage,
        running: running.clone(),
        guard,
        chain,
        fields: Arc::new(agentfleet_queue::RoleFields::new(role)),
        input_fields: stage
            .checked_sub(1)
            .and_then(|before| pipeline_roles.stage(before))
            .unwrap_or_default()
            .iter()
            .map(|role| format!("{role}.output"))
            .collect(),
    });
    let service = RoleService {
        handler: Arc::new(handler),
        ctx,
    };
    let worker = WorkerBuilder::new(worker_id.clone())
        .backend(backend)
        .concurrency(args.concurrency.max(1))
        .build(service);
    let mut worker_task = tokio::spawn(worker.run());
    let sampler = tokio::spawn(sample_queue(queue, metrics.clone(), role, args.lease()));
    let _cancellation_watch = crate::control::spawn_watch(running, ctx_store);

    tracing::info!(
        worker_id = %worker_id,
        role,
        provider = provider.name(),
        model = provider.model(),
        concurrency = args.concurrency,
        metrics_addr = %health.local_addr,
        namespace = %namespace,
        redis_url = %args.redis.url,
        endpoint = %endpoint,
        "worker started"
    );

    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        ended = &mut worker_task => {
            let reason = match ended {
                Ok(Ok(())) => "it stopped taking jobs".to_owned(),
                Ok(Err(e)) => format!("error: {e}"),
                Err(e) if e.is_panic() => format!("panic: {}", panic_message(e.into_panic().as_ref())),
                Err(e) => e.to_string(),
            };
            return Err(job_loop_ended(reason, handle, &status, &metrics, health, sampler, telemetry).await);
        }
    };
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    tracing::info!(
        signal = which,
        running = status.running(),
        grace_secs = grace.as_secs(),
        "shutting down: no new jobs; finishing in-flight ones"
    );
    handle.stop_fetching();
    metrics.worker_draining.set(1);
    let finished = tokio::select! {
        idle = handle.wait_idle(grace) => idle,
        _ = term.recv() => false,
        _ = int.recv() => false,
    };
    if !finished {
        tracing::warn!(
            unfinished = status.running(),
            "grace period over: handing back unfinished jobs"
        );
    }
    worker_task.abort();
    sampler.abort();
    let idle = finished && status.running() == 0;
    let handed_back = match handle.finish(Duration::from_secs(5)).await {
        Ok(n) => n,
        // An idle worker holds nothing that needs handing back now (anything it had
        // fetched is recovered after the lease): Redis being away is no failure of its stop.
        Err(e) if idle => {
            tracing::warn!(error = %e, "Redis unreachable while stopping; this idle worker held no running job");
            0
        }
        Err(e) => return Err(RuntimeError::HandBack(e)),
    };
    health.abort();
    tracing::info!(handed_back, "worker stopped");
    telemetry.shutdown();
    Ok(())
}

/// The guardrails file's rules for `role`, compiled (a bad file stops the worker at
/// start-up, naming the problem). Roles the file names that the pipeline lacks are reported:
/// a misspelt role guards nothing.
fn load_guardrails(
    path: Option<&std::path::Path>,
    role: &str,
    pipeline: &agentfleet_job::Pipeline,
) -> Result<Option<Arc<agentfleet_guardrails::RoleGuard>>, RuntimeError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let guardrails = agentfleet_guardrails::Guardrails::load(path)?;
    for named in guardrails.roles() {
        if pipeline.stage_of(named).is_none() {
            tracing::warn!(role = named, pipeline = %pipeline, "the guardrails file has rules for a role that is not in the pipeline");
        }
    }
    let rules = guardrails.role(role);
    match &rules {
        Some(r) => tracing::info!(
            role,
            rules = r.rule_names().len(),
            masks_pii = r.pii_session().is_some(),
            "guardrails loaded"
        ),
        None => tracing::info!(role, "the guardrails file has no rules for this role"),
    }
    Ok(rules)
}

/// Records or checks the fleet's pipeline and shard count, waiting for Redis if it is away (the worker is
/// not ready meanwhile). A disagreement, or a Redis that refuses us, is final.
async fn agree_with_fleet(
    conn: &agentfleet_queue::RedisConnection,
    namespace: &Namespace,
    pipeline: &agentfleet_job::Pipeline,
    shards: usize,
) -> Result<(), RuntimeError> {
    let mut wait = Duration::from_millis(100);
    loop {
        // The shards first: a recorded pipeline without a shard count means one shard.
        let agreed = match agree_on_shards(conn, namespace, shards).await {
            Ok(()) => agree_on_pipeline(conn, namespace, pipeline).await,
            Err(e) => Err(e),
        };
        match agreed {
            Ok(()) => return Ok(()),
            Err(e) if matches!(e, QueueError::Config(_)) || e.is_refusal() => {
                return Err(e.into());
            }
            Err(e) => {
                tracing::warn!(operation = "agree on the pipeline", error = %e, "redis operation failed; will retry");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The apalis worker ended while the process was running: report unhealthy, stop
/// heartbeating, hand back every job this worker holds so that others run them at once,
/// and return the error that makes the process exit non-zero.
async fn job_loop_ended(
    reason: String,
    handle: agentfleet_queue::WorkerHandle,
    status: &WorkerStatus,
    metrics: &Metrics,
    health: agentfleet_telemetry::HealthServer,
    sampler: tokio::task::JoinHandle<()>,
    telemetry: agentfleet_telemetry::Telemetry,
) -> RuntimeError {
    tracing::error!(reason = %reason, "job loop ended unexpectedly; handing back jobs and exiting");
    status.fail(format!("job loop ended: {reason}"));
    metrics.worker_draining.set(1);
    sampler.abort();
    let handed_back = handle.finish(Duration::from_secs(5)).await;
    health.abort();
    match handed_back {
        Ok(n) => tracing::info!(handed_back = n, "worker stopped"),
        Err(e) => {
            tracing::error!(error = %e, "handing back jobs failed; they are recovered after the lease")
        }
    }
    telemetry.shutdown();
    RuntimeError::WorkerEnded { reason }
}

/// Refreshes the queue gauges every 2 s off the hot path: one pipelined read per role.
async fn sample_queue(queue: Queue, metrics: Metrics, role: &'static str, lease: Duration) {
    loop {
        if let Ok(c) = queue.counts(lease).await {
            let depth = |state: &str, lane: &str, v: u64| {
                metrics
                    .queue_depth
                    .with_label_values(&[role, state, lane])
                    .set(v as i64)
            };
            depth("pending", "high", c.pending_high);
            depth("pending", "normal", c.pending_normal);
            depth("pending", "low", c.pending_low);
            depth("scheduled", "", c.scheduled);
            depth("dead", "", c.dead);
            depth("in_flight", "", c.in_flight);
            metrics
                .oldest_pending_age_seconds
                .with_label_values(&[role])
                .set(c.oldest_pending_age_ms.unwrap_or(0) as f64 / 1000.0);
            metrics
                .workers_live
                .with_label_values(&[role])
                .set(c.live_workers as i64);
        }
        if let Ok(r) = queue.review_counts().await {
            let g = &metrics.guardrails;
            g.review_waiting
                .with_label_values(&[role])
                .set(r.waiting as i64);
            g.review_oldest_age_seconds
                .with_label_values(&[role])
                .set(r.oldest_age_ms.unwrap_or(0) as f64 / 1000.0);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// A role binary's whole `main` when the role takes no flags of its own: parses the worker
/// flags (exit 64 on a usage error), then [`main`].
pub async fn role_main<H: RoleHandler>(
    spec: RoleSpec,
    binary: &'static str,
    about: &'static str,
    handler: H,
) -> std::process::ExitCode {
    use clap::{Args, FromArgMatches};
    let command = WorkerArgs::augment_args(
        clap::Command::new(binary)
            .version(env!("CARGO_PKG_VERSION"))
            .about(about),
    );
    let parsed = command
        .try_get_matches()
        .and_then(|matches| WorkerArgs::from_arg_matches(&matches));
    match parsed {
        Ok(args) => main(spec, args, handler).await,
        Err(e) => {
            let _ = e.print();
            std::process::ExitCode::from(if e.use_stderr() {
                agentfleet_job::exit::USAGE
            } else {
                agentfleet_job::exit::OK
            })
        }
    }
}

/// A role binary's whole `main`: runs the worker and turns a start-up failure into one
/// clear line on stderr and a failing exit code.
pub async fn main<H: RoleHandler>(
    spec: RoleSpec,
    args: WorkerArgs,
    handler: H,
) -> std::process::ExitCode {
    match run(spec.clone(), args, handler).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}-worker: {e}", name = spec.name);
            std::process::ExitCode::from(e.exit_code())
        }
    }
}
