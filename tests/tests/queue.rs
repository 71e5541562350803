//! The queue backend against a real Redis, without worker processes: the guarantees of
//! issue "queue backend", one test each.

use std::collections::HashSet;
use std::time::Duration;

use agentfleet_e2e::{Fleet, PrivateRedis};
use agentfleet_job::{Envelope, ErrorClass};
use agentfleet_queue::{ConnectOptions, DeadLetter, Namespace, PushEntry, Queue, connect};

fn queue(fleet: &Fleet, role: &str) -> Queue {
    let conn = connect(&fleet.redis, &ConnectOptions::default()).expect("connect");
    Queue::new(conn, &Namespace::new(&fleet.namespace).unwrap(), role).unwrap()
}

fn entry(id: usize) -> PushEntry {
    PushEntry {
        entry: Envelope::new(format!("job-{id}"), serde_json::json!({"n": id})).encode(),
        idempotency_key: None,
        due_ms: None,
    }
}

fn job_id(raw: &[u8]) -> String {
    Envelope::<serde_json::Value>::decode(raw)
        .expect("envelope")
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50k_backlog_drains_with_concurrent_fetchers_and_no_double_delivery() {
    let fleet = Fleet::new("q-drain");
    let q = queue(&fleet, "work");
    let entries: Vec<PushEntry> = (0..50_000).map(entry).collect();
    assert_eq!(q.push_many(&entries).await.unwrap(), 50_000);
    assert_eq!(
        q.counts(Duration::from_secs(30)).await.unwrap().pending,
        50_000
    );

    let mut fetchers = Vec::new();
    for f in 0..4 {
        let q = q.clone();
        fetchers.push(tokio::spawn(async move {
            let worker = format!("fetcher-{f}");
            let mut seen = Vec::new();
            loop {
                let batch = q.fetch(&worker, 250).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                seen.extend(batch.iter().map(|raw| job_id(raw)));
                q.ack(&worker, &batch).await.unwrap();
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for f in fetchers {
        all.extend(f.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 50_000, "every job delivered");
    assert_eq!(unique.len(), 50_000, "no job delivered twice");
    let counts = q.counts(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        (counts.pending, counts.in_flight, counts.succeeded),
        (0, 0, 50_000)
    );
}

#[tokio::test]
async fn deliveries_are_counted_in_the_entry() {
    let fleet = Fleet::new("q-count");
    let q = queue(&fleet, "work");
    q.push(entry(1)).await.unwrap();
    let got = q.fetch("w", 10).await.unwrap();
    let env: Envelope<serde_json::Value> = Envelope::decode(&got[0]).unwrap();
    assert_eq!(env.attempt, 1);
    assert_eq!(env.id, "job-1");
}

#[tokio::test]
async fn a_silent_workers_jobs_are_recovered_after_the_lease_and_dead_lettered_past_max() {
    let fleet = Fleet::new("q-recover");
    let q = queue(&fleet, "work");
    let lease = Duration::from_millis(500);
    for i in 0..10 {
        q.push(entry(i)).await.unwrap();
    }
    let held = q.fetch("silent", 10).await.unwrap();
    assert_eq!(held.len(), 10);
    // Within the lease nothing is taken back.
    let early = q.recover_expired(lease, 2, "recoverer").await.unwrap();
    assert!(early.workers.is_empty());
    assert_eq!(q.counts(lease).await.unwrap().in_flight, 10);

    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let report = q.recover_expired(lease, 2, "recoverer").await.unwrap();
    assert_eq!(report.workers, vec!["silent".to_owned()]);
    assert_eq!(report.requeued, 10);
    assert!(report.dead.is_empty());

    // Second delivery, and that worker dies too: past max attempts (2) → dead letters.
    let again = q.fetch("silent-too", 10).await.unwrap();
    assert_eq!(again.len(), 10);
    assert!(
        again
            .iter()
            .all(|raw| Envelope::<serde_json::Value>::decode(raw).unwrap().attempt == 2)
    );
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let report = q.recover_expired(lease, 2, "recoverer").await.unwrap();
    assert_eq!(report.requeued, 0);
    assert_eq!(report.dead.len(), 10);
    let letters = q.dead_letters(0, 100).await.unwrap();
    assert_eq!(letters.len(), 10);
    assert!(
        letters
            .iter()
            .all(|l| l.error_class == ErrorClass::Crash && l.attempts == 2)
    );
    let counts = q.counts(lease).await.unwrap();
    assert_eq!((counts.pending, counts.in_flight, counts.dead), (0, 0, 10));
}

#[tokio::test]
async fn a_worker_that_heartbeats_keeps_its_jobs() {
    let fleet = Fleet::new("q-alive");
    let q = queue(&fleet, "work");
    let lease = Duration::from_millis(300);
    q.push(entry(1)).await.unwrap();
    assert_eq!(q.fetch("alive", 1).await.unwrap().len(), 1);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        q.heartbeat("alive").await.unwrap();
        assert!(
            q.recover_expired(lease, 5, "recoverer")
                .await
                .unwrap()
                .workers
                .is_empty()
        );
    }
    assert_eq!(q.counts(lease).await.unwrap().in_flight, 1);
    // Another worker finds nothing to take: no job is delivered to two live workers.
    assert!(q.fetch("other", 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_retried_idempotent_push_does_not_duplicate() {
    let fleet = Fleet::new("q-idem");
    let q = queue(&fleet, "work");
    let guarded = |id| PushEntry {
        idempotency_key: Some(format!("key-{id}")),
        ..entry(id)
    };
    assert!(q.push(guarded(1)).await.unwrap());
    assert!(
        !q.push(guarded(1)).await.unwrap(),
        "second push with the same key is a no-op"
    );
    let batch: Vec<PushEntry> = (0..100).map(guarded).collect();
    assert_eq!(
        q.push_many(&batch).await.unwrap(),
        99,
        "key-1 was used already"
    );
    assert_eq!(
        q.push_many(&batch).await.unwrap(),
        0,
        "a retried bulk push adds nothing"
    );
    assert_eq!(
        q.counts(Duration::from_secs(30)).await.unwrap().pending,
        100
    );
}

#[tokio::test]
async fn retries_wait_in_the_scheduled_set_until_due() {
    let fleet = Fleet::new("q-retry");
    let q = queue(&fleet, "work");
    q.push(entry(1)).await.unwrap();
    let got = q.fetch("w", 1).await.unwrap();
    let due = Duration::from_millis(300);
    assert!(
        q.retry("w", &got[0], &String::from_utf8_lossy(&got[0]), due)
            .await
            .unwrap()
    );
    // Retrying again with the same fetched entry: this worker no longer holds it.
    assert!(!q.retry("w", &got[0], "x", due).await.unwrap());
    let counts = q.counts(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        (counts.pending, counts.scheduled, counts.in_flight),
        (0, 1, 0)
    );
    assert_eq!(q.promote_due().await.unwrap().0, 0, "not due yet");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(q.promote_due().await.unwrap().0, 1);
    let again = q.fetch("w", 1).await.unwrap();
    assert_eq!(
        Envelope::<serde_json::Value>::decode(&again[0])
            .unwrap()
            .attempt,
        2
    );
}

#[tokio::test]
async fn dead_letters_list_replay_once_and_purge() {
    let fleet = Fleet::new("q-dlq");
    let q = queue(&fleet, "work");
    for i in 0..5 {
        q.push(entry(i)).await.unwrap();
    }
    let got = q.fetch("w", 5).await.unwrap();
    for (i, raw) in got.iter().enumerate() {
        let letter = DeadLetter {
            job_id: job_id(raw),
            role: "work".into(),
            payload: String::from_utf8_lossy(raw).into_owned(),
            error_class: ErrorClass::Permanent,
            error: "no".into(),
            attempts: 1,
            first_failed_at_ms: 1,
            last_failed_at_ms: 1,
            worker_id: "w".into(),
            dead_at_ms: 1_000 + i as u64,
        };
        assert!(q.bury("w", raw, &letter).await.unwrap());
    }
    let page1 = q.dead_letters(0, 2).await.unwrap();
    let page2 = q.dead_letters(2, 2).await.unwrap();
    let page3 = q.dead_letters(4, 2).await.unwrap();
    assert_eq!((page1.len(), page2.len(), page3.len()), (2, 2, 1));
    assert_eq!(page1[0].dead_at_ms, 1_004, "newest first");
    let one = q.dead_letter("job-3").await.unwrap().expect("get one");
    assert_eq!(one.error, "no");

    let replay = vec![
        ("job-0".to_owned(), entry(0).entry),
        ("job-1".to_owned(), entry(1).entry),
    ];
    assert_eq!(q.replay(&replay).await.unwrap().len(), 2);
    assert!(
        q.replay(&replay).await.unwrap().is_empty(),
        "replaying twice enqueues once"
    );
    let counts = q.counts(Duration::from_secs(30)).await.unwrap();
    assert_eq!((counts.pending, counts.dead), (2, 3));
    assert_eq!(
        q.purge(&["job-2".to_owned(), "nope".to_owned()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(q.dead_letter_ids().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_drain_loses_no_acknowledged_state() {
    let mut redis = PrivateRedis::start();
    let fleet = Fleet::on("q-restart", &redis.url());
    let q = queue(&fleet, "work");
    let entries: Vec<PushEntry> = (0..5_000).map(entry).collect();
    q.push_many(&entries).await.unwrap();
    let mut acked = HashSet::new();
    for _ in 0..4 {
        let batch = q.fetch("w", 250).await.unwrap();
        q.ack("w", &batch).await.unwrap();
        acked.extend(batch.iter().map(|raw| job_id(raw)));
    }
    redis.stop();
    assert!(
        q.fetch("w", 10).await.is_err(),
        "an outage is an error, not a panic"
    );
    redis.restart();
    // The connection comes back by itself; fetchers carry on.
    let mut seen = HashSet::new();
    let mut tries = 0;
    loop {
        match q.fetch("w", 500).await {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => {
                seen.extend(batch.iter().map(|raw| job_id(raw)));
                q.ack("w", &batch).await.unwrap();
            }
            Err(e) => {
                tries += 1;
                assert!(tries < 50, "redis did not come back: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(acked.len(), 1_000);
    assert!(
        acked.is_disjoint(&seen),
        "acknowledged jobs are not delivered again"
    );
    assert_eq!(acked.len() + seen.len(), 5_000, "nothing lost");
    assert_eq!(
        q.counts(Duration::from_secs(30)).await.unwrap().succeeded,
        5_000
    );
}

/// The tasks index gains every enqueued id and loses ids older than a record lifetime: on
/// the first enqueue of a process, then at most once a second while it enqueues.
#[tokio::test]
async fn the_tasks_index_drops_ids_older_than_a_record_lifetime_while_tasks_are_enqueued() {
    use agentfleet_job::{Pipeline, TaskSpec, now_ms};
    use agentfleet_queue::{NewTask, RedisConnection, TaskStore};

    let fleet = Fleet::new("tasks-index-trim");
    let ttl = Duration::from_secs(3600);
    let q = queue(&fleet, "reasoning");
    // agentfleet's own connection: the same test runs on a Redis Cluster too.
    let mut redis = connect(&fleet.redis, &ConnectOptions::default()).expect("connect");
    let store = TaskStore::new(redis.clone(), fleet.ns(), ttl);
    let index = fleet.ns().tasks_index();
    async fn stale(redis: &mut RedisConnection, index: &str, id: &str, ttl: Duration) {
        let long_ago = now_ms() - 2 * ttl.as_millis() as u64;
        redis::cmd("ZADD")
            .arg(index)
            .arg(long_ago)
            .arg(id)
            .query_async::<()>(redis)
            .await
            .expect("zadd");
    }
    async fn in_index(redis: &mut RedisConnection, index: &str, id: &str) -> bool {
        redis::cmd("ZSCORE")
            .arg(index)
            .arg(id)
            .query_async::<Option<f64>>(redis)
            .await
            .expect("zscore")
            .is_some()
    }
    let task = || {
        NewTask::new(
            TaskSpec {
                prompt: "index".to_owned(),
                metadata: Default::default(),
            },
            None,
            &Pipeline::default(),
        )
    };

    stale(&mut redis, &index, "expired-before-the-first-enqueue", ttl).await;
    let first = task();
    q.enqueue_tasks(&store, std::slice::from_ref(&first))
        .await
        .expect("enqueue");
    assert!(in_index(&mut redis, &index, &first.task_id).await);
    assert!(!in_index(&mut redis, &index, "expired-before-the-first-enqueue").await);

    stale(&mut redis, &index, "expired-later", ttl).await;
    let mut enqueued = vec![first.task_id.clone()];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while in_index(&mut redis, &index, "expired-later").await {
        assert!(
            std::time::Instant::now() < deadline,
            "a stale id stayed in the index through 10 s of enqueues"
        );
        let t = task();
        q.enqueue_tasks(&store, std::slice::from_ref(&t))
            .await
            .expect("enqueue");
        enqueued.push(t.task_id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &enqueued {
        assert!(
            in_index(&mut redis, &index, id).await,
            "{id} missing from the index"
        );
    }
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&index)
        .query_async(&mut redis)
        .await
        .expect("pttl");
    assert!(ttl_ms > 0 && ttl_ms <= ttl.as_millis() as i64);
}
