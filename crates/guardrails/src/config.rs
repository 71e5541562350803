//! The guardrails file as written (TOML), before its patterns and schemas are compiled.
//! Every table refuses keys it does not know, so a misspelt rule fails at start-up, named,
//! instead of silently guarding nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// What happens to a task whose input, or whose output after its re-asks, fails a rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Dead-lettered at once with class `guardrail`.
    #[default]
    Reject,
    /// Parked, holding no worker slot, until a person approves or rejects it.
    Review,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Review => "review",
        }
    }
}

/// `[<role>]`: the role's rules.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleFile {
    #[serde(default)]
    pub input: Option<InputFile>,
    #[serde(default)]
    pub output: Option<OutputFile>,
    #[serde(default)]
    pub pii: Option<PiiFile>,
}

/// `[<role>.input]`: checked before the provider call.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InputFile {
    #[serde(default)]
    pub max_chars: Option<usize>,
    #[serde(default)]
    pub deny: Vec<DenyFile>,
    #[serde(default)]
    pub require_metadata: Vec<String>,
    #[serde(default)]
    pub action: Action,
}

/// `[<role>.output]`: checked after the provider call.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutputFile {
    #[serde(default)]
    pub max_chars: Option<usize>,
    #[serde(default)]
    pub deny: Vec<DenyFile>,
    #[serde(default)]
    pub must_match: Option<String>,
    #[serde(default)]
    pub json_schema: Option<PathBuf>,
    #[serde(default)]
    pub reask: u32,
    #[serde(default)]
    pub action: Action,
}

/// `[<role>.pii]`: what is masked before the provider sees it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PiiFile {
    #[serde(default)]
    pub mask: Vec<String>,
    /// Custom kinds: name → regex, used by naming them in `mask`.
    #[serde(default)]
    pub patterns: BTreeMap<String, String>,
}

/// One `deny` entry: a bare pattern (`"(?i)..."`, named `deny[N]`) or a named one
/// (`{ name = "prompt_injection", pattern = "..." }`).
#[derive(Debug)]
pub(crate) enum DenyFile {
    Pattern(String),
    Named(NamedDeny),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NamedDeny {
    pub name: String,
    pub pattern: String,
}

// By hand rather than `#[serde(untagged)]`: an untagged enum hides the inner table's error
// ("unknown field `patern`") behind "did not match any variant".
impl<'de> Deserialize<'de> for DenyFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DenyVisitor;
        impl<'de> Visitor<'de> for DenyVisitor {
            type Value = DenyFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a pattern string or a table { name = \"...\", pattern = \"...\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DenyFile, E> {
                Ok(DenyFile::Pattern(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DenyFile, A::Error> {
                NamedDeny::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(DenyFile::Named)
            }
        }
        deserializer.deserialize_any(DenyVisitor)
    }
}
