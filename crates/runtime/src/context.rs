use std::sync::Arc;
use std::time::Instant;

use agentfleet_job::{Envelope, JobError, LimitError, Limits, TaskStatus, TokenUsage, now_ms};
use agentfleet_providers::{CompletionRequest, Provider, ProviderError};
use agentfleet_queue::{
    Delivery, JobFailure, Namespace, Queue, QueueError, StageFinish, StageStart, TaskStore,
};
use agentfleet_telemetry::Metrics;
use redis::aio::ConnectionManager;

/// The provider as a role sees it: one call, with metrics and error classes applied.
#[derive(Clone)]
pub struct Llm {
    provider: Arc<dyn Provider>,
    system_prompt: Arc<str>,
    metrics: Metrics,
}

impl Llm {
    pub(crate) fn new(
        provider: Arc<dyn Provider>,
        system_prompt: String,
        metrics: Metrics,
    ) -> Self {
        metrics.init_provider(provider.name(), provider.model());
        Self {
            provider,
            system_prompt: system_prompt.into(),
            metrics,
        }
    }

    pub fn provider_name(&self) -> &'static str {
        self.provider.name()
    }

    pub fn model(&self) -> &str {
        self.provider.model()
    }

    /// Calls the model with the role's system prompt.
    pub async fn complete(&self, user: String) -> Result<(String, TokenUsage), JobError> {
        let (name, model) = (self.provider.name(), self.provider.model());
        let started = Instant::now();
        let result = self
            .provider
            .complete(CompletionRequest {
                system: self.system_prompt.to_string(),
                user,
            })
            .await;
        // A call the limits decorator held back never reached the provider: not a request.
        let not_sent = matches!(
            result,
            Err(ProviderError::Deferred { .. } | ProviderError::Budget { .. })
        );
        if !not_sent {
            self.metrics
                .llm_request_duration_seconds
                .with_label_values(&[name, model])
                .observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(done) => {
                let usage = TokenUsage {
                    prompt_tokens: done.usage.prompt_tokens,
                    completion_tokens: done.usage.completion_tokens,
                };
                self.metrics
                    .llm_tokens_total
                    .with_label_values(&[name, model, "prompt"])
                    .inc_by(usage.prompt_tokens);
                self.metrics
                    .llm_tokens_total
                    .with_label_values(&[name, model, "completion"])
                    .inc_by(usage.completion_tokens);
                Ok((done.text, usage))
            }
            Err(e) => {
                if !not_sent {
                    self.metrics
                        .llm_errors_total
                        .with_label_values(&[name, model, e.class()])
                        .inc();
                }
                Err(job_error(name, e))
            }
        }
    }
}

fn job_error(provider: &str, e: ProviderError) -> JobError {
    // Set by the limits decorator (agentfleet-limits): waiting is not failing, and a
    // budget refusal is its own dead-letter class.
    if let ProviderError::Deferred { delay, reason } = e {
        return JobError::Deferred {
            delay,
            reason: format!("{provider}: {reason}"),
        };
    }
    if let ProviderError::Budget { message } = e {
        return JobError::Budget { message };
    }
    if e.is_retryable() {
        JobError::Transient {
            message: format!("{provider}: {e}"),
            retry_after: e.retry_after(),
        }
    } else {
        JobError::permanent(format!("{provider}: {e}"))
    }
}

/// What a role's handler works with.
#[derive(Clone)]
pub struct RoleContext {
    pub role: &'static str,
    pub worker_id: String,
    pub namespace: Namespace,
    pub store: TaskStore,
    pub llm: Llm,
    /// Size limits on what a job may carry and a stage may store.
    pub limits: Limits,
    pub(crate) conn: ConnectionManager,
}

/// The result of [`RoleContext::llm_stage`].
#[derive(Debug, Clone, PartialEq)]
pub enum StageResult {
    /// The stage's output: fresh, or written by an earlier attempt (then the provider was
    /// not called again).
    Output(String),
    /// The task is already in a terminal state (`done`, or `dead` until its dead letter is
    /// replayed): nothing to do, and nothing may change it.
    AlreadyFinished(TaskStatus),
}

