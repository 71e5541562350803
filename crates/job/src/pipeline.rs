use std::fmt;
use std::str::FromStr;

/// The stages a task goes through, in order. A stage is one role, or several roles that run
/// in parallel on the same input and are joined before the next stage.
///
/// Written `reasoning > critique + fact-check > synthesis`: `>` separates stages, `+` the
/// roles of one stage. Producers and workers of a fleet must agree on it (the queue keeps
/// the fleet's definition in Redis and refuses a process that disagrees).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    stages: Vec<Vec<String>>,
}

/// Today's pipeline, and the default: every README flow assumes it.
pub const DEFAULT_PIPELINE: &str = "reasoning > synthesis";

/// Why a pipeline definition is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    #[error("the pipeline is empty")]
    Empty,
    #[error("stage {0} of the pipeline names no role")]
    EmptyStage(usize),
    #[error("role {0:?} must be 1-64 characters of a-z, A-Z, 0-9, '-', '_' or '.'")]
    BadRole(String),
    #[error("role {0:?} appears twice in the pipeline")]
    Repeated(String),
    #[error("the last stage must be one role (its output is the task's answer), not {0}")]
    ParallelLast(String),
}

impl Pipeline {
    pub fn stages(&self) -> &[Vec<String>] {
        &self.stages
    }

    /// The stage `index`, if there is one.
    pub fn stage(&self, index: usize) -> Option<&[String]> {
        self.stages.get(index).map(Vec::as_slice)
    }

    /// Where `role` runs: its stage's index.
    pub fn stage_of(&self, role: &str) -> Option<usize> {
        self.stages
            .iter()
            .position(|stage| stage.iter().any(|r| r == role))
    }

    /// Every role, in pipeline order.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().flatten().map(String::as_str)
    }

    /// The roles that receive new tasks.
    pub fn first(&self) -> &[String] {
        &self.stages[0]
    }

    /// The role whose output is the task's answer.
    pub fn last_role(&self) -> &str {
        &self.stages[self.stages.len() - 1][0]
    }

    pub fn is_last(&self, stage: usize) -> bool {
        stage + 1 == self.stages.len()
    }
}

impl FromStr for Pipeline {
    type Err = PipelineError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim().is_empty() {
            return Err(PipelineError::Empty);
        }
        let mut stages = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, stage) in text.split('>').enumerate() {
            let roles: Vec<String> = stage
                .split('+')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect();
            if roles.is_empty() || stage.split('+').any(|r| r.trim().is_empty()) {
                return Err(PipelineError::EmptyStage(i + 1));
            }
            for role in &roles {
                let ok = role.len() <= 64
                    && role
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if !ok {
                    return Err(PipelineError::BadRole(role.clone()));
                }
                if !seen.insert(role.clone()) {
                    return Err(PipelineError::Repeated(role.clone()));
                }
            }
            stages.push(roles);
        }
        if let Some(last) = stages.last()
            && last.len() > 1
        {
            return Err(PipelineError::ParallelLast(last.join(" + ")));
        }
        Ok(Self { stages })
    }
}

/// The canonical form (`a > b + c > d`): what the fleet stores and compares.
impl fmt::Display for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stages: Vec<String> = self.stages.iter().map(|s| s.join(" + ")).collect();
        f.write_str(&stages.join(" > "))
    }
}

impl Default for Pipeline {
    fn default() -> Self {
        DEFAULT_PIPELINE
            .parse()
            .unwrap_or_else(|_| unreachable!("the default pipeline parses"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_and_parallel_roles_parse_to_a_canonical_form() {
        let p: Pipeline = " reasoning>critique +fact-check >  synthesis"
            .parse()
            .unwrap();
        assert_eq!(
            p.to_string(),
            "reasoning > critique + fact-check > synthesis"
        );
        assert_eq!(p.stage_of("fact-check"), Some(1));
        assert_eq!(p.first(), ["reasoning".to_owned()]);
        assert_eq!(p.last_role(), "synthesis");
        assert!(p.is_last(2));
        assert_eq!(
            p.roles().collect::<Vec<_>>(),
            ["reasoning", "critique", "fact-check", "synthesis"]
        );
        assert_eq!(Pipeline::default().to_string(), DEFAULT_PIPELINE);
    }

    #[test]
    fn bad_definitions_are_refused_with_the_reason() {
        assert_eq!("".parse::<Pipeline>(), Err(PipelineError::Empty));
        assert_eq!(
            "a > > b".parse::<Pipeline>(),
            Err(PipelineError::EmptyStage(2))
        );
        assert_eq!(
            "a + > b".parse::<Pipeline>(),
            Err(PipelineError::EmptyStage(1))
        );
        assert_eq!(
            "a > a".parse::<Pipeline>(),
            Err(PipelineError::Repeated("a".into()))
        );
        assert_eq!(
            "a > b:c".parse::<Pipeline>(),
            Err(PipelineError::BadRole("b:c".into()))
        );
        assert!(matches!(
            "a > b + c".parse::<Pipeline>(),
            Err(PipelineError::ParallelLast(_))
        ));
    }
}
