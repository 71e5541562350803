//! `synthesis-worker`: turns the notes of the stage before into the final answer.
#![forbid(unsafe_code)]

use agentfleet_runtime::{PromptRole, RoleSpec};

/// Many small short-lived allocations per job (JSON, Redis commands, spans): mimalloc
/// spends far less CPU on them than glibc malloc (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SYSTEM_PROMPT: &str = "You write final answers. Given a question and other agents' notes \
    on it, write a clear, direct, well-structured answer for the person who asked. Keep what \
    the notes support; drop the scaffolding.";

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
        PromptRole {
            closing: "Write the final answer.".to_owned(),
        },
    )
    .await
}
