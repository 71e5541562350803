//! What `agentfleet limits` shows: every limit's use and headroom, every budget's spend.
//! Read-only: a pipeline of plain reads per limit, timed by Redis's clock.

use std::collections::HashMap;

use agentfleet_queue::Namespace;
use agentfleet_queue::RedisConnection;
use serde::Serialize;

use crate::from_nano;

/// One limit key as the fleet uses it now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LimitState {
    pub limit_key: String,
    /// The limits the workers last published (None: not limited).
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrent_requests: Option<u64>,
    /// Calls and tokens settled in the last 60 s.
    pub requests_last_minute: u64,
    pub tokens_last_minute: u64,
    pub requests_headroom: Option<u64>,
    pub tokens_headroom: Option<u64>,
    pub concurrent_requests: u64,
    /// Jobs waiting in the scheduled set with a booked slot.
    pub booked: u64,
    /// Seconds of the fleet-wide cooldown left (0: none) and what started it.
    pub cooldown_secs: f64,
    pub cooldown_reason: Option<String>,
    pub cooldowns: u64,
    pub account_paused: bool,
    pub pause_reason: Option<String>,
    pub consecutive_account_failures: u64,
    /// Seconds until the next probe of a paused account.
    pub next_probe_secs: Option<f64>,
}

/// One budget's spend today (UTC) and cap.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetStatus {
    /// `fleet` or `tenant:<name>`.
    pub budget: String,
    pub spent_usd: f64,
    pub reserved_usd: f64,
    pub cap_usd: Option<f64>,
    /// Spent as a share of the cap (0..1), when capped.
    pub used: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetLimits {
    pub limits: Vec<LimitState>,
    pub budgets: Vec<BudgetStatus>,
    /// The caps each task may spend, as the workers last published them.
    pub task_cap_usd: Option<f64>,
}

fn num<T: std::str::FromStr>(map: &HashMap<String, String>, field: &str) -> Option<T> {
    map.get(field).and_then(|v| v.parse().ok())
}

fn positive(v: Option<u64>) -> Option<u64> {
    v.filter(|v| *v > 0)
}

/// Reads every limit and budget of `namespace`.
pub async fn fleet_limits(
    conn: &mut RedisConnection,
    namespace: &Namespace,
) -> redis::RedisResult<FleetLimits> {
    let mut state_keys = conn.scan_match(&namespace.limit_state_pattern()).await?;
    state_keys.sort();
    state_keys.dedup();
    let mut out = FleetLimits::default();
    for state_key in state_keys {
        let Some(limit_key) = namespace.limit_key_of_state(&state_key) else {
            continue;
        };
        let Ok(keys) = namespace.limit(&limit_key) else {
            continue;
        };
        #[allow(clippy::type_complexity)]
        let ((secs, micros), state, leases, usage, booked): (
            (u64, u64),
            HashMap<String, String>,
            HashMap<String, i64>,
            HashMap<String, String>,
            u64,
        ) = redis::pipe()
            .cmd("TIME")
            .hgetall(keys.state())
            .hgetall(keys.leases())
            .hgetall(keys.usage())
            .zcard(keys.bookings())
            .query_async(conn)
            .await?;
        let now_ms = secs * 1000 + micros / 1000;
        let now_s = secs;
        let (mut requests, mut tokens) = (0u64, 0u64);
        for value in usage.values() {
            let parts: Vec<u64> = value.split(':').filter_map(|p| p.parse().ok()).collect();
            if let [sec, r, t] = parts[..]
                && sec + 60 > now_s
            {
                requests += r;
                tokens += t;
            }
        }
        let rpm = positive(num(&state, "rpm"));
        let tpm = positive(num(&state, "tpm"));
        let paused = state.get("paused").map(String::as_str) == Some("1");
        let cooldown_until: f64 = num(&state, "cooldown_until").unwrap_or(0.0);
        let cooldown_secs = ((cooldown_until - now_ms as f64) / 1000.0).max(0.0);
        out.limits.push(LimitState {
            rpm,
            tpm,
            max_concurrent_requests: positive(num(&state, "max_concurrent")),
            requests_last_minute: requests,
            tokens_last_minute: tokens,
            requests_headroom: rpm.map(|r| r.saturating_sub(requests)),
            tokens_headroom: tpm.map(|t| t.saturating_sub(tokens)),
            concurrent_requests: leases.values().map(|v| (*v).max(0) as u64).sum(),
            booked,
            cooldown_secs,
            cooldown_reason: (cooldown_secs > 0.0)
                .then(|| state.get("cooldown_reason").cloned())
                .flatten(),
            cooldowns: num(&state, "cooldowns").unwrap_or(0),
            account_paused: paused,
            pause_reason: paused.then(|| state.get("pause_reason").cloned()).flatten(),
            consecutive_account_failures: num(&state, "fails").unwrap_or(0),
            next_probe_secs: paused.then(|| {
                let at: f64 = num(&state, "probe_at").unwrap_or(0.0);
                ((at - now_ms as f64) / 1000.0).max(0.0)
            }),
            limit_key,
        });
    }
    let budgets = namespace.budgets();
    let spend: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(budgets.spend())
        .query_async(conn)
        .await?;
    let (secs, _): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    let today = (secs / 86_400).to_string();
    let current = spend.get("day") == Some(&today);
    let cap = |field: &str| num::<i64>(&spend, field).filter(|c| *c >= 0).map(from_nano);
    let fleet_cap = cap("fleet:cap");
    let tenant_cap = cap("tenant:cap");
    out.task_cap_usd = cap("task:cap");
    let amount = |field: &str| {
        if current {
            from_nano(num::<i64>(&spend, field).unwrap_or(0))
        } else {
            0.0
        }
    };
    if fleet_cap.is_some() || spend.contains_key("fleet") {
        let spent = amount("fleet");
        out.budgets.push(BudgetStatus {
            budget: "fleet".to_owned(),
            spent_usd: spent,
            reserved_usd: amount("fleet:r"),
            cap_usd: fleet_cap,
            used: fleet_cap.filter(|c| *c > 0.0).map(|c| spent / c),
        });
    }
    let mut tenants: Vec<&String> = spend
        .keys()
        .filter(|k| k.starts_with("tenant:") && !k.ends_with(":r") && !k.ends_with(":cap"))
        .collect();
    tenants.sort();
    for field in tenants {
        let spent = amount(field);
        out.budgets.push(BudgetStatus {
            budget: field.clone(),
            spent_usd: spent,
            reserved_usd: amount(&format!("{field}:r")),
            cap_usd: tenant_cap,
            used: tenant_cap.filter(|c| *c > 0.0).map(|c| spent / c),
        });
    }
    Ok(out)
}
