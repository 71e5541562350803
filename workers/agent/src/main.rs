//! `agent-worker --role NAME`: a role of the pipeline that differs from others only in its
//! provider, model and system prompt (`--provider`, `--model`, `--system-prompt`): a critic,
//! a fact-checker, a translator. No crate to write: one more Helm values entry.
#![forbid(unsafe_code)]

use agentfleet_runtime::{PromptRole, RoleSpec, WorkerArgs};
use clap::Parser;

/// Many small short-lived allocations per job (JSON, Redis commands, spans): mimalloc
/// spends far less CPU on them than glibc malloc (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "agent-worker",
    version,
    about = "agentfleet generic agent worker: runs one role of the pipeline with the given prompt"
)]
struct Cli {
    /// The role this worker runs: a name in the pipeline (--pipeline).
    #[arg(long, env = "AGENTFLEET_ROLE", value_name = "NAME")]
    role: String,

    #[command(flatten)]
    worker: WorkerArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = agentfleet_runtime::parse_args::<Cli>();
    let spec = RoleSpec {
        default_system_prompt: format!(
            "You are the {} agent of a pipeline of agents. Read the question and the notes \
             of the agents before you, do your part well, and write only your contribution \
             for the agents after you.",
            cli.role
        ),
        name: cli.role,
        // Port 0: a free port, logged at start (set --metrics-addr in deployments).
        default_metrics_addr: "127.0.0.1:0",
    };
    let closing = format!("Do your part as the {} agent.", spec.name);
    agentfleet_runtime::main(spec, cli.worker, PromptRole { closing }).await
}
