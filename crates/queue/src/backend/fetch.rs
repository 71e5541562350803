//! Taking work: batches sized to the free slots, a blocking wait when the queue is empty,
//! and reconciliation after errors so that nothing is stranded in a live worker.
//!
//! With several shards a pass starts at a random shard and takes from the next ones while
//! slots are free; when every shard is empty the fetcher waits for a wake-up from any
//! shard: one waiter per shard, each on its own blocking connection, armed only while the
//! fetcher is idle (so a busy worker does not eat the tokens idle workers wait for).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::RedisConnection;
use tokio::sync::{Notify, mpsc, watch};

use super::health::Backoff;
use super::{Delivery, Shared};
use crate::QueueError;
use crate::queue::MAX_FETCH;

pub(super) async fn fetch_loop(
    shared: Arc<Shared>,
    blocking: Vec<RedisConnection>,
    out: mpsc::UnboundedSender<Delivery>,
) {
    if shared.shards.len() <= 1 {
        let Some(blocking) = blocking.into_iter().next() else {
            tracing::error!("no blocking connection given to the fetcher");
            return;
        };
        return fetch_one_shard(shared, blocking, out).await;
    }
    fetch_shards(shared, blocking, out).await
}

/// The fetcher of a one-shard queue: exactly one fetch and, when empty, one blocking wait
/// per pass, as before shards existed.
async fn fetch_one_shard(
    shared: Arc<Shared>,
    mut blocking: RedisConnection,
    out: mpsc::UnboundedSender<Delivery>,
) {
    let worker_id = shared.worker_id().to_owned();
    let mut backoff = Backoff::new();
    let mut last_reconcile = Instant::now();
    loop {
        if !reconciled(&shared, &mut backoff, &mut last_reconcile).await {
            if shared.stop.is_cancelled() {
                return;
            }
            continue;
        }
        let Some(want) = free_slots(&shared).await else {
            return;
        };
        match shared.queue.fetch(&worker_id, want).await {
            Ok(entries) => {
                shared.health.answered();
                backoff.reset();
                let got = entries.len();
                shared.slots.add_permits(want - got);
                hand_on(&shared, &out, 0, entries);
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
                if !fetch_failed(&shared, &mut backoff, &e).await {
                    return;
                }
            }
        }
    }
}

