//! Redis key names. This module is the only place in agentfleet that spells them; README's
//! "Inspecting queues in Redis" section documents the same layout for people.

use std::fmt;

/// The prefix every key of one fleet lives under, so several fleets (or tests) share one
/// Redis without seeing each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace(String);

/// A namespace or role name that would produce ambiguous keys.
#[derive(Debug, thiserror::Error)]
#[error("{what} {value:?} must be 1-64 characters of a-z, A-Z, 0-9, '-', '_' or '.'")]
pub struct InvalidName {
    what: &'static str,
    value: String,
}

fn check(what: &'static str, value: &str) -> Result<(), InvalidName> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

impl Namespace {
    pub fn new(name: &str) -> Result<Self, InvalidName> {
        check("namespace", name)?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The keys of one role's queue.
    pub fn queue(&self, role: &str) -> Result<QueueKeys, InvalidName> {
        check("role", role)?;
        Ok(QueueKeys {
            // One hash tag per queue: every key of the queue hashes to one Redis Cluster slot,
            // so each script's keys are co-located.
            prefix: format!("{{{}:{}}}", self.0, role),
        })
    }

    /// The keys of shard `shard` of one role's queue (`--shards`). Shard 0 is the queue
    /// [`Namespace::queue`] names, so a one-shard fleet keeps its keys; shard k >= 1 is
    /// `{ns:role:k}`: a hash tag of its own, hence its own Redis Cluster slot, so the shards
    /// of a busy role spread over the cluster's masters.
    pub fn queue_shard(&self, role: &str, shard: usize) -> Result<QueueKeys, InvalidName> {
        let keys = self.queue(role)?;
        if shard == 0 {
            return Ok(keys);
        }
        Ok(QueueKeys {
            prefix: format!("{{{}:{}:{shard}}}", self.0, role),
        })
    }

    /// STRING: the fleet's shard count (`--shards`), recorded by its first producer or
    /// worker with more than one, so that one started with another count is refused
    /// (absent: one shard).
    pub fn shards(&self) -> String {
        format!("{}:shards", self.0)
    }

    /// A task's record: its own key (own slot), touched by one-key scripts only.
    pub fn task(&self, task_id: &str) -> String {
        format!("{}:task:{task_id}", self.0)
    }

    /// LIST of the task ids of one batch (`enqueue --file/--count`), in enqueue order. Its
    /// own key (own slot), written in the pipeline that writes the records and expiring with
    /// them, so `wait --batch` and `status --batch` never outlive the tasks.
    pub fn batch(&self, batch_id: &str) -> String {
        format!("{}:batch:{batch_id}", self.0)
    }

    /// STRING counting the fleet's cancellations: workers poll it (one GET) and look at the
    /// tasks they are running only when it moves.
    pub fn cancel_seq(&self) -> String {
        format!("{}:cancel:seq", self.0)
    }

    /// STREAM of the fleet's lifecycle events, capped (`XADD MAXLEN ~`): its own slot, so
    /// the process that ran a transition appends the event right after it (see events.rs).
    pub fn events(&self) -> String {
        format!("{}:events", self.0)
    }

    /// ZSET of task ids by enqueue time (ms): the newest-first listing of `agentfleet
    /// tasks` and the inspector's search; trimmed to the record lifetime and a size cap.
    pub fn tasks_index(&self) -> String {
        format!("{}:tasks", self.0)
    }

    /// STRING: the fleet's pipeline, recorded by its first producer or worker.
    pub fn pipeline(&self) -> String {
        format!("{}:pipeline", self.0)
    }

    /// SCAN patterns that together match every key of this namespace: the ones it prefixes
    /// and the queue keys under its hash tags.
    pub fn key_patterns(&self) -> [String; 2] {
        [format!("{}:*", self.0), format!("{{{}:*", self.0)]
    }

    /// True for the keys that belong to one task and expire with it (its record, and the
    /// idempotency keys guarding its jobs), as opposed to a fleet's fixed keys.
    pub fn is_per_task_key(&self, key: &str) -> bool {
        key.starts_with(&format!("{}:task:", self.0))
            || key.starts_with(&format!("{}:batch:", self.0))
            || (key.starts_with(&format!("{{{}:", self.0)) && key.contains("}:idem:"))
    }

    /// The keys of one LLM limit (a provider account, or account and model), shared by
    /// every worker of every role that calls it. `limit_key` is any non-empty text up to
    /// 128 bytes without `{`, `}` or control characters (it holds a host name and port).
    pub fn limit(&self, limit_key: &str) -> Result<LimitKeys, InvalidName> {
        let ok = !limit_key.is_empty()
            && limit_key.len() <= 128
            && !limit_key
                .chars()
                .any(|c| c == '{' || c == '}' || c.is_control() || c.is_whitespace());
        if !ok {
            return Err(InvalidName {
                what: "limit key",
                value: limit_key.to_owned(),
            });
        }
        Ok(LimitKeys {
            prefix: format!("{{{}:limit:{limit_key}}}", self.0),
        })
    }

    /// The pattern matching the state hash of every limit of the fleet, for SCAN
    /// (`agentfleet limits`).
    pub fn limit_state_pattern(&self) -> String {
        format!("{{{}:limit:*}}:state", self.0)
    }

    /// The limit key of a state key found by [`Namespace::limit_state_pattern`].
    pub fn limit_key_of_state(&self, state_key: &str) -> Option<String> {
        state_key
            .strip_prefix(&format!("{{{}:limit:", self.0))?
            .strip_suffix("}:state")
            .map(str::to_owned)
    }

    /// The keys of the fleet's spending budgets: one hash tag, so that one script checks
    /// the fleet's, a tenant's and a task's budget together.
    pub fn budgets(&self) -> BudgetKeys {
        BudgetKeys {
            prefix: format!("{{{}:budget}}", self.0),
        }
    }

    /// The pattern matching every task record, for SCAN.
    pub fn task_pattern(&self) -> String {
        format!("{}:task:*", self.0)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Key names of one role's queue, all under the hash tag `{namespace:role}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    prefix: String,
}

impl QueueKeys {
    /// LIST of `normal` entries waiting to run: pushed on the left, taken from the right.
    pub fn pending(&self) -> String {
        format!("{}:pending", self.prefix)
    }
    /// LIST of one lane's entries waiting to run (`normal` is [`QueueKeys::pending`], the
    /// name it always had; `high` and `low` add a suffix).
    pub fn pending_lane(&self, lane: agentfleet_job::Lane) -> String {
        match lane {
            agentfleet_job::Lane::Normal => self.pending(),
            other => format!("{}:pending:{other}", self.prefix),
        }
    }
    /// LIST of wake-up tokens: every push adds up to 64, an idle worker's blocking wait
    /// takes one and then fetches from every lane; a fetch that finds nothing clears it.
    pub fn wake(&self) -> String {
        format!("{}:wake", self.prefix)
    }
    /// HASH of lane bookkeeping: `turn`, the fetch counter that spreads the lower lanes'
    /// guaranteed shares evenly over the fleet's fetches.
    pub fn lanes(&self) -> String {
        format!("{}:lanes", self.prefix)
    }
    /// ZSET of entries waiting for a retry, scored by when they are due (ms).
    pub fn scheduled(&self) -> String {
        format!("{}:scheduled", self.prefix)
    }
    /// ZSET of live workers, scored by their last heartbeat (ms).
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }
    /// HASH describing one live worker (role, host, version, provider, model, counters,
    /// heartbeat), refreshed with a lease-long TTL by its heartbeat: the workers registry.
    pub fn worker_info(&self, worker_id: &str) -> String {
        format!("{}:worker:{worker_id}", self.prefix)
    }
    /// HASH of the entries one worker holds: entry → delivered at (ms).
    pub fn inflight(&self, worker_id: &str) -> String {
        format!("{}:inflight:{worker_id}", self.prefix)
    }
    /// LIST where a worker's blocking wait parks the one entry it woke up for.
    pub fn claim(&self, worker_id: &str) -> String {
        format!("{}:claim:{worker_id}", self.prefix)
    }
    /// HASH of dead letters: job id → dead letter record (JSON).
    pub fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
    }
    /// ZSET of dead letter ids scored by when they died (ms): the listing order.
    pub fn dead_index(&self) -> String {
        format!("{}:dead:index", self.prefix)
    }
    /// STRING marking an idempotency key as used, with a lifetime.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.prefix)
    }
    /// HASH of counters: succeeded, retried, dead, recovered.
    pub fn stats(&self) -> String {
        format!("{}:stats", self.prefix)
    }
    /// ZSET of tasks parked for review at this role: task id → when parked (ms, Redis's
    /// clock). The task record holds what waits; this is the listing order and the gauge.
    pub fn review(&self) -> String {
        format!("{}:review", self.prefix)
    }
}

