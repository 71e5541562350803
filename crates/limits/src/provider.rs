//! [`LimitedProvider`]: the decorator that makes every provider call respect the fleet's
//! limits and budgets.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentfleet_providers::{
    Completion, CompletionRequest, Provider, ProviderArgs, ProviderError, ProviderKind,
};
use agentfleet_queue::RedisConnection;
use agentfleet_queue::{Namespace, TaskStore};
use agentfleet_telemetry::Metrics;
use futures::future::BoxFuture;

use crate::budget::{BudgetBook, Caps, Hold};
use crate::limiter::{Limiter, Outcome, Pacing, Reservation};
use crate::{
    JobScope, LimitArgs, LimitError, LimitsFile, Price, PriceTable, ResolvedLimits, from_nano,
    to_nano,
};

/// What `/readyz` needs to know: whether the account is paused for the fleet, and why.
#[derive(Debug, Default)]
pub struct LimitStatus {
    paused: Mutex<Option<String>>,
    key: Mutex<String>,
}

impl LimitStatus {
    /// `Err(reason)` while the account is paused.
    pub fn check(&self) -> Result<(), String> {
        let paused = self.paused.lock().map(|p| p.clone()).unwrap_or_default();
        match paused {
            Some(reason) => {
                let key = self.key.lock().map(|k| k.clone()).unwrap_or_default();
                Err(format!(
                    "provider account {key} paused for the fleet: {reason}"
                ))
            }
            None => Ok(()),
        }
    }

    fn set(&self, paused: Option<String>) {
        if let Ok(mut p) = self.paused.lock() {
            *p = paused;
        }
    }
}

/// What the decorator is built from.
pub struct LimitContext<'a> {
    pub conn: RedisConnection,
    pub namespace: &'a Namespace,
    pub worker_id: &'a str,
    pub role: &'static str,
    /// The worker's lease: concurrency leases expire with it.
    pub lease: Duration,
    pub metrics: Metrics,
    pub provider: &'a ProviderArgs,
    /// For a task's tenant when its job does not carry it (later stages).
    pub store: TaskStore,
    /// How long a task's spend is kept: the record's lifetime.
    pub record_ttl: Duration,
    pub status: Arc<LimitStatus>,
    /// The longest fleet-wide cooldown a provider's header can start (`--backoff-max-ms`):
    /// a `Retry-After` of a year (broken or hostile) must not stop the fleet for a year.
    pub longest_cooldown: Duration,
}

/// A provider whose calls respect the fleet-wide limits and budgets.
pub struct LimitedProvider {
    inner: Arc<dyn Provider>,
    role: &'static str,
    key: String,
    max_tokens: u64,
    price: Option<Price>,
    limiter: Option<Limiter>,
    budgets: Option<(BudgetBook, crate::Budgets)>,
    metrics: Metrics,
    status: Arc<LimitStatus>,
    store: TaskStore,
    longest_cooldown: Duration,
}

impl std::fmt::Debug for LimitedProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitedProvider")
            .field("inner", &self.inner)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The default limit key: provider and the base URL's host (and port), e.g.
/// `openai:api.openai.com`, so that workers calling one account share its limits.
fn default_key(args: &ProviderArgs) -> String {
    let provider = args.provider.as_str();
    let default_host = match args.provider {
        ProviderKind::Openai => "api.openai.com",
        ProviderKind::Anthropic => "api.anthropic.com",
        ProviderKind::Mock => "local",
    };
    let host = args
        .base_url
        .as_deref()
        .and_then(|u| url::Url::parse(u.trim()).ok())
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            })
        })
        .unwrap_or_else(|| default_host.to_owned());
    format!("{provider}:{host}")
}

/// Prompt tokens estimated from the text: about four bytes a token for English text (the
/// estimate only has to be close; each reservation is settled to the reported usage).
pub fn estimate_prompt_tokens(request: &CompletionRequest) -> u64 {
    ((request.system.len() + request.user.len()).div_ceil(4)) as u64
}

