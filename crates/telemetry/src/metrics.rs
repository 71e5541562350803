use std::time::Duration;

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Job durations run from milliseconds (mock) to minutes (a long LLM call with retries
/// inside the provider): buckets span 5 ms to 10 min.
const JOB_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];
/// LLM calls: 50 ms (a cached or tiny local model) to 5 min.
const LLM_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0,
];

/// Every metric a worker exports. Cheap to update from the hot path (atomic adds on
/// pre-resolved label sets) and cheap to scrape (a few dozen series per process).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub jobs_total: IntCounterVec,
    pub job_duration_seconds: HistogramVec,
    pub jobs_in_flight: IntGaugeVec,
    pub queue_depth: IntGaugeVec,
    pub oldest_pending_age_seconds: GaugeVec,
    pub workers_live: IntGaugeVec,
    pub llm_request_duration_seconds: HistogramVec,
    pub llm_errors_total: IntCounterVec,
    pub llm_tokens_total: IntCounterVec,
    pub worker_info: IntGaugeVec,
    pub redis_up: IntGauge,
    pub worker_draining: IntGauge,
    /// The fleet-wide LLM limits and budgets (`agentfleet-limits`).
    pub limits: LimitMetrics,
    /// Guardrails and the review queue (`agentfleet-guardrails`).
    pub guardrails: GuardrailMetrics,
}

/// Series of the guardrails and the review queue.
#[derive(Clone)]
pub struct GuardrailMetrics {
    pub violations_total: IntCounterVec,
    pub reasks_total: IntCounterVec,
    pub actions_total: IntCounterVec,
    pub review_waiting: IntGaugeVec,
    pub review_oldest_age_seconds: GaugeVec,
}

impl GuardrailMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let violations_total = IntCounterVec::new(
            Opts::new(
                "agentfleet_guardrail_violations_total",
                "Guardrail rules that failed, by role, rule and side (input, output); an answer re-asked and failing again counts again.",
            ),
            &["role", "rule", "side"],
        )?;
        let reasks_total = IntCounterVec::new(
            Opts::new(
                "agentfleet_guardrail_reasks_total",
                "Answers asked again of the model because they failed an output rule.",
            ),
            &["role"],
        )?;
        let actions_total = IntCounterVec::new(
            Opts::new(
                "agentfleet_guardrail_actions_total",
                "Tasks a guardrail stopped, by side and action (reject: dead-lettered; review: parked for a person).",
            ),
            &["role", "side", "action"],
        )?;
        let review_waiting = IntGaugeVec::new(
            Opts::new(
                "agentfleet_review_waiting",
                "Tasks parked for review at the role, from its review index in Redis; every worker of a role reports the same value, so aggregate with max().",
            ),
            &["role"],
        )?;
        let review_oldest_age_seconds = GaugeVec::new(
            Opts::new(
                "agentfleet_review_oldest_age_seconds",
                "How long the task waiting longest for review at the role has waited (0 when none).",
            ),
            &["role"],
        )?;
        registry.register(Box::new(violations_total.clone()))?;
        registry.register(Box::new(reasks_total.clone()))?;
        registry.register(Box::new(actions_total.clone()))?;
        registry.register(Box::new(review_waiting.clone()))?;
        registry.register(Box::new(review_oldest_age_seconds.clone()))?;
        Ok(Self {
            violations_total,
            reasks_total,
            actions_total,
            review_waiting,
            review_oldest_age_seconds,
        })
    }

    /// Pre-creates a role's series for its configured rules, so that dashboards see zeros
    /// rather than gaps before the first violation.
    pub fn init_rules<'a>(&self, role: &str, rules: impl IntoIterator<Item = (&'a str, &'a str)>) {
        self.reasks_total.with_label_values(&[role]);
        for (side, rule) in rules {
            self.violations_total.with_label_values(&[role, rule, side]);
        }
    }
}

/// Series of the fleet-wide LLM limits and budgets.
#[derive(Clone)]
pub struct LimitMetrics {
    pub llm_cost_usd_total: CounterVec,
    pub reservations_total: IntCounterVec,
    pub wait_seconds: HistogramVec,
    pub cooldowns_total: IntCounterVec,
    pub account_paused: IntGaugeVec,
    pub budget_refusals_total: IntCounterVec,
    pub budget_spent_usd: GaugeVec,
    pub budget_limit_usd: GaugeVec,
}

/// In-process waits for a limit: at most about a second (longer waits go to the
/// scheduled set).
const WAIT_BUCKETS: &[f64] = &[0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0];

