//! Guardrails around every model call of a role.
//!
//! One TOML file for the fleet (`--guardrails FILE`), a table per role and side:
//! - **input** rules, checked on the exact text before the provider call (length, deny
//!   patterns, required metadata);
//! - **output** rules, checked on the answer (length, deny patterns, a pattern it must
//!   match, a JSON Schema), with a bounded number of re-asks that feed the rule's message
//!   back to the model;
//! - **pii**: which kinds of personal data are masked before the provider sees the text and
//!   restored in the answer.
//!
//! What happens on a violation (`reject` or `review`) and the re-asks are the runtime's;
//! this crate only says what the rules are and whether a text passes them. No I/O after
//! [`Guardrails::load`].
#![forbid(unsafe_code)]

mod config;
mod pii;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use agentfleet_job::GuardSide;
pub use config::Action;
pub use pii::{PiiSession, luhn_valid};

use config::{DenyFile, InputFile, OutputFile, PiiFile, RoleFile};
use pii::PiiKind;
use regex::{Regex, RegexBuilder};

/// Most characters of offending text a violation keeps (dead letters, reviews).
pub const EXCERPT_CHARS: usize = 200;
/// Most characters of a rejected answer quoted back to the model in a re-ask.
const REASK_QUOTE_CHARS: usize = 4_000;
/// Most schema errors one violation lists.
const SCHEMA_ERRORS: usize = 5;
/// Largest compiled regex (bytes): a pattern bigger than this is refused at start-up.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Why the guardrails file cannot be used. Never retryable: fix the file and restart.
#[derive(Debug, thiserror::Error)]
pub enum GuardrailError {
    #[error("cannot read the guardrails file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("guardrails file {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// The fleet's guardrails: each role's rules, compiled.
#[derive(Debug, Default)]
pub struct Guardrails {
    roles: BTreeMap<String, Arc<RoleGuard>>,
}

impl Guardrails {
    /// Reads and compiles the file; `json_schema` paths are relative to its directory.
    pub fn load(path: &Path) -> Result<Self, GuardrailError> {
        let text = std::fs::read_to_string(path).map_err(|source| GuardrailError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir).map_err(|reason| GuardrailError::Invalid {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Compiles the text of a guardrails file; `base` is where relative schema paths start.
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let file: BTreeMap<String, RoleFile> = toml::from_str(text).map_err(|e| {
            // toml's message spans several lines (a caret under the key); keep it whole.
            e.to_string().trim_end().to_owned()
        })?;
        let mut roles = BTreeMap::new();
        for (role, rules) in file {
            let guard = RoleGuard::compile(&role, rules, base)?;
            roles.insert(role, Arc::new(guard));
        }
        Ok(Self { roles })
    }

    /// The rules of `role`, if the file has a table for it.
    pub fn role(&self, role: &str) -> Option<Arc<RoleGuard>> {
        self.roles.get(role).cloned()
    }

    /// The roles the file names.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }
}

/// One rule that failed, with what a person (or the model, on a re-ask) needs to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub side: GuardSide,
    /// The rule's name: `max_chars`, `require_metadata`, `must_match`, `json_schema`, a
    /// named deny rule's `name`, or `deny[N]` for the N-th unnamed one.
    pub rule: String,
    /// What is wrong, in words.
    pub message: String,
    /// The offending text (around a match, or its start), at most [`EXCERPT_CHARS`].
    pub excerpt: String,
}

impl Violation {
    /// One line for a dead letter or a review: rule, side, message and excerpt.
    pub fn describe(&self) -> String {
        if self.excerpt.is_empty() {
            format!("{} rule {}: {}", self.side, self.rule, self.message)
        } else {
            format!(
                "{} rule {}: {}; excerpt: {:?}",
                self.side, self.rule, self.message, self.excerpt
            )
        }
    }
}

/// All the violations of one check, described on one line.
pub fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(Violation::describe)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The text sent to the model when its answer failed output rules: what was wrong, its
/// answer (capped), and the request to answer again. The caller masks it like any input.
pub fn reask_feedback(violations: &[Violation], previous_answer: &str) -> String {
    let mut text = String::from("Your previous answer was not accepted, for these reasons:\n");
    for v in violations {
        text.push_str(&format!("- {}\n", v.message));
    }
    text.push_str("\nYour previous answer was:\n<<<\n");
    text.push_str(&cap(previous_answer, REASK_QUOTE_CHARS));
    text.push_str("\n>>>\n\nAnswer again, correcting every point above.");
    text
}

#[derive(Debug)]
struct DenyRule {
    name: String,
    pattern: String,
    regex: Regex,
}

#[derive(Debug)]
struct InputRules {
    max_chars: Option<usize>,
    deny: Vec<DenyRule>,
    require_metadata: Vec<String>,
    action: Action,
}

#[derive(Debug)]
struct OutputRules {
    max_chars: Option<usize>,
    deny: Vec<DenyRule>,
    must_match: Option<(String, Regex)>,
    json_schema: Option<(String, jsonschema::Validator)>,
    reask: u32,
    action: Action,
}

/// One role's compiled rules.
#[derive(Debug)]
pub struct RoleGuard {
    input: Option<InputRules>,
    output: Option<OutputRules>,
    pii: Vec<PiiKind>,
}

fn deny_rules(role: &str, side: &str, deny: Vec<DenyFile>) -> Result<Vec<DenyRule>, String> {
    deny.into_iter()
        .enumerate()
        .map(|(i, d)| {
            let (name, pattern) = match d {
                DenyFile::Pattern(p) => (format!("deny[{i}]"), p),
                DenyFile::Named(n) => (n.name, n.pattern),
            };
            // Deny patterns match regardless of case: "Ignore previous instructions" is
            // the same attack as "ignore previous instructions".
            let regex = RegexBuilder::new(&pattern)
                .case_insensitive(true)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("[{role}.{side}] deny rule {name}: {e}"))?;
            Ok(DenyRule {
                name,
                pattern,
                regex,
            })
        })
        .collect()
}

fn plain_regex(role: &str, what: &str, pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("[{role}] {what}: {e}"))
}

