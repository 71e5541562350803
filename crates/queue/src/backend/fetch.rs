//! Taking work: batches sized to the free slots, a blocking wait when the queue is empty,
//! and reconciliation after errors so that nothing is stranded in a live worker.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::RedisConnection;
use tokio::sync::mpsc;

use super::health::Backoff;
use super::{Delivery, Shared};
use crate::QueueError;
use crate::queue::MAX_FETCH;

pub(super) async fn fetch_loop(
    shared: Arc<Shared>,
    mut blocking: RedisConnection,
    out: mpsc::UnboundedSender<Delivery>,
) {
    let worker_id = shared.worker_id().to_owned();
    let mut backoff = Backoff::new();
    loop {
        if shared.reconcile.load(Ordering::Relaxed) {
            match reconcile(&shared).await {
                Ok(()) => shared.reconcile.store(false, Ordering::Relaxed),
                Err(e) => {
                    shared.health.failed("reconcile in-flight entries", &e);
                    tracing::warn!(operation = "reconcile in-flight entries", error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "redis operation failed; will retry");
                    tokio::select! {
                        _ = shared.stop.cancelled() => return,
                        _ = backoff.wait() => {}
                    }
                    continue;
                }
            }
        }
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
                shared.health.answered();
                backoff.reset();
                let got = entries.len();
                shared.slots.add_permits(want - got);
                let received = Instant::now();
                for raw in entries {
                    let raw: Arc<[u8]> = raw.into();
                    // Held before it is handed on: reconciliation must never mistake an
                    // entry on its way to the handler for a lost one.
                    shared.held.insert(raw.clone());
                    let _ = out.send(Delivery { raw, received });
                }
                if got == 0 {
                    let waited = tokio::select! {
                        _ = shared.stop.cancelled() => return,
                        r = shared.queue.wait_for_entry(&mut blocking, shared.options.block_timeout) => r,
                    };
                    if let Err(e) = waited {
                        shared.health.failed("wait for work", &e);
                        tracing::warn!(operation = "wait for work", error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "redis operation failed; will retry");
                        tokio::select! {
                            _ = shared.stop.cancelled() => return,
                            _ = backoff.wait() => {}
                        }
                    }
                }
            }
            Err(e) => {
                shared.slots.add_permits(want);
                // The script may have committed and only its reply been lost: what it
                // handed out sits in this worker's in-flight hash, unknown to it.
                shared.reconcile.store(true, Ordering::Relaxed);
                shared.health.failed("fetch", &e);
                tracing::warn!(operation = "fetch", error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "redis operation failed; will retry");
                tokio::select! {
                    _ = shared.stop.cancelled() => return,
                    _ = backoff.wait() => {}
                }
            }
        }
    }
}

/// Hands back every entry of this worker's in-flight hash that it does not hold in memory.
///
/// Only the fetcher adds entries to the in-flight hash and to [`super::Held`], and it is
/// here, not fetching: so an entry in Redis but not held was handed out by a fetch whose
/// reply was lost, and no one in this process will ever run or settle it.
async fn reconcile(shared: &Shared) -> Result<(), QueueError> {
    let in_redis = shared.queue.in_flight_entries(shared.worker_id()).await?;
    let strays = shared.held.strays(in_redis);
    if strays.is_empty() {
        return Ok(());
    }
    let released = shared.queue.release(shared.worker_id(), &strays).await?;
    tracing::warn!(
        released,
        "handed back in-flight entries this worker never received (a fetch committed but its reply was lost)"
    );
    Ok(())
}
