//! Guardrails around a role's model call: the one hook `run_stage` calls in place of the
//! handler when the stage has no stored output.
//!
//! 1. input rules on the exact text the stage received (prompt, earlier outputs, metadata),
//!    minus rules a person already approved for the task: a violation goes straight to the
//!    action, and the provider sees nothing;
//! 2. PII masking of the prompt and earlier outputs (stable placeholders for the whole job);
//! 3. the handler (the provider call), its answer's placeholders restored;
//! 4. output rules on the restored answer; a failing answer is asked again, up to `reask`
//!    times, with the rules' messages (masked too) fed back to the model;
//! 5. the action: `reject` dead-letters (class `guardrail`), `review` parks the task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentfleet_guardrails::{Action, RoleGuard, Violation, describe, reask_feedback};
use agentfleet_job::{GuardSide, JobError, PendingReview, TokenUsage, now_ms};
use agentfleet_queue::{JobFailure, ReviewWrite};
use agentfleet_telemetry::Metrics;

use crate::context::redis_failure;
use crate::{RoleContext, RoleHandler, StageInput, StageOutput};

/// Longest guardrail message a dead letter keeps.
const MESSAGE_CHARS: usize = 2_000;

/// A role's guardrails and the metrics they count into.
#[derive(Clone)]
pub(crate) struct StageGuard {
    pub rules: Arc<RoleGuard>,
    pub metrics: Metrics,
}

impl StageGuard {
    fn count(&self, role: &str, found: &[Violation]) {
        for v in found {
            self.metrics
                .guardrails
                .violations_total
                .with_label_values(&[role, &v.rule, v.side.as_str()])
                .inc();
        }
    }
}

fn rule_names(found: &[Violation]) -> Vec<String> {
    found.iter().map(|v| v.rule.clone()).collect()
}

fn capped(text: String) -> String {
    match text.char_indices().nth(MESSAGE_CHARS) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

impl RoleContext {
    /// Runs the handler inside the role's guardrails (just the handler when it has none).
    /// `Ok(None)`: the task finished meanwhile, nothing to store.
    pub(crate) async fn run_guarded<H: RoleHandler + ?Sized>(
        &self,
        handler: &H,
        input: StageInput,
        deadline_in: Option<Duration>,
    ) -> Result<Option<StageOutput>, JobFailure> {
        let Some(guard) = &self.guard else {
            return Ok(Some(
                self.run_stoppable(handler, &input, deadline_in).await?,
            ));
        };
        // Re-asks share the stage's deadline: each call gets the time left.
        let deadline = deadline_in.map(|left| Instant::now() + left);
        let left = || deadline.map(|at| at.saturating_duration_since(Instant::now()));
        let rules = &guard.rules;
        let mut found = rules.check_input(&input.prompt, &input.inputs, &input.metadata, &[]);
        if !found.is_empty() {
            // Read only on a violation: rules a person approved for this task in review.
            let approved = self
                .store
                .approved_rules(&input.task_id, self.role)
                .await
                .map_err(redis_failure)?;
            found.retain(|v| !approved.contains(&v.rule));
        }
        let task_id = input.task_id.clone();
        if !found.is_empty() {
            guard.count(self.role, &found);
            let action = rules.input_action().unwrap_or_default();
            return self
                .guardrail_action(guard, GuardSide::Input, action, &found, None, &task_id)
                .await;
        }

        let mut session = rules.pii_session();
        let mut asked = input;
        if let Some(session) = &mut session {
            asked.prompt = session.mask(&asked.prompt);
            for text in asked.inputs.values_mut() {
                *text = session.mask(text);
            }
            if session.masked() > 0 {
                tracing::info!(
                    masked = session.masked(),
                    "personal data masked before the provider call"
                );
            }
        }
        let mut usage = TokenUsage::default();
        let mut reasks = 0;
        loop {
            let out = self.run_stoppable(handler, &asked, left()).await?;
            usage.prompt_tokens += out.usage.prompt_tokens;
            usage.completion_tokens += out.usage.completion_tokens;
            let text = match &session {
                Some(session) => session.restore(&out.text),
                None => out.text,
            };
            let found = rules.check_output(&text);
            if found.is_empty() {
                return Ok(Some(StageOutput { text, usage }));
            }
            guard.count(self.role, &found);
            if reasks < rules.reask() {
                reasks += 1;
                guard
                    .metrics
                    .guardrails
                    .reasks_total
                    .with_label_values(&[self.role])
                    .inc();
                tracing::info!(
                    rules = %rule_names(&found).join(","),
                    reask = reasks,
                    "the answer failed output guardrails; asking the model again"
                );
                let feedback = reask_feedback(&found, &text);
                asked.feedback = Some(match &mut session {
                    Some(session) => session.mask(&feedback),
                    None => feedback,
                });
                continue;
            }
            let action = rules.output_action().unwrap_or_default();
            return self
                .guardrail_action(
                    guard,
                    GuardSide::Output,
                    action,
                    &found,
                    Some(text),
                    &task_id,
                )
                .await;
        }
    }

    /// Rejects (dead letter, class `guardrail`) or parks the task for review.
    async fn guardrail_action(
        &self,
        guard: &StageGuard,
        side: GuardSide,
        action: Action,
        found: &[Violation],
        output: Option<String>,
        task_id: &str,
    ) -> Result<Option<StageOutput>, JobFailure> {
        let rules = rule_names(found);
        guard
            .metrics
            .guardrails
            .actions_total
            .with_label_values(&[self.role, side.as_str(), action.as_str()])
            .inc();
        // Rule names only: excerpts may hold personal data and stay out of the logs.
        tracing::warn!(side = %side, rules = %rules.join(","), action = action.as_str(), "guardrail stopped the task");
        match action {
            Action::Reject => Err(JobError::Guardrail {
                message: capped(describe(found)),
            }
            .into()),
            Action::Review => {
                if let Some(text) = &output
                    && let Err(e) = self.limits.check_output(text.len())
                {
                    return Err(
                        JobError::permanent(format!("{}: {e}", self.llm.provider_name())).into(),
                    );
                }
                let review = PendingReview {
                    side,
                    rules: rules.clone(),
                    reason: capped(
                        found
                            .iter()
                            .map(|v| format!("{}: {}", v.rule, v.message))
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                    excerpt: found.first().map(|v| v.excerpt.clone()).unwrap_or_default(),
                    stage: self.stage as u32,
                    at_ms: now_ms(),
                    output,
                };
                match self
                    .store
                    .park_for_review(task_id, self.role, &review)
                    .await
                    .map_err(redis_failure)?
                {
                    ReviewWrite::Finished(status) => {
                        tracing::info!(%status, "task finished meanwhile; not parked");
                        Ok(None)
                    }
                    ReviewWrite::Gone => Err(JobError::permanent(format!(
                        "task record {task_id} vanished while the stage ran: nothing to park"
                    ))
                    .into()),
                    ReviewWrite::Written | ReviewWrite::Already | ReviewWrite::NotWaiting => {
                        Err(JobFailure::Parked {
                            reason: format!("{side} rules {}", rules.join(", ")),
                        })
                    }
                }
            }
        }
    }
}