impl RoleGuard {
    fn compile(role: &str, file: RoleFile, base: &Path) -> Result<Self, String> {
        let input = file
            .input
            .map(|i: InputFile| -> Result<_, String> {
                Ok(InputRules {
                    max_chars: i.max_chars,
                    deny: deny_rules(role, "input", i.deny)?,
                    require_metadata: i.require_metadata,
                    action: i.action,
                })
            })
            .transpose()?;
        let output = file
            .output
            .map(|o: OutputFile| -> Result<_, String> {
                let must_match = o
                    .must_match
                    .map(|p| {
                        plain_regex(role, "output.must_match", &p).map(|regex| (p.clone(), regex))
                    })
                    .transpose()?;
                let json_schema = o
                    .json_schema
                    .map(|path| compile_schema(role, base, &path))
                    .transpose()?;
                Ok(OutputRules {
                    max_chars: o.max_chars,
                    deny: deny_rules(role, "output", o.deny)?,
                    must_match,
                    json_schema,
                    reask: o.reask,
                    action: o.action,
                })
            })
            .transpose()?;
        let pii = file
            .pii
            .map(|p| pii_kinds(role, p))
            .transpose()?
            .unwrap_or_default();
        Ok(Self { input, output, pii })
    }

    /// What happens when the input fails a rule (`None`: no input rules).
    pub fn input_action(&self) -> Option<Action> {
        self.input.as_ref().map(|i| i.action)
    }

    /// What happens when the output still fails a rule after its re-asks.
    pub fn output_action(&self) -> Option<Action> {
        self.output.as_ref().map(|o| o.action)
    }

    /// How many times a failing answer is asked again before the action applies.
    pub fn reask(&self) -> u32 {
        self.output.as_ref().map_or(0, |o| o.reask)
    }