impl LimitMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let llm_cost_usd_total = CounterVec::new(
            Opts::new(
                "agentfleet_llm_cost_usd_total",
                "Cost of provider calls in USD (reported tokens at the price table's prices).",
            ),
            &["provider", "model", "role"],
        )?;
        let reservations_total = IntCounterVec::new(
            Opts::new(
                "agentfleet_limit_reservations_total",
                "Reservations against a fleet-wide LLM limit, by outcome (granted, deferred).",
            ),
            &["limit_key", "outcome"],
        )?;
        let wait_seconds = HistogramVec::new(
            HistogramOpts::new(
                "agentfleet_limit_wait_seconds",
                "Time a call waited in process for its slot under a fleet-wide LLM limit.",
            )
            .buckets(WAIT_BUCKETS.to_vec()),
            &["limit_key"],
        )?;
        let cooldowns_total = IntCounterVec::new(
            Opts::new(
                "agentfleet_limit_cooldowns_total",
                "Fleet-wide cooldowns this worker started (a 429 or 529, or exhausted-quota headers).",
            ),
            &["limit_key"],
        )?;
        let account_paused = IntGaugeVec::new(
            Opts::new(
                "agentfleet_limit_account_paused",
                "1 while the provider account is paused for the whole fleet after consecutive account failures (401, 403, failing calls).",
            ),
            &["limit_key"],
        )?;
        let budget_refusals_total = IntCounterVec::new(
            Opts::new(
                "agentfleet_budget_refusals_total",
                "Calls refused because they could exceed a budget (fleet, tenant, task).",
            ),
            &["budget"],
        )?;
        let budget_spent_usd = GaugeVec::new(
            Opts::new(
                "agentfleet_budget_spent_usd",
                "The fleet's settled spend today (UTC), as last seen by this worker; aggregate with max().",
            ),
            &["budget"],
        )?;
        let budget_limit_usd = GaugeVec::new(
            Opts::new(
                "agentfleet_budget_limit_usd",
                "The daily budget this worker applies (absent when none).",
            ),
            &["budget"],
        )?;
        registry.register(Box::new(llm_cost_usd_total.clone()))?;
        registry.register(Box::new(reservations_total.clone()))?;
        registry.register(Box::new(wait_seconds.clone()))?;
        registry.register(Box::new(cooldowns_total.clone()))?;
        registry.register(Box::new(account_paused.clone()))?;
        registry.register(Box::new(budget_refusals_total.clone()))?;
        registry.register(Box::new(budget_spent_usd.clone()))?;
        registry.register(Box::new(budget_limit_usd.clone()))?;
        Ok(Self {
            llm_cost_usd_total,
            reservations_total,
            wait_seconds,
            cooldowns_total,
            account_paused,
            budget_refusals_total,
            budget_spent_usd,
            budget_limit_usd,
        })
    }
}

