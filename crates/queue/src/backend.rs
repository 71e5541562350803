//! The queue as an apalis-core [`Backend`], and the per-worker machinery around it.
//!
//! One [`RedisBackend`] serves one worker process for one role:
//! - a **fetcher** task takes batches sized to the free slots (`--concurrency` minus jobs
//!   buffered or running), and when the queue is empty waits on a blocking `BLMOVE` on a
//!   connection of its own instead of polling;
//! - the backend's [`AckLayer`] (its apalis middleware) settles every job the moment the
//!   handler returns: successes are acknowledged in batches by an **acker** task, failures
//!   become a scheduled retry or a dead letter;
//! - a **heartbeat** task keeps the worker's lease; a **maintenance** task promotes due
//!   retries, recovers the jobs of workers whose lease expired and expires old dead letters.
//!
//! No Redis error stops any of these: each backs off (capped) and tries again, and
//! [`WorkerStatus::redis_up`] tells `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use agentfleet_job::{DecodeError, Envelope, ErrorClass, JobError, now_ms, peek_id};
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::queue::{MAX_FETCH, unreadable_id};
use crate::{DeadLetter, Queue, QueueError, TaskStore};

/// One delivered entry: what a handler receives.
#[derive(Debug, Clone)]
pub struct Delivery {
    raw: Arc<[u8]>,
    received: Instant,
}

impl Delivery {
    /// The entry exactly as fetched (and as recorded in flight).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn decode<A: serde::de::DeserializeOwned + serde::Serialize>(
        &self,
    ) -> Result<Envelope<A>, DecodeError> {
        Envelope::decode(&self.raw)
    }

    /// Time since the worker received it.
    pub fn elapsed(&self) -> Duration {
        self.received.elapsed()
    }
}

/// Why a handler gave up on a delivery.
#[derive(Debug, thiserror::Error)]
pub enum JobFailure {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("undecodable entry: {0}")]
    Decode(#[from] DecodeError),
}

/// What happened to a delivery, as metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Succeeded,
    Retried,
    Dead,
    /// Another worker recovered it first (this worker's lease had expired): not ours to settle.
    LeaseLost,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retried => "retried",
            Self::Dead => "dead",
            Self::LeaseLost => "lease_lost",
        }
    }
}

/// Retry policy of a role: exponential backoff with full jitter, capped, and a maximum
/// number of deliveries.
#[derive(Debug, Clone)]
pub struct FailurePolicy {
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl FailurePolicy {
    /// Delay before the retry after delivery `attempt` (1-based) failed: uniform in
    /// `0..=min(max, base·2^(attempt-1))` ("full jitter"), but never shorter than what the
    /// failure asked for (a provider's `Retry-After`).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        let ceiling = self
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max);
        let jittered = Duration::from_millis(fastrand::u64(0..=ceiling.as_millis() as u64));
        match retry_after {
            Some(wait) if wait > jittered => wait,
            _ => jittered,
        }
    }
}

/// Makes the span every log line of a job runs in: (task id, role, attempt, traceparent).
pub type SpanFactory = Arc<dyn Fn(&str, &str, u32, Option<&str>) -> tracing::Span + Send + Sync>;

/// How one worker runs.
#[derive(Clone)]
pub struct WorkerOptions {
    pub worker_id: String,
    /// Jobs buffered or running at once.
    pub concurrency: usize,
    /// A worker whose heartbeat is older than this has its jobs recovered by others.
    pub lease: Duration,
    /// Longest single blocking wait for new work (bounds how late shutdown is noticed).
    pub block_timeout: Duration,
    pub policy: FailurePolicy,
    /// Dead letters older than this are dropped.
    pub dead_letter_retention: Duration,
    /// The job span (default: `job{task_id, role, attempt, trace_id}` with no parent).
    pub job_span: Option<SpanFactory>,
}

impl std::fmt::Debug for WorkerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOptions")
            .field("worker_id", &self.worker_id)
            .field("concurrency", &self.concurrency)
            .field("lease", &self.lease)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Live state of a worker, read by health checks and metrics.
#[derive(Debug, Default)]
pub struct WorkerStatus {
    redis_up: AtomicBool,
    draining: AtomicBool,
    running: AtomicUsize,
}

