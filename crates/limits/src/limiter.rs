//! The limit's Redis operations: one Lua script each, all keys under the limit's hash tag,
//! every time read inside the script (the worker passes durations only).

use std::sync::LazyLock;
use std::time::Duration;

use agentfleet_queue::LimitKeys;
use agentfleet_queue::RedisConnection;
use redis::Script;

struct Scripts {
    reserve: Script,
    settle: Script,
    renew: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    reserve: Script::new(include_str!("lua/reserve.lua")),
    settle: Script::new(include_str!("lua/settle.lua")),
    renew: Script::new(include_str!("lua/renew.lua")),
});

/// How one worker applies one limit key.
#[derive(Debug, Clone)]
pub(crate) struct Pacing {
    /// Milliseconds between requests (0: no rpm).
    pub req_ms: f64,
    /// Milliseconds per token (0: no tpm).
    pub tok_ms: f64,
    pub max_concurrent: u64,
    pub max_wait: Duration,
    pub lease: Duration,
    pub threshold: u32,
    pub probe_every: Duration,
    pub probe_lease: Duration,
    pub rpm: u64,
    pub tpm: u64,
}

/// What reserve.lua answered.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reservation {
    /// Call after `wait`; `probe`: this call tests an unproven or paused account.
    Granted { wait: Duration, probe: bool },
    /// No capacity now: ask again after `wait`.
    NotNow { wait: Duration, reason: String },
}

/// How a call ended, as settle.lua counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The provider answered (the key works), whatever it answered.
    Answered,
    /// 401/403: the account's failure.
    Account,
    /// 5xx or no answer: counts towards pausing the account.
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "ok",
            Self::Account => "account",
            Self::Failed => "failed",
        }
    }
}

#[derive(Clone)]
pub(crate) struct Limiter {
    pub conn: RedisConnection,
    pub keys: LimitKeys,
    pub worker_id: String,
    pub pacing: Pacing,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Limiter {
    /// `high`: the job is in the high lane (it goes before waiting jobs of other lanes).
    pub async fn reserve(
        &self,
        job: &str,
        tokens: u64,
        high: bool,
    ) -> redis::RedisResult<Reservation> {
        let p = &self.pacing;
        let (code, wait, note): (i64, i64, String) = SCRIPTS
            .reserve
            .key(self.keys.state())
            .key(self.keys.leases())
            .key(self.keys.lease_expiry())
            .key(self.keys.bookings())
            .key(self.keys.high_waiting())
            .arg(&self.worker_id)
            .arg(job)
            .arg(p.req_ms)
            .arg(tokens)
            .arg(p.tok_ms)
            .arg(p.max_concurrent)
            .arg(ms(p.max_wait))
            .arg(ms(p.lease))
            .arg(p.threshold)
            .arg(ms(p.probe_every))
            .arg(ms(p.probe_lease))
            .arg(if high { "1" } else { "0" })
            .invoke_async(&mut self.conn.clone())
            .await?;
        let wait = Duration::from_millis(u64::try_from(wait).unwrap_or(0));
        Ok(if code == 0 {
            Reservation::Granted {
                wait,
                probe: note == "probe",
            }
        } else {
            Reservation::NotNow { wait, reason: note }
        })
    }

    /// Returns whether the account is paused after this call.
    #[allow(clippy::too_many_arguments)]
    pub async fn settle(
        &self,
        leased: bool,
        estimated: u64,
        used: u64,
        outcome: Outcome,
        cooldown: Option<(Duration, &str)>,
        failure: &str,
        probe: bool,
    ) -> redis::RedisResult<bool> {
        let p = &self.pacing;
        let (cool_ms, cool_reason) = cooldown.map(|(d, r)| (ms(d), r)).unwrap_or((0, ""));
        let paused: i64 = SCRIPTS
            .settle
            .key(self.keys.state())
            .key(self.keys.leases())
            .key(self.keys.usage())
            .arg(&self.worker_id)
            .arg(u8::from(leased))
            .arg(estimated)
            .arg(used)
            .arg(p.tok_ms)
            .arg(outcome.as_str())
            .arg(cool_ms)
            .arg(cool_reason)
            .arg(p.threshold)
            .arg(ms(p.probe_every))
            .arg(failure)
            .arg(u8::from(probe))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(paused == 1)
    }

    /// Keeps this worker's leases and publishes its limits. Returns the pause reason when
    /// the account is paused.
    pub async fn renew(&self) -> redis::RedisResult<Option<String>> {
        let p = &self.pacing;
        let (paused, reason): (i64, String) = SCRIPTS
            .renew
            .key(self.keys.state())
            .key(self.keys.leases())
            .key(self.keys.lease_expiry())
            .arg(&self.worker_id)
            .arg(ms(p.lease))
            .arg(p.rpm)
            .arg(p.tpm)
            .arg(p.max_concurrent)
            .arg(p.threshold)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((paused == 1).then_some(reason))
    }
}
