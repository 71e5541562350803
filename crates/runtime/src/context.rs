use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use agentfleet_job::{
    DecodeError, Envelope, JobError, LimitError, Limits, Pipeline, StageJob, TaskStatus,
    TokenUsage, TraceContext, now_ms,
};
use agentfleet_providers::{CompletionRequest, Provider, ProviderError};
use agentfleet_queue::{
    Delivery, Finished, JobFailure, Namespace, PushEntry, QueueError, RoleFields, StageFinish,
    StageStart, Started, TaskStore,
};
use agentfleet_telemetry::Metrics;

/// How long a stage runs before its start is written to the task record: shorter stages
/// (most, with a fast model) only write their finish, which carries the same fields.
pub const START_NOTE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The provider as a role sees it: one call, with metrics and error classes applied.
#[derive(Clone)]
pub struct Llm {
    role: &'static str,
    provider: Arc<dyn Provider>,
    system_prompt: Arc<str>,
    metrics: Metrics,
}

impl Llm {
    pub(crate) fn new(
        role: &'static str,
        provider: Arc<dyn Provider>,
        system_prompt: String,
        metrics: Metrics,
    ) -> Self {
        metrics.init_provider(role, provider.name(), provider.model());
        Self {
            role,
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
    pub async fn complete(&self, user: String) -> Result<StageOutput, JobError> {
        let (role, name, model) = (self.role, self.provider.name(), self.provider.model());
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
                .with_label_values(&[role, name, model])
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
                    .with_label_values(&[role, name, model, "prompt"])
                    .inc_by(usage.prompt_tokens);
                self.metrics
                    .llm_tokens_total
                    .with_label_values(&[role, name, model, "completion"])
                    .inc_by(usage.completion_tokens);
                Ok(StageOutput {
                    text: done.text,
                    usage,
                })
            }
            Err(e) => {
                if !not_sent {
                    self.metrics
                        .llm_errors_total
                        .with_label_values(&[role, name, model, e.class()])
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
    /// The fleet's pipeline, and where this role sits in it.
    pub pipeline: Arc<Pipeline>,
    pub stage: usize,
    /// The tasks this worker is running a stage of, so a cancel can abort them.
    pub(crate) running: Arc<crate::control::RunningTasks>,
    /// This role's guardrails, when the guardrails file has rules for it.
    pub(crate) guard: Option<crate::guard::StageGuard>,
    /// Pushes the next stage's jobs, batched across jobs.
    pub(crate) chain: Arc<crate::chain::ChainPushers>,
    /// This role's record fields, and those of the outputs it reads (the stage before's).
    pub(crate) fields: Arc<RoleFields>,
    pub(crate) input_fields: Arc<[String]>,
}

/// One task at this role's stage, as a handler receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageInput {
    pub task_id: String,
    pub attempt: u32,
    pub prompt: String,
    pub metadata: BTreeMap<String, String>,
    /// The outputs of the stage before, by role: one, or each of a parallel stage's roles.
    /// Empty for the first stage.
    pub inputs: BTreeMap<String, String>,
    /// Why the model's previous answer was not accepted (a guardrail's re-ask): sent after
    /// the rest of the message. `None` on a first ask.
    pub feedback: Option<String>,
}

impl StageInput {
    /// The user message most roles send: the question, then each earlier role's notes,
    /// then `closing` (what to do with them).
    pub fn user_message(&self, closing: &str) -> String {
        let mut text = if self.inputs.is_empty() {
            self.prompt.clone()
        } else {
            let mut text = format!("Question:\n{}\n\n", self.prompt);
            for (role, output) in &self.inputs {
                text.push_str(&format!("Notes from the {role} agent:\n{output}\n\n"));
            }
            text.push_str(closing);
            text
        };
        if let Some(feedback) = &self.feedback {
            text.push_str("\n\n");
            text.push_str(feedback);
        }
        text
    }
}

/// The handler of a role that is only a prompt (most roles): one call to the role's model
/// with the question and the notes of the stage before, ending with `closing`.
#[derive(Debug, Clone)]
pub struct PromptRole {
    pub closing: String,
}

impl crate::RoleHandler for PromptRole {
    fn run<'a>(
        &'a self,
        ctx: &'a RoleContext,
        input: &'a StageInput,
    ) -> futures::future::BoxFuture<'a, Result<StageOutput, JobError>> {
        Box::pin(ctx.llm.complete(input.user_message(&self.closing)))
    }
}

/// What a handler produced: the stage's output.
#[derive(Debug, Clone, PartialEq)]
pub struct StageOutput {
    pub text: String,
    pub usage: TokenUsage,
}

impl RoleContext {
    /// Checks a task's prompt and metadata against the limits (class `too_large`).
    pub fn check_input(
        &self,
        prompt: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), JobFailure> {
        self.limits.check_prompt(prompt).map_err(too_large)?;
        self.limits.check_metadata(metadata).map_err(too_large)
    }

