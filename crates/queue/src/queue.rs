use std::collections::HashSet;
use std::time::Duration;

use crate::RedisConnection;
use redis::AsyncCommands;

use crate::scripts::SCRIPTS;
use crate::{DeadLetter, Namespace, QueueError, QueueKeys, TaskStore};

/// Entries per push request: keeps every request far inside the response timeout (a
/// 1,000-entry chunk takes Redis a few milliseconds) while amortising round trips.
const PUSH_CHUNK: usize = 1_000;
/// Most entries one fetch hands out; also bounds Lua `unpack` sizes.
pub const MAX_FETCH: usize = 1_000;
/// Most scheduled entries promoted, or dead letters expired, per call.
const MAINTENANCE_CHUNK: usize = 1_000;

/// One entry to push, with an optional idempotency key: a push that is retried (say after
/// a response timeout whose request did commit) never enqueues the entry twice while the
/// key lives.
#[derive(Debug, Clone, Default)]
pub struct PushEntry {
    pub entry: String,
    pub idempotency_key: Option<String>,
    /// When it becomes due (ms, Redis's clock): until then it waits in the scheduled set.
    /// `None` runs it as soon as a worker is free.
    pub due_ms: Option<u64>,
}

/// A task to create: its record fields and its first job.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub task_id: String,
    pub prompt: String,
    pub metadata: std::collections::BTreeMap<String, String>,
    /// The pipeline it is enqueued into (canonical form), kept on the record.
    pub pipeline: String,
    pub created_at_ms: u64,
    pub traceparent: Option<String>,
    pub control: TaskControl,
    pub push: PushEntry,
    /// The batch it belongs to (`enqueue --file/--count`), recorded with the record.
    pub batch: Option<String>,
}

/// When and how urgently a task runs: its lane, its deadline, its start time. Absolute
/// times are Redis's clock (ms): [`Queue::redis_time_ms`] turns a relative `--delay` or
/// `--deadline` into one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskControl {
    pub lane: agentfleet_job::Lane,
    /// Past it, nothing more of the task runs and it ends `expired`.
    pub deadline_ms: Option<u64>,
    /// The first job waits in the scheduled set until then.
    pub not_before_ms: Option<u64>,
}

impl NewTask {
    /// A new task exactly as `agentfleet enqueue` makes it: a fresh id, its record fields,
    /// its first stage's job and a fresh W3C trace context. Here so that the CLI and the
    /// bench build the same entries.
    pub fn new(
        spec: agentfleet_job::TaskSpec,
        idempotency_key: Option<String>,
        pipeline: &agentfleet_job::Pipeline,
    ) -> Self {
        Self::with_control(spec, idempotency_key, pipeline, TaskControl::default())
    }

    /// [`NewTask::new`] in a lane, with a deadline or a start time.
    pub fn with_control(
        spec: agentfleet_job::TaskSpec,
        idempotency_key: Option<String>,
        pipeline: &agentfleet_job::Pipeline,
        control: TaskControl,
    ) -> Self {
        use agentfleet_job::{Envelope, StageJob, TaskId, TraceContext, now_ms};
        let task_id = TaskId::new();
        let created_at_ms = now_ms();
        let trace = TraceContext::new_root();
        let traceparent = trace.traceparent.clone();
        let entry = Envelope::new(
            task_id.to_string(),
            StageJob {
                task_id,
                stage: 0,
                trace: Some(trace),
            },
        )
        .in_lane(control.lane)
        .encode();
        Self {
            task_id: task_id.to_string(),
            prompt: spec.prompt,
            metadata: spec.metadata,
            pipeline: pipeline.to_string(),
            created_at_ms,
            traceparent: Some(traceparent),
            control,
            push: PushEntry {
                entry,
                idempotency_key,
                due_ms: control.not_before_ms,
            },
            batch: None,
        }
    }

    /// The same task as a member of batch `batch_id`.
    pub fn in_batch(mut self, batch_id: &str) -> Self {
        self.batch = Some(batch_id.to_owned());
        self
    }
}

/// What one worker's recovery did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveredJobs {
    /// Entries put back in their lanes.
    pub requeued: u64,
    /// Job ids dead-lettered (out of attempts).
    pub dead: Vec<String>,
    /// Job ids of the entries put back (empty for an unreadable one).
    pub requeued_ids: Vec<String>,
}

/// Entries handed to a worker, byte for byte as they are recorded in flight.
pub type Fetched = Vec<Vec<u8>>;

/// Sizes of one role's queue, each read in O(1) (in flight: O(live workers)).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    /// Entries waiting in every lane.
    pub pending: u64,
    /// Of which in each lane.
    pub pending_high: u64,
    pub pending_normal: u64,
    pub pending_low: u64,
    pub in_flight: u64,
    pub scheduled: u64,
    pub dead: u64,
    pub succeeded: u64,
    pub retried: u64,
    /// Deliveries put back to wait for capacity (not counted as attempts).
    pub deferred: u64,
    pub recovered: u64,
    pub dead_lettered: u64,
    pub live_workers: u64,
    /// Age of the entry that will run next, if any.
    pub oldest_pending_age_ms: Option<u64>,
}

impl QueueCounts {
    /// Adds another shard's counts: sizes and counters add up; the workers are the same
    /// on every shard (each heartbeats on all), so the most seen is taken.
    pub fn add(&mut self, other: &QueueCounts) {
        self.pending += other.pending;
        self.pending_high += other.pending_high;
        self.pending_normal += other.pending_normal;
        self.pending_low += other.pending_low;
        self.in_flight += other.in_flight;
        self.scheduled += other.scheduled;
        self.dead += other.dead;
        self.succeeded += other.succeeded;
        self.retried += other.retried;
        self.deferred += other.deferred;
        self.recovered += other.recovered;
        self.dead_lettered += other.dead_lettered;
        self.live_workers = self.live_workers.max(other.live_workers);
        self.oldest_pending_age_ms = self.oldest_pending_age_ms.max(other.oldest_pending_age_ms);
    }
}

