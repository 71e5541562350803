//! Keeping the lease, and the queue's housekeeping: due retries, recovery of workers whose
//! lease expired, old dead letters. With several shards each is done on every shard: a
//! worker heartbeats on each (recovery reads the heartbeats of its own shard's slot), and
//! writes its registry record on shard 0 only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;
use crate::NewEvent;

/// Renews the worker's lease every third of a lease; while Redis does not answer, tries
/// again every 250 ms so that the heartbeat is the first thing renewed when it does.
pub(super) async fn heartbeat_loop(shared: Arc<Shared>) {
    let lease = shared.options.lease;
    let every = (lease / 3).max(Duration::from_millis(100));
    let retry = every.min(Duration::from_millis(250));
    let mut failing = false;
    loop {
        let started = Instant::now();
        let mut beat = if shared.options.registry.is_empty() {
            shared.queue.heartbeat(shared.worker_id()).await
        } else {
            let status = shared.status();
            let mut fields = shared.options.registry.clone();
            fields.push(("in_flight", status.running().to_string()));
            fields.push(("done", status.done().to_string()));
            fields.push(("failed", status.failed().to_string()));
            shared
                .queue
                .heartbeat_with(shared.worker_id(), lease, &fields)
                .await
        };
        for queue in shared.shards.iter().skip(1) {
            if beat.is_err() {
                break;
            }
            beat = queue.heartbeat(shared.worker_id()).await;
        }
        match beat {
            Ok(_) => {
                let took = started.elapsed();
                if took > lease / 4 {
                    shared.health.stalled();
                    tracing::warn!(
                        took_ms = took.as_millis() as u64,
                        "heartbeat answered late: redis or this process stalled; recovering other workers' jobs is paused for a lease"
                    );
                } else {
                    shared.health.heartbeat_renewed();
                }
                if failing {
                    tracing::info!("heartbeat renewed: redis answers again");
                }
                failing = false;
                tokio::time::sleep(every).await;
            }
            Err(e) => {
                shared.health.failed("heartbeat", &e);
                if !failing {
                    tracing::warn!(operation = "heartbeat", error = %e, "redis operation failed; will retry");
                }
                failing = true;
                tokio::time::sleep(retry).await;
            }
        }
    }
}

pub(super) async fn maintenance_loop(shared: Arc<Shared>) {
    let opts = &shared.options;
    let recover_every = (opts.lease / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut last_recover = Instant::now() - recover_every;
    let mut last_expire = Instant::now() - Duration::from_secs(60);
    loop {
        let mut sleep = recover_every;
        for queue in &shared.shards {
            match queue.promote_due().await {
                Ok((_, Some(until_next))) => {
                    shared.health.answered();
                    sleep = sleep.min(until_next.max(Duration::from_millis(5)));
                }
                Ok(_) => shared.health.answered(),
                Err(e) => {
                    shared.health.failed("promote due retries", &e);
                    tracing::warn!(operation = "promote due retries", error = %e, "redis operation failed; will retry");
                }
            }
        }
        if last_recover.elapsed() >= recover_every {
            last_recover = Instant::now();
            for queue in &shared.shards {
                recover(&shared, queue).await;
            }
        }
        if last_expire.elapsed() >= Duration::from_secs(60) {
            last_expire = Instant::now();
            for queue in &shared.shards {
                if let Err(e) = queue.expire_dead_letters(opts.dead_letter_retention).await {
                    shared.health.failed("expire dead letters", &e);
                    tracing::warn!(operation = "expire dead letters", error = %e, "redis operation failed; will retry");
                }
                if let Err(e) = queue.expire_parked(opts.dead_letter_retention).await {
                    shared.health.failed("expire review entries", &e);
                    tracing::warn!(operation = "expire review entries", error = %e, "redis operation failed; will retry");
                }
            }
        }
        tokio::time::sleep(sleep).await;
    }
}

/// One recovery pass, taken only on a steady connection (see [`super::health::RedisHealth`]):
/// a worker recovers others only once its own heartbeat has been renewed without a hitch
/// for a full lease, and never itself. One shard's pass.
async fn recover(shared: &Shared, queue: &crate::Queue) {
    let opts = &shared.options;
    if !shared.health.steady_for(opts.lease) {
        return;
    }
    let me = shared.worker_id();
    let started = Instant::now();
    let expired = match queue.expired_workers(opts.lease, me).await {
        Ok(expired) => expired,
        Err(e) => {
            shared.health.failed("list expired workers", &e);
            tracing::warn!(operation = "list expired workers", error = %e, "redis operation failed; will retry");
            return;
        }
    };
    if started.elapsed() > opts.lease / 4 {
        // A late answer may come from a Redis that was stalled: the heartbeats it compared
        // looked older than they are.
        shared.health.stalled();
        return;
    }
    for worker in expired {
        let recovered = queue
            .recover_worker(&worker, opts.lease, opts.policy.max_attempts, me)
            .await;
        let jobs = match recovered {
            Ok(Some(jobs)) => jobs,
            Ok(None) => continue,
            Err(e) => {
                shared.health.failed("recover expired worker", &e);
                tracing::warn!(operation = "recover expired worker", worker = %worker, error = %e, "redis operation failed; will retry");
                return;
            }
        };
        tracing::warn!(
            worker = %worker,
            requeued = jobs.requeued,
            dead = jobs.dead.len(),
            "recovered the jobs of a worker whose lease expired"
        );
        let Some(store) = &shared.store else { continue };
        let role = shared.queue.role();
        let events: Vec<NewEvent> = jobs
            .requeued_ids
            .iter()
            .filter(|id| !id.is_empty())
            .map(|id| {
                NewEvent::new("recovered", id.as_str())
                    .with("role", role)
                    .with("from_worker", &worker)
                    .with("worker", me)
            })
            .collect();
        for chunk in events.chunks(1_000) {
            store.events().emit(chunk).await;
        }
        let dead = jobs.dead;
        let role = shared.queue.role();
        let reason =
            format!("{role}: crash: its worker died while running it on the last allowed attempt");
        for id in &dead {
            super::health::until_done(&shared.health, &shared.halt, "mark task dead", || {
                store.mark_dead(id, role, opts.policy.max_attempts, &reason)
            })
            .await;
        }
    }
}
