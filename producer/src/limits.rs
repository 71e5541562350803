//! `agentfleet limits`: every fleet-wide LLM limit's use and headroom, every budget's spend.

use std::process::ExitCode;

use crate::Fleet;

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_owned())
}

pub async fn run(fleet: &Fleet, json: bool) -> anyhow::Result<ExitCode> {
    let mut conn = fleet.connection();
    let state = agentfleet_limits::fleet_limits(&mut conn, &fleet.namespace).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&state)?);
        return Ok(ExitCode::SUCCESS);
    }
    if state.limits.is_empty() {
        println!("no LLM limit has been used in this namespace yet");
    }
    for l in &state.limits {
        println!("limit {}", l.limit_key);
        println!(
            "  requests/min  {:>8} used  {:>8} limit  {:>8} headroom",
            l.requests_last_minute,
            opt(l.rpm),
            opt(l.requests_headroom)
        );
        println!(
            "  tokens/min    {:>8} used  {:>8} limit  {:>8} headroom",
            l.tokens_last_minute,
            opt(l.tpm),
            opt(l.tokens_headroom)
        );
        println!(
            "  concurrent    {:>8} now   {:>8} limit",
            l.concurrent_requests,
            opt(l.max_concurrent_requests)
        );
        println!("  booked slots  {:>8}", l.booked);
        if l.cooldown_secs > 0.0 {
            println!(
                "  COOLDOWN      {:.1}s left ({})",
                l.cooldown_secs,
                l.cooldown_reason
                    .as_deref()
                    .unwrap_or("provider rate limit")
            );
        }
        if l.account_paused {
            println!(
                "  ACCOUNT PAUSED: {} (next probe in {:.1}s)",
                l.pause_reason.as_deref().unwrap_or("account failures"),
                l.next_probe_secs.unwrap_or(0.0)
            );
        } else if l.consecutive_account_failures > 0 {
            println!(
                "  account failures in a row: {}",
                l.consecutive_account_failures
            );
        }
    }
    for b in &state.budgets {
        let cap = b
            .cap_usd
            .map(|c| format!("${c:.4}"))
            .unwrap_or_else(|| "no cap".to_owned());
        let used = b
            .used
            .map(|u| format!(" ({:.1}%)", u * 100.0))
            .unwrap_or_default();
        println!(
            "budget {} today: ${:.4} spent{used}, ${:.4} reserved, of {cap}",
            b.budget, b.spent_usd, b.reserved_usd
        );
    }
    if let Some(cap) = state.task_cap_usd {
        println!("budget per task: ${cap:.4}");
    }
    Ok(ExitCode::SUCCESS)
}
