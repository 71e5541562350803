//! One scenario's world: a scratch namespace, the worker processes started in it, and the
//! tasks it is filled with.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentfleet_job::{Lane, TaskSpec};
use agentfleet_queue::RedisConnection;
use agentfleet_queue::{Namespace, NewTask, PushEntry, Queue, TaskControl, TaskStore};
use agentfleet_testkit::{ScratchNamespace, find_bin, stop_process};
use anyhow::{Context, bail};
use redis::AsyncCommands;

use crate::scenarios::Bench;
use crate::{POLL, PROMPT, STALL};

/// One worker process of a scenario.
pub(crate) struct Worker {
    child: Child,
    binary: String,
    log: PathBuf,
}

impl Worker {
    /// Fails when the process has exited, with the end of its log.
    pub(crate) fn check(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            bail!(
                "{} exited early ({status}); log {}:\n{tail}",
                self.binary,
                self.log.display()
            );
        }
        Ok(())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        stop_process(&mut self.child, Duration::from_secs(5));
    }
}

/// One scenario's world: a fresh namespace and the workers started in it. Dropping it (also
/// on error or Ctrl-C) stops the workers, then deletes every key of the namespace.
pub(crate) struct Scratch {
    pub(crate) scenario: &'static str,
    pub(crate) ns: Namespace,
    pub(crate) conn: RedisConnection,
    pub(crate) logs: PathBuf,
    pub(crate) workers: Vec<Worker>,
    /// Shards of every role's queue (`--shards`; the cluster scenarios use more than one).
    pub(crate) shards: usize,
    /// Deletes the namespace's keys; dropped after the workers (see `Drop`).
    pub(crate) scratch: ScratchNamespace,
}

impl Scratch {
    pub(crate) fn new(bench: &Bench, scenario: &'static str) -> anyhow::Result<Self> {
        let scratch = ScratchNamespace::new("bench", bench.redis.clone())?;
        Ok(Self {
            scenario,
            ns: scratch.namespace().clone(),
            conn: bench.conn.clone(),
            logs: bench.logs.clone(),
            workers: Vec::new(),
            shards: 1,
            scratch,
        })
    }

    /// The same world with `shards` shards per queue: pushes spread over them, the no-op
    /// workers fetch from all, counters are summed.
    pub(crate) fn with_shards(mut self, shards: usize) -> Self {
        self.shards = shards.max(1);
        self
    }

    pub(crate) fn queue(&self, role: &str) -> anyhow::Result<Queue> {
        Ok(Queue::new(self.conn.clone(), &self.ns, role)?.with_shards(&self.ns, self.shards)?)
    }

    pub(crate) fn store(&self) -> TaskStore {
        // Long enough to outlive any scenario; the namespace is deleted afterwards anyway.
        TaskStore::new(
            self.conn.clone(),
            self.ns.clone(),
            Duration::from_secs(3600),
        )
    }

    /// Starts `<role>-worker` (the role's real binary, with the mock provider) with the
    /// scenario's Redis and namespace.
    pub(crate) fn spawn(&mut self, role: &str, args: &[&str]) -> anyhow::Result<u32> {
        let mut all = vec!["--metrics-addr", "127.0.0.1:0", "--provider", "mock"];
        all.extend_from_slice(args);
        self.start(&format!("{role}-worker"), role, &all)
    }

    /// Starts `bench-noop-worker --role <role>`: the queue alone, acknowledging every job
    /// without a handler or a record (what the drain-noop scenarios measure).
    pub(crate) fn spawn_noop(&mut self, role: &str, concurrency: u64) -> anyhow::Result<u32> {
        let concurrency = concurrency.to_string();
        let shards = self.shards.to_string();
        self.start(
            "bench-noop-worker",
            role,
            &[
                "--role",
                role,
                "--concurrency",
                &concurrency,
                "--shards",
                &shards,
            ],
        )
    }