impl WorkerStatus {
    pub fn redis_up(&self) -> bool {
        self.redis_up.load(Ordering::Relaxed)
    }
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
    /// Jobs handed to the handler and not yet settled.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }
    fn set_redis(&self, up: bool) {
        self.redis_up.store(up, Ordering::Relaxed);
    }
}

type Observer = Arc<dyn Fn(Disposition, Duration) + Send + Sync>;

struct Shared {
    queue: Queue,
    store: Option<TaskStore>,
    options: WorkerOptions,
    status: Arc<WorkerStatus>,
    slots: Arc<Semaphore>,
    acks: mpsc::UnboundedSender<Arc<[u8]>>,
    observer: Option<Observer>,
    stop: CancellationToken,
}

/// The apalis backend over one role's [`Queue`].
pub struct RedisBackend {
    shared: Arc<Shared>,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
}

/// Owns a worker's background tasks; [`WorkerHandle::finish`] ends them in order.
pub struct WorkerHandle {
    shared: Arc<Shared>,
    fetcher: JoinHandle<()>,
    acker: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    maintenance: JoinHandle<()>,
    acks_closed: CancellationToken,
}

impl RedisBackend {
    /// Starts the worker's background tasks and returns the backend to give to apalis's
    /// `WorkerBuilder`, plus the handle that stops them.
    ///
    /// `blocking_conn` must be a connection of its own (it parks in `BLMOVE`).
    pub fn start(
        queue: Queue,
        store: Option<TaskStore>,
        blocking_conn: ConnectionManager,
        options: WorkerOptions,
        status: Arc<WorkerStatus>,
        observer: Option<Observer>,
    ) -> (Self, WorkerHandle) {
        let (delivery_tx, deliveries) = mpsc::unbounded_channel();
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let acks_closed = CancellationToken::new();
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(options.concurrency.max(1))),
            queue,
            store,
            options,
            status,
            acks: ack_tx,
            observer,
            stop,
        });
        let handle = WorkerHandle {
            fetcher: tokio::spawn(fetch_loop(shared.clone(), blocking_conn, delivery_tx)),
            acker: tokio::spawn(ack_loop(shared.clone(), ack_rx, acks_closed.clone())),
            heartbeat: tokio::spawn(heartbeat_loop(shared.clone())),
            maintenance: tokio::spawn(maintenance_loop(shared.clone())),
            shared: shared.clone(),
            acks_closed,
        };
        (Self { shared, deliveries }, handle)
    }
}

impl WorkerHandle {
    /// Stop taking new work (in-flight jobs keep running; `/readyz` turns 503).
    pub fn stop_fetching(&self) {
        self.shared.status.draining.store(true, Ordering::Relaxed);
        self.shared.stop.cancel();
    }

