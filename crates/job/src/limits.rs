//! Size limits on what a task may carry, checked by the CLI before anything is written and
//! by workers before a provider is called (an entry can be pushed by anyone with access).

use std::collections::BTreeMap;

/// The limits, each a flag of the CLI and of the workers (same names, same variables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of a prompt (UTF-8).
    pub max_prompt_bytes: usize,
    /// Metadata entries of one task.
    pub max_metadata_entries: usize,
    /// Bytes of one metadata entry: key plus value.
    pub max_metadata_entry_bytes: usize,
    /// Bytes of one stage's output (a provider's answer).
    pub max_output_bytes: usize,
}

impl Limits {
    pub const DEFAULT_MAX_PROMPT_BYTES: usize = 256 * 1024;
    pub const DEFAULT_MAX_METADATA_ENTRIES: usize = 32;
    pub const DEFAULT_MAX_METADATA_ENTRY_BYTES: usize = 1024;
    pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;

    /// The largest queue entry a task within these limits makes: prompt and metadata (JSON
    /// escaping at most doubles ordinary text, `\u` escapes of control characters aside),
    /// an earlier stage's output, and the envelope around them. An entry above this cannot
    /// be a valid task and is refused before it is even decoded.
    pub fn max_entry_bytes(&self) -> usize {
        let metadata = self.max_metadata_entries * (self.max_metadata_entry_bytes + 8);
        (self.max_prompt_bytes + metadata + self.max_output_bytes) * 2 + 64 * 1024
    }

    pub fn check_prompt(&self, prompt: &str) -> Result<(), LimitError> {
        if prompt.len() > self.max_prompt_bytes {
            return Err(LimitError::Prompt {
                bytes: prompt.len(),
                limit: self.max_prompt_bytes,
            });
        }
        Ok(())
    }

    pub fn check_metadata(&self, metadata: &BTreeMap<String, String>) -> Result<(), LimitError> {
        if metadata.len() > self.max_metadata_entries {
            return Err(LimitError::MetadataEntries {
                entries: metadata.len(),
                limit: self.max_metadata_entries,
            });
        }
        for (k, v) in metadata {
            let bytes = k.len() + v.len();
            if bytes > self.max_metadata_entry_bytes {
                return Err(LimitError::MetadataEntry {
                    key: k.chars().take(40).collect(),
                    bytes,
                    limit: self.max_metadata_entry_bytes,
                });
            }
        }
        Ok(())
    }

    pub fn check_entry(&self, bytes: usize) -> Result<(), LimitError> {
        let limit = self.max_entry_bytes();
        if bytes > limit {
            return Err(LimitError::Entry { bytes, limit });
        }
        Ok(())
    }

    pub fn check_output(&self, bytes: usize) -> Result<(), LimitError> {
        if bytes > self.max_output_bytes {
            return Err(LimitError::Output {
                bytes,
                limit: self.max_output_bytes,
            });
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_prompt_bytes: Self::DEFAULT_MAX_PROMPT_BYTES,
            max_metadata_entries: Self::DEFAULT_MAX_METADATA_ENTRIES,
            max_metadata_entry_bytes: Self::DEFAULT_MAX_METADATA_ENTRY_BYTES,
            max_output_bytes: Self::DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// Which limit was crossed, with both sizes and the flag that sets it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("prompt is {bytes} bytes, over the limit of {limit} (--max-prompt-bytes)")]
    Prompt { bytes: usize, limit: usize },
    #[error("{entries} metadata entries, over the limit of {limit} (--max-metadata-entries)")]
    MetadataEntries { entries: usize, limit: usize },
    #[error(
        "metadata entry {key:?} is {bytes} bytes (key + value), over the limit of {limit} (--max-metadata-entry-bytes)"
    )]
    MetadataEntry {
        key: String,
        bytes: usize,
        limit: usize,
    },
    #[error(
        "entry is {bytes} bytes, over the {limit} bytes any task within this worker's limits makes (--max-prompt-bytes, --max-metadata-*, --max-output-bytes)"
    )]
    Entry { bytes: usize, limit: usize },
    #[error("answer is {bytes} bytes, over the limit of {limit} (--max-output-bytes)")]
    Output { bytes: usize, limit: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_names_both_sizes_and_its_flag() {
        let l = Limits {
            max_prompt_bytes: 10,
            max_metadata_entries: 1,
            max_metadata_entry_bytes: 4,
            max_output_bytes: 5,
        };
        assert!(l.check_prompt("0123456789").is_ok());
        let e = l.check_prompt("0123456789a").unwrap_err().to_string();
        assert!(e.contains("11 bytes") && e.contains("10") && e.contains("--max-prompt-bytes"));
        let mut m = BTreeMap::from([("ab".to_owned(), "cd".to_owned())]);
        assert!(l.check_metadata(&m).is_ok());
        m.insert("x".into(), "y".into());
        assert!(l.check_metadata(&m).is_err());
        let m = BTreeMap::from([("ab".to_owned(), "cde".to_owned())]);
        assert!(
            l.check_metadata(&m)
                .unwrap_err()
                .to_string()
                .contains("5 bytes")
        );
        assert!(
            l.check_output(6)
                .unwrap_err()
                .to_string()
                .contains("6 bytes")
        );
        assert!(l.check_entry(l.max_entry_bytes() + 1).is_err());
    }
}
