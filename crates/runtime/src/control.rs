//! Stopping stages that are running: a cancelled task's provider call is dropped (its HTTP
//! request with it) within one poll interval, wherever in the fleet it runs.
//!
//! Cancellation is stored on the task record (so it reaches workers that are offline now:
//! they read the status before any stage starts); what needs telling is the workers that
//! are running one of the task's stages at that moment. Each worker polls the fleet's
//! cancellation counter (one `GET` per interval) and, only when it moved, reads the status
//! of the tasks it is running.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentfleet_job::TaskStatus;
use agentfleet_queue::TaskStore;
use tokio_util::sync::CancellationToken;

/// How often a worker looks at the cancellation counter: well inside the one second in
/// which a cancelled call must be dropped.
pub const POLL: Duration = Duration::from_millis(250);
/// Every this many polls the running tasks are checked even if the counter did not move
/// (a cancel whose counter update was lost, say the CLI died between the two writes).
const FULL_CHECK_EVERY: u32 = 40;

/// The tasks this worker is running a stage of, each with the token that aborts it.
#[derive(Default)]
pub struct RunningTasks {
    tasks: Mutex<HashMap<String, (CancellationToken, u32)>>,
}

/// A task registered as running; unregistered on drop.
pub struct Registration<'a> {
    running: &'a RunningTasks,
    task_id: String,
    token: CancellationToken,
}

impl Registration<'_> {
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut tasks = self
            .running
            .tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, n)) = tasks.get_mut(&self.task_id) {
            *n -= 1;
            if *n == 0 {
                tasks.remove(&self.task_id);
            }
        }
    }
}

impl RunningTasks {
    pub fn register(&self, task_id: &str) -> Registration<'_> {
        let mut tasks = self
            .tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (token, n) = tasks
            .entry(task_id.to_owned())
            .or_insert_with(|| (CancellationToken::new(), 0));
        *n += 1;
        Registration {
            running: self,
            task_id: task_id.to_owned(),
            token: token.clone(),
        }
    }

    fn ids(&self) -> Vec<String> {
        self.tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn abort(&self, task_id: &str) {
        if let Some((token, _)) = self
            .tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(task_id)
        {
            token.cancel();
        }
    }
}

/// Starts [`watch`] as a task that ends when the returned guard is dropped.
pub fn spawn_watch(running: Arc<RunningTasks>, store: TaskStore) -> WatchGuard {
    WatchGuard(tokio::spawn(watch(running, store)))
}

/// Aborts the cancellation watch when dropped (when the worker's `run` returns).
pub struct WatchGuard(tokio::task::JoinHandle<()>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls the cancellation counter, aborting the running stages of tasks that were
/// cancelled (or expired) meanwhile. Redis errors are logged and the poll goes on.
async fn watch(running: Arc<RunningTasks>, store: TaskStore) {
    let mut seen: Option<u64> = None;
    let mut polls = 0u32;
    loop {
        tokio::time::sleep(POLL).await;
        polls = polls.wrapping_add(1);
        let seq = match store.cancel_seq().await {
            Ok(seq) => seq,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the cancellation counter; will retry");
                continue;
            }
        };
        // The first poll checks too: a cancel may have landed between a stage's start
        // (which read the status) and this worker's first look at the counter.
        if seen == Some(seq) && !polls.is_multiple_of(FULL_CHECK_EVERY) {
            continue;
        }
        let ids = running.ids();
        if ids.is_empty() {
            seen = Some(seq);
            continue;
        }
        match store.statuses(&ids).await {
            Ok(statuses) => {
                seen = Some(seq);
                for (id, status) in ids.iter().zip(statuses) {
                    if matches!(status, Some(TaskStatus::Cancelled | TaskStatus::Expired)) {
                        tracing::info!(task_id = %id, status = ?status, "task stopped elsewhere; aborting its running stage");
                        running.abort(id);
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the running tasks' statuses; will retry");
            }
        }
    }
}
