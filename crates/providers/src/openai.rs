use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;

use crate::http::{client, normalize_base, send, truncate};
use crate::{
    Completion, CompletionRequest, ConfigError, Provider, ProviderArgs, ProviderError, Secret,
    Usage,
};

const DEFAULT_BASE: &str = "https://api.openai.com";
const DEFAULT_MODEL: &str = "gpt-4o-mini";

/// OpenAI Chat Completions, and every server that speaks it (vLLM, Ollama, llama.cpp
/// server, LM Studio, OpenRouter, gateways): `POST {base}/v1/chat/completions`.
pub struct OpenAiProvider {
    client: reqwest::Client,
    url: String,
    model: String,
    key: Option<Secret>,
    max_tokens: u32,
    temperature: Option<f32>,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// A key is required for api.openai.com; a server given with `--base-url` may need none
    /// (local servers), and then no `Authorization` header is sent.
    pub fn from_args(args: &ProviderArgs, key: Option<Secret>) -> Result<Self, ConfigError> {
        let base = normalize_base(args.base_url.as_deref().unwrap_or(DEFAULT_BASE))?;
        if key.is_none() && args.base_url.is_none() {
            return Err(ConfigError::MissingApiKey {
                provider: "openai",
                env_var: "OPENAI_API_KEY",
            });
        }
        Ok(Self {
            client: client(args)?,
            url: format!("{base}/v1/chat/completions"),
            model: args
                .model
                .clone()
                .unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
            key,
            max_tokens: args.max_tokens,
            temperature: args.temperature,
        })
    }
}

#[derive(Deserialize)]
struct ChatCompletion {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<ChatUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl Provider for OpenAiProvider {
    fn name(&self) -> &'static str {
        "openai"
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
                "messages": [
                    {"role": "system", "content": request.system},
                    {"role": "user", "content": request.user},
                ],
                "max_tokens": self.max_tokens,
            });
            if let Some(t) = self.temperature {
                body["temperature"] = json!(t);
            }
            let mut http = self.client.post(&self.url).json(&body);
            if let Some(key) = &self.key {
                http = http.bearer_auth(key.expose());
            }
            tracing::debug!(url = %self.url, model = %self.model, "openai request");
            let (raw, exhausted_for) = send(http).await?;
            let parsed: ChatCompletion =
                serde_json::from_slice(&raw).map_err(|e| ProviderError::Transient {
                    message: format!(
                        "unreadable chat completion ({e}): {}",
                        truncate(&String::from_utf8_lossy(&raw))
                    ),
                    retry_after: None,
                })?;
            let text = parsed
                .choices
                .into_iter()
                .next()
                .and_then(|c| c.message.content)
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| ProviderError::Transient {
                    message: "chat completion has no content".to_owned(),
                    retry_after: None,
                })?;
            let usage = parsed
                .usage
                .map(|u| Usage {
                    prompt_tokens: u.prompt_tokens,
                    completion_tokens: u.completion_tokens,
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