/// What one crash-recovery pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub workers: Vec<String>,
    pub requeued: u64,
    /// Job ids dead-lettered because their delivery count reached max attempts.
    pub dead: Vec<String>,
}

/// One role's queue: one shard of it for a worker's operations (fetch, settle, upkeep), all
/// of its shards for producers' pushes and for readers (counts, dead letters, review).
///
/// With `--shards N` a role's queue is N independent queues (`Namespace::queue_shard`);
/// a push goes to the shard [`shard_of`] its routing key (the idempotency key when it has
/// one, else the entry's id, the task id) hashes to. A `Queue` made by [`Queue::new`] is
/// pinned to shard 0; [`Queue::shard`] pins another.
#[derive(Clone)]
pub struct Queue {
    conn: RedisConnection,
    keys: QueueKeys,
    role: String,
    idempotency_ttl: Duration,
    shares: agentfleet_job::LaneShares,
    /// The keys of every shard (index = shard); `keys` is the pinned one's.
    shard_keys: std::sync::Arc<[QueueKeys]>,
    shard: usize,
}

/// The shard (of `shards`) that `routing_key` belongs to: FNV-1a (64-bit) of its bytes,
/// modulo the shard count. Stable across processes, versions and platforms (no seeded
/// hasher), so every producer and worker puts a task's jobs on the same shard.
pub fn shard_of(routing_key: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in routing_key.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

/// The key a push is routed by: its idempotency key (so that the key and the entry it
/// guards share a shard, and a repeated push meets the key), else the entry's id.
fn routing_key(e: &PushEntry) -> std::borrow::Cow<'_, str> {
    match e.idempotency_key.as_deref() {
        Some(k) => std::borrow::Cow::Borrowed(k),
        None => std::borrow::Cow::Owned(entry_id(&e.entry)),
    }
}

impl Queue {
    pub fn new(
        conn: RedisConnection,
        namespace: &Namespace,
        role: &str,
    ) -> Result<Self, QueueError> {
        let keys = namespace.queue(role)?;
        Ok(Self {
            shard_keys: vec![keys.clone()].into(),
            shard: 0,
            keys,
            conn,
            role: role.to_owned(),
            idempotency_ttl: IDEMPOTENCY_TTL,
            shares: agentfleet_job::LaneShares::default(),
        })
    }

    /// The same queue with `shards` shards (`--shards`, at least 1), pinned to shard 0.
    pub fn with_shards(mut self, namespace: &Namespace, shards: usize) -> Result<Self, QueueError> {
        let keys = (0..shards.max(1))
            .map(|k| namespace.queue_shard(&self.role, k))
            .collect::<Result<Vec<_>, _>>()?;
        self.keys = keys[0].clone();
        self.shard_keys = keys.into();
        self.shard = 0;
        Ok(self)
    }

    /// How many shards the role's queue has.
    pub fn shard_count(&self) -> usize {
        self.shard_keys.len()
    }

    /// The shard this queue is pinned to.
    pub fn shard_index(&self) -> usize {
        self.shard
    }

    /// This queue pinned to shard `shard` (taken modulo the shard count).
    pub fn shard(&self, shard: usize) -> Queue {
        let shard = shard % self.shard_keys.len();
        let mut q = self.clone();
        q.keys = self.shard_keys[shard].clone();
        q.shard = shard;
        q
    }

    /// One queue per shard, in shard order.
    pub fn shards(&self) -> Vec<Queue> {
        (0..self.shard_keys.len()).map(|k| self.shard(k)).collect()
    }

    /// The shard a task's jobs go to (see [`shard_of`]).
    pub fn shard_of_task(&self, task_id: &str) -> usize {
        shard_of(task_id, self.shard_keys.len())
    }

    /// `items` grouped by the shard `key` routes each to, in shard order.
    fn by_shard<'a, T: Clone>(
        &self,
        items: &'a [T],
        key: impl Fn(&'a T) -> std::borrow::Cow<'a, str>,
    ) -> Vec<(usize, Vec<T>)> {
        let n = self.shard_keys.len();
        let mut groups: Vec<Vec<T>> = vec![Vec::new(); n];
        for item in items {
            groups[shard_of(&key(item), n)].push(item.clone());
        }
        groups
            .into_iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .collect()
    }

    /// The shares of its fetches this worker guarantees the lower lanes.
    pub fn with_lane_shares(mut self, shares: agentfleet_job::LaneShares) -> Self {
        self.shares = shares;
        self
    }

    /// The lane lists and the wake list, in the order every lane-aware script takes them.
    pub(crate) fn lane_keys(&self) -> [String; 4] {
        use agentfleet_job::Lane;
        [
            self.keys.pending_lane(Lane::High),
            self.keys.pending_lane(Lane::Normal),
            self.keys.pending_lane(Lane::Low),
            self.keys.wake(),
        ]
    }

