//! `synthesis-worker`: turns the notes of the stage before into the final answer.
#![forbid(unsafe_code)]

use agentfleet_job::JobError;
use agentfleet_runtime::{RoleContext, RoleHandler, RoleSpec, StageInput, StageOutput};
use futures::future::BoxFuture;

/// Many small short-lived allocations per job (JSON, Redis commands, spans): mimalloc
/// spends far less CPU on them than glibc malloc (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SYSTEM_PROMPT: &str = "You write final answers. Given a question and other agents' notes \
    on it, write a clear, direct, well-structured answer for the person who asked. Keep what \
    the notes support; drop the scaffolding.";

struct Synthesis;

impl RoleHandler for Synthesis {
    fn run<'a>(
        &'a self,
        ctx: &'a RoleContext,
        input: &'a StageInput,
    ) -> BoxFuture<'a, Result<StageOutput, JobError>> {
        Box::pin(
            ctx.llm
                .complete(input.user_message("Write the final answer.")),
        )
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let spec = RoleSpec {
        name: "synthesis".to_owned(),
        default_metrics_addr: "127.0.0.1:9465",
        default_system_prompt: SYSTEM_PROMPT.to_owned(),
    };
    agentfleet_runtime::role_main(
        spec,
        "synthesis-worker",
        "agentfleet synthesis worker: turns the notes of the stage before into the answer",
        Synthesis,
    )
    .await
}
