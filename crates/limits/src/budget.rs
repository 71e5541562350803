//! The budgets' Redis operations: one hash tag for all of them, so that the fleet's, the
//! tenant's and the task's caps are checked and reserved in one script.

use std::sync::LazyLock;
use std::time::Duration;

use agentfleet_queue::BudgetKeys;
use agentfleet_queue::RedisConnection;
use redis::Script;

struct Scripts {
    reserve: Script,
    settle: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    reserve: Script::new(include_str!("lua/budget_reserve.lua")),
    settle: Script::new(include_str!("lua/budget_settle.lua")),
});

/// Caps in nano-USD (-1: none).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    pub fleet: i64,
    pub tenant: i64,
    pub task: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Hold {
    /// Reserved; the fleet's settled spend today (nano-USD).
    Held { fleet_spent: i64 },
    /// Refused: which budget, its spend and reservations, its cap (nano-USD).
    Refused {
        budget: String,
        spent: i64,
        reserved: i64,
        cap: i64,
    },
}

#[derive(Clone)]
pub(crate) struct BudgetBook {
    pub conn: RedisConnection,
    pub keys: BudgetKeys,
    /// How long a reservation lives if its worker dies mid-call.
    pub hold_for: Duration,
    /// How long a task's spend is kept (the record's lifetime).
    pub task_ttl: Duration,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl BudgetBook {
    pub async fn reserve(
        &self,
        hold: &str,
        amount: i64,
        tenant: &str,
        task: &str,
        caps: Caps,
    ) -> redis::RedisResult<Hold> {
        let out: Vec<redis::Value> = SCRIPTS
            .reserve
            .key(self.keys.spend())
            .key(self.keys.holds())
            .key(self.keys.hold_expiry())
            .key(self.keys.task(task))
            .arg(hold)
            .arg(amount)
            .arg(caps.fleet)
            .arg(tenant)
            .arg(caps.tenant)
            .arg(caps.task)
            .arg(ms(self.hold_for))
            .arg(ms(self.task_ttl))
            .invoke_async(&mut self.conn.clone())
            .await?;
        let int = |i: usize| -> i64 {
            out.get(i)
                .and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok())
                .unwrap_or(0)
        };
        if int(0) == 1 {
            return Ok(Hold::Held {
                fleet_spent: int(1),
            });
        }
        let budget = out
            .get(1)
            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            .unwrap_or_default();
        Ok(Hold::Refused {
            budget,
            spent: int(2),
            reserved: int(3),
            cap: int(4),
        })
    }

    /// Settles at `cost`; returns the fleet's spend today (nano-USD).
    pub async fn settle(
        &self,
        hold: &str,
        cost: i64,
        tenant: &str,
        task: &str,
    ) -> redis::RedisResult<i64> {
        SCRIPTS
            .settle
            .key(self.keys.spend())
            .key(self.keys.holds())
            .key(self.keys.hold_expiry())
            .key(self.keys.task(task))
            .arg(hold)
            .arg(cost)
            .arg(ms(self.task_ttl))
            .arg(tenant)
            .invoke_async(&mut self.conn.clone())
            .await
    }

    /// Publishes the caps this worker applies, for `agentfleet limits`.
    pub async fn publish_caps(&self, caps: Caps) -> redis::RedisResult<()> {
        redis::cmd("HSET")
            .arg(self.keys.spend())
            .arg("fleet:cap")
            .arg(caps.fleet)
            .arg("tenant:cap")
            .arg(caps.tenant)
            .arg("task:cap")
            .arg(caps.task)
            .query_async(&mut self.conn.clone())
            .await
    }
}