/// Key names of one LLM limit, all under the hash tag `{namespace:limit:<key>}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKeys {
    prefix: String,
}

impl LimitKeys {
    /// HASH of the limit's state: the next free request and token slots (GCRA), the
    /// cooldown, the account's health (failures, pause, probe) and the configured limits
    /// the workers last reported.
    pub fn state(&self) -> String {
        format!("{}:state", self.prefix)
    }
    /// HASH of concurrency leases: worker id → requests it has in flight.
    pub fn leases(&self) -> String {
        format!("{}:leases", self.prefix)
    }
    /// ZSET of workers holding leases, scored by when their leases expire (ms).
    pub fn lease_expiry(&self) -> String {
        format!("{}:leases:expiry", self.prefix)
    }
    /// ZSET of booked request slots: job → slot time (ms), for jobs that wait in the
    /// scheduled set for their turn.
    pub fn bookings(&self) -> String {
        format!("{}:bookings", self.prefix)
    }
    /// ZSET of high-lane jobs waiting for this limit → until when (ms): while one waits,
    /// other lanes' jobs wait too, so the next slot goes to it.
    pub fn high_waiting(&self) -> String {
        format!("{}:waiting:high", self.prefix)
    }
    /// HASH of the last 60 seconds' use: `sec % 60` → `sec:requests:tokens`.
    pub fn usage(&self) -> String {
        format!("{}:usage", self.prefix)
    }
}

