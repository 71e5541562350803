//! Settling a job once its handler returns: acknowledge, schedule a retry, or dead-letter,
//! and note it on the task record. Every write here is retried until it lands or the
//! worker stops; what is not settled by then is handed back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use agentfleet_job::{Envelope, ErrorClass, JobError, now_ms, peek_id};
use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use futures::future::BoxFuture;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};
use tracing::Instrument;

use super::health::until_done;
use super::{Delivery, Disposition, JobFailure, Shared};
use crate::DeadLetter;
use crate::queue::unreadable_id;

/// Settles each job with the queue as soon as its handler returns.
#[derive(Clone)]
pub struct AckLayer {
    shared: Arc<Shared>,
}

impl AckLayer {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
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
                shared.status().job_settled();
                shared.status().count(disposition);
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
        let _ = shared.acks.send((delivery.shard, delivery.raw.clone()));
        return Disposition::Succeeded;
    };
    match error.downcast_ref::<JobFailure>() {
        Some(JobFailure::Job(JobError::Deferred { delay, reason })) => {
            return defer(shared, delivery, *delay, reason).await;
        }
        Some(JobFailure::Job(JobError::Stopped { status, message })) => {
            tracing::info!(%status, reason = %message, "task stopped; job acknowledged, nothing chained");
            // Acknowledged like a success (batched): the task's record already says why.
            let _ = shared.acks.send((delivery.shard, delivery.raw.clone()));
            return if *status == agentfleet_job::TaskStatus::Expired {
                Disposition::Expired
            } else {
                Disposition::Cancelled
            };
        }
        _ => {}
    }
    if let Some(JobFailure::Parked { reason }) = error.downcast_ref::<JobFailure>() {
        return park(shared, delivery, reason).await;
    }
    let (class, message, retry_after) = classify(error);
    let envelope = RawEnvelope::decode(delivery.raw());
    let now = now_ms();
    let worker_id = shared.worker_id();
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
        tracing::info!(job_id = %next.id, role, attempt, delay_ms = delay.as_millis() as u64, error = %message, "job failed; retry scheduled");
        let scheduled = until_done(&shared.health, &shared.halt, "schedule retry", || {
            shared
                .queue_of(delivery)
                .retry(worker_id, delivery.raw(), &encoded, delay)
        })
        .await;
        let disposition = written(shared, delivery, scheduled, Disposition::Retried);
        if disposition == Disposition::Retried
            && let Some(store) = &shared.store
        {
            let reason = format!("attempt {attempt}: {message}");
            until_done(
                &shared.health,
                &shared.halt,
                "note retry on task record",
                || store.note_retry(&next.id, role, &reason, delay),
            )
            .await;
        }
        return disposition;
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
        worker_id: worker_id.to_owned(),
        dead_at_ms: now,
    };
    let record = match serde_json::to_string(&letter) {
        Ok(record) => record,
        Err(e) => {
            // Plain strings and numbers always serialize; should this ever fail, the entry
            // goes back to the queue rather than being dropped.
            tracing::error!(error = %e, "cannot encode the dead letter; handing the entry back");
            shared.held.remove(delivery.raw());
            shared.reconcile.store(true, Ordering::Relaxed);
            return Disposition::Unsettled;
        }
    };
    tracing::warn!(job_id = %job_id, role, attempt, class = %class, error = %reason, "job dead-lettered");
    let buried = until_done(&shared.health, &shared.halt, "dead-letter", || {
        shared
            .queue_of(delivery)
            .bury_encoded(worker_id, delivery.raw(), &job_id, &record)
    })
    .await;
    let disposition = written(shared, delivery, buried, Disposition::Dead);
    if disposition == Disposition::Dead
        && let Some(store) = &shared.store
    {
        let reason = format!("{role}: {class}: {reason}");
        until_done(&shared.health, &shared.halt, "mark task dead", || {
            store.mark_dead(&job_id, role, attempt, &reason)
        })
        .await;
    }
    disposition
}