/// Wraps `inner` in the limits the flags and the limits file ask for. With the mock
/// provider and nothing configured, no Redis command is added (only the cost metric).
pub fn wrap(
    inner: Arc<dyn Provider>,
    args: &LimitArgs,
    ctx: LimitContext<'_>,
) -> Result<Arc<dyn Provider>, LimitError> {
    let file = match &args.limits_file {
        Some(path) => LimitsFile::read(path)?,
        None => LimitsFile::default(),
    };
    let account = args
        .limit_key
        .clone()
        .unwrap_or_else(|| default_key(ctx.provider));
    let resolved = ResolvedLimits::resolve(args, &file, &account, inner.model())?;
    let keys = ctx.namespace.limit(&resolved.key)?;
    let prices = PriceTable::load(args.prices_file.as_deref())?;
    let price = prices.price(inner.model());
    if resolved.budgets.any() && price.is_none() {
        return Err(LimitError::NoPrice {
            model: inner.model().to_owned(),
        });
    }
    if !(args.limit_headroom_pct.is_finite() && (0.0..50.0).contains(&args.limit_headroom_pct)) {
        return Err(LimitError::Value {
            flag: "--limit-headroom-pct",
            expected: "within 0..50",
            value: args.limit_headroom_pct.to_string(),
        });
    }
    let is_http = ctx.provider.provider != ProviderKind::Mock;
    let enabled = is_http || resolved.any_rate() || resolved.budgets.any();
    *ctx.status.key.lock().map_err(|_| LimitError::Value {
        flag: "--limit-key",
        expected: "a usable key",
        value: resolved.key.clone(),
    })? = resolved.key.clone();
    let pace = 1.0 + args.limit_headroom_pct / 100.0;
    let threshold = if is_http {
        args.account_failure_threshold
    } else {
        0
    };
    let pacing = Pacing {
        req_ms: resolved
            .rpm
            .map(|r| 60_000.0 * pace / r as f64)
            .unwrap_or(0.0),
        tok_ms: resolved
            .tpm
            .map(|t| 60_000.0 * pace / t as f64)
            .unwrap_or(0.0),
        max_concurrent: resolved.max_concurrent.unwrap_or(0),
        max_wait: Duration::from_millis(args.limit_wait_ms),
        lease: ctx.lease,
        threshold,
        probe_every: Duration::from_secs(args.account_probe_secs.max(1)),
        probe_lease: ctx.provider.request_timeout() + ctx.provider.connect_timeout(),
        rpm: resolved.rpm.unwrap_or(0),
        tpm: resolved.tpm.unwrap_or(0),
    };
    let limiter = enabled.then(|| Limiter {
        conn: ctx.conn.clone(),
        keys: keys.clone(),
        worker_id: ctx.worker_id.to_owned(),
        pacing,
    });
    let budgets = resolved.budgets.any().then(|| {
        (
            BudgetBook {
                conn: ctx.conn.clone(),
                keys: ctx.namespace.budgets(),
                hold_for: ctx.provider.request_timeout()
                    + ctx.provider.connect_timeout()
                    + ctx.lease,
                task_ttl: ctx.record_ttl,
            },
            resolved.budgets.clone(),
        )
    });
    let m = &ctx.metrics.limits;
    m.llm_cost_usd_total
        .with_label_values(&[inner.name(), inner.model(), ctx.role]);
    if enabled {
        for outcome in ["granted", "deferred"] {
            m.reservations_total
                .with_label_values(&[&resolved.key, outcome]);
        }
        m.wait_seconds.with_label_values(&[&resolved.key]);
        m.cooldowns_total.with_label_values(&[&resolved.key]);
        m.account_paused.with_label_values(&[&resolved.key]).set(0);
    }
    if let Some(cap) = resolved.budgets.fleet_daily_usd {
        m.budget_limit_usd.with_label_values(&["fleet"]).set(cap);
        m.budget_spent_usd.with_label_values(&["fleet"]);
    }
    if resolved.budgets.any() {
        for b in ["fleet", "tenant", "task"] {
            m.budget_refusals_total.with_label_values(&[b]);
        }
    }
    tracing::info!(
        limit_key = %resolved.key,
        rpm = ?resolved.rpm,
        tpm = ?resolved.tpm,
        max_concurrent_requests = ?resolved.max_concurrent,
        budgets = ?resolved.budgets,
        enforced_in_redis = enabled,
        "fleet-wide LLM limits"
    );
    let provider = Arc::new(LimitedProvider {
        inner,
        role: ctx.role,
        key: resolved.key.clone(),
        max_tokens: u64::from(ctx.provider.max_tokens),
        price,
        limiter,
        budgets,
        metrics: ctx.metrics.clone(),
        status: ctx.status.clone(),
        store: ctx.store.clone(),
        longest_cooldown: ctx.longest_cooldown,
    });
    if provider.limiter.is_some() || provider.budgets.is_some() {
        tokio::spawn(renew_loop(provider.clone(), ctx.lease));
    }
    Ok(provider)
}