    /// Runs this role's stage of the task in `delivery`, at most once in effect:
    /// 1. reads the task (prompt, metadata, the stage before's outputs) and notes the start;
    ///    a `done` or `dead` task is left alone;
    /// 2. reuses the output an earlier attempt stored, else calls the handler (the provider)
    ///    and stores its output, once;
    /// 3. when that completes the stage (every parallel role done), pushes the next stage's
    ///    jobs, each guarded by the task id so that completing twice chains once.
    pub(crate) async fn run_stage<H: crate::RoleHandler + ?Sized>(
        &self,
        handler: &H,
        delivery: &Delivery,
        job: Result<Envelope<StageJob>, DecodeError>,
    ) -> Result<(), JobFailure> {
        self.limits
            .check_entry(delivery.raw().len())
            .map_err(too_large)?;
        let job = job?;
        if job.args.stage as usize != self.stage {
            return Err(JobError::permanent(format!(
                "this entry is for stage {} but the {} role runs stage {} of the pipeline {:?}",
                job.args.stage + 1,
                self.role,
                self.stage + 1,
                self.pipeline.to_string()
            ))
            .into());
        }
        let task_id = job.args.task_id.to_string();
        let inputs: &[String] = match self.stage.checked_sub(1) {
            Some(before) => self.pipeline.stage(before).unwrap_or_default(),
            None => &[],
        };
        let started_at_ms = now_ms();
        let start = StageStart {
            role: self.role,
            attempt: job.attempt,
            worker_id: &self.worker_id,
            stage: self.stage as u32,
            inputs,
        };
        // Most stages start with a plain read and no write (the finish notes the start);
        // a re-run, a deadline or a review starts with the start script.
        let (started, noted) = match self
            .store
            .read_stage(
                &task_id,
                &self.fields,
                &self.input_fields,
                &self.worker_id,
                job.attempt,
            )
            .await
            .map_err(redis_failure)?
        {
            Some(started) => (started, false),
            None => (
                self.store
                    .start_stage(&task_id, &start)
                    .await
                    .map_err(redis_failure)?,
                true,
            ),
        };
        let data = match started {
            Started::Gone => {
                return Err(JobError::permanent(format!(
                    "task record {task_id} not found (expired or deleted): nothing to write the result to"
                ))
                .into());
            }
            Started::Finished(status @ (TaskStatus::Cancelled | TaskStatus::Expired)) => {
                return Err(JobError::Stopped {
                    status,
                    message: format!(
                        "task {status} before the {} stage started; not run",
                        self.role
                    ),
                }
                .into());
            }
            Started::Finished(status) => {
                tracing::info!(%status, "task already finished; this delivery changes nothing");
                return Ok(());
            }
            Started::Ready(data) => data,
            // A copy of a job whose parking was not settled: park it again.
            Started::Parked => {
                return Err(JobFailure::Parked {
                    reason: "already parked for review".to_owned(),
                });
            }
        };
        let (output, usage) = match data.own_output {
            Some(output) => {
                tracing::info!("output of an earlier attempt reused; provider not called again");
                (output, TokenUsage::default())
            }
            None => {
                self.check_input(&data.prompt, &data.metadata)?;
                let input = StageInput {
                    task_id: task_id.clone(),
                    attempt: job.attempt,
                    prompt: data.prompt,
                    metadata: data.metadata,
                    inputs: data.inputs,
                    feedback: None,
                };
                // Guardrails, when the role has any: input rules, PII masking, output rules
                // with re-asks, then reject or park for review (guard.rs).
                let run = self.run_guarded(handler, input, data.deadline_in);
                let out = if noted {
                    run.await?
                } else {
                    self.noting_slow_start(&task_id, &start, run).await?
                };
                let Some(out) = out else {
                    return Ok(());
                };
                if let Err(e) = self.limits.check_output(out.text.len()) {
                    // Not retried: the same question tends to get an answer of the same size.
                    return Err(
                        JobError::permanent(format!("{}: {e}", self.llm.provider_name())).into(),
                    );
                }
                (out.text, out.usage)
            }
        };
        let stage_roles = self.pipeline.stage(self.stage).unwrap_or_default();
        let last = self.pipeline.is_last(self.stage);
        let finished = self
            .store
            .finish_stage(
                &task_id,
                &StageFinish {
                    role: &self.fields,
                    output: &output,
                    stage_roles,
                    last,
                    stage: self.stage as u32,
                    attempt: job.attempt,
                    worker_id: &self.worker_id,
                    started_at_ms,
                    provider: self.llm.provider_name(),
                    model: self.llm.model(),
                    usage,
                },
            )
            .await
            .map_err(redis_failure)?;
        match finished {
            Finished::Gone => Err(JobError::permanent(format!(
                "task record {task_id} vanished while the stage ran: nothing to write the result to"
            ))
            .into()),
            Finished::Terminal(status @ (TaskStatus::Cancelled | TaskStatus::Expired)) => {
                Err(JobError::Stopped {
                    status,
                    message: format!(
                        "task {status} while the {} stage ran; its output is not kept",
                        self.role
                    ),
                }
                .into())
            }
            Finished::Terminal(status) => {
                tracing::info!(%status, "task finished meanwhile; this output is not stored");
                Ok(())
            }
            Finished::Waiting => Ok(()),
            Finished::Complete if last => Ok(()),
            Finished::Complete => self.chain(&job).await,
        }
    }

