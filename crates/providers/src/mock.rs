use std::time::Duration;

use futures::future::BoxFuture;

use crate::{
    Completion, CompletionRequest, ConfigError, FailKind, Provider, ProviderArgs, ProviderError,
    Usage,
};

/// The built-in provider: deterministic text derived from the request, optional latency and
/// injected failures. No network, no key.
#[derive(Debug, Clone)]
pub struct MockProvider {
    model: String,
    latency: Duration,
    fail_rate: f64,
    fail_kind: FailKind,
}

impl MockProvider {
    pub fn from_args(args: &ProviderArgs) -> Result<Self, ConfigError> {
        if !(0.0..=1.0).contains(&args.mock_fail_rate) || args.mock_fail_rate.is_nan() {
            return Err(ConfigError::FailRate(args.mock_fail_rate));
        }
        Ok(Self {
            model: args.model.clone().unwrap_or_else(|| "mock-1".to_owned()),
            latency: Duration::from_millis(args.mock_latency_ms),
            fail_rate: args.mock_fail_rate,
            fail_kind: args.mock_fail_kind,
        })
    }

    fn answer(request: &CompletionRequest) -> String {
        // FNV-1a: a stable fingerprint so the same prompt always gets the same text.
        let mut hash: u64 = 0xcbf29ce484222325;
        for byte in request.system.bytes().chain(request.user.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x100000001b3);
        }
        // The first line with content that is not a label ("Question:"): the prompt itself.
        let first_line = request
            .user
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.ends_with(':'))
            .unwrap_or_default();
        let gist: String = first_line.chars().take(120).collect();
        format!(
            "[mock {hash:016x}] Considered \"{gist}\" in {} words: state the question, list what is known, weigh the options, conclude.",
            request.user.split_whitespace().count()
        )
    }
}

impl Provider for MockProvider {
    fn name(&self) -> &'static str {
        "mock"
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn complete(
        &self,
        request: CompletionRequest,
    ) -> BoxFuture<'_, Result<Completion, ProviderError>> {
        Box::pin(async move {
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            if self.fail_rate > 0.0 && fastrand::f64() < self.fail_rate {
                return Err(match self.fail_kind {
                    FailKind::Transient => ProviderError::Transient {
                        message: "mock: injected transient failure".to_owned(),
                        retry_after: None,
                    },
                    FailKind::Permanent => ProviderError::Permanent {
                        status: 400,
                        message: "mock: injected permanent failure".to_owned(),
                    },
                    FailKind::Panic => panic!("mock: injected panic"),
                });
            }
            let text = Self::answer(&request);
            let usage = Usage {
                prompt_tokens: (request.system.len() + request.user.len()).div_ceil(4) as u64,
                completion_tokens: text.len().div_ceil(4) as u64,
            };
            Ok(Completion::new(text, usage))
        })
    }
}
