//! The fleet's pipeline: how a process is told it, and how the fleet agrees on it.

use std::path::PathBuf;

use agentfleet_job::{DEFAULT_PIPELINE, Pipeline};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use crate::{Namespace, QueueError};

/// How a producer or a worker is told the pipeline: the same flags for both.
#[derive(Debug, Clone, clap::Args)]
pub struct PipelineArgs {
    /// The pipeline's stages in order: `>` separates stages, `+` roles that run in parallel
    /// on the same input (joined before the next stage). The last stage is one role: its
    /// output is the answer.
    #[arg(
        long,
        global = true,
        env = "AGENTFLEET_PIPELINE",
        value_name = "STAGES",
        default_value = DEFAULT_PIPELINE
    )]
    pub pipeline: String,

    /// Read the pipeline from this file instead (the same syntax; lines are joined, `#`
    /// starts a comment).
    #[arg(
        long,
        global = true,
        env = "AGENTFLEET_PIPELINE_FILE",
        value_name = "PATH"
    )]
    pub pipeline_file: Option<PathBuf>,
}

impl PipelineArgs {
    /// The pipeline these flags give. Errors name the flag.
    pub fn resolve(&self) -> Result<Pipeline, QueueError> {
        let (text, from) = match &self.pipeline_file {
            Some(path) => {
                let raw = std::fs::read_to_string(path).map_err(|e| {
                    QueueError::Config(format!("--pipeline-file {}: {e}", path.display()))
                })?;
                let joined: Vec<&str> = raw
                    .lines()
                    .map(|l| l.split('#').next().unwrap_or_default().trim())
                    .filter(|l| !l.is_empty())
                    .collect();
                (joined.join(" "), "--pipeline-file")
            }
            None => (self.pipeline.clone(), "--pipeline"),
        };
        text.parse()
            .map_err(|e| QueueError::Config(format!("{from} {text:?}: {e}")))
    }
}

/// Makes sure this process and the fleet agree on the pipeline: the first producer or worker
/// of a namespace records it (`<namespace>:pipeline`); every later one must give the same
/// (canonical form), or it is refused, since a producer and workers that disagree would
/// strand tasks between stages. `agentfleet pipeline set` changes it on purpose.
pub async fn agree_on_pipeline(
    conn: &ConnectionManager,
    namespace: &Namespace,
    pipeline: &Pipeline,
) -> Result<(), QueueError> {
    let mut conn = conn.clone();
    let key = namespace.pipeline();
    let given = pipeline.to_string();
    // `SET .. NX` rather than SETNX: one command the ACL rules already grant.
    let (_, stored): (Option<String>, String) = redis::pipe()
        .cmd("SET")
        .arg(&key)
        .arg(&given)
        .arg("NX")
        .get(&key)
        .query_async(&mut conn)
        .await?;
    if stored != given {
        return Err(QueueError::Config(format!(
            "this fleet's pipeline is {stored:?} but this process was given {given:?} (--pipeline / AGENTFLEET_PIPELINE); give the same, or change the fleet's with `agentfleet pipeline set`"
        )));
    }
    Ok(())
}

/// The fleet's recorded pipeline, if any process recorded one yet.
pub async fn recorded_pipeline(
    conn: &ConnectionManager,
    namespace: &Namespace,
) -> Result<Option<String>, QueueError> {
    Ok(conn.clone().get(namespace.pipeline()).await?)
}

/// Records `pipeline` as the fleet's, replacing what was there (an operator's decision).
pub async fn record_pipeline(
    conn: &ConnectionManager,
    namespace: &Namespace,
    pipeline: &Pipeline,
) -> Result<(), QueueError> {
    let _: () = conn
        .clone()
        .set(namespace.pipeline(), pipeline.to_string())
        .await?;
    Ok(())
}
