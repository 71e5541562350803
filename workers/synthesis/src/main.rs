//! `synthesis-worker`: turns each task's analysis into the final answer, written once.
#![forbid(unsafe_code)]

use agentfleet_job::{Envelope, SynthesisJob, TaskStatus};
use agentfleet_queue::{Delivery, JobFailure};
use agentfleet_runtime::{LlmStage, RoleContext, RoleHandler, RoleSpec, WorkerArgs};

/// Many small short-lived allocations per job (JSON, Redis commands, spans): mimalloc
/// spends far less CPU on them than glibc malloc (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use futures::future::BoxFuture;

const SPEC: RoleSpec = RoleSpec {
    name: "synthesis",
    default_metrics_addr: "127.0.0.1:9465",
    default_system_prompt: "You write final answers. Given a question and an analyst's notes on \
        it, write a clear, direct, well-structured answer for the person who asked. Keep what \
        the analysis supports; drop the scaffolding.",
};

#[derive(clap::Parser)]
#[command(
    name = "synthesis-worker",
    version,
    about = "agentfleet synthesis worker: turns analyses into final answers"
)]
struct Cli {
    #[command(flatten)]
    worker: WorkerArgs,
}

struct Synthesis;

impl RoleHandler for Synthesis {
    fn handle<'a>(
        &'a self,
        ctx: &'a RoleContext,
        delivery: &'a Delivery,
    ) -> BoxFuture<'a, Result<(), JobFailure>> {
        Box::pin(async move {
            let job: Envelope<SynthesisJob> = ctx.decode(delivery)?;
            ctx.check_input(&job.args.prompt, &Default::default())?;
            let task_id = job.args.task_id.to_string();
            ctx.llm_stage(LlmStage {
                task_id: &task_id,
                attempt: job.attempt,
                running: TaskStatus::Synthesizing,
                finished: TaskStatus::Done,
                output_field: "answer",
                user: format!(
                    "Question:\n{}\n\nAnalysis:\n{}\n\nWrite the final answer.",
                    job.args.prompt, job.args.analysis
                ),
            })
            .await?;
            Ok(())
        })
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    agentfleet_runtime::main(
        SPEC,
        agentfleet_runtime::parse_args::<Cli>().worker,
        Synthesis,
    )
    .await
}
