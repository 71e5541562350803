//! `reasoning-worker`: analyses each task's prompt systematically, for the stages after it.
#![forbid(unsafe_code)]

use agentfleet_runtime::{PromptRole, RoleSpec};

/// Many small short-lived allocations per job (JSON, Redis commands, spans): mimalloc
/// spends far less CPU on them than glibc malloc (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SYSTEM_PROMPT: &str = "You are a careful analyst. Analyse the user's question systematically: \
    restate it, list what is known and what is assumed, break it into sub-questions, weigh \
    the evidence and alternatives for each, and note open risks. Do not write the final \
    answer; write the analysis another agent will turn into one.";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let spec = RoleSpec {
        name: "reasoning".to_owned(),
        default_metrics_addr: "127.0.0.1:9464",
        default_system_prompt: SYSTEM_PROMPT.to_owned(),
    };
    agentfleet_runtime::role_main(
        spec,
        "reasoning-worker",
        "agentfleet reasoning worker: analyses prompts for the stages after it",
        PromptRole {
            closing: "Analyse the question, taking these notes into account.".to_owned(),
        },
    )
    .await
}
