use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;

use crate::http::{client, normalize_base, send, truncate};
use crate::{
    Completion, CompletionRequest, ConfigError, Provider, ProviderArgs, ProviderError, Secret,
    Usage,
};

const DEFAULT_BASE: &str = "https://api.anthropic.com";
const DEFAULT_MODEL: &str = "claude-sonnet-4-5";
const API_VERSION: &str = "2023-06-01";

/// Anthropic Messages: `POST {base}/v1/messages` with `x-api-key` and `anthropic-version`.
pub struct AnthropicProvider {
    client: reqwest::Client,
    url: String,
    model: String,
    key: Secret,
    max_tokens: u32,
    temperature: Option<f32>,
}

impl std::fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl AnthropicProvider {
    pub fn from_args(args: &ProviderArgs, key: Option<Secret>) -> Result<Self, ConfigError> {
        let base = normalize_base(args.base_url.as_deref().unwrap_or(DEFAULT_BASE))?;
        let key = key.ok_or(ConfigError::MissingApiKey {
            provider: "anthropic",
            env_var: "ANTHROPIC_API_KEY",
        })?;
        Ok(Self {
            client: client(args)?,
            url: format!("{base}/v1/messages"),
            model: args
                .model
                .clone()
                .unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
            key,
            max_tokens: args.max_tokens.max(1),
            temperature: args.temperature,
        })
    }
}

#[derive(Deserialize)]
struct MessageResponse {
    #[serde(default)]
    content: Vec<ContentBlock>,
    #[serde(default)]
    usage: Option<MessageUsage>,
}

#[derive(Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct MessageUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

impl Provider for AnthropicProvider {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn endpoint(&self) -> Option<&str> {
        Some(&self.url)
    }

    fn complete(
        &self,
        request: CompletionRequest,
    ) -> BoxFuture<'_, Result<Completion, ProviderError>> {
        Box::pin(async move {
            let mut body = json!({
                "model": self.model,
                "max_tokens": self.max_tokens,
                "system": request.system,
                "messages": [{"role": "user", "content": request.user}],
            });
            if let Some(t) = self.temperature {
                body["temperature"] = json!(t);
            }
            let http = self
                .client
                .post(&self.url)
                .header("x-api-key", self.key.expose())
                .header("anthropic-version", API_VERSION)
                .json(&body);
            tracing::debug!(url = %self.url, model = %self.model, "anthropic request");
            let (raw, exhausted_for) = send(http).await?;
            let parsed: MessageResponse =
                serde_json::from_slice(&raw).map_err(|e| ProviderError::Transient {
                    message: format!(
                        "unreadable message ({e}): {}",
                        truncate(&String::from_utf8_lossy(&raw))
                    ),
                    retry_after: None,
                })?;
            let text: String = parsed
                .content
                .into_iter()
                .filter(|b| b.kind == "text")
                .filter_map(|b| b.text)
                .collect::<Vec<_>>()
                .join("");
            if text.trim().is_empty() {
                return Err(ProviderError::Transient {
                    message: "message has no text content".to_owned(),
                    retry_after: None,
                });
            }
            let usage = parsed
                .usage
                .map(|u| Usage {
                    prompt_tokens: u.input_tokens,
                    completion_tokens: u.output_tokens,
                })
                .unwrap_or_default();
            Ok(Completion {
                text,
                usage,
                exhausted_for,
            })
        })
    }
}