    /// Redis's clock (ms): the one every absolute time in a queue is compared on.
    pub async fn redis_time_ms(&self) -> Result<u64, QueueError> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// How long an idempotency key keeps a second push away (default 24 h). Workers tie it
    /// to the record lifetime so that no key outlives the task it guards.
    pub fn with_idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = ttl;
        self
    }

    pub fn role(&self) -> &str {
        &self.role
    }

    pub fn keys(&self) -> &QueueKeys {
        &self.keys
    }

    pub fn connection(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// Pushes one entry. Returns false when its idempotency key was already used.
    pub async fn push(&self, entry: PushEntry) -> Result<bool, QueueError> {
        if self.shard_count() > 1 {
            let k = shard_of(&routing_key(&entry), self.shard_count());
            let q = self.shard(k);
            return Ok(q
                .push_chunk(std::slice::from_ref(&entry), q.idempotency_ttl)
                .await?
                == 1);
        }
        Ok(self
            .push_chunk(std::slice::from_ref(&entry), self.idempotency_ttl)
            .await?
            == 1)
    }

    /// Pushes many entries: chunks of 1,000 per script call, eight chunks per pipelined
    /// round trip. Returns how many were new.
    pub async fn push_many(&self, entries: &[PushEntry]) -> Result<u64, QueueError> {
        if self.shard_count() > 1 {
            let mut pushed = 0;
            for (k, group) in self.by_shard(entries, routing_key) {
                pushed += self.shard(k).push_many_here(&group).await?;
            }
            return Ok(pushed);
        }
        self.push_many_here(entries).await
    }

    /// [`Queue::push_many`] onto the pinned shard.
    async fn push_many_here(&self, entries: &[PushEntry]) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let mut pushed = 0;
        for window in entries.chunks(PUSH_CHUNK * 8) {
            let mut pipe = redis::pipe();
            let mut known = 0;
            let guarded = window.iter().any(|e| e.idempotency_key.is_some());
            for chunk in window.chunks(PUSH_CHUNK) {
                known += self
                    .add_push(&mut pipe, chunk, guarded, self.idempotency_ttl)
                    .unwrap_or(0);
            }
            pushed += known + send_push_pipeline(&mut conn, &pipe).await?;
        }
        Ok(pushed)
    }

    /// Creates task records and pushes their first jobs together: one round trip per 1,000
    /// tasks (records and entries go in one pipeline; on a cluster, records first, then the
    /// entries). Returns how many entries were new.
    pub async fn enqueue_tasks(
        &self,
        store: &TaskStore,
        tasks: &[NewTask],
    ) -> Result<u64, QueueError> {
        if self.shard_count() > 1 {
            let mut pushed = 0;
            for (k, group) in self.by_shard(tasks, |t| routing_key(&t.push)) {
                pushed += self.shard(k).enqueue_tasks_here(store, &group).await?;
            }
            return Ok(pushed);
        }
        self.enqueue_tasks_here(store, tasks).await
    }

    /// [`Queue::enqueue_tasks`] onto the pinned shard.
    async fn enqueue_tasks_here(
        &self,
        store: &TaskStore,
        tasks: &[NewTask],
    ) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let mut pushed = 0;
        for chunk in tasks.chunks(PUSH_CHUNK) {
            let mut pipe = redis::pipe();
            for t in chunk {
                store.create_into(
                    &mut pipe,
                    &t.task_id,
                    &t.prompt,
                    &t.metadata,
                    &t.pipeline,
                    t.created_at_ms,
                    t.traceparent.as_deref(),
                    &t.control,
                );
            }
            // Batch membership in the same pipeline as the records (one RPUSH per batch
            // and chunk; a chunk normally holds one batch).
            let mut batches: Vec<(&str, Vec<&str>)> = Vec::new();
            for t in chunk {
                if let Some(b) = t.batch.as_deref() {
                    match batches.iter_mut().find(|(id, _)| *id == b) {
                        Some((_, ids)) => ids.push(&t.task_id),
                        None => batches.push((b, vec![&t.task_id])),
                    }
                }
            }
            for (batch, ids) in &batches {
                store.add_to_batch_into(&mut pipe, batch, ids);
            }
            let created: Vec<(u64, &str)> = chunk
                .iter()
                .map(|t| (t.created_at_ms, t.task_id.as_str()))
                .collect();
            store.index_into(&mut pipe, &created, agentfleet_job::now_ms());
            if conn.is_cluster() {
                // A cluster pipeline runs its slots concurrently: the records must have
                // landed before a worker can fetch a job for them.
                pipe.query_async::<()>(&mut conn).await?;
                pipe = redis::pipe();
            }
            let entries: Vec<PushEntry> = chunk.iter().map(|t| t.push.clone()).collect();
            let guarded = entries.iter().any(|e| e.idempotency_key.is_some());
            let known = self
                .add_push(&mut pipe, &entries, guarded, self.idempotency_ttl)
                .unwrap_or(0);
            pushed += known + send_push_pipeline(&mut conn, &pipe).await?;
        }
        Ok(pushed)
    }

    /// Creates one task guarded by its idempotency key (`task.push.idempotency_key`): when
    /// the key is in use, nothing is written and the id of the task that holds it is
    /// returned. The key holds the task id and lives as long as the record
    /// ([`Queue::with_idempotency_ttl`]).
    pub async fn enqueue_idempotent(
        &self,
        store: &TaskStore,
        task: &NewTask,
    ) -> Result<Enqueued, QueueError> {
        let Some(key) = task.push.idempotency_key.as_deref() else {
            return Ok(
                match self
                    .enqueue_tasks(store, std::slice::from_ref(task))
                    .await?
                {
                    0 => Enqueued::Existing(task.task_id.clone()),
                    _ => Enqueued::New(task.task_id.clone()),
                },
            );
        };
        // The key lives on the shard it routes the task to (see [`routing_key`]).
        let shard = self.shard(shard_of(key, self.shard_count()));
        let mut conn = self.conn.clone();
        let idem = shard.keys.idempotency(key);
        // The usual repeat: the key is there, so nothing is written at all.
        if let Some(existing) = conn.get::<_, Option<String>>(&idem).await? {
            return Ok(Enqueued::Existing(existing));
        }
        if self
            .enqueue_tasks(store, std::slice::from_ref(task))
            .await?
            == 1
        {
            return Ok(Enqueued::New(task.task_id.clone()));
        }
        // Another enqueue with the same key won the race between our read and our push: the
        // record we wrote guards nothing; remove it and name the winner.
        let _: () = conn.del(store.key(&task.task_id)).await?;
        store.forget_indexed(&task.task_id).await?;
        let existing: Option<String> = conn.get(&idem).await?;
        Ok(Enqueued::Existing(
            existing.unwrap_or_else(|| task.task_id.clone()),
        ))
    }

    /// Adds the push of `chunk` to `pipe`. Returns the entries pushed when that is known
    /// without a reply: without idempotency keys (`guarded` false) it is a plain `LPUSH` (no
    /// script to run, the cheaper command on the enqueue hot path), whose reply is ignored;
    /// otherwise `push.lua` runs and its reply is the count. A pipeline is all one or all the
    /// other, so that a NOSCRIPT failure (after a Redis restart) means none of it ran and
    /// the whole pipeline can be sent again.
    fn add_push(
        &self,
        pipe: &mut redis::Pipeline,
        chunk: &[PushEntry],
        guarded: bool,
        ttl: Duration,
    ) -> Option<u64> {
        if !guarded {
            let mut by_lane: [Vec<&str>; 3] = Default::default();
            for e in chunk {
                match e.due_ms {
                    Some(due) => {
                        pipe.zadd(self.keys.scheduled(), e.entry.as_str(), due)
                            .ignore();
                    }
                    None => by_lane[lane_index(lane_of(&e.entry))].push(e.entry.as_str()),
                }
            }
            let lane_keys = self.lane_keys();
            let mut ready = 0;
            for (entries, key) in by_lane.iter().zip(&lane_keys) {
                if !entries.is_empty() {
                    pipe.lpush(key, entries).ignore();
                    ready += entries.len();
                }
            }
            // Wake idle workers after the entries are there (as wake() in the scripts).
            if ready > 0 {
                pipe.lpush(&lane_keys[3], vec!["1"; ready.min(64)])
                    .ignore()
                    .ltrim(&lane_keys[3], 0, 63)
                    .ignore();
            }
            return Some(chunk.len() as u64);
        }
        pipe.add_command(self.push_invocation(chunk, ttl));
        None
    }

    fn push_invocation(&self, chunk: &[PushEntry], ttl: Duration) -> redis::Cmd {
        // Guarded entries first, so the script pairs entry i with key i.
        let mut guarded: Vec<&PushEntry> = chunk
            .iter()
            .filter(|e| e.idempotency_key.is_some())
            .collect();
        let unguarded = chunk.iter().filter(|e| e.idempotency_key.is_none());
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(SCRIPTS.push.get_hash())
            .arg(5 + guarded.len())
            .arg(&self.lane_keys()[..])
            .arg(self.keys.scheduled());
        for e in &guarded {
            cmd.arg(
                self.keys
                    .idempotency(e.idempotency_key.as_deref().unwrap_or_default()),
            );
        }
        cmd.arg(ttl.as_millis() as u64);
        for e in &guarded {
            cmd.arg(entry_id(&e.entry));
        }
        guarded.extend(unguarded);
        for e in guarded {
            cmd.arg(e.due_ms.unwrap_or(0)).arg(&e.entry);
        }
        cmd
    }

    async fn push_chunk(&self, chunk: &[PushEntry], ttl: Duration) -> Result<u64, QueueError> {
        let mut guarded: Vec<&PushEntry> = chunk
            .iter()
            .filter(|e| e.idempotency_key.is_some())
            .collect();
        let mut inv = SCRIPTS.push.key(&self.lane_keys()[..]);
        inv.key(self.keys.scheduled());
        for e in &guarded {
            inv.key(
                self.keys
                    .idempotency(e.idempotency_key.as_deref().unwrap_or_default()),
            );
        }
        inv.arg(ttl.as_millis() as u64);
        for e in &guarded {
            inv.arg(entry_id(&e.entry));
        }
        guarded.extend(chunk.iter().filter(|e| e.idempotency_key.is_none()));
        for e in guarded {
            inv.arg(e.due_ms.unwrap_or(0)).arg(&e.entry);
        }
        Ok(inv.invoke_async(&mut self.conn.clone()).await?)
    }

    /// Hands up to `max` entries to `worker_id`, counting each delivery.
    pub async fn fetch(&self, worker_id: &str, max: usize) -> Result<Fetched, QueueError> {
        let max = max.clamp(1, MAX_FETCH);
        Ok(SCRIPTS
            .fetch
            .key(&self.lane_keys()[..])
            .key(self.keys.inflight(worker_id))
            .key(self.keys.claim(worker_id))
            .key(self.keys.workers())
            .key(self.keys.lanes())
            .arg(worker_id)
            .arg(max)
            .arg(self.shares.normal)
            .arg(self.shares.low)
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    /// The entries `worker_id` holds in Redis (its in-flight hash), for reconciling them
    /// with what the worker holds in memory.
    pub async fn in_flight_entries(&self, worker_id: &str) -> Result<Fetched, QueueError> {
        Ok(self
            .conn
            .clone()
            .hkeys(self.keys.inflight(worker_id))
            .await?)
    }

    /// Gives back entries `worker_id` holds in Redis but not in memory, uncounted, to the
    /// consuming end of the queue. Entries no longer held are skipped. Returns how many went
    /// back.
    pub async fn release(&self, worker_id: &str, entries: &[Vec<u8>]) -> Result<u64, QueueError> {
        let mut released = 0;
        for chunk in entries.chunks(MAX_FETCH) {
            let mut inv = SCRIPTS.release.key(self.keys.inflight(worker_id));
            inv.key(&self.lane_keys()[..]);
            for e in chunk {
                inv.arg(e.as_slice());
            }
            released += inv.invoke_async::<u64>(&mut self.conn.clone()).await?;
        }
        Ok(released)
    }

    /// Waits up to `timeout` for a push into any lane: takes one wake-up token (every push
    /// leaves up to 64), after which [`Queue::fetch`] finds the work. No entry moves here,
    /// so a lost reply loses nothing but a token. Must run on a connection of its own: a
    /// blocking command stalls its connection.
    pub async fn wait_for_entry(
        &self,
        blocking_conn: &mut RedisConnection,
        timeout: Duration,
    ) -> Result<bool, QueueError> {
        let token: Option<(String, String)> = blocking_conn
            .blpop(self.keys.wake(), timeout.as_secs_f64())
            .await?;
        Ok(token.is_some())
    }

    /// Finishes entries that succeeded. Returns how many this worker still held.
    pub async fn ack<E: AsRef<[u8]>>(
        &self,
        worker_id: &str,
        entries: &[E],
    ) -> Result<u64, QueueError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut inv = SCRIPTS.ack.key(self.keys.inflight(worker_id));
        inv.key(self.keys.stats());
        for e in entries {
            inv.arg(e.as_ref());
        }
        Ok(inv.invoke_async(&mut self.conn.clone()).await?)
    }

    /// Schedules a failed entry to run again `delay` from now, by Redis's clock. False when
    /// this worker no longer held it.
    pub async fn retry(
        &self,
        worker_id: &str,
        fetched: &[u8],
        next: &str,
        delay: Duration,
    ) -> Result<bool, QueueError> {
        let n: u64 = SCRIPTS
            .retry
            .key(self.keys.inflight(worker_id))
            .key(self.keys.scheduled())
            .key(self.keys.stats())
            .arg(fetched)
            .arg(next)
            .arg(delay.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    /// Reschedules a fetched entry `delay` from now (Redis's clock) without counting its
    /// delivery: it waited for capacity, it did not fail. False when this worker no longer
    /// held it.
    pub async fn defer(
        &self,
        worker_id: &str,
        fetched: &[u8],
        delay: Duration,
    ) -> Result<bool, QueueError> {
        let n: u64 = SCRIPTS
            .defer
            .key(self.keys.inflight(worker_id))
            .key(self.keys.scheduled())
            .key(self.keys.stats())
            .arg(fetched)
            .arg(delay.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    /// Moves a fetched entry to the dead letters. False when this worker no longer held it.
    pub async fn bury(
        &self,
        worker_id: &str,
        fetched: &[u8],
        letter: &DeadLetter,
    ) -> Result<bool, QueueError> {
        let record = serde_json::to_string(letter).map_err(|e| QueueError::Corrupt {
            key: self.keys.dead(),
            reason: e.to_string(),
        })?;
        self.bury_encoded(worker_id, fetched, &letter.job_id, &record)
            .await
    }

    /// [`Queue::bury`] with the dead letter already encoded (a settlement retried until it
    /// lands encodes it once).
    pub(crate) async fn bury_encoded(
        &self,
        worker_id: &str,
        fetched: &[u8],
        job_id: &str,
        record: &str,
    ) -> Result<bool, QueueError> {
        let n: u64 = SCRIPTS
            .dead
            .key(self.keys.inflight(worker_id))
            .key(self.keys.dead())
            .key(self.keys.dead_index())
            .key(self.keys.stats())
            .arg(fetched)
            .arg(job_id)
            .arg(record)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    /// Records that `worker_id` is alive now, by Redis's clock. Returns Redis's time (ms).
    pub async fn heartbeat(&self, worker_id: &str) -> Result<u64, QueueError> {
        Ok(SCRIPTS
            .heartbeat
            .key(self.keys.workers())
            .arg(worker_id)
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    /// [`Queue::heartbeat`] that also writes the worker's registry record (`fields`), which
    /// then lives `ttl` (a lease) unless the next heartbeat renews it.
    pub async fn heartbeat_with(
        &self,
        worker_id: &str,
        ttl: Duration,
        fields: &[(&str, String)],
    ) -> Result<u64, QueueError> {
        let mut inv = SCRIPTS.heartbeat.key(self.keys.workers());
        inv.key(self.keys.worker_info(worker_id))
            .arg(worker_id)
            .arg(ttl.as_millis().max(1) as u64);
        for (name, value) in fields {
            inv.arg(*name).arg(value);
        }
        Ok(inv.invoke_async(&mut self.conn.clone()).await?)
    }

    /// The registry records of this role's live workers (heartbeat within `lease`), by id.
    pub async fn registered_workers(
        &self,
        lease: Duration,
    ) -> Result<Vec<std::collections::BTreeMap<String, String>>, QueueError> {
        let ids = self.live_workers(lease).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.keys.worker_info(id));
        }
        let records: Vec<std::collections::BTreeMap<String, String>> =
            pipe.query_async(&mut self.conn.clone()).await?;
        Ok(ids
            .into_iter()
            .zip(records)
            .filter(|(_, r)| !r.is_empty())
            .map(|(id, mut r)| {
                r.insert("id".to_owned(), id);
                r
            })
            .collect())
    }

    /// Workers other than `asking_worker` whose heartbeat is older than `lease` by Redis's
    /// clock (at most 100).
    pub async fn expired_workers(
        &self,
        lease: Duration,
        asking_worker: &str,
    ) -> Result<Vec<String>, QueueError> {
        Ok(SCRIPTS
            .expired_workers
            .key(self.keys.workers())
            .arg(lease.as_millis() as u64)
            .arg(100)
            .arg(asking_worker)
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    /// Takes back the entries of every worker (other than `asking_worker`) whose heartbeat
    /// is older than `lease` by Redis's clock.
    pub async fn recover_expired(
        &self,
        lease: Duration,
        max_attempts: u32,
        asking_worker: &str,
    ) -> Result<RecoveryReport, QueueError> {
        let expired = self.expired_workers(lease, asking_worker).await?;
        let mut report = RecoveryReport::default();
        for worker in expired {
            if let Some(jobs) = self
                .recover_worker(&worker, lease, max_attempts, asking_worker)
                .await?
            {
                report.requeued += jobs.requeued;
                report.dead.extend(jobs.dead);
                report.workers.push(worker);
            }
        }
        Ok(report)
    }

    /// Takes back the entries of `worker` if its heartbeat is still older than `lease`
    /// (checked again, atomically, by Redis's clock). Returns (requeued, dead-lettered job
    /// ids), or `None` when it turned out alive (or is `asking_worker`).
    pub async fn recover_worker(
        &self,
        worker: &str,
        lease: Duration,
        max_attempts: u32,
        asking_worker: &str,
    ) -> Result<Option<RecoveredJobs>, QueueError> {
        let out: Vec<redis::Value> = SCRIPTS
            .recover
            .key(self.keys.workers())
            .key(self.keys.inflight(worker))
            .key(self.keys.claim(worker))
            .key(&self.lane_keys()[..])
            .key(self.keys.dead())
            .key(self.keys.dead_index())
            .key(self.keys.stats())
            .arg(worker)
            .arg(lease.as_millis() as u64)
            .arg(max_attempts)
            .arg(&self.role)
            .arg(asking_worker)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let mut values = out.into_iter();
        let requeued: i64 = values
            .next()
            .map(|v| redis::from_redis_value(v).unwrap_or(-1))
            .unwrap_or(-1);
        let Ok(requeued) = u64::try_from(requeued) else {
            return Ok(None); // it heartbeated in the meantime
        };
        let dead_count: usize = values
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or(0);
        let ids: Vec<String> = values
            .filter_map(|v| redis::from_redis_value::<String>(v).ok())
            .collect();
        let dead = ids.iter().take(dead_count).cloned().collect();
        let back = ids.into_iter().skip(dead_count).collect();
        Ok(Some(RecoveredJobs {
            requeued,
            dead,
            requeued_ids: back,
        }))
    }

    /// Gives back everything `worker_id` holds and unregisters it (graceful shutdown).
    pub async fn hand_back(&self, worker_id: &str) -> Result<u64, QueueError> {
        let n = SCRIPTS
            .handback
            .key(self.keys.inflight(worker_id))
            .key(self.keys.claim(worker_id))
            .key(self.keys.workers())
            .key(&self.lane_keys()[..])
            .arg(worker_id)
            .invoke_async(&mut self.conn.clone())
            .await?;
        // Leaving the registry at once (a killed worker's record expires within a lease).
        let _: i64 = self
            .conn
            .clone()
            .del(self.keys.worker_info(worker_id))
            .await?;
        Ok(n)
    }

    /// Moves due retries (by Redis's clock) onto the pending list. Returns (moved, time
    /// until the next one is due).
    pub async fn promote_due(&self) -> Result<(u64, Option<Duration>), QueueError> {
        let (moved, wait_ms): (u64, i64) = SCRIPTS
            .promote
            .key(self.keys.scheduled())
            .key(&self.lane_keys()[..])
            .arg(MAINTENANCE_CHUNK)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((
            moved,
            u64::try_from(wait_ms).ok().map(Duration::from_millis),
        ))
    }

    /// Drops dead letters that died before `retention` ago.
    pub async fn expire_dead_letters(&self, retention: Duration) -> Result<u64, QueueError> {
        Ok(SCRIPTS
            .expire_dead
            .key(self.keys.dead())
            .key(self.keys.dead_index())
            .arg(retention.as_millis() as u64)
            .arg(MAINTENANCE_CHUNK)
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    /// Reads every count, summed over the shards: one round trip per shard.
    pub async fn counts(&self, lease: Duration) -> Result<QueueCounts, QueueError> {
        if self.shard_count() == 1 {
            return self.shard_counts(lease).await;
        }
        let mut total = QueueCounts::default();
        for shard in self.shards() {
            total.add(&shard.shard_counts(lease).await?);
        }
        Ok(total)
    }

    /// The counts of each shard, in shard order (`agentfleet queues --json`).
    pub async fn counts_per_shard(&self, lease: Duration) -> Result<Vec<QueueCounts>, QueueError> {
        let mut out = Vec::with_capacity(self.shard_count());
        for shard in self.shards() {
            out.push(shard.shard_counts(lease).await?);
        }
        Ok(out)
    }

    /// The pinned shard's counts, in one round trip.
    pub async fn shard_counts(&self, lease: Duration) -> Result<QueueCounts, QueueError> {
        let mut conn = self.conn.clone();
        let lanes = self.lane_keys();
        #[allow(clippy::type_complexity)]
        let (
            (secs, micros),
            high,
            normal,
            low,
            scheduled,
            dead,
            stats,
            workers,
            oldest_high,
            oldest_normal,
            oldest_low,
        ): (
            (u64, u64),
            u64,
            u64,
            u64,
            u64,
            u64,
            std::collections::HashMap<String, u64>,
            Vec<(String, f64)>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
        ) = redis::pipe()
            .cmd("TIME")
            .llen(&lanes[0])
            .llen(&lanes[1])
            .llen(&lanes[2])
            .zcard(self.keys.scheduled())
            .hlen(self.keys.dead())
            .hgetall(self.keys.stats())
            .zrange_withscores(self.keys.workers(), 0, -1)
            .lindex(&lanes[0], -1)
            .lindex(&lanes[1], -1)
            .lindex(&lanes[2], -1)
            .query_async(&mut conn)
            .await?;
        let mut in_flight = 0;
        if !workers.is_empty() {
            let mut pipe = redis::pipe();
            for (worker, _) in &workers {
                pipe.hlen(self.keys.inflight(worker));
                pipe.llen(self.keys.claim(worker));
            }
            let sizes: Vec<u64> = pipe.query_async(&mut conn).await?;
            in_flight = sizes.iter().sum();
        }
        // Liveness is judged by Redis's clock, as recovery judges it.
        let redis_now = secs * 1000 + micros / 1000;
        let live_since = redis_now.saturating_sub(lease.as_millis() as u64);
        let oldest_pending_age_ms = [oldest_high, oldest_normal, oldest_low]
            .into_iter()
            .flatten()
            .filter_map(|raw| {
                #[derive(serde::Deserialize)]
                struct Enqueued {
                    enqueued_at_ms: u64,
                }
                serde_json::from_slice::<Enqueued>(&raw)
                    .ok()
                    .map(|e| redis_now.saturating_sub(e.enqueued_at_ms))
            })
            .max();
        Ok(QueueCounts {
            pending: high + normal + low,
            pending_high: high,
            pending_normal: normal,
            pending_low: low,
            in_flight,
            scheduled,
            dead,
            succeeded: stats.get("succeeded").copied().unwrap_or(0),
            retried: stats.get("retried").copied().unwrap_or(0),
            deferred: stats.get("deferred").copied().unwrap_or(0),
            recovered: stats.get("recovered").copied().unwrap_or(0),
            dead_lettered: stats.get("dead").copied().unwrap_or(0),
            live_workers: workers
                .iter()
                .filter(|(_, hb)| *hb as u64 >= live_since)
                .count() as u64,
            oldest_pending_age_ms,
        })
    }

    /// Ids of every job this queue holds waiting or running, in any shard: pending in any
    /// lane, scheduled, or in flight with a registered worker. For audits (`agentfleet tasks
    /// --stalled`): it reads whole lists, and not atomically, so an entry moving while it is
    /// read can be missed; a caller that finds a job missing looks again before it says so.
    pub async fn waiting_or_running_job_ids(&self) -> Result<HashSet<String>, QueueError> {
        let mut ids = HashSet::new();
        for shard in self.shards() {
            ids.extend(shard.shard_job_ids().await?);
        }
        Ok(ids)
    }

    /// [`Queue::waiting_or_running_job_ids`] of this queue's own shard.
    async fn shard_job_ids(&self) -> Result<HashSet<String>, QueueError> {
        let mut conn = self.conn.clone();
        let lanes = self.lane_keys();
        type Entries = Vec<Vec<u8>>;
        let (high, normal, low, scheduled, workers): (
            Entries,
            Entries,
            Entries,
            Entries,
            Vec<String>,
        ) = redis::pipe()
            .lrange(&lanes[0], 0, -1)
            .lrange(&lanes[1], 0, -1)
            .lrange(&lanes[2], 0, -1)
            .zrange(self.keys.scheduled(), 0, -1)
            .zrange(self.keys.workers(), 0, -1)
            .query_async(&mut conn)
            .await?;
        let mut entries: Vec<Vec<u8>> = [high, normal, low, scheduled].concat();
        if !workers.is_empty() {
            let mut pipe = redis::pipe();
            for worker in &workers {
                pipe.hkeys(self.keys.inflight(worker));
                pipe.lrange(self.keys.claim(worker), 0, -1);
            }
            let held: Vec<Vec<Vec<u8>>> = pipe.query_async(&mut conn).await?;
            entries.extend(held.into_iter().flatten());
        }
        Ok(entries
            .iter()
            .filter_map(|raw| agentfleet_job::peek_id(raw))
            .collect())
    }

    /// Dead letters of every shard, newest first: `offset`, `limit` for pagination (one
    /// listing: the shards' indexes merged by time).
    pub async fn dead_letters(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        if self.shard_count() == 1 {
            let ids: Vec<String> = conn
                .zrevrange(
                    self.keys.dead_index(),
                    offset as isize,
                    (offset + limit) as isize - 1,
                )
                .await?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let raw: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(self.keys.dead())
                .arg(&ids)
                .query_async(&mut conn)
                .await?;
            return raw
                .into_iter()
                .flatten()
                .map(|json| self.parse_dead_letter(&json))
                .collect();
        }
        // (time, shard, id): each shard's newest offset+limit, merged.
        let mut listed: Vec<(f64, usize, String)> = Vec::new();
        for (k, keys) in self.shard_keys.iter().enumerate() {
            let ids: Vec<(String, f64)> = conn
                .zrevrange_withscores(keys.dead_index(), 0, (offset + limit) as isize - 1)
                .await?;
            listed.extend(ids.into_iter().map(|(id, at)| (at, k, id)));
        }
        listed.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| b.2.cmp(&a.2)));
        let page: Vec<(f64, usize, String)> = listed.into_iter().skip(offset).take(limit).collect();
        let mut letters = Vec::with_capacity(page.len());
        for (_, k, id) in page {
            let raw: Option<String> = conn.hget(self.shard_keys[k].dead(), &id).await?;
            if let Some(json) = raw {
                letters.push(self.parse_dead_letter(&json)?);
            }
        }
        Ok(letters)
    }

    /// Every dead letter id of every shard, oldest first.
    pub async fn dead_letter_ids(&self) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        if self.shard_count() == 1 {
            return Ok(conn.zrange(self.keys.dead_index(), 0, -1).await?);
        }
        let mut listed: Vec<(String, f64)> = Vec::new();
        for keys in self.shard_keys.iter() {
            let ids: Vec<(String, f64)> = conn.zrange_withscores(keys.dead_index(), 0, -1).await?;
            listed.extend(ids);
        }
        listed.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        Ok(listed.into_iter().map(|(id, _)| id).collect())
    }

    /// The dead letter `job_id`, from whichever shard holds it.
    pub async fn dead_letter(&self, job_id: &str) -> Result<Option<DeadLetter>, QueueError> {
        for keys in self.shard_keys.iter() {
            let raw: Option<String> = self.conn.clone().hget(keys.dead(), job_id).await?;
            if let Some(json) = raw {
                return self.parse_dead_letter(&json).map(Some);
            }
        }
        Ok(None)
    }

    fn parse_dead_letter(&self, json: &str) -> Result<DeadLetter, QueueError> {
        serde_json::from_str(json).map_err(|e| QueueError::Corrupt {
            key: self.keys.dead(),
            reason: e.to_string(),
        })
    }

    /// Re-enqueues dead letters given as (job id, entry with its attempts reset). Each is
    /// replayed at most once, however often this is called. Returns the ids replayed.
    /// With several shards each is replayed on the shard that holds it (the one its task's
    /// jobs go to): the script runs on every shard and acts only where the letter is.
    pub async fn replay(&self, entries: &[(String, String)]) -> Result<Vec<String>, QueueError> {
        if self.shard_count() > 1 {
            let mut replayed = Vec::new();
            for shard in self.shards() {
                replayed.extend(shard.replay_here(entries).await?);
            }
            return Ok(replayed);
        }
        self.replay_here(entries).await
    }

    /// [`Queue::replay`] on the pinned shard.
    async fn replay_here(&self, entries: &[(String, String)]) -> Result<Vec<String>, QueueError> {
        let mut replayed = Vec::new();
        for chunk in entries.chunks(500) {
            let mut inv = SCRIPTS.replay.key(self.keys.dead());
            inv.key(self.keys.dead_index()).key(&self.lane_keys()[..]);
            for (id, entry) in chunk {
                inv.arg(id).arg(entry);
            }
            let ids: Vec<String> = inv.invoke_async(&mut self.conn.clone()).await?;
            replayed.extend(ids);
        }
        Ok(replayed)
    }

    /// Deletes dead letters, from whichever shard holds each. Returns how many existed.
    pub async fn purge(&self, job_ids: &[String]) -> Result<u64, QueueError> {
        let mut purged = 0;
        for keys in self.shard_keys.iter() {
            for chunk in job_ids.chunks(1_000) {
                let mut inv = SCRIPTS.purge.key(keys.dead());
                inv.key(keys.dead_index());
                for id in chunk {
                    inv.arg(id);
                }
                purged += inv.invoke_async::<u64>(&mut self.conn.clone()).await?;
            }
        }
        Ok(purged)
    }

    /// Ids of live workers (heartbeat within `lease`, by Redis's clock).
    pub async fn live_workers(&self, lease: Duration) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let since = (secs * 1000 + micros / 1000).saturating_sub(lease.as_millis() as u64);
        Ok(conn
            .zrangebyscore(self.keys.workers(), since, "+inf")
            .await?)
    }
}

/// Sends a pipeline built with [`Queue::add_push`] and sums the script replies. When Redis
/// lost the script (a restart or a flush), no push of the pipeline ran (it is all script or
/// no script), so it is loaded and the pipeline sent again; the other commands in it are
/// plain writes (records) that are safe to repeat.
async fn send_push_pipeline(
    conn: &mut RedisConnection,
    pipe: &redis::Pipeline,
) -> Result<u64, QueueError> {
    let counts: Vec<u64> = match pipe.query_async(conn).await {
        Ok(counts) => counts,
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            SCRIPTS.push.load_async(conn).await?;
            pipe.query_async(conn).await?
        }
        Err(e) => return Err(e.into()),
    };
    Ok(counts.iter().sum())
}

/// What [`Queue::enqueue_idempotent`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// The task was created with this id.
    New(String),
    /// Its idempotency key was in use: nothing was written; the task that holds the key.
    Existing(String),
}

/// The `id` of an entry (the value its idempotency key holds); entries that carry none
/// (not envelopes) store a bare marker.
fn entry_id(entry: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_str::<Id>(entry)
        .map(|i| i.id)
        .unwrap_or_else(|_| "1".to_owned())
}

/// The lane of an entry, read as the scripts read it (`lane_of` in the prelude): the
/// `"lane":"…"` right after the attempt prefix, else normal.
pub fn lane_of(entry: &str) -> agentfleet_job::Lane {
    use agentfleet_job::Lane;
    let rest = entry
        .strip_prefix("{\"attempt\":")
        .map(|r| r.trim_start_matches(|c: char| c.is_ascii_digit()));
    match rest {
        Some(r) if r.starts_with(",\"lane\":\"high\"") => Lane::High,
        Some(r) if r.starts_with(",\"lane\":\"low\"") => Lane::Low,
        _ => Lane::Normal,
    }
}

fn lane_index(lane: agentfleet_job::Lane) -> usize {
    match lane {
        agentfleet_job::Lane::High => 0,
        agentfleet_job::Lane::Normal => 1,
        agentfleet_job::Lane::Low => 2,
    }
}

/// Default lifetime of an idempotency key: long enough to cover any retry of a push (client
/// retries, crash-recovered re-runs of the job that pushed), short enough that keys do not
/// pile up.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// A job id for entries that carry none (undecodable bytes): `unreadable-<SHA-1 hex>`, as
/// `recover.lua` names them (`redis.sha1hex`), so an entry has one id wherever it dies.
pub fn unreadable_id(raw: &[u8]) -> String {
    format!("unreadable-{}", sha1_smol::Sha1::from(raw).digest())
}

#[cfg(test)]
mod tests {
    #[test]
    fn lanes_are_read_from_the_entry_prefix() {
        use agentfleet_job::{Envelope, Lane};
        for lane in Lane::ALL {
            let entry = Envelope::new("x", serde_json::json!({"a": "\"lane\":\"high\""}))
                .in_lane(lane)
                .encode();
            assert_eq!(super::lane_of(&entry), lane, "{entry}");
        }
        assert_eq!(super::lane_of("garbage"), Lane::Normal);
    }

    #[test]
    fn shards_are_fnv1a_of_the_routing_key() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c: the documented, stable rule.
        for n in [2usize, 3, 7, 64] {
            assert_eq!(
                super::shard_of("a", n),
                (0xaf63_dc4c_8601_ec8c_u64 % n as u64) as usize
            );
        }
        assert_eq!(super::shard_of("anything", 1), 0);
        let mut seen = [0usize; 4];
        for i in 0..4_000 {
            seen[super::shard_of(&format!("01J{i:023}"), 4)] += 1;
        }
        assert!(seen.iter().all(|n| *n > 800), "{seen:?}");
    }

    #[test]
    fn unreadable_ids_are_the_sha1_redis_computes() {
        // redis-cli EVAL "return redis.sha1hex(ARGV[1])" 0 'not json'
        assert_eq!(
            super::unreadable_id(b"not json"),
            "unreadable-ed0d1292643d9ed818d9a191829b0f419867f874"
        );
    }
}