    /// Awaits a stage that started without a write (`TaskStore::read_stage`); when it
    /// runs longer than [`START_NOTE_AFTER`], notes its start on the record, so that
    /// `agentfleet status` shows which worker runs it. A note that fails is only logged:
    /// the finish writes the same fields.
    async fn noting_slow_start<F: std::future::Future>(
        &self,
        task_id: &str,
        start: &StageStart<'_>,
        run: F,
    ) -> F::Output {
        tokio::pin!(run);
        tokio::select! {
            out = &mut run => return out,
            _ = tokio::time::sleep(START_NOTE_AFTER) => {}
        }
        let note = async {
            if let Err(e) = self.store.note_start(task_id, start).await {
                tracing::warn!(error = %e, "cannot note the stage's start on the task record");
            }
        };
        let ((), out) = tokio::join!(note, run);
        out
    }

    /// Runs the handler until it answers, the task is cancelled (the watch in
    /// `control.rs` fires the token), or the task's deadline comes: the provider call is
    /// then dropped, and with it its HTTP request, so no call outlives the time left.
    pub(crate) async fn run_stoppable<H: crate::RoleHandler + ?Sized>(
        &self,
        handler: &H,
        input: &StageInput,
        deadline_in: Option<std::time::Duration>,
    ) -> Result<StageOutput, JobFailure> {
        let registration = self.running.register(&input.task_id);
        let deadline = async {
            match deadline_in {
                Some(left) => tokio::time::sleep(left).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            out = handler.run(self, input) => Ok(out?),
            _ = registration.token().cancelled() => Err(JobError::Stopped {
                status: TaskStatus::Cancelled,
                message: format!("task cancelled while the {} stage ran; provider call aborted", self.role),
            }
            .into()),
            _ = deadline => {
                let reason = format!("deadline passed while the {} stage ran; provider call aborted", self.role);
                // Redis errors here retry the job; the next attempt finds the deadline
                // passed at its start and expires the task there.
                let stopped = self
                    .store
                    .stop(&input.task_id, TaskStatus::Expired, &reason)
                    .await
                    .map_err(redis_failure)?;
                let status = match stopped {
                    Some(agentfleet_queue::Stopped::Already(s)) if s != TaskStatus::Expired => s,
                    _ => TaskStatus::Expired,
                };
                Err(JobError::Stopped { status, message: reason }.into())
            }
        }
    }

    /// Pushes the next stage's jobs: one per role, each guarded by the task id (every role
    /// appears once in a pipeline), so a re-run or a second completing branch adds nothing.
    async fn chain(&self, job: &Envelope<StageJob>) -> Result<(), JobFailure> {
        let next = self.stage + 1;
        let task_id = job.args.task_id.to_string();
        // Continue the task's trace under this job's span when spans are exported;
        // otherwise a child of the enqueue context.
        let trace = match crate::current_traceparent() {
            Some(traceparent) => Some(TraceContext { traceparent }),
            None => job.args.trace.as_ref().map(TraceContext::child),
        };
        // The next stage waits in the task's lane.
        let entry = Envelope::new(
            task_id.clone(),
            StageJob {
                task_id: job.args.task_id,
                stage: next as u32,
                trace,
            },
        )
        .in_lane(job.lane)
        .encode();
        for role in self.pipeline.stage(next).unwrap_or_default() {
            self.chain
                .push(
                    role,
                    PushEntry {
                        entry: entry.clone(),
                        idempotency_key: Some(task_id.clone()),
                        due_ms: None,
                    },
                )
                .await?;
        }
        Ok(())
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