/// Keeps the worker's concurrency leases (every third of a lease) and refreshes what
/// `/readyz`, the metrics and `agentfleet limits` show.
async fn renew_loop(p: Arc<LimitedProvider>, lease: Duration) {
    let every = (lease / 3).max(Duration::from_millis(100));
    loop {
        if let Some(limiter) = &p.limiter {
            match limiter.renew().await {
                Ok(paused) => p.note_paused(paused),
                Err(e) => {
                    tracing::warn!(error = %e, "renewing LLM limit leases failed; will retry")
                }
            }
        }
        if let Some((book, budgets)) = &p.budgets
            && let Err(e) = book.publish_caps(caps(budgets, None)).await
        {
            tracing::debug!(error = %e, "publishing budget caps failed; will retry");
        }
        tokio::time::sleep(every).await;
    }
}

fn caps(b: &crate::Budgets, tenant: Option<&str>) -> Caps {
    let nano = |v: Option<f64>| v.map(to_nano).unwrap_or(-1);
    Caps {
        fleet: nano(b.fleet_daily_usd),
        tenant: nano(match tenant {
            Some(t) => b.tenant_cap(t),
            None => b.tenant_daily_usd,
        }),
        task: nano(b.task_usd),
    }
}

/// A wait that is not a booked slot gets jitter, so that waiting jobs do not come back
/// together.
fn jittered(wait: Duration, reason: &str) -> Duration {
    if reason.starts_with("rate") {
        return wait;
    }
    let spread = u64::try_from(wait.as_millis())
        .unwrap_or(0)
        .clamp(100, 5_000);
    wait + Duration::from_millis(fastrand::u64(0..=spread))
}

fn redis_deferred(e: &redis::RedisError) -> ProviderError {
    ProviderError::Deferred {
        delay: Duration::from_secs(1) + Duration::from_millis(fastrand::u64(0..1000)),
        reason: format!("redis unavailable for the LLM limits: {e}"),
    }
}

impl LimitedProvider {
    fn note_paused(&self, paused: Option<String>) {
        self.metrics
            .limits
            .account_paused
            .with_label_values(&[&self.key])
            .set(i64::from(paused.is_some()));
        self.status.set(paused);
    }

    fn count_cost(&self, completion: &Completion) -> f64 {
        let cost = self
            .price
            .map(|p| {
                p.cost(
                    completion.usage.prompt_tokens,
                    completion.usage.completion_tokens,
                )
            })
            .unwrap_or(0.0);
        if cost > 0.0 {
            self.metrics
                .limits
                .llm_cost_usd_total
                .with_label_values(&[self.inner.name(), self.inner.model(), self.role])
                .inc_by(cost);
        }
        cost
    }

    /// The tenant of the job: from its entry, else (later stages) from its task record.
    async fn tenant(&self, scope: &JobScope) -> Option<String> {
        if scope.tenant.is_some() {
            return scope.tenant.clone();
        }
        let task = scope.task_id.as_deref()?;
        match self.store.get(task).await {
            Ok(Some(record)) => record.metadata.get("tenant").cloned(),
            _ => None,
        }
    }