    /// Every rule by side and name (for metrics that should read 0 before a violation).
    pub fn rule_names(&self) -> Vec<(GuardSide, String)> {
        let mut names = Vec::new();
        if let Some(i) = &self.input {
            if i.max_chars.is_some() {
                names.push((GuardSide::Input, "max_chars".to_owned()));
            }
            names.extend(i.deny.iter().map(|d| (GuardSide::Input, d.name.clone())));
            if !i.require_metadata.is_empty() {
                names.push((GuardSide::Input, "require_metadata".to_owned()));
            }
        }
        if let Some(o) = &self.output {
            if o.max_chars.is_some() {
                names.push((GuardSide::Output, "max_chars".to_owned()));
            }
            names.extend(o.deny.iter().map(|d| (GuardSide::Output, d.name.clone())));
            if o.must_match.is_some() {
                names.push((GuardSide::Output, "must_match".to_owned()));
            }
            if o.json_schema.is_some() {
                names.push((GuardSide::Output, "json_schema".to_owned()));
            }
        }
        names
    }

    /// A masking session for one job, or `None` when the role masks nothing.
    pub fn pii_session(&self) -> Option<PiiSession<'_>> {
        (!self.pii.is_empty()).then(|| PiiSession::new(&self.pii))
    }

    /// Checks a stage's input: the prompt, the outputs of the stage before (by role) and the
    /// metadata. Rules named in `approved` (a person approved them for this task) are skipped.
    pub fn check_input(
        &self,
        prompt: &str,
        inputs: &BTreeMap<String, String>,
        metadata: &BTreeMap<String, String>,
        approved: &[String],
    ) -> Vec<Violation> {
        let Some(rules) = &self.input else {
            return Vec::new();
        };
        let skip = |rule: &str| approved.iter().any(|a| a == rule);
        let texts: Vec<(String, &str)> = std::iter::once(("the prompt".to_owned(), prompt))
            .chain(
                inputs
                    .iter()
                    .map(|(role, text)| (format!("the {role} output"), text.as_str())),
            )
            .collect();
        let mut found = Vec::new();
        if let Some(max) = rules.max_chars
            && !skip("max_chars")
        {
            let chars: usize = texts.iter().map(|(_, t)| t.chars().count()).sum();
            if chars > max {
                found.push(Violation {
                    side: GuardSide::Input,
                    rule: "max_chars".to_owned(),
                    message: format!("the input is {chars} characters, over max_chars {max}"),
                    excerpt: cap(prompt, EXCERPT_CHARS),
                });
            }
        }
        for d in rules.deny.iter().filter(|d| !skip(&d.name)) {
            if let Some((where_, text, m)) = texts
                .iter()
                .find_map(|(w, t)| d.regex.find(t).map(|m| (w, *t, m)))
            {
                found.push(Violation {
                    side: GuardSide::Input,
                    rule: d.name.clone(),
                    message: format!(
                        "{where_} matches the deny pattern {:?} ({:?})",
                        d.pattern,
                        cap(m.as_str(), 80)
                    ),
                    excerpt: around(text, m.start()),
                });
            }
        }
        if !skip("require_metadata") {
            let missing: Vec<&str> = rules
                .require_metadata
                .iter()
                .filter(|k| !metadata.contains_key(*k))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                found.push(Violation {
                    side: GuardSide::Input,
                    rule: "require_metadata".to_owned(),
                    message: format!("metadata lacks the required key(s) {}", missing.join(", ")),
                    excerpt: String::new(),
                });
            }
        }
        found
    }

    /// Checks an answer: length, deny patterns, the pattern it must match, its JSON Schema.
    pub fn check_output(&self, text: &str) -> Vec<Violation> {
        let Some(rules) = &self.output else {
            return Vec::new();
        };
        let mut found = Vec::new();
        let violation = |rule: &str, message: String, excerpt: String| Violation {
            side: GuardSide::Output,
            rule: rule.to_owned(),
            message,
            excerpt,
        };
        if let Some(max) = rules.max_chars {
            let chars = text.chars().count();
            if chars > max {
                found.push(violation(
                    "max_chars",
                    format!("the answer is {chars} characters, over max_chars {max}"),
                    cap(text, EXCERPT_CHARS),
                ));
            }
        }
        for d in &rules.deny {
            if let Some(m) = d.regex.find(text) {
                found.push(violation(
                    &d.name,
                    format!(
                        "the answer matches the deny pattern {:?} ({:?}); leave that out",
                        d.pattern,
                        cap(m.as_str(), 80)
                    ),
                    around(text, m.start()),
                ));
            }
        }
        if let Some((pattern, regex)) = &rules.must_match
            && !regex.is_match(text)
        {
            found.push(violation(
                "must_match",
                format!("the answer does not match the required pattern {pattern:?}"),
                cap(text, EXCERPT_CHARS),
            ));
        }
        if let Some((name, validator)) = &rules.json_schema {
            match serde_json::from_str::<serde_json::Value>(text.trim()) {
                Err(e) => found.push(violation(
                    "json_schema",
                    format!(
                        "the answer is not a JSON document ({e}); answer with only a JSON document that matches the schema {name}, with no other text around it"
                    ),
                    cap(text, EXCERPT_CHARS),
                )),
                Ok(value) => {
                    let errors: Vec<String> = validator
                        .iter_errors(&value)
                        .take(SCHEMA_ERRORS)
                        .map(|e| {
                            let at = e.instance_path().to_string();
                            let at = if at.is_empty() { "/".to_owned() } else { at };
                            format!("at {at}: {e}")
                        })
                        .collect();
                    if !errors.is_empty() {
                        found.push(violation(
                            "json_schema",
                            format!(
                                "the answer does not match the JSON Schema {name}: {}",
                                errors.join("; ")
                            ),
                            cap(text, EXCERPT_CHARS),
                        ));
                    }
                }
            }
        }
        found
    }
}

