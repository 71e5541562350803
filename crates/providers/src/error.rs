use std::time::Duration;

/// A provider call that did not produce a completion, classified by whether retrying helps.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// 429: slow down; `retry_after` from `Retry-After` or the provider's reset headers.
    #[error("rate limited (HTTP {status}): {message}")]
    RateLimited {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The provider says it is overloaded (Anthropic 529 `overloaded_error`, 503).
    #[error("provider overloaded (HTTP {status}): {message}")]
    Overloaded {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// 408, 409, other 5xx, connection errors, timeouts, an unreadable or empty body.
    #[error("transient provider error: {message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// 400, 401, 403, 404, 413, 422 and the like: the request itself is wrong; the
    /// provider's own message is kept so that it reaches the dead letter.
    #[error("provider rejected the request (HTTP {status}): {message}")]
    Permanent { status: u16, message: String },
    /// Not sent: a fleet-wide limit (rate, concurrency, a cooldown, a paused account) has
    /// no capacity now; try again after `delay`. Not a failure of the job (set by the
    /// limits decorator, `agentfleet-limits`).
    #[error("waiting for capacity ({reason}); next try in {delay:?}")]
    Deferred { delay: Duration, reason: String },
    /// Not sent: the call could exceed a spending budget. Retrying cannot help before the
    /// budget resets or is raised.
    #[error("over budget: {message}")]
    Budget { message: String },
}

impl ProviderError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Permanent { .. } | Self::Budget { .. })
    }

    /// A failure that belongs to the account rather than to the request: a revoked or
    /// wrong key (401), a key without permission (403).
    pub fn is_account_failure(&self) -> bool {
        matches!(
            self,
            Self::Permanent {
                status: 401 | 403,
                ..
            }
        )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. }
            | Self::Overloaded { retry_after, .. }
            | Self::Transient { retry_after, .. } => *retry_after,
            Self::Deferred { delay, .. } => Some(*delay),
            Self::Permanent { .. } | Self::Budget { .. } => None,
        }
    }

    /// The `class` label of `agentfleet_llm_errors_total`.
    pub fn class(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "rate_limited",
            Self::Overloaded { .. } => "overloaded",
            Self::Transient { .. } => "transient",
            Self::Permanent { .. } => "permanent",
            Self::Deferred { .. } => "deferred",
            Self::Budget { .. } => "budget",
        }
    }
}

/// A provider that cannot be used as configured: reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("provider {provider} needs an API key: set {env_var} or --api-key-file")]
    MissingApiKey {
        provider: &'static str,
        env_var: &'static str,
    },
    #[error("cannot read the API key file {path}: {source}")]
    ApiKeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("base URL {url:?} is not a usable http(s) URL: {reason}")]
    BaseUrl { url: String, reason: String },
    #[error("--mock-fail-rate must be within 0..=1, got {0}")]
    FailRate(f64),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}