    /// Waits until every job handed out has settled, or `deadline` passes.
    pub async fn wait_idle(&self, deadline: Duration) -> bool {
        let start = Instant::now();
        while self.shared.status.running() > 0 {
            if start.elapsed() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Ends the worker: flushes pending acknowledgements (giving up after `flush_timeout`
    /// if Redis is unreachable: those jobs then re-run after the lease, at-least-once),
    /// hands back every entry it still holds so other workers take them at once, and
    /// unregisters the worker. Returns how many entries were handed back.
    pub async fn finish(self, flush_timeout: Duration) -> Result<u64, QueueError> {
        self.stop_fetching();
        let _ = self.fetcher.await;
        self.heartbeat.abort();
        self.maintenance.abort();
        self.acks_closed.cancel();
        if tokio::time::timeout(flush_timeout, self.acker)
            .await
            .is_err()
        {
            tracing::warn!(
                "acknowledgements not flushed in time; those jobs will run again after the lease"
            );
        }
        let mut wait = Duration::from_millis(100);
        let started = Instant::now();
        loop {
            match self
                .shared
                .queue
                .hand_back(&self.shared.options.worker_id)
                .await
            {
                Ok(n) => return Ok(n),
                Err(e) if e.is_retryable() && started.elapsed() < flush_timeout => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Backend for RedisBackend {
    type Task = Task<Delivery>;
    type Error = QueueError;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        if self.shared.stop.is_cancelled() {
            // Entries still buffered stay in this worker's in-flight hash and are handed
            // back by `WorkerHandle::finish`.
            return Poll::Ready(None);
        }
        match self.deliveries.poll_recv(cx) {
            Poll::Ready(Some(delivery)) => {
                self.shared.status.running.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Some(Ok(Task::new(delivery))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_close(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for RedisBackend {
    type Args = Delivery;
    type Id = String;
    type Kind = apalis_core::backend::finalize::Ephemeral;
    type Config = WorkerOptions;
    type Layer = AckLayer;

    fn config(&self) -> &Self::Config {
        &self.shared.options
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        AckLayer {
            shared: self.shared.clone(),
        }
    }
}

/// Settles each job with the queue as soon as its handler returns.
#[derive(Clone)]
pub struct AckLayer {
    shared: Arc<Shared>,
}

impl<S> Layer<S> for AckLayer {
    type Service = AckService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AckService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AckService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, R> Service<Task<Delivery>> for AckService<S>
where
    S: Service<Task<Delivery>, Response = R>,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
    R: Send + 'static,
{
    type Response = R;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<R, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Delivery>) -> Self::Future {
        let delivery = task.args.clone();
        let shared = self.shared.clone();
        let (job_id, attempt, traceparent) = job_identity(delivery.raw());
        let role = shared.queue.role();
        // Every log line of a job, the handler's and the settlement's, carries these.
        let span = match &shared.options.job_span {
            Some(make) => make(&job_id, role, attempt, traceparent.as_deref()),
            None => {
                let trace_id = traceparent
                    .as_deref()
                    .and_then(|tp| tp.split('-').nth(1))
                    .unwrap_or_default();
                tracing::info_span!("job", task_id = %job_id, role, attempt, trace_id = %trace_id)
            }
        };
        let fut = self.inner.call(task).instrument(span.clone());
        Box::pin(
            async move {
                let result = fut.await.map_err(Into::into);
                let disposition = settle(&shared, &delivery, result.as_ref().err()).await;
                shared.status.running.fetch_sub(1, Ordering::Relaxed);
                shared.slots.add_permits(1);
                if let Some(observer) = &shared.observer {
                    observer(disposition, delivery.elapsed());
                }
                result
            }
            .instrument(span),
        )
    }
}

/// Identity fields for log lines (id, attempt, traceparent), read leniently: the handler
/// reports decode errors.
fn job_identity(raw: &[u8]) -> (String, u32, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Ident {
        #[serde(default)]
        attempt: u32,
        #[serde(default)]
        id: String,
        #[serde(default)]
        args: Option<TraceOnly>,
    }
    #[derive(serde::Deserialize)]
    struct TraceOnly {
        #[serde(default)]
        trace: Option<agentfleet_job::TraceContext>,
    }
    match serde_json::from_slice::<Ident>(raw) {
        Ok(i) => {
            let traceparent = i.args.and_then(|a| a.trace).map(|t| t.traceparent);
            (i.id, i.attempt, traceparent)
        }
        Err(_) => ("<undecodable>".to_owned(), 0, None),
    }
}

/// The envelope with its args left as raw JSON, so a retry rewrites only the fields the
/// queue owns and keeps the job's own bytes as they were.
type RawEnvelope = Envelope<Box<RawValue>>;

async fn settle(shared: &Shared, delivery: &Delivery, error: Option<&BoxDynError>) -> Disposition {
    let Some(error) = error else {
        // Success: the acker batches it. It only fails to send if the acker is gone, which
        // happens after shutdown; the entry is then handed back and re-runs (at-least-once).
        let _ = shared.acks.send(delivery.raw.clone());
        return Disposition::Succeeded;
    };
    let (class, message, retry_after) = classify(error);
    let envelope = RawEnvelope::decode(delivery.raw());
    let now = now_ms();
    let worker_id = &shared.options.worker_id;
    let attempt = envelope.as_ref().map(|e| e.attempt).unwrap_or(0);
    let role = shared.queue.role();

    if class == ErrorClass::Transient
        && attempt < shared.options.policy.max_attempts
        && let Ok(mut next) = envelope
    {
        let delay = shared.options.policy.delay(attempt, retry_after);
        next.first_failed_at_ms.get_or_insert(now);
        next.last_error = Some(message.clone());
        let encoded = next.encode();
        let run_at = now + delay.as_millis() as u64;
        tracing::info!(job_id = %next.id, role, attempt, delay_ms = delay.as_millis() as u64, error = %message, "job failed; retry scheduled");
        let scheduled = with_retries(shared, "schedule retry", || {
            shared
                .queue
                .retry(worker_id, delivery.raw(), &encoded, run_at)
        })
        .await;
        if let Some(store) = &shared.store {
            let _ = store
                .note_error(&next.id, &format!("{role} attempt {attempt}: {message}"))
                .await;
        }
        return match scheduled {
            Some(true) => Disposition::Retried,
            _ => Disposition::LeaseLost,
        };
    }

    let (job_id, first_failed) = match &envelope {
        Ok(e) => (e.id.clone(), e.first_failed_at_ms.unwrap_or(now)),
        Err(_) => (
            peek_id(delivery.raw()).unwrap_or_else(|| unreadable_id(delivery.raw())),
            now,
        ),
    };
    let reason = match class {
        ErrorClass::Transient => format!("gave up after {attempt} attempts: {message}"),
        _ => message.clone(),
    };
    let letter = DeadLetter {
        job_id: job_id.clone(),
        role: role.to_owned(),
        payload: String::from_utf8_lossy(delivery.raw()).into_owned(),
        error_class: class,
        error: reason.clone(),
        attempts: attempt,
        first_failed_at_ms: first_failed,
        last_failed_at_ms: now,
        worker_id: worker_id.clone(),
        dead_at_ms: now,
    };
    tracing::warn!(job_id = %job_id, role, attempt, class = %class, error = %reason, "job dead-lettered");
    let moved = with_retries(shared, "dead-letter", || {
        shared.queue.bury(worker_id, delivery.raw(), &letter)
    })
    .await;
    if moved == Some(true) {
        if let Some(store) = &shared.store {
            let _ = store
                .mark_dead(
                    &job_id,
                    role,
                    attempt,
                    &format!("{role}: {class}: {reason}"),
                )
                .await;
        }
        Disposition::Dead
    } else {
        Disposition::LeaseLost
    }
}

fn classify(error: &BoxDynError) -> (ErrorClass, String, Option<Duration>) {
    match error.downcast_ref::<JobFailure>() {
        Some(JobFailure::Job(e)) => (e.class(), e.message().to_owned(), e.retry_after()),
        Some(JobFailure::Decode(e)) => (ErrorClass::Decode, e.to_string(), None),
        // Anything else (a panic caught by a layer, a timeout layer) may pass on a retry.
        None => (ErrorClass::Transient, error.to_string(), None),
    }
}

/// Runs a queue operation until it succeeds, backing off on retryable errors for as long
/// as the worker runs. A settled result is never dropped because Redis blinked.
async fn with_retries<T, F, Fut>(shared: &Shared, what: &str, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, QueueError>>,
{
    let mut backoff = Backoff::new();
    loop {
        match op().await {
            Ok(v) => {
                shared.status.set_redis(true);
                return Some(v);
            }
            Err(e) if e.is_retryable() => {
                shared.status.set_redis(false);
                tracing::warn!(error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "{what} failed; will retry");
                backoff.wait().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "{what} failed");
                return None;
            }
        }
    }
}

/// Capped exponential backoff for Redis errors: 100 ms doubling to 5 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(100))
    }
    fn peek(&self) -> Duration {
        self.0
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
    fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
}

async fn fetch_loop(
    shared: Arc<Shared>,
    mut blocking: ConnectionManager,
    out: mpsc::UnboundedSender<Delivery>,
) {
    let worker_id = shared.options.worker_id.clone();
    let mut backoff = Backoff::new();
    loop {
        let first = tokio::select! {
            _ = shared.stop.cancelled() => return,
            permit = shared.slots.clone().acquire_owned() => permit,
        };
        let Ok(first) = first else { return };
        first.forget();
        let mut want = 1;
        while want < MAX_FETCH {
            match shared.slots.try_acquire() {
                Ok(p) => {
                    p.forget();
                    want += 1;
                }
                Err(_) => break,
            }
        }
        match shared.queue.fetch(&worker_id, want).await {
            Ok(entries) => {
                shared.status.set_redis(true);
                backoff.reset();
                let got = entries.len();
                shared.slots.add_permits(want - got);
                let received = Instant::now();
                for raw in entries {
                    let _ = out.send(Delivery {
                        raw: raw.into(),
                        received,
                    });
                }
                if got == 0 {
                    let waited = tokio::select! {
                        _ = shared.stop.cancelled() => return,
                        r = shared.queue.wait_for_entry(&mut blocking, &worker_id, shared.options.block_timeout) => r,
                    };
                    if let Err(e) = waited {
                        shared.status.set_redis(false);
                        tracing::warn!(error = %e, "waiting for work failed; retrying");
                        backoff.wait().await;
                    }
                }
            }
            Err(e) => {
                shared.slots.add_permits(want);
                shared.status.set_redis(false);
                tracing::warn!(error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "fetch failed; retrying");
                tokio::select! {
                    _ = shared.stop.cancelled() => return,
                    _ = backoff.wait() => {}
                }
            }
        }
    }
}

async fn ack_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Arc<[u8]>>,
    closed: CancellationToken,
) {
    let worker_id = shared.options.worker_id.clone();
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(512);
    loop {
        let first = tokio::select! {
            biased;
            entry = rx.recv() => entry,
            _ = closed.cancelled() => {
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { return };
        batch.push(first.to_vec());
        while batch.len() < 500 {
            match rx.try_recv() {
                Ok(entry) => batch.push(entry.to_vec()),
                Err(_) => break,
            }
        }
        let acked = with_retries(&shared, "acknowledge", || {
            shared.queue.ack(&worker_id, &batch)
        })
        .await;
        if let Some(held) = acked
            && (held as usize) < batch.len()
        {
            tracing::warn!(
                lost = batch.len() - held as usize,
                "some finished jobs had been recovered by another worker (lease expired); they may run twice"
            );
        }
        batch.clear();
    }
}

async fn heartbeat_loop(shared: Arc<Shared>) {
    let every = (shared.options.lease / 3).max(Duration::from_millis(100));
    let mut was_up = true;
    loop {
        match shared.queue.heartbeat(&shared.options.worker_id).await {
            Ok(()) => {
                if !was_up {
                    tracing::info!("redis reachable again");
                }
                was_up = true;
                shared.status.set_redis(true);
            }
            Err(e) => {
                if was_up {
                    tracing::warn!(error = %e, "heartbeat failed; redis unreachable");
                }
                was_up = false;
                shared.status.set_redis(false);
            }
        }
        tokio::time::sleep(every).await;
    }
}

async fn maintenance_loop(shared: Arc<Shared>) {
    let opts = &shared.options;
    let recover_every = (opts.lease / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut last_recover = Instant::now() - recover_every;
    let mut last_expire = Instant::now() - Duration::from_secs(60);
    loop {
        let mut sleep = recover_every;
        match shared.queue.promote_due().await {
            Ok((_, Some(next_ms))) => {
                let until = Duration::from_millis(next_ms.saturating_sub(now_ms()));
                sleep = sleep.min(until.max(Duration::from_millis(5)));
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "promoting retries failed"),
        }
        if last_recover.elapsed() >= recover_every {
            last_recover = Instant::now();
            match shared
                .queue
                .recover_expired(opts.lease, opts.policy.max_attempts)
                .await
            {
                Ok(report) if !report.workers.is_empty() => {
                    tracing::warn!(
                        workers = ?report.workers,
                        requeued = report.requeued,
                        dead = report.dead.len(),
                        "recovered the jobs of workers whose lease expired"
                    );
                    if let Some(store) = &shared.store {
                        for id in &report.dead {
                            let reason = format!(
                                "{}: crash: its worker died while running it on the last allowed attempt",
                                shared.queue.role()
                            );
                            let _ = store
                                .mark_dead(
                                    id,
                                    shared.queue.role(),
                                    opts.policy.max_attempts,
                                    &reason,
                                )
                                .await;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "recovery pass failed"),
            }
        }
        if last_expire.elapsed() >= Duration::from_secs(60) {
            last_expire = Instant::now();
            if let Err(e) = shared
                .queue
                .expire_dead_letters(opts.dead_letter_retention)
                .await
            {
                tracing::debug!(error = %e, "expiring dead letters failed");
            }
        }
        tokio::time::sleep(sleep).await;
    }
}
