use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Which provider a role talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// Built in, deterministic, no network: the demo's, the tests' and the benchmarks'.
    Mock,
    /// OpenAI Chat Completions, or any server speaking it (vLLM, Ollama, llama.cpp, LM Studio, OpenRouter).
    Openai,
    /// Anthropic Messages.
    Anthropic,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mock => "mock",
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
        }
    }
}

/// What kind of error `--mock-fail-rate` injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailKind {
    Transient,
    Permanent,
    /// The provider call panics: proves that a panic is one job's transient failure.
    Panic,
}

/// A secret string: `Debug` and `Display` never show it.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The only way to read the value: at the one place that puts it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Provider flags, flattened into every worker's command line. Each is also an environment
/// variable, as the Helm chart and docker-compose set them.
#[derive(Debug, Clone, Args)]
pub struct ProviderArgs {
    /// Which LLM provider this role calls.
    #[arg(long, env = "AGENTFLEET_PROVIDER", value_enum, default_value = "mock")]
    pub provider: ProviderKind,

    /// Model name sent to the provider (default: gpt-4o-mini for openai, claude-sonnet-4-5 for anthropic).
    #[arg(long, env = "AGENTFLEET_MODEL")]
    pub model: Option<String>,

    /// Base URL of the provider's API, without the `/v1/...` path.
    #[arg(long, env = "AGENTFLEET_BASE_URL")]
    pub base_url: Option<String>,

    /// System prompt for this role (default: the role's own instruction).
    #[arg(
        long,
        env = "AGENTFLEET_SYSTEM_PROMPT",
        conflicts_with = "system_prompt_file"
    )]
    pub system_prompt: Option<String>,

    /// Read the system prompt from this file.
    #[arg(long, env = "AGENTFLEET_SYSTEM_PROMPT_FILE")]
    pub system_prompt_file: Option<PathBuf>,

    /// Upper bound on generated tokens per call (required by Anthropic).
    #[arg(long, env = "AGENTFLEET_MAX_TOKENS", default_value_t = 1024)]
    pub max_tokens: u32,

    /// Sampling temperature; the provider's default when unset.
    #[arg(long, env = "AGENTFLEET_TEMPERATURE")]
    pub temperature: Option<f32>,

    /// Whole-request timeout for one provider call.
    #[arg(long, env = "AGENTFLEET_REQUEST_TIMEOUT_SECS", default_value_t = 120)]
    pub request_timeout_secs: u64,

    /// TCP/TLS connect timeout for provider calls.
    #[arg(long, env = "AGENTFLEET_CONNECT_TIMEOUT_SECS", default_value_t = 10)]
    pub connect_timeout_secs: u64,

    /// Read the API key from this file (a Kubernetes secret mount) instead of
    /// OPENAI_API_KEY / ANTHROPIC_API_KEY.
    #[arg(long, env = "AGENTFLEET_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Mock provider: simulated latency per call.
    #[arg(long, env = "AGENTFLEET_MOCK_LATENCY_MS", default_value_t = 0)]
    pub mock_latency_ms: u64,

    /// Mock provider: share of calls that fail (0..1).
    #[arg(long, env = "AGENTFLEET_MOCK_FAIL_RATE", default_value_t = 0.0)]
    pub mock_fail_rate: f64,

    /// Mock provider: what an injected failure looks like.
    #[arg(
        long,
        env = "AGENTFLEET_MOCK_FAIL_KIND",
        value_enum,
        default_value = "transient"
    )]
    pub mock_fail_kind: FailKind,
}

impl ProviderArgs {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// The API key: from `--api-key-file` when given (a Kubernetes secret mount), else from
    /// the provider's environment variable. An empty value counts as none.
    pub fn api_key(&self, env_var: &str) -> Result<Option<Secret>, crate::ConfigError> {
        if let Some(path) = &self.api_key_file {
            let raw =
                std::fs::read_to_string(path).map_err(|source| crate::ConfigError::ApiKeyFile {
                    path: path.display().to_string(),
                    source,
                })?;
            let key = raw.trim();
            if key.is_empty() {
                return Err(crate::ConfigError::ApiKeyFile {
                    path: path.display().to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, "file is empty"),
                });
            }
            return Ok(Some(Secret::new(key)));
        }
        Ok(std::env::var(env_var)
            .ok()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .map(Secret::new))
    }

    /// The system prompt the flags give, or `default` (the role's own instruction).
    pub fn system_prompt_or(&self, default: &str) -> std::io::Result<String> {
        if let Some(path) = &self.system_prompt_file {
            return std::fs::read_to_string(path);
        }
        Ok(self
            .system_prompt
            .clone()
            .unwrap_or_else(|| default.to_owned()))
    }
}
