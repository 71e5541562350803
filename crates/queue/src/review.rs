//! The review queue: tasks a guardrail parked for a person's decision.
//!
//! A parked task is two facts in two Redis Cluster slots, written in this order:
//! 1. its record says what waits (`<role>.state = review`, `<role>.review`, the output
//!    waiting) — `record_review.lua`;
//! 2. the role's review index (`{ns:role}:review`, ZSET by time) lists it, in the same script
//!    that takes its entry off the worker (`park.lua`): the job is settled and holds no slot.
//!
//! A crash between them re-delivers the entry; its worker finds the record parked and parks
//! it again. A decision goes the other way round: the record first (`record_approve.lua`,
//! `record_reject.lua`), then the index entry is turned into a queued job or a dead letter
//! (`unpark.lua`, `bury_parked.lua`), each at most once; repeating a decision whose second
//! step did not land finishes it.

use std::time::Duration;

use agentfleet_job::{PendingReview, ReviewDecision, TaskStatus, now_ms};
use redis::AsyncCommands;

use crate::scripts::SCRIPTS;
use crate::{DeadLetter, NewEvent, Queue, QueueError, TaskStore};

/// Most index entries expired per call.
const EXPIRE_CHUNK: usize = 1_000;

/// One entry of a role's review index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParkedTask {
    pub task_id: String,
    pub role: String,
    /// When it was parked (ms, Redis's clock).
    pub parked_at_ms: u64,
}

/// A role's review index at a glance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReviewCounts {
    /// Tasks waiting for a decision at this role.
    pub waiting: u64,
    /// How long the one waiting longest has waited (by Redis's clock).
    pub oldest_age_ms: Option<u64>,
}

/// What a review write to a task record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewWrite {
    /// Parked, approved or rejected now.
    Written,
    /// Decided the same way before (the second step may not have landed: do it now).
    Already,
    /// The role's stage is not parked for review.
    NotWaiting,
    /// The task is not in progress (done, or dead for another reason); nothing changed.
    Finished(TaskStatus),
    /// The record is gone (expired or deleted).
    Gone,
}

fn review_write(outcome: &str, key: String) -> Result<ReviewWrite, QueueError> {
    Ok(match outcome {
        "review" | "approved" | "rejected" => ReviewWrite::Written,
        "already" => ReviewWrite::Already,
        "not_waiting" => ReviewWrite::NotWaiting,
        "gone" => ReviewWrite::Gone,
        other => ReviewWrite::Finished(
            other
                .parse()
                .map_err(|reason| QueueError::Corrupt { key, reason })?,
        ),
    })
}

impl Queue {
    /// How many tasks wait for review at this role (every shard), and the age of the
    /// oldest.
    pub async fn review_counts(&self) -> Result<ReviewCounts, QueueError> {
        let mut total = ReviewCounts::default();
        for shard in self.shards() {
            let c = shard.review_counts_here().await?;
            total.waiting += c.waiting;
            total.oldest_age_ms = total.oldest_age_ms.max(c.oldest_age_ms);
        }
        Ok(total)
    }

    /// Tasks parked at this role (every shard), oldest first: `offset`, `limit` for
    /// pagination.
    pub async fn parked(&self, offset: usize, limit: usize) -> Result<Vec<ParkedTask>, QueueError> {
        if self.shard_count() == 1 {
            return self.parked_here(offset, limit).await;
        }
        let mut all = Vec::new();
        for shard in self.shards() {
            all.extend(shard.parked_here(0, offset + limit).await?);
        }
        all.sort_by(|a, b| {
            a.parked_at_ms
                .cmp(&b.parked_at_ms)
                .then_with(|| a.task_id.cmp(&b.task_id))
        });
        Ok(all.into_iter().skip(offset).take(limit).collect())
    }

    /// When `task_id` was parked at this role, if it is in the review index of any shard.
    pub async fn parked_at(&self, task_id: &str) -> Result<Option<u64>, QueueError> {
        for shard in self.shards() {
            if let Some(at) = shard.parked_at_here(task_id).await? {
                return Ok(Some(at));
            }
        }
        Ok(None)
    }

