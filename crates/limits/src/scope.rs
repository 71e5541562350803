//! Which job a provider call belongs to. The provider trait sees only the prompt; the
//! runtime runs each handler inside a [`JobScope`] so that the limits decorator can book
//! slots per job and charge budgets to the task and its tenant.

use std::future::Future;

tokio::task_local! {
    static SCOPE: JobScope;
}

/// The job a call is made for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobScope {
    /// The task id (the envelope's `id`).
    pub task_id: Option<String>,
    /// The task's `tenant` metadata, when the job carries it.
    pub tenant: Option<String>,
    /// The job's priority lane: a high job waiting for a limit goes before the others.
    pub lane: agentfleet_job::Lane,
}

impl JobScope {
    /// Reads the scope from a queue entry, leniently: an entry that is not an envelope has
    /// no scope (its handler reports the decode error).
    pub fn from_entry(raw: &[u8]) -> Self {
        #[derive(serde::Deserialize)]
        struct Entry {
            #[serde(default)]
            id: Option<String>,
            #[serde(default)]
            args: Option<Args>,
            #[serde(default)]
            lane: agentfleet_job::Lane,
        }
        #[derive(serde::Deserialize)]
        struct Args {
            #[serde(default)]
            metadata: Option<std::collections::BTreeMap<String, String>>,
        }
        match serde_json::from_slice::<Entry>(raw) {
            Ok(e) => Self {
                lane: e.lane,
                task_id: e.id,
                tenant: e
                    .args
                    .and_then(|a| a.metadata)
                    .and_then(|mut m| m.remove("tenant")),
            },
            Err(_) => Self::default(),
        }
    }

    /// Runs `f` with this scope visible to [`JobScope::current`].
    pub async fn run<F: Future>(self, f: F) -> F::Output {
        SCOPE.scope(self, f).await
    }

    /// The scope of the job this task runs, if any.
    pub fn current() -> Option<Self> {
        SCOPE.try_with(Clone::clone).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_is_read_from_an_entry() {
        let s = JobScope::from_entry(
            br#"{"attempt":1,"v":1,"id":"T1","args":{"metadata":{"tenant":"acme"}}}"#,
        );
        assert_eq!(s.task_id.as_deref(), Some("T1"));
        assert_eq!(s.tenant.as_deref(), Some("acme"));
        assert_eq!(JobScope::from_entry(b"garbage"), JobScope::default());
    }
}
