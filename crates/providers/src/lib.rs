//! LLM providers behind one trait.
//!
//! A role calls [`Provider::complete`] and gets either a [`Completion`] (text plus token
//! usage) or a [`ProviderError`] that already says whether trying again can help. The
//! runtime turns that into a retry or a dead letter; nothing here knows about queues.
#![forbid(unsafe_code)]

mod anthropic;
mod config;
mod error;
mod http;
mod mock;
mod openai;

pub use anthropic::AnthropicProvider;
pub use config::{FailKind, ProviderArgs, ProviderKind, Secret};
pub use error::ProviderError;
pub use mock::MockProvider;
pub use openai::OpenAiProvider;

use std::sync::Arc;

use futures::future::BoxFuture;

/// One request to a model: the role's system prompt and the user-side text.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    pub system: String,
    pub user: String,
}

/// Tokens the provider reported for one call (zero where it reported none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A model's answer.
#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub usage: Usage,
    /// The provider said (`x-ratelimit-remaining-*: 0`, `anthropic-ratelimit-*-remaining:
    /// 0`) that the account's quota is used up until this long from now: the limits
    /// decorator pauses the account for the whole fleet until then.
    pub exhausted_for: Option<std::time::Duration>,
}

impl Completion {
    pub fn new(text: String, usage: Usage) -> Self {
        Self {
            text,
            usage,
            exhausted_for: None,
        }
    }
}

/// An LLM endpoint. One instance per process, shared by every in-flight job.
pub trait Provider: std::fmt::Debug + Send + Sync + 'static {
    /// `mock`, `openai` or `anthropic`: the `provider` label on metrics.
    fn name(&self) -> &'static str;
    /// The model this provider asks for: the `model` label on metrics.
    fn model(&self) -> &str;
    /// The URL it calls, for the start line (`None` for the mock, which calls nothing).
    fn endpoint(&self) -> Option<&str> {
        None
    }
    fn complete(
        &self,
        request: CompletionRequest,
    ) -> BoxFuture<'_, Result<Completion, ProviderError>>;
}

/// Builds the provider the flags ask for, failing at start-up (not at the first job) when
/// a real provider has no usable key or base URL.
pub fn build(args: &ProviderArgs) -> Result<Arc<dyn Provider>, error::ConfigError> {
    match args.provider {
        ProviderKind::Mock => Ok(Arc::new(MockProvider::from_args(args)?)),
        ProviderKind::Openai => Ok(Arc::new(OpenAiProvider::from_args(
            args,
            args.api_key("OPENAI_API_KEY")?,
        )?)),
        ProviderKind::Anthropic => Ok(Arc::new(AnthropicProvider::from_args(
            args,
            args.api_key("ANTHROPIC_API_KEY")?,
        )?)),
    }
}

pub use error::ConfigError;
