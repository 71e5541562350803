//! `reasoning-worker`: analyses each task's prompt systematically, then chains exactly one
//! synthesis job per task.
#![forbid(unsafe_code)]

use agentfleet_job::{Envelope, ReasoningJob, SynthesisJob, TaskStatus, TraceContext};
use agentfleet_queue::{Delivery, JobFailure, PushEntry};
use agentfleet_runtime::current_traceparent;
use agentfleet_runtime::{
    LlmStage, RoleContext, RoleHandler, RoleSpec, StageResult, WorkerArgs, redis_failure,
};

/// Many small short-lived allocations per job (JSON, Redis commands, spans): mimalloc
/// spends far less CPU on them than glibc malloc (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use futures::future::BoxFuture;

const SPEC: RoleSpec = RoleSpec {
    name: "reasoning",
    default_metrics_addr: "127.0.0.1:9464",
    default_system_prompt: "You are a careful analyst. Analyse the user's question systematically: \
        restate it, list what is known and what is assumed, break it into sub-questions, weigh \
        the evidence and alternatives for each, and note open risks. Do not write the final \
        answer; write the analysis another agent will turn into one.",
};

/// The role whose jobs this one chains to.
const NEXT_ROLE: &str = "synthesis";

#[derive(clap::Parser)]
#[command(
    name = "reasoning-worker",
    version,
    about = "agentfleet reasoning worker: analyses prompts, chains synthesis jobs"
)]
struct Cli {
    #[command(flatten)]
    worker: WorkerArgs,
}

struct Reasoning;

impl RoleHandler for Reasoning {
    fn handle<'a>(
        &'a self,
        ctx: &'a RoleContext,
        delivery: &'a Delivery,
    ) -> BoxFuture<'a, Result<(), JobFailure>> {
        Box::pin(async move {
            let job: Envelope<ReasoningJob> = ctx.decode(delivery)?;
            ctx.check_input(&job.args.prompt, &job.args.metadata)?;
            let task_id = job.args.task_id.to_string();
            let analysis = match ctx
                .llm_stage(LlmStage {
                    task_id: &task_id,
                    attempt: job.attempt,
                    running: TaskStatus::Reasoning,
                    finished: TaskStatus::Synthesizing,
                    output_field: "analysis",
                    user: job.args.prompt.clone(),
                })
                .await?
            {
                StageResult::Output(analysis) => analysis,
                StageResult::AlreadyFinished(_) => return Ok(()),
            };
            // The synthesis job's id is the task id and its push is guarded by it: a re-run
            // of this job (after a crash or a lost ack) never creates a second one.
            let next = Envelope::new(
                task_id.clone(),
                SynthesisJob {
                    task_id: job.args.task_id,
                    prompt: job.args.prompt,
                    analysis,
                    created_at_ms: job.args.created_at_ms,
                    // Continue the task's trace under this job's span when spans are
                    // exported; otherwise a child of the enqueue context.
                    trace: match current_traceparent() {
                        Some(traceparent) => Some(TraceContext { traceparent }),
                        None => job.args.trace.as_ref().map(|t| t.child()),
                    },
                },
            );
            let pushed = ctx
                .queue(NEXT_ROLE)
                .map_err(redis_failure)?
                .push(PushEntry {
                    entry: next.encode(),
                    idempotency_key: Some(task_id),
                })
                .await
                .map_err(redis_failure)?;
            if !pushed {
                tracing::info!("synthesis job already enqueued by an earlier attempt");
            }
            Ok(())
        })
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    agentfleet_runtime::main(
        SPEC,
        agentfleet_runtime::parse_args::<Cli>().worker,
        Reasoning,
    )
    .await
}