/// The fetcher of a sharded queue.
async fn fetch_shards(
    shared: Arc<Shared>,
    blocking: Vec<RedisConnection>,
    out: mpsc::UnboundedSender<Delivery>,
) {
    let worker_id = shared.worker_id().to_owned();
    let n = shared.shards.len();
    let wake = Arc::new(Notify::new());
    let (idle_tx, idle_rx) = watch::channel(0u64);
    let waiters: Vec<_> = blocking
        .into_iter()
        .take(n)
        .enumerate()
        .map(|(shard, conn)| {
            tokio::spawn(wait_loop(
                shared.clone(),
                shard,
                conn,
                idle_rx.clone(),
                wake.clone(),
            ))
        })
        .collect();
    let mut backoff = Backoff::new();
    let mut last_reconcile = Instant::now();
    loop {
        if !reconciled(&shared, &mut backoff, &mut last_reconcile).await {
            if shared.stop.is_cancelled() {
                break;
            }
            continue;
        }
        let Some(want) = free_slots(&shared).await else {
            break;
        };
        let start = fastrand::usize(..n);
        let mut got = 0;
        let mut failure = None;
        for i in 0..n {
            if got == want {
                break;
            }
            let shard = (start + i) % n;
            match shared.shards[shard].fetch(&worker_id, want - got).await {
                Ok(entries) => {
                    got += entries.len();
                    hand_on(&shared, &out, shard, entries);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        shared.slots.add_permits(want - got);
        if let Some(e) = failure {
            if !fetch_failed(&shared, &mut backoff, &e).await {
                break;
            }
            continue;
        }
        shared.health.answered();
        backoff.reset();
        if got == 0 {
            // Arm the waiters, then wait for any shard's wake-up (a token taken while we
            // fetched is kept by the Notify: no wake-up is lost).
            idle_tx.send_modify(|generation| *generation += 1);
            tokio::select! {
                _ = shared.stop.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(shared.options.block_timeout) => {}
            }
        }
    }
    for waiter in waiters {
        waiter.abort();
    }
}

/// One shard's waiter: while the fetcher is idle, blocks on the shard's wake-up tokens and
/// wakes the fetcher when one comes.
async fn wait_loop(
    shared: Arc<Shared>,
    shard: usize,
    mut conn: RedisConnection,
    mut idle: watch::Receiver<u64>,
    wake: Arc<Notify>,
) {
    let mut backoff = Backoff::new();
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            changed = idle.changed() => if changed.is_err() { return },
        }
        let waited = tokio::select! {
            _ = shared.stop.cancelled() => return,
            r = shared.shards[shard].wait_for_entry(&mut conn, shared.options.block_timeout) => r,
        };
        match waited {
            Ok(true) => {
                backoff.reset();
                wake.notify_one();
            }
            Ok(false) => backoff.reset(),
            Err(e) => {
                shared.health.failed("wait for work", &e);
                tracing::warn!(operation = "wait for work", shard, error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "redis operation failed; will retry");
                tokio::select! {
                    _ = shared.stop.cancelled() => return,
                    _ = backoff.wait() => {}
                }
                // Let the fetcher look (and report) rather than wait on a broken waiter.
                wake.notify_one();
            }
        }
    }
}

/// Runs a pending reconciliation, and one every lease even when nothing asked for it. False
/// when it failed (after the backoff) or the worker stops meanwhile.
///
/// Why also every lease: an error is not the only sign of a write that did not stick. On a
/// Redis Cluster, a master frozen past the node timeout is replaced by its replica, then wakes
/// and still runs (and answers) the requests queued to it before it learns it was demoted:
/// an acknowledgement answered that way is lost with the old master's data, and its entry
/// stays in this worker's in-flight hash on the new master, where no recovery looks while
/// the worker lives (seen: 3 to 8 entries per run of the frozen-master test). One `HKEYS`
/// of the worker's own in-flight hash per lease finds them; they run again (at-least-once).
async fn reconciled(shared: &Shared, backoff: &mut Backoff, last: &mut Instant) -> bool {
    if !shared.reconcile.load(Ordering::Relaxed) && last.elapsed() < shared.options.lease {
        return true;
    }
    match reconcile(shared).await {
        Ok(()) => {
            shared.reconcile.store(false, Ordering::Relaxed);
            *last = Instant::now();
            true
        }
        Err(e) => {
            shared.health.failed("reconcile in-flight entries", &e);
            tracing::warn!(operation = "reconcile in-flight entries", error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "redis operation failed; will retry");
            tokio::select! {
                _ = shared.stop.cancelled() => {}
                _ = backoff.wait() => {}
            }
            false
        }
    }
}

/// Waits for a free slot and takes every other free one (up to [`MAX_FETCH`]). `None` when
/// the worker stops.
async fn free_slots(shared: &Shared) -> Option<usize> {
    let first = tokio::select! {
        _ = shared.stop.cancelled() => return None,
        permit = shared.slots.clone().acquire_owned() => permit,
    };
    let first = first.ok()?;
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
    Some(want)
}

/// Hands fetched entries on to apalis, each remembering its shard.
fn hand_on(
    shared: &Shared,
    out: &mpsc::UnboundedSender<Delivery>,
    shard: usize,
    entries: crate::Fetched,
) {
    let received = Instant::now();
    for raw in entries {
        let raw: Arc<[u8]> = raw.into();
        // Held before it is handed on: reconciliation must never mistake an entry on its
        // way to the handler for a lost one.
        shared.held.insert(raw.clone());
        let _ = out.send(Delivery {
            raw,
            received,
            shard,
        });
    }
}

/// After a failed fetch: the script may have committed and only its reply been lost (what
/// it handed out sits in this worker's in-flight hash, unknown to it), so reconcile before
/// the next fetch. False when the worker stops during the backoff.
async fn fetch_failed(shared: &Shared, backoff: &mut Backoff, e: &QueueError) -> bool {
    shared.reconcile.store(true, Ordering::Relaxed);
    shared.health.failed("fetch", e);
    tracing::warn!(operation = "fetch", error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "redis operation failed; will retry");
    tokio::select! {
        _ = shared.stop.cancelled() => false,
        _ = backoff.wait() => true,
    }
}

/// Hands back every entry of this worker's in-flight hashes (one per shard) that it does
/// not hold in memory.
///
/// Only the fetcher adds entries to the in-flight hash and to [`super::Held`], and it is
/// here, not fetching: so an entry in Redis but not held was handed out by a fetch whose
/// reply was lost (or settled on a master that a failover then replaced), and no one in
/// this process will ever run or settle it.
async fn reconcile(shared: &Shared) -> Result<(), QueueError> {
    for queue in &shared.shards {
        let in_redis = queue.in_flight_entries(shared.worker_id()).await?;
        let strays = shared.held.strays(in_redis);
        if strays.is_empty() {
            continue;
        }
        let released = queue.release(shared.worker_id(), &strays).await?;
        tracing::warn!(
            released,
            shard = queue.shard_index(),
            "handed back in-flight entries this worker does not hold (a fetch committed but its reply was lost, or a settlement answered by a master a failover then replaced)"
        );
    }
    Ok(())
}