    async fn call(&self, request: CompletionRequest) -> Result<Completion, ProviderError> {
        let Some(limiter) = &self.limiter else {
            let done = self.inner.complete(request).await?;
            self.count_cost(&done);
            return Ok(done);
        };
        let scope = JobScope::current().unwrap_or_default();
        let prompt_tokens = estimate_prompt_tokens(&request);
        let estimated = prompt_tokens + self.max_tokens;
        let hold_id = format!(
            "{}:{}",
            limiter.worker_id,
            std::iter::repeat_with(fastrand::alphanumeric)
                .take(10)
                .collect::<String>()
        );
        let task = scope.task_id.clone().unwrap_or_else(|| hold_id.clone());
        let booking = format!("{}:{task}", self.role);

        // Budgets first: a call that would overshoot never takes a rate slot.
        let mut budget_hold = None;
        if let Some((book, budgets)) = &self.budgets {
            let tenant = if budgets.tenant_daily_usd.is_some() || !budgets.tenants.is_empty() {
                self.tenant(&scope).await
            } else {
                None
            };
            let worst = self
                .price
                .map(|p| p.cost(prompt_tokens, self.max_tokens))
                .unwrap_or(0.0);
            let tenant_str = tenant.clone().unwrap_or_default();
            match book
                .reserve(
                    &hold_id,
                    to_nano(worst),
                    &tenant_str,
                    &task,
                    caps(budgets, tenant.as_deref()),
                )
                .await
            {
                Ok(Hold::Held { fleet_spent }) => {
                    self.metrics
                        .limits
                        .budget_spent_usd
                        .with_label_values(&["fleet"])
                        .set(from_nano(fleet_spent));
                    budget_hold = Some(tenant_str);
                }
                Ok(Hold::Refused {
                    budget,
                    spent,
                    reserved,
                    cap,
                }) => {
                    self.metrics
                        .limits
                        .budget_refusals_total
                        .with_label_values(&[budget.as_str()])
                        .inc();
                    let whose = match budget.as_str() {
                        "tenant" => format!("tenant {tenant_str:?}'s daily budget"),
                        "task" => "the task's budget".to_owned(),
                        _ => "the fleet's daily budget".to_owned(),
                    };
                    return Err(ProviderError::Budget {
                        message: format!(
                            "this call (up to ${worst:.6}) could exceed {whose}: ${:.6} spent and ${:.6} reserved of ${:.6}",
                            from_nano(spent),
                            from_nano(reserved),
                            from_nano(cap)
                        ),
                    });
                }
                Err(e) => return Err(redis_deferred(&e)),
            }
        }
        let release_budget = |cost: f64| {
            let hold_id = hold_id.clone();
            let task = task.clone();
            let tenant = budget_hold.clone();
            async move {
                if let (Some((book, _)), Some(tenant)) = (&self.budgets, tenant) {
                    match book.settle(&hold_id, to_nano(cost), &tenant, &task).await {
                        Ok(spent) => self
                            .metrics
                            .limits
                            .budget_spent_usd
                            .with_label_values(&["fleet"])
                            .set(from_nano(spent)),
                        Err(e) => {
                            tracing::warn!(error = %e, "settling a budget reservation failed; it is given back when it expires")
                        }
                    }
                }
            }
        };

        // Then capacity: wait in process up to --limit-wait-ms, else go back to the queue.
        let started = Instant::now();
        let max_wait = limiter.pacing.max_wait;
        let probe = loop {
            let reserved = match limiter
                .reserve(
                    &booking,
                    estimated,
                    scope.lane == agentfleet_job::Lane::High,
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    release_budget(0.0).await;
                    return Err(redis_deferred(&e));
                }
            };
            match reserved {
                Reservation::Granted { wait, probe } => {
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    break probe;
                }
                Reservation::NotNow { wait, reason } => {
                    if reason.starts_with("account paused") {
                        self.note_paused(Some(
                            reason.trim_start_matches("account paused: ").to_owned(),
                        ));
                    }
                    if started.elapsed() + wait <= max_wait {
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    self.metrics
                        .limits
                        .reservations_total
                        .with_label_values(&[&self.key, "deferred"])
                        .inc();
                    release_budget(0.0).await;
                    return Err(ProviderError::Deferred {
                        delay: jittered(wait, &reason),
                        reason,
                    });
                }
            }
        };
        let m = &self.metrics.limits;
        m.reservations_total
            .with_label_values(&[&self.key, "granted"])
            .inc();
        m.wait_seconds
            .with_label_values(&[&self.key])
            .observe(started.elapsed().as_secs_f64());
        let leased = limiter.pacing.max_concurrent > 0;

        let result = self.inner.complete(request).await;

        let (outcome, used, cooldown, failure) = match &result {
            Ok(done) => {
                let used = done.usage.prompt_tokens + done.usage.completion_tokens;
                let used = if used == 0 {
                    prompt_tokens + (done.text.len() as u64).div_ceil(4)
                } else {
                    used
                };
                let cooldown = done.exhausted_for.map(|d| {
                    (
                        d.min(self.longest_cooldown),
                        "the provider reported its quota used up",
                    )
                });
                (Outcome::Answered, used, cooldown, String::new())
            }
            Err(e @ (ProviderError::RateLimited { .. } | ProviderError::Overloaded { .. })) => {
                let wait = e
                    .retry_after()
                    .unwrap_or(Duration::from_secs(1))
                    .min(self.longest_cooldown);
                (
                    Outcome::Answered,
                    estimated,
                    Some((wait, e.class())),
                    String::new(),
                )
            }
            Err(e) if e.is_account_failure() && limiter.pacing.threshold > 0 => {
                (Outcome::Account, 0, None, e.to_string())
            }
            Err(e @ ProviderError::Transient { .. }) => (Outcome::Failed, 0, None, e.to_string()),
            Err(_) => (Outcome::Answered, 0, None, String::new()),
        };
        if cooldown.is_some() {
            m.cooldowns_total.with_label_values(&[&self.key]).inc();
        }
        let cooldown_ref = cooldown;
        let mut settled = None;
        for attempt in 0..5u32 {
            match limiter
                .settle(
                    leased,
                    estimated,
                    used,
                    outcome,
                    cooldown_ref,
                    &failure,
                    probe,
                )
                .await
            {
                Ok(paused) => {
                    settled = Some(paused);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "settling an LLM limit reservation failed; will retry");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        if settled == Some(false) && self.status.check().is_err() {
            self.note_paused(None);
        } else if settled == Some(true) {
            self.note_paused(Some(failure.clone()));
        }

        let cost = result.as_ref().map(|d| self.count_cost(d)).unwrap_or(0.0);
        release_budget(cost).await;

        match result {
            Ok(done) => Ok(done),
            // The fleet cools down; this job waits, uncounted, for the same time.
            Err(e @ (ProviderError::RateLimited { .. } | ProviderError::Overloaded { .. })) => {
                let wait = cooldown.map(|(d, _)| d).unwrap_or(Duration::from_secs(1));
                Err(ProviderError::Deferred {
                    delay: wait + Duration::from_millis(fastrand::u64(0..=250)),
                    reason: format!("cooldown: {e}"),
                })
            }
            // A key problem is the account's, never the job's: it waits for the account.
            Err(e) if outcome == Outcome::Account => Err(ProviderError::Deferred {
                delay: jittered(limiter.pacing.probe_every, "account"),
                reason: format!("account failure: {e}"),
            }),
            Err(e) => Err(e),
        }
    }
}

impl Provider for LimitedProvider {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn model(&self) -> &str {
        self.inner.model()
    }

    fn complete(
        &self,
        request: CompletionRequest,
    ) -> BoxFuture<'_, Result<Completion, ProviderError>> {
        Box::pin(self.call(request))
    }
}