    /// Starts `binary` from this executable's directory with the scenario's Redis and
    /// namespace. Inherited `AGENTFLEET_*` variables are dropped so that nothing in the
    /// caller's environment (a fail rate, a real provider) changes what is measured.
    fn start(&mut self, binary: &str, role: &str, args: &[&str]) -> anyhow::Result<u32> {
        let bin = find_bin(binary).context(
            "build the workers next to agentfleet (`cargo build --release --bins`, as `make bench` does)",
        )?;
        let log = self.logs.join(format!(
            "{}-{}-{role}-{}.log",
            self.scenario,
            self.ns,
            self.workers.len()
        ));
        let log_file =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(&bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AGENTFLEET_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            // A stopped bench worker hands its jobs back at once instead of waiting 30 s.
            .args(["--shutdown-grace-secs", "1"])
            .args(args)
            .envs(self.scratch.redis().to_env())
            .env("AGENTFLEET_NAMESPACE", self.ns.as_str())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id();
        self.workers.push(Worker {
            child,
            binary: binary.to_owned(),
            log,
        });
        Ok(pid)
    }

    /// Stops every worker of the scenario (SIGTERM, then SIGKILL after 5 s).
    pub(crate) fn stop_workers(&mut self) {
        self.workers.clear();
    }

    pub(crate) fn check_workers(&mut self) -> anyhow::Result<()> {
        self.workers.iter_mut().try_for_each(Worker::check)
    }

    /// A counter of `role`'s queue, summed over its shards.
    pub(crate) async fn stat(&self, role: &str, field: &str) -> anyhow::Result<u64> {
        let mut total = 0;
        for queue in self.queue(role)?.shards() {
            let v: Option<u64> = self.conn.clone().hget(queue.keys().stats(), field).await?;
            total += v.unwrap_or(0);
        }
        Ok(total)
    }

    /// Polls `role`'s `succeeded` counter every 20 ms until it reaches `n`; returns when it
    /// was seen there. Fails when a worker exits or the counter stops moving.
    pub(crate) async fn wait_succeeded(&mut self, role: &str, n: u64) -> anyhow::Result<Instant> {
        let mut last = (u64::MAX, Instant::now());
        loop {
            let done = self.stat(role, "succeeded").await?;
            if done >= n {
                return Ok(Instant::now());
            }
            self.check_workers()?;
            if done != last.0 {
                last = (done, Instant::now());
            } else if last.1.elapsed() > STALL {
                bail!("{role}: stuck at {done} of {n} jobs for {STALL:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `role` has a registered worker (it heartbeats as it starts).
    pub(crate) async fn wait_registered(&mut self, role: &str) -> anyhow::Result<()> {
        let key = self.ns.queue(role)?.workers();
        let started = Instant::now();
        loop {
            let n: u64 = self.conn.clone().zcard(&key).await?;
            if n > 0 {
                return Ok(());
            }
            self.check_workers()?;
            if started.elapsed() > Duration::from_secs(15) {
                bail!("no {role} worker registered within 15 s");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Numeric fields of task records, one pipelined round trip per 1,000 tasks.
    pub(crate) async fn record_fields(
        &self,
        ids: &[String],
        fields: &[&str],
    ) -> anyhow::Result<Vec<Vec<Option<u64>>>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1_000) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HMGET").arg(self.ns.task(id)).arg(fields);
            }
            let rows: Vec<Vec<Option<String>>> = pipe.query_async(&mut self.conn.clone()).await?;
            out.extend(rows.into_iter().map(|row| {
                row.into_iter()
                    .map(|v| v.and_then(|s| s.parse().ok()))
                    .collect()
            }));
        }
        Ok(out)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Workers first: one still running would hand jobs back into deleted keys.
        self.stop_workers();
        if let Err(e) = self.scratch.delete() {
            eprintln!(
                "agentfleet bench: could not delete namespace {}: {e}",
                self.ns
            );
        }
    }
}

/// A task exactly as `agentfleet enqueue` makes it (trace context included).
pub(crate) fn new_task() -> NewTask {
    NewTask::new(
        TaskSpec {
            prompt: PROMPT.to_owned(),
            metadata: Default::default(),
        },
        None,
        &agentfleet_job::Pipeline::default(),
    )
}

/// Bare reasoning entries (no records: the no-op drain never reads them), spread evenly
/// over `lanes`, built and pushed 50,000 at a time so that a 1M backlog never sits in this
/// process at once.
pub(crate) async fn prefill_entries(queue: &Queue, n: u64, lanes: &[Lane]) -> anyhow::Result<()> {
    let mut left = n;
    while left > 0 {
        let k = left.min(50_000);
        let entries: Vec<PushEntry> = (0..k)
            .map(|i| {
                let lane = lanes[i as usize % lanes.len()];
                NewTask::with_control(
                    TaskSpec {
                        prompt: PROMPT.to_owned(),
                        metadata: Default::default(),
                    },
                    None,
                    &agentfleet_job::Pipeline::default(),
                    TaskControl {
                        lane,
                        ..TaskControl::default()
                    },
                )
                .push
            })
            .collect();
        queue.push_many(&entries).await.context("prefill failed")?;
        left -= k;
    }
    Ok(())
}

/// Tasks with records, as the producer enqueues them. Returns their ids.
pub(crate) async fn prefill_tasks(
    queue: &Queue,
    store: &TaskStore,
    n: u64,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n as usize);
    let mut left = n;
    while left > 0 {
        let k = left.min(20_000);
        let tasks: Vec<NewTask> = (0..k).map(|_| new_task()).collect();
        queue
            .enqueue_tasks(store, &tasks)
            .await
            .context("prefill failed")?;
        ids.extend(tasks.into_iter().map(|t| t.task_id));
        left -= k;
    }
    Ok(ids)
}

/// Field `i` of a record row from [`Scratch::record_fields`] (None when absent).
pub(crate) fn field(row: &[Option<u64>], i: usize) -> Option<u64> {
    row.get(i).copied().flatten()
}