    /// Takes an approved task off the review index and queues `entry` (its stage's job), at
    /// most once, on the shard where it was parked. False when it was not in the index
    /// (already resumed).
    pub async fn unpark(&self, task_id: &str, entry: &str) -> Result<bool, QueueError> {
        for shard in self.shards() {
            if shard.unpark_here(task_id, entry).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Takes a rejected task off the review index (of the shard where it was parked) into
    /// the dead letters, at most once. False when it was not in the index.
    pub async fn bury_parked(&self, letter: &DeadLetter) -> Result<bool, QueueError> {
        for shard in self.shards() {
            if shard.bury_parked_here(letter).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Drops an index entry whose task no longer waits (finished, or its record gone).
    pub async fn forget_parked(&self, task_id: &str) -> Result<bool, QueueError> {
        let mut any = false;
        for shard in self.shards() {
            any |= shard.forget_parked_here(task_id).await?;
        }
        Ok(any)
    }

    /// Drops the index entries of tasks that stopped waiting (cancelled, say), in every
    /// shard. Returns how many there were.
    pub async fn forget_parked_many(&self, task_ids: &[String]) -> Result<u64, QueueError> {
        let mut removed = 0;
        for shard in self.shards() {
            removed += shard.forget_parked_many_here(task_ids).await?;
        }
        Ok(removed)
    }

    /// Settles a fetched entry by parking its task for review (on the pinned shard, the
    /// one it was fetched from). False when this worker no
    /// longer held the entry.
    pub async fn park(
        &self,
        worker_id: &str,
        fetched: &[u8],
        task_id: &str,
    ) -> Result<bool, QueueError> {
        let n: u64 = SCRIPTS
            .park
            .key(self.keys().inflight(worker_id))
            .key(self.keys().review())
            .key(self.keys().stats())
            .arg(fetched)
            .arg(task_id)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(n == 1)
    }

    /// How many tasks wait for review at this role, and the age of the oldest.
    async fn review_counts_here(&self) -> Result<ReviewCounts, QueueError> {
        let ((secs, micros), waiting, oldest): ((u64, u64), u64, Vec<(String, f64)>) =
            redis::pipe()
                .cmd("TIME")
                .zcard(self.keys().review())
                .zrange_withscores(self.keys().review(), 0, 0)
                .query_async(&mut self.connection())
                .await?;
        let now = secs * 1000 + micros / 1000;
        Ok(ReviewCounts {
            waiting,
            oldest_age_ms: oldest.first().map(|(_, at)| now.saturating_sub(*at as u64)),
        })
    }

    /// Tasks parked at this role, oldest first: `offset`, `limit` for pagination.
    async fn parked_here(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<ParkedTask>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let entries: Vec<(String, f64)> = self
            .connection()
            .zrange_withscores(
                self.keys().review(),
                offset as isize,
                (offset + limit) as isize - 1,
            )
            .await?;
        Ok(entries
            .into_iter()
            .map(|(task_id, at)| ParkedTask {
                task_id,
                role: self.role().to_owned(),
                parked_at_ms: at as u64,
            })
            .collect())
    }

    /// When `task_id` was parked at this role, if it is in the review index.
    async fn parked_at_here(&self, task_id: &str) -> Result<Option<u64>, QueueError> {
        let at: Option<f64> = self
            .connection()
            .zscore(self.keys().review(), task_id)
            .await?;
        Ok(at.map(|at| at as u64))
    }

    /// Takes an approved task off the review index and queues `entry` (its stage's job), at
    /// most once. False when it was not in the index (already resumed).
    async fn unpark_here(&self, task_id: &str, entry: &str) -> Result<bool, QueueError> {
        let n: u64 = SCRIPTS
            .unpark
            .key(self.keys().review())
            .key(&self.lane_keys()[..])
            .arg(task_id)
            .arg(entry)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(n == 1)
    }

    /// Takes a rejected task off the review index into the dead letters, at most once.
    /// False when it was not in the index.
    async fn bury_parked_here(&self, letter: &DeadLetter) -> Result<bool, QueueError> {
        let record = serde_json::to_string(letter).map_err(|e| QueueError::Corrupt {
            key: self.keys().dead(),
            reason: e.to_string(),
        })?;
        let n: u64 = SCRIPTS
            .bury_parked
            .key(self.keys().review())
            .key(self.keys().dead())
            .key(self.keys().dead_index())
            .key(self.keys().stats())
            .arg(&letter.job_id)
            .arg(record)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(n == 1)
    }

    /// Drops an index entry whose task no longer waits (finished, or its record gone).
    async fn forget_parked_here(&self, task_id: &str) -> Result<bool, QueueError> {
        let n: u64 = self
            .connection()
            .zrem(self.keys().review(), task_id)
            .await?;
        Ok(n == 1)
    }

    /// Drops the index entries of tasks that stopped waiting (cancelled, say), 1,000 per
    /// command. Returns how many there were.
    async fn forget_parked_many_here(&self, task_ids: &[String]) -> Result<u64, QueueError> {
        let mut removed = 0;
        for chunk in task_ids.chunks(EXPIRE_CHUNK) {
            removed += self
                .connection()
                .zrem::<_, _, u64>(self.keys().review(), chunk)
                .await?;
        }
        Ok(removed)
    }

    /// Drops index entries parked before `retention` ago (their records have expired).
    pub async fn expire_parked(&self, retention: Duration) -> Result<u64, QueueError> {
        Ok(SCRIPTS
            .expire_parked
            .key(self.keys().review())
            .arg(retention.as_millis() as u64)
            .arg(EXPIRE_CHUNK)
            .invoke_async(&mut self.connection())
            .await?)
    }
}

impl TaskStore {
    /// Notes on the record that `role`'s stage waits for review: `review` (without its
    /// output) and, for an output review, the answer waiting for approval. The record then
    /// lives a full lifetime from now.
    pub async fn park_for_review(
        &self,
        task_id: &str,
        role: &str,
        review: &PendingReview,
    ) -> Result<ReviewWrite, QueueError> {
        let key = self.key(task_id);
        let output = review.output.clone().unwrap_or_default();
        let without_output = PendingReview {
            output: None,
            ..review.clone()
        };
        let json = serde_json::to_string(&without_output).map_err(|e| QueueError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let outcome: String = SCRIPTS
            .record_review
            .key(&key)
            .arg(role)
            .arg(json)
            .arg(output)
            .arg(now_ms())
            .arg(self.ttl().as_millis() as u64)
            .invoke_async(&mut self.conn())
            .await?;
        if outcome == "review" {
            self.events()
                .emit_one(NewEvent::new("parked", task_id).with("role", role))
                .await;
        }
        review_write(&outcome, key)
    }

    /// Records an approval: an output review's answer becomes the role's output, an input
    /// review's rules (`approved_rules`, all the role's approved input rules) are skipped
    /// from now on. `stage_roles` are the roles of the stage (the task stays `review` while
    /// another waits).
    pub async fn approve_review(
        &self,
        task_id: &str,
        decision: &ReviewDecision,
        approved_rules: Option<&[String]>,
        stage_roles: &[String],
    ) -> Result<ReviewWrite, QueueError> {
        let key = self.key(task_id);
        let corrupt = |e: serde_json::Error| QueueError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        };
        let rules = match approved_rules {
            Some(rules) => serde_json::to_string(rules).map_err(corrupt)?,
            None => String::new(),
        };
        let mut inv = SCRIPTS.record_approve.key(&key);
        inv.arg(&decision.role)
            .arg(serde_json::to_string(decision).map_err(corrupt)?)
            .arg(rules)
            .arg(now_ms());
        for role in stage_roles {
            inv.arg(role);
        }
        let outcome: String = inv.invoke_async(&mut self.conn()).await?;
        if outcome == "approved" {
            self.events()
                .emit_one(
                    NewEvent::new("approved", task_id)
                        .with("role", &decision.role)
                        .with("by", &decision.by),
                )
                .await;
        }
        review_write(&outcome, key)
    }

    /// Records a rejection: the task is dead with `reason`.
    pub async fn reject_review(
        &self,
        task_id: &str,
        decision: &ReviewDecision,
        reason: &str,
    ) -> Result<ReviewWrite, QueueError> {
        let key = self.key(task_id);
        let json = serde_json::to_string(decision).map_err(|e| QueueError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let outcome: String = SCRIPTS
            .record_reject
            .key(&key)
            .arg(&decision.role)
            .arg(json)
            .arg(reason)
            .arg(now_ms())
            .arg(self.ttl().as_millis() as u64)
            .invoke_async(&mut self.conn())
            .await?;
        if outcome == "rejected" {
            self.events()
                .emit_one(
                    NewEvent::new("rejected", task_id)
                        .with("role", &decision.role)
                        .with("by", &decision.by),
                )
                .await;
        }
        review_write(&outcome, key)
    }

    /// What waits for review for each (task id, role), in one round trip (`None` where the
    /// role's stage is not parked, or the record is gone).
    pub async fn pending_reviews(
        &self,
        parked: &[(String, String)],
    ) -> Result<Vec<Option<PendingReview>>, QueueError> {
        if parked.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (task_id, role) in parked {
            pipe.hget(self.key(task_id), format!("{role}.review"));
        }
        let raw: Vec<Option<String>> = pipe.query_async(&mut self.conn()).await?;
        Ok(raw
            .into_iter()
            .map(|r| r.and_then(|r| serde_json::from_str(&r).ok()))
            .collect())
    }

    /// The input rules a person approved for `role` on this task (skipped when it runs).
    pub async fn approved_rules(
        &self,
        task_id: &str,
        role: &str,
    ) -> Result<Vec<String>, QueueError> {
        let raw: Option<String> = self
            .conn()
            .hget(self.key(task_id), format!("{role}.approved"))
            .await?;
        Ok(raw
            .and_then(|r| serde_json::from_str(&r).ok())
            .unwrap_or_default())
    }
}
