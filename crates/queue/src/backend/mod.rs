//! The queue as an apalis-core [`Backend`], and the per-worker machinery around it.
//!
//! One [`RedisBackend`] serves one worker process for one role:
//! - a **fetcher** (`fetch.rs`) takes batches sized to the free slots (`--concurrency` minus
//!   jobs buffered or running), waits on a blocking `BLMOVE` when the queue is empty, and
//!   reconciles the worker's in-flight hash with what it holds after any error;
//! - the backend's [`AckLayer`] (`settle.rs`, its apalis middleware) settles every job the
//!   moment the handler returns: successes are acknowledged in batches by an **acker**,
//!   failures become a scheduled retry or a dead letter;
//! - a **heartbeat** and a **maintenance** task (`upkeep.rs`) keep the worker's lease,
//!   promote due retries, recover the jobs of workers whose lease expired and expire old
//!   dead letters.
//!
//! No Redis error stops any of these: each backs off (capped) and tries again, and
//! [`WorkerStatus`] tells `/readyz`. Every time a lease compares is Redis's (`TIME` inside
//! the scripts); this process only measures durations.

mod fetch;
mod health;
mod settle;
mod upkeep;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::RedisConnection;
use agentfleet_job::{DecodeError, Envelope, JobError};
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Queue, QueueError, TaskStore};
pub use health::WorkerStatus;
use health::{Held, RedisHealth};
pub use settle::AckLayer;

/// One delivered entry: what a handler receives.
#[derive(Debug, Clone)]
pub struct Delivery {
    raw: Arc<[u8]>,
    received: Instant,
    /// The shard it was fetched from: every settlement goes back there.
    shard: usize,
}

impl Delivery {
    /// The shard of the role's queue it came from (0 with one shard).
    pub fn shard(&self) -> usize {
        self.shard
    }

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
    /// Not a failure: a guardrail parked the task for review (its record says what waits).
    /// The entry leaves the worker and the task joins the role's review index, holding no
    /// slot until a person decides.
    #[error("parked for review: {reason}")]
    Parked { reason: String },
}

