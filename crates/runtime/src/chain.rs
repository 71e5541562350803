//! Pushing the next stage's jobs, batched across this worker's jobs: one guarded push
//! script per batch and role, instead of one per job. A job waits for its batch to land
//! before it is acknowledged, so a crash in between re-runs the job and the idempotency
//! key (the task id) keeps the second push out: completing twice still chains once.

use std::collections::HashMap;

use agentfleet_job::JobError;
use agentfleet_queue::RedisConnection;
use agentfleet_queue::{JobFailure, Namespace, PushEntry, Queue, QueueError};
use tokio::sync::{mpsc, oneshot};

/// At most this many entries per push (the push script's chunk).
const MAX_BATCH: usize = 1_000;

struct Request {
    entry: PushEntry,
    done: oneshot::Sender<Result<(), String>>,
}

/// One batching pusher per role of the next stage.
pub(crate) struct ChainPushers {
    by_role: HashMap<String, mpsc::UnboundedSender<Request>>,
}

impl ChainPushers {
    /// Starts a pusher for each of `roles` (the next stage's; none after the last stage).
    pub(crate) fn spawn(
        conn: &RedisConnection,
        namespace: &Namespace,
        roles: &[String],
        shards: usize,
        idempotency_ttl: std::time::Duration,
    ) -> Result<Self, QueueError> {
        let mut by_role = HashMap::new();
        for role in roles {
            // Each entry goes to the shard of its task (its idempotency key is the task id).
            let queue = Queue::new(conn.clone(), namespace, role)?
                .with_shards(namespace, shards)?
                .with_idempotency_ttl(idempotency_ttl);
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(push_loop(queue, rx));
            by_role.insert(role.clone(), tx);
        }
        Ok(Self { by_role })
    }

    /// Pushes one entry onto `role`'s queue with the batch it joins; returns once it landed
    /// (or its idempotency key showed it had already been pushed).
    pub(crate) async fn push(&self, role: &str, entry: PushEntry) -> Result<(), JobFailure> {
        let Some(tx) = self.by_role.get(role) else {
            return Err(JobError::permanent(format!(
                "no pusher for role {role:?}: it is not in the next stage"
            ))
            .into());
        };
        let (done, landed) = oneshot::channel();
        let gone = || JobFailure::from(JobError::transient("the worker is shutting down"));
        tx.send(Request { entry, done }).map_err(|_| gone())?;
        match landed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(JobError::transient(format!("redis: {e}")).into()),
            Err(_) => Err(gone()),
        }
    }
}

async fn push_loop(queue: Queue, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut batch: Vec<Request> = Vec::with_capacity(64);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let (entries, dones): (Vec<PushEntry>, Vec<_>) =
            batch.drain(..).map(|r| (r.entry, r.done)).unzip();
        let result = match queue.push_many(&entries).await {
            Ok(pushed) => {
                let repeated = entries.len() as u64 - pushed.min(entries.len() as u64);
                if repeated > 0 {
                    tracing::info!(
                        next_role = queue.role(),
                        repeated,
                        "next stage's jobs already enqueued by an earlier completion"
                    );
                }
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        for done in dones {
            // The job may have been dropped meanwhile (a cancel): nobody waits then.
            let _ = done.send(result.clone());
        }
    }
}