impl Metrics {
    /// Every series carries `namespace` (the fleet) as a constant label, so that one
    /// Prometheus scraping several fleets keeps them apart (`max by (role)` of two fleets
    /// would mix two queues).
    pub fn new(namespace: &str) -> Result<Self, prometheus::Error> {
        let labels =
            std::collections::HashMap::from([("namespace".to_owned(), namespace.to_owned())]);
        let registry = Registry::new_custom(None, Some(labels))?;
        let jobs_total = IntCounterVec::new(
            Opts::new(
                "agentfleet_jobs_total",
                "Jobs settled, by role and outcome (succeeded, retried, dead).",
            ),
            &["role", "outcome"],
        )?;
        let job_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "agentfleet_job_duration_seconds",
                "Time from delivery to settlement of a job.",
            )
            .buckets(JOB_BUCKETS.to_vec()),
            &["role"],
        )?;
        let jobs_in_flight = IntGaugeVec::new(
            Opts::new(
                "agentfleet_jobs_in_flight",
                "Jobs this worker is running now.",
            ),
            &["role"],
        )?;
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "agentfleet_queue_depth",
                "Entries in the role's queue by state (pending, scheduled, dead, in_flight), pending split by priority lane (high, normal, low; empty for the other states), sampled from Redis; every worker of a role reports the same value, so sum the lanes per instance, then aggregate with max().",
            ),
            &["role", "state", "lane"],
        )?;
        let oldest_pending_age_seconds = GaugeVec::new(
            Opts::new(
                "agentfleet_oldest_pending_age_seconds",
                "Age of the oldest pending entry of the role (0 when none).",
            ),
            &["role"],
        )?;
        let workers_live = IntGaugeVec::new(
            Opts::new(
                "agentfleet_workers_live",
                "Workers of the role with a fresh heartbeat in Redis.",
            ),
            &["role"],
        )?;
        let llm_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "agentfleet_llm_request_duration_seconds",
                "Duration of one provider call, successful or not.",
            )
            .buckets(LLM_BUCKETS.to_vec()),
            &["role", "provider", "model"],
        )?;
        let llm_errors_total = IntCounterVec::new(
            Opts::new(
                "agentfleet_llm_errors_total",
                "Failed provider calls by class (rate_limited, overloaded, transient, permanent).",
            ),
            &["role", "provider", "model", "class"],
        )?;
        let llm_tokens_total = IntCounterVec::new(
            Opts::new(
                "agentfleet_llm_tokens_total",
                "Tokens reported by the provider, by kind (prompt, completion).",
            ),
            &["role", "provider", "model", "kind"],
        )?;
        let worker_info = IntGaugeVec::new(
            Opts::new(
                "agentfleet_worker_info",
                "Always 1; labels identify the worker.",
            ),
            &["version", "role", "worker_id"],
        )?;
        let redis_up = IntGauge::new(
            "agentfleet_redis_up",
            "1 when the worker's last Redis operation succeeded.",
        )?;
        let worker_draining = IntGauge::new(
            "agentfleet_worker_draining",
            "1 while the worker is shutting down (not fetching, finishing in-flight jobs).",
        )?;
        registry.register(Box::new(jobs_total.clone()))?;
        registry.register(Box::new(job_duration_seconds.clone()))?;
        registry.register(Box::new(jobs_in_flight.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(oldest_pending_age_seconds.clone()))?;
        registry.register(Box::new(workers_live.clone()))?;
        registry.register(Box::new(llm_request_duration_seconds.clone()))?;
        registry.register(Box::new(llm_errors_total.clone()))?;
        registry.register(Box::new(llm_tokens_total.clone()))?;
        registry.register(Box::new(worker_info.clone()))?;
        registry.register(Box::new(redis_up.clone()))?;
        registry.register(Box::new(worker_draining.clone()))?;
        let limits = LimitMetrics::new(&registry)?;
        let guardrails = GuardrailMetrics::new(&registry)?;
        Ok(Self {
            limits,
            guardrails,
            registry,
            jobs_total,
            job_duration_seconds,
            jobs_in_flight,
            queue_depth,
            oldest_pending_age_seconds,
            workers_live,
            llm_request_duration_seconds,
            llm_errors_total,
            llm_tokens_total,
            worker_info,
            redis_up,
            worker_draining,
        })
    }

    /// Pre-creates the series of a role so dashboards see zeros rather than gaps before
    /// the first job.
    pub fn init_role(&self, role: &str, version: &str, worker_id: &str) {
        for outcome in ["succeeded", "retried", "dead", "cancelled", "expired"] {
            self.jobs_total.with_label_values(&[role, outcome]);
        }
        for lane in ["high", "normal", "low"] {
            self.queue_depth.with_label_values(&[role, "pending", lane]);
        }
        for state in ["scheduled", "dead", "in_flight"] {
            self.queue_depth.with_label_values(&[role, state, ""]);
        }
        self.job_duration_seconds.with_label_values(&[role]);
        self.jobs_in_flight.with_label_values(&[role]);
        self.oldest_pending_age_seconds.with_label_values(&[role]);
        self.workers_live.with_label_values(&[role]);
        self.guardrails.review_waiting.with_label_values(&[role]);
        self.guardrails
            .review_oldest_age_seconds
            .with_label_values(&[role]);
        self.worker_info
            .with_label_values(&[version, role, worker_id])
            .set(1);
    }

    /// Pre-creates the provider series of a role (the LLM series carry the role that
    /// called, so a dashboard tells reasoning's calls from synthesis's).
    pub fn init_provider(&self, role: &str, provider: &str, model: &str) {
        self.llm_request_duration_seconds
            .with_label_values(&[role, provider, model]);
        for kind in ["prompt", "completion"] {
            self.llm_tokens_total
                .with_label_values(&[role, provider, model, kind]);
        }
        for class in ["rate_limited", "overloaded", "transient", "permanent"] {
            self.llm_errors_total
                .with_label_values(&[role, provider, model, class]);
        }
    }

    pub fn observe_job(&self, role: &str, outcome: &str, duration: Duration) {
        self.jobs_total.with_label_values(&[role, outcome]).inc();
        self.job_duration_seconds
            .with_label_values(&[role])
            .observe(duration.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