/// What happened to a delivery, as metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Succeeded,
    Retried,
    Dead,
    /// Put back to wait for capacity (an LLM limit): not an attempt, not a failure.
    Deferred,
    /// This worker no longer held it: another worker recovered it after this worker's
    /// lease expired, and owns it now.
    LeaseLost,
    /// The worker stopped before the settlement could be written; the entry is handed back.
    Unsettled,
    /// The task was cancelled: acknowledged, nothing chained.
    Cancelled,
    /// The task's deadline passed: acknowledged, nothing chained.
    Expired,
    /// Parked for review: settled, its task waits for a person's decision.
    Parked,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retried => "retried",
            Self::Dead => "dead",
            Self::Deferred => "deferred",
            Self::LeaseLost => "lease_lost",
            Self::Unsettled => "unsettled",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Parked => "parked",
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
    /// failure asked for (a provider's `Retry-After`), and never longer than `backoff_max`
    /// whatever it asked for: a hostile or broken header cannot park a job for years.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        let ceiling = self
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max);
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        let jittered = Duration::from_millis(fastrand::u64(0..=ceiling_ms));
        match retry_after {
            Some(wait) if wait > jittered => wait.min(self.backoff_max),
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
    /// What the workers registry shows of this worker besides its counters (role, host,
    /// version, provider, model, concurrency, started at): written with every heartbeat.
    /// Empty: the worker keeps no registry record.
    pub registry: Vec<(&'static str, String)>,
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

type Observer = Arc<dyn Fn(Disposition, Duration) + Send + Sync>;

struct Shared {
    /// Shard 0 of the role's queue (the role, the workers registry).
    queue: Queue,
    /// Every shard, pinned (index = shard).
    shards: Vec<Queue>,
    store: Option<TaskStore>,
    options: WorkerOptions,
    health: RedisHealth,
    slots: Arc<Semaphore>,
    held: Held,
    /// Set after any error whose request may have committed unseen; the fetcher then
    /// reconciles the in-flight hash with [`Held`] before it fetches again.
    reconcile: AtomicBool,
    acks: mpsc::UnboundedSender<(usize, Arc<[u8]>)>,
    observer: Option<Observer>,
    /// Stop fetching (shutdown begins).
    stop: CancellationToken,
    /// Stop retrying settlements (shutdown ends: whatever is unsettled is handed back).
    halt: CancellationToken,
}

impl Shared {
    fn status(&self) -> &WorkerStatus {
        self.health.status()
    }
    fn worker_id(&self) -> &str {
        &self.options.worker_id
    }
    /// The shard a delivery came from, where it is settled.
    fn queue_of(&self, delivery: &Delivery) -> &Queue {
        self.shards.get(delivery.shard).unwrap_or(&self.queue)
    }
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
    /// `blocking_conns` must be connections of their own, one per shard of `queue` (each
    /// parks in a blocking wait for its shard's wake-up tokens); a shard without one is
    /// still fetched from on every pass, and at least every block timeout.
    pub fn start(
        queue: Queue,
        store: Option<TaskStore>,
        blocking_conns: Vec<RedisConnection>,
        options: WorkerOptions,
        status: Arc<WorkerStatus>,
        observer: Option<Observer>,
    ) -> (Self, WorkerHandle) {
        let (delivery_tx, deliveries) = mpsc::unbounded_channel();
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let acks_closed = CancellationToken::new();
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(options.concurrency.max(1))),
            shards: queue.shards(),
            queue,
            store,
            options,
            health: RedisHealth::new(status),
            held: Held::default(),
            reconcile: AtomicBool::new(false),
            acks: ack_tx,
            observer,
            stop: CancellationToken::new(),
            halt: CancellationToken::new(),
        });
        let handle = WorkerHandle {
            fetcher: tokio::spawn(fetch::fetch_loop(
                shared.clone(),
                blocking_conns,
                delivery_tx,
            )),
            acker: tokio::spawn(settle::ack_loop(
                shared.clone(),
                ack_rx,
                acks_closed.clone(),
            )),
            heartbeat: tokio::spawn(upkeep::heartbeat_loop(shared.clone())),
            maintenance: tokio::spawn(upkeep::maintenance_loop(shared.clone())),
            shared: shared.clone(),
            acks_closed,
        };
        (Self { shared, deliveries }, handle)
    }
}

impl WorkerHandle {
    /// Stop taking new work (in-flight jobs keep running; `/readyz` turns 503).
    pub fn stop_fetching(&self) {
        self.shared.status().set_draining();
        self.shared.stop.cancel();
    }

    /// Waits until every job handed out has settled, or `deadline` passes.
    pub async fn wait_idle(&self, deadline: Duration) -> bool {
        let start = Instant::now();
        while self.shared.status().running() > 0 {
            if start.elapsed() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Ends the worker: flushes pending acknowledgements (giving up after `flush_timeout`
    /// if Redis does not take them: those jobs then re-run, at-least-once), stops
    /// heartbeating, hands back every entry it still holds so other workers take them at
    /// once, and unregisters the worker. Returns how many entries were handed back.
    pub async fn finish(self, flush_timeout: Duration) -> Result<u64, QueueError> {
        self.stop_fetching();
        let _ = self.fetcher.await;
        self.maintenance.abort();
        self.acks_closed.cancel();
        if tokio::time::timeout(flush_timeout, self.acker)
            .await
            .is_err()
        {
            tracing::warn!(
                "acknowledgements not flushed in time; those jobs will run again (at-least-once)"
            );
        }
        self.shared.halt.cancel();
        self.heartbeat.abort();
        let mut wait = Duration::from_millis(100);
        let started = Instant::now();
        let mut handed_back = 0;
        let mut shard = 0;
        while shard < self.shared.shards.len() {
            match self.shared.shards[shard]
                .hand_back(self.shared.worker_id())
                .await
            {
                Ok(n) => {
                    handed_back += n;
                    shard += 1;
                }
                Err(e) if started.elapsed() < flush_timeout => {
                    tracing::warn!(operation = "hand back", error = %e, "redis operation failed; will retry");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(handed_back)
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
                self.shared.status().job_started();
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
        AckLayer::new(self.shared.clone())
    }
}
