//! What a worker knows about its own health and its connection to Redis, and the retry
//! discipline every Redis operation outside the fetch follows.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::QueueError;

/// Live state of a worker, read by health checks and metrics.
#[derive(Debug, Default)]
pub struct WorkerStatus {
    redis_up: AtomicBool,
    draining: AtomicBool,
    running: AtomicUsize,
    /// Jobs settled as succeeded (the registry's `done`).
    done: AtomicU64,
    /// Jobs settled as retried or dead-lettered (the registry's `failed`).
    failed: AtomicU64,
    redis_error: Mutex<Option<String>>,
    failure: Mutex<Option<String>>,
}

impl WorkerStatus {
    /// The last Redis operation answered.
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
    /// What the last failed Redis operation was and said, while Redis is not answering.
    pub fn redis_error(&self) -> Option<String> {
        if self.redis_up() {
            return None;
        }
        lock(&self.redis_error).clone()
    }
    /// Why this worker can no longer work, once that is so (`/healthz` then fails).
    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }
    /// Marks the worker as broken for good: it stops taking work and reports unhealthy.
    pub fn fail(&self, reason: impl Into<String>) {
        let mut failure = lock(&self.failure);
        if failure.is_none() {
            *failure = Some(reason.into());
        }
    }
    pub(super) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
    /// Jobs this worker finished successfully.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
    /// Jobs of this worker that failed (retried or dead-lettered).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    pub(super) fn count(&self, disposition: super::Disposition) {
        use super::Disposition as D;
        match disposition {
            D::Succeeded => self.done.fetch_add(1, Ordering::Relaxed),
            D::Retried | D::Dead => self.failed.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }
    pub(super) fn job_started(&self) {
        self.running.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn job_settled(&self) {
        self.running.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The worker's view of its connection, for the one decision that must not be taken on a
/// stale view: recovering other workers' jobs.
///
/// After any failed or stalled Redis operation the worker does not recover anyone until its
/// own heartbeat has been renewed without a hitch for a full lease. By then every worker
/// that is alive and connected has renewed its heartbeat too (they beat every third of a
/// lease, and retry at once when Redis answers again), so an outage, a stall or a `maxmemory`
/// refusal, however long, never makes live workers' jobs look abandoned.
pub(super) struct RedisHealth {
    status: Arc<WorkerStatus>,
    healthy_since: Mutex<Option<Instant>>,
}

impl RedisHealth {
    pub(super) fn new(status: Arc<WorkerStatus>) -> Self {
        Self {
            status,
            healthy_since: Mutex::new(None),
        }
    }

    pub(super) fn status(&self) -> &WorkerStatus {
        &self.status
    }

    /// An operation answered.
    pub(super) fn answered(&self) {
        self.status.redis_up.store(true, Ordering::Relaxed);
    }

    /// The heartbeat was renewed promptly.
    pub(super) fn heartbeat_renewed(&self) {
        self.answered();
        lock(&self.healthy_since).get_or_insert_with(Instant::now);
    }

    /// An operation answered, but so late that Redis (or this process) was stalled: every
    /// heartbeat may look older than it is.
    pub(super) fn stalled(&self) {
        *lock(&self.healthy_since) = None;
    }

    /// An operation failed.
    pub(super) fn failed(&self, what: &str, error: &QueueError) {
        self.status.redis_up.store(false, Ordering::Relaxed);
        *lock(&self.status.redis_error) = Some(format!("{what}: {error}"));
        *lock(&self.healthy_since) = None;
    }

    /// True once the heartbeat has been renewed without a failure or stall for `lease`.
    pub(super) fn steady_for(&self, lease: Duration) -> bool {
        lock(&self.healthy_since).is_some_and(|since| since.elapsed() >= lease)
    }
}

/// The entries this worker holds in memory: fetched and not yet settled. Anything in its
/// in-flight hash that is not here was lost on the way (a fetch reply that never arrived)
/// and is handed back by reconciliation.
#[derive(Default)]
pub(super) struct Held(Mutex<HashSet<Arc<[u8]>>>);

impl Held {
    pub(super) fn insert(&self, entry: Arc<[u8]>) {
        lock(&self.0).insert(entry);
    }
    pub(super) fn remove(&self, entry: &[u8]) {
        lock(&self.0).remove(entry);
    }
    pub(super) fn remove_all<E: AsRef<[u8]>>(&self, entries: &[E]) {
        let mut held = lock(&self.0);
        for e in entries {
            held.remove(e.as_ref());
        }
    }
    /// The entries of `in_redis` that are not held.
    pub(super) fn strays(&self, in_redis: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let held = lock(&self.0);
        in_redis
            .into_iter()
            .filter(|e| !held.contains(e.as_slice()))
            .collect()
    }
}

/// Capped exponential backoff for Redis errors: 100 ms doubling to 5 s.
pub(super) struct Backoff(Duration);

impl Backoff {
    pub(super) fn new() -> Self {
        Self(Duration::from_millis(100))
    }
    pub(super) fn peek(&self) -> Duration {
        self.0
    }
    pub(super) async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
    pub(super) fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
}

/// The result of an operation retried until it succeeded.
pub(super) struct Done<T> {
    pub value: T,
    /// An earlier try failed: it may have committed before its reply was lost, so a
    /// "not held any more" answer can mean that try's own work.
    pub retried: bool,
}

/// Runs a Redis operation until it succeeds, backing off (capped) on every error, for as
/// long as `halt` is not cancelled: a settled result is never dropped because Redis blinked,
/// refused a write (`OOM`, `READONLY`) or was busy. Returns `None` only when halted.
pub(super) async fn until_done<T, F, Fut>(
    health: &RedisHealth,
    halt: &CancellationToken,
    what: &'static str,
    mut op: F,
) -> Option<Done<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, QueueError>>,
{
    let mut backoff = Backoff::new();
    let mut retried = false;
    loop {
        match op().await {
            Ok(value) => {
                health.answered();
                if retried {
                    tracing::info!(operation = what, "redis operation succeeded after retrying");
                }
                return Some(Done { value, retried });
            }
            Err(e) => {
                health.failed(what, &e);
                tracing::warn!(operation = what, error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "redis operation failed; will retry");
                retried = true;
                tokio::select! {
                    _ = halt.cancelled() => return None,
                    _ = backoff.wait() => {}
                }
            }
        }
    }
}