/// A stage of the pipeline, as [`RoleContext::llm_stage`] runs it.
pub struct LlmStage<'a> {
    pub task_id: &'a str,
    pub attempt: u32,
    /// Status shown while the stage runs.
    pub running: TaskStatus,
    /// Status after it.
    pub finished: TaskStatus,
    /// Record field for the output (`analysis`, `answer`).
    pub output_field: &'a str,
    /// The user-side text sent to the model.
    pub user: String,
}

impl RoleContext {
    /// Decodes a delivery, refusing an entry over the size limits before decoding it: such
    /// an entry is dead-lettered with class `too_large` and no provider is called.
    pub fn decode<A: serde::de::DeserializeOwned + serde::Serialize>(
        &self,
        delivery: &Delivery,
    ) -> Result<Envelope<A>, JobFailure> {
        self.limits
            .check_entry(delivery.raw().len())
            .map_err(too_large)?;
        Ok(delivery.decode()?)
    }

    /// Checks a task's prompt and metadata against the limits (class `too_large`).
    pub fn check_input(
        &self,
        prompt: &str,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), JobFailure> {
        self.limits.check_prompt(prompt).map_err(too_large)?;
        self.limits.check_metadata(metadata).map_err(too_large)
    }

    /// Another role's queue (to chain a job to it).
    pub fn queue(&self, role: &str) -> Result<Queue, QueueError> {
        Ok(Queue::new(self.conn.clone(), &self.namespace, role)?
            .with_idempotency_ttl(self.store.ttl()))
    }

    /// Runs one LLM stage of a task at most once in effect: records the start on the task
    /// record, reuses an output that an earlier attempt already stored (a re-run after a
    /// crash does not call the provider twice), otherwise calls the provider and stores the
    /// output, written once.
    pub async fn llm_stage(&self, stage: LlmStage<'_>) -> Result<StageResult, JobFailure> {
        let started_at_ms = now_ms();
        let start = StageStart {
            role: self.role,
            attempt: stage.attempt,
            worker_id: &self.worker_id,
            status: stage.running,
            output_field: stage.output_field,
        };
        let before = self
            .store
            .start_stage(stage.task_id, &start)
            .await
            .map_err(redis_failure)?;
        let Some((status, existing)) = before else {
            return Err(JobError::permanent(format!(
                "task record {} not found (expired or deleted): nothing to write the result to",
                stage.task_id
            ))
            .into());
        };
        if let Some(status) = status.filter(|s| s.is_terminal()) {
            tracing::info!(%status, "task already finished; this delivery changes nothing");
            return Ok(StageResult::AlreadyFinished(status));
        }
        if let Some(output) = existing {
            tracing::info!("output of an earlier attempt reused; provider not called again");
            return Ok(StageResult::Output(output));
        }
        let (output, usage) = self.llm.complete(stage.user).await?;
        if let Err(e) = self.limits.check_output(output.len()) {
            // Not retried: the same question tends to get an answer of the same size.
            return Err(JobError::permanent(format!("{}: {e}", self.llm.provider_name())).into());
        }
        let finish = StageFinish {
            role: self.role,
            output_field: stage.output_field,
            output: &output,
            status: stage.finished,
            started_at_ms,
            provider: self.llm.provider_name(),
            model: self.llm.model(),
            usage,
        };
        let written = self
            .store
            .finish_stage(stage.task_id, &finish)
            .await
            .map_err(redis_failure)?;
        if !written {
            // It became terminal while the provider answered (another copy finished it, or
            // it was dead-lettered): the stored state stands.
            let now = self
                .store
                .statuses(&[stage.task_id.to_owned()])
                .await
                .map_err(redis_failure)?;
            let status = now.into_iter().flatten().next().unwrap_or(TaskStatus::Dead);
            tracing::info!(%status, "task finished meanwhile; this output is not stored");
            return Ok(StageResult::AlreadyFinished(status));
        }
        Ok(StageResult::Output(output))
    }
}

fn too_large(e: LimitError) -> JobFailure {
    JobFailure::Job(JobError::TooLarge {
        message: e.to_string(),
    })
}

/// A Redis failure inside a handler: the job is retried (its result was not stored).
pub fn redis_failure(e: QueueError) -> JobFailure {
    JobFailure::Job(JobError::transient(format!("redis: {e}")))
}