fn compile_schema(
    role: &str,
    base: &Path,
    path: &Path,
) -> Result<(String, jsonschema::Validator), String> {
    let full: PathBuf = if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    };
    let what = format!("[{role}.output] json_schema {}", full.display());
    let text = std::fs::read_to_string(&full).map_err(|e| format!("{what}: {e}"))?;
    let schema: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{what}: not JSON: {e}"))?;
    let validator = jsonschema::validator_for(&schema)
        .map_err(|e| format!("{what}: not a valid schema: {e}"))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok((name, validator))
}

fn pii_kinds(role: &str, file: PiiFile) -> Result<Vec<PiiKind>, String> {
    let mut custom = Vec::new();
    let (mut email, mut phone, mut card) = (false, false, false);
    for name in &file.mask {
        match name.as_str() {
            "email" => email = true,
            "phone" => phone = true,
            "card" => card = true,
            other => {
                let Some(pattern) = file.patterns.get(other) else {
                    return Err(format!(
                        "[{role}.pii] mask names {other:?}, which is neither email, phone, card nor a key of [{role}.pii.patterns]"
                    ));
                };
                if !other.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    || !other.starts_with(|c: char| c.is_ascii_alphabetic())
                {
                    return Err(format!(
                        "[{role}.pii.patterns] {other:?}: a pattern name is letters, digits and '_', starting with a letter (it becomes the placeholder [{}_1])",
                        other.to_ascii_uppercase()
                    ));
                }
                let regex = plain_regex(role, &format!("pii.patterns.{other}"), pattern)?;
                custom.push(PiiKind::Custom {
                    label: other.to_ascii_uppercase(),
                    regex,
                });
            }
        }
    }
    if let Some(unused) = file.patterns.keys().find(|k| !file.mask.contains(k)) {
        return Err(format!(
            "[{role}.pii.patterns] {unused:?} is defined but not listed in mask"
        ));
    }
    // Custom patterns first, then e-mail, card, phone: a card number is never taken for a
    // phone number, and an operator's pattern wins over the built-in kinds.
    let mut kinds = custom;
    if email {
        kinds.push(PiiKind::Email);
    }
    if card {
        kinds.push(PiiKind::Card);
    }
    if phone {
        kinds.push(PiiKind::Phone);
    }
    Ok(kinds)
}

/// At most `max` characters of `text`, with "…" when cut.
fn cap(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// The text from a little before `start` (a match), at most [`EXCERPT_CHARS`] in all.
fn around(text: &str, start: usize) -> String {
    let context = EXCERPT_CHARS / 4;
    let from = text[..start]
        .char_indices()
        .rev()
        .nth(context.saturating_sub(1))
        .map_or(0, |(i, _)| i);
    let lead = if from > 0 { "…" } else { "" };
    format!("{lead}{}", cap(&text[from..], EXCERPT_CHARS))
}

#[cfg(test)]
mod tests;