/// A job that waits for capacity goes back to the scheduled set, its delivery uncounted.
async fn defer(shared: &Shared, delivery: &Delivery, delay: Duration, reason: &str) -> Disposition {
    tracing::debug!(
        delay_ms = delay.as_millis() as u64,
        reason,
        "job waits for capacity"
    );
    let deferred = until_done(&shared.health, &shared.halt, "defer", || {
        shared
            .queue_of(delivery)
            .defer(shared.worker_id(), delivery.raw(), delay)
    })
    .await;
    written(shared, delivery, deferred, Disposition::Deferred)
}

/// A job parked for review leaves the worker; its task joins the role's review index.
async fn park(shared: &Shared, delivery: &Delivery, reason: &str) -> Disposition {
    let task_id = peek_id(delivery.raw()).unwrap_or_else(|| unreadable_id(delivery.raw()));
    tracing::info!(reason, "task parked for review");
    let parked = until_done(&shared.health, &shared.halt, "park for review", || {
        shared
            .queue_of(delivery)
            .park(shared.worker_id(), delivery.raw(), &task_id)
    })
    .await;
    written(shared, delivery, parked, Disposition::Parked)
}

/// What a retry or dead-letter write did: `wrote` when it moved the entry; when the entry
/// was no longer held, an earlier try of the same call committed (its reply was lost) or
/// another worker recovered it.
fn written(
    shared: &Shared,
    delivery: &Delivery,
    outcome: Option<super::health::Done<bool>>,
    wrote: Disposition,
) -> Disposition {
    let Some(done) = outcome else {
        // Halted while Redis refused: left held, so `finish` hands it back.
        return Disposition::Unsettled;
    };
    shared.held.remove(delivery.raw());
    if done.value {
        wrote
    } else if done.retried {
        tracing::info!("an earlier try of this settlement had committed before its reply was lost");
        wrote
    } else {
        tracing::warn!(
            "this worker no longer held the job: another worker recovered it after this worker's lease expired, and owns it now"
        );
        Disposition::LeaseLost
    }
}

fn classify(error: &BoxDynError) -> (ErrorClass, String, Option<Duration>) {
    match error.downcast_ref::<JobFailure>() {
        Some(JobFailure::Job(e)) => (e.class(), e.message().to_owned(), e.retry_after()),
        Some(JobFailure::Decode(e)) => (ErrorClass::Decode, e.to_string(), None),
        // Settled by `park` before it gets here.
        Some(JobFailure::Parked { reason }) => (ErrorClass::Guardrail, reason.clone(), None),
        // Anything else (a panic caught by a layer, a timeout layer) may pass on a retry.
        None => (ErrorClass::Transient, error.to_string(), None),
    }
}

/// Acknowledges successes in batches, in the order they finished: one `ack.lua` per shard
/// the batch touches (one with a single shard).
pub(super) async fn ack_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<(usize, Arc<[u8]>)>,
    closed: CancellationToken,
) {
    let mut batch: Vec<(usize, Arc<[u8]>)> = Vec::with_capacity(512);
    let mut by_shard: Vec<Vec<Arc<[u8]>>> = vec![Vec::new(); shared.shards.len().max(1)];
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
        batch.push(first);
        while batch.len() < 500 {
            match rx.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        for (shard, raw) in batch.drain(..) {
            let slot = shard.min(by_shard.len() - 1);
            by_shard[slot].push(raw);
        }
        for (shard, entries) in by_shard.iter_mut().enumerate() {
            if entries.is_empty() {
                continue;
            }
            let queue = shared.shards.get(shard).unwrap_or(&shared.queue);
            let acked = until_done(&shared.health, &shared.halt, "acknowledge", || {
                queue.ack(shared.worker_id(), &entries[..])
            })
            .await;
            let Some(acked) = acked else {
                // Halted: these stay held and are handed back (they run again: at-least-once).
                return;
            };
            shared.held.remove_all(entries);
            let missing = entries.len().saturating_sub(acked.value as usize);
            if missing > 0 {
                if acked.retried {
                    tracing::info!(
                        missing,
                        "acknowledged entries were no longer held: an earlier try of this acknowledgement had committed, or another worker recovered them after this worker's lease expired"
                    );
                } else {
                    tracing::warn!(
                        missing,
                        "finished jobs had been recovered by another worker after this worker's lease expired; they may run twice"
                    );
                }
            }
            entries.clear();
        }
    }
}