/// Key names of the spending budgets, all under the hash tag `{namespace:budget}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetKeys {
    prefix: String,
}

impl BudgetKeys {
    /// HASH of the current UTC day's spend (nano-USD): `day` (Redis's day number; the
    /// hash is reset when it changes), `fleet`, `tenant:<name>`, each with a `:r` twin for
    /// reservations of calls in progress.
    pub fn spend(&self) -> String {
        format!("{}:spend", self.prefix)
    }
    /// HASH of one task's spend (nano-USD): `spent`, and `h:<hold>` per call in progress.
    pub fn task(&self, task_id: &str) -> String {
        format!("{}:task:{task_id}", self.prefix)
    }
    /// HASH of reservations in progress: hold id → `day|tenant|task|amount`.
    pub fn holds(&self) -> String {
        format!("{}:holds", self.prefix)
    }
    /// ZSET of reservations in progress by expiry (ms): a worker killed mid-call does not
    /// keep its reservation past it.
    pub fn hold_expiry(&self) -> String {
        format!("{}:holds:expiry", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keys_share_one_hash_tag() {
        let keys = Namespace::new("agentfleet")
            .unwrap()
            .queue("reasoning")
            .unwrap();
        for key in [
            keys.pending(),
            keys.pending_lane(agentfleet_job::Lane::High),
            keys.pending_lane(agentfleet_job::Lane::Low),
            keys.wake(),
            keys.lanes(),
            keys.scheduled(),
            keys.workers(),
            keys.inflight("w1"),
            keys.worker_info("w1"),
            keys.claim("w1"),
            keys.dead(),
            keys.dead_index(),
            keys.idempotency("k"),
            keys.stats(),
            keys.review(),
        ] {
            assert!(key.starts_with("{agentfleet:reasoning}:"), "{key}");
        }
    }

    #[test]
    fn shard_zero_keeps_the_queue_keys_and_others_get_a_tag_each() {
        let ns = Namespace::new("agentfleet").unwrap();
        assert_eq!(
            ns.queue_shard("reasoning", 0).unwrap(),
            ns.queue("reasoning").unwrap()
        );
        let k2 = ns.queue_shard("reasoning", 2).unwrap();
        for key in [k2.pending(), k2.inflight("w1"), k2.dead(), k2.wake()] {
            assert!(key.starts_with("{agentfleet:reasoning:2}:"), "{key}");
        }
        assert!(ns.queue_shard("with:colon", 1).is_err());
    }

    #[test]
    fn limit_and_budget_keys_share_one_hash_tag_each() {
        let ns = Namespace::new("agentfleet").unwrap();
        let l = ns.limit("openai:api.openai.com").unwrap();
        for key in [
            l.state(),
            l.leases(),
            l.lease_expiry(),
            l.bookings(),
            l.high_waiting(),
            l.usage(),
        ] {
            assert!(
                key.starts_with("{agentfleet:limit:openai:api.openai.com}:"),
                "{key}"
            );
        }
        assert_eq!(
            ns.limit_key_of_state(&l.state()).as_deref(),
            Some("openai:api.openai.com")
        );
        let b = ns.budgets();
        for key in [b.spend(), b.task("t1"), b.holds(), b.hold_expiry()] {
            assert!(key.starts_with("{agentfleet:budget}:"), "{key}");
        }
        assert!(ns.limit("a}b").is_err());
        assert!(ns.limit("").is_err());
    }

    #[test]
    fn names_that_would_break_key_parsing_are_refused() {
        assert!(Namespace::new("a{b}").is_err());
        assert!(Namespace::new("").is_err());
        assert!(Namespace::new("ok").unwrap().queue("with:colon").is_err());
    }
}
