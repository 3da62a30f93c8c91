//! OpenAI-compatible chat-completions endpoints (vLLM, SGLang, `mstar serve`, …) behind
//! [`VisionLm`]: one request per sample (n = 1, the sample's seed), `concurrency` in flight,
//! spread over a pool of endpoints serving the same model (`crate::openai::pool`).

use super::{LmError, Prompt, Repr, Result, Sample, Sampled, VisionLm, Work};
use crate::model::generate::SamplingParams;
use crate::openai::client::Client;
use crate::openai::pool::Pool;
use crate::openai::{user_message, ChatRequest};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// The `openai` backend of a stage: where the endpoints are and how to call them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiBackend {
    /// e.g. `http://127.0.0.1:8000/v1`; or `base_urls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Several servers of the same model: requests go to the least loaded, and one that fails
    /// leaves the rotation until it answers again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_urls: Option<Vec<String>>,
    /// The served model's name.
    pub model: String,
    /// Environment variable holding the API key (none sent when unset or empty).
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    /// Requests in flight at once, over all the endpoints.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Retries of a transient failure (connection, timeout, 408, 429, 5xx), with backoff 0.5 s,
    /// 1 s, 2 s, …; with several endpoints, a failure retried on another endpoint in rotation
    /// is not counted.
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
}

impl OpenAiBackend {
    /// The endpoints' base URLs: exactly one of `base_url` and `base_urls`; or the key and why
    /// not.
    pub fn urls(&self) -> std::result::Result<Vec<&str>, (&'static str, String)> {
        let urls: Vec<&str> = match (&self.base_url, &self.base_urls) {
            (Some(u), None) => vec![u.as_str()],
            (None, Some(us)) if us.is_empty() => return Err(("base_urls", "list at least one endpoint".into())),
            (None, Some(us)) => us.iter().map(String::as_str).collect(),
            (Some(_), Some(_)) => return Err(("base_urls", "give `base_url` (one endpoint) or `base_urls` (several), not both".into())),
            (None, None) => return Err(("", "give the endpoint: `base_url: http://HOST:PORT/v1`, or `base_urls: [...]` for several".into())),
        };
        for (i, u) in urls.iter().enumerate() {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err((if self.base_url.is_some() { "base_url" } else { "base_urls" }, format!("`{u}` is not an http:// or https:// URL")));
            }
            if urls[..i].iter().any(|v| v.trim_end_matches('/') == u.trim_end_matches('/')) {
                return Err(("base_urls", format!("`{u}` is listed twice")));
            }
        }
        Ok(urls)
    }
}

fn default_api_key_env() -> String {
    "OPENAI_API_KEY".into()
}
fn default_concurrency() -> usize {
    8
}
fn default_retries() -> u32 {
    3
}
fn default_timeout_s() -> u64 {
    600
}

/// A client of the endpoints. `sample` blocks on the runtime it was made in: call it from a
/// blocking thread (`spawn_blocking`).
pub struct OpenAiLm {
    backend: OpenAiBackend,
    urls: Vec<String>,
    pool: Arc<Pool>,
    runtime: tokio::runtime::Handle,
}

impl OpenAiLm {
    /// A client for `backend`, its key read from the variable it names; call inside the runtime.
    pub fn new(backend: &OpenAiBackend, api_key: Option<String>) -> Result<Self> {
        let urls: Vec<String> = backend.urls().map_err(|(k, e)| LmError::Invalid(format!("openai.{k}: {e}")))?.into_iter().map(String::from).collect();
        let timeout = Duration::from_secs(backend.timeout_s.max(1));
        let clients = urls.iter().map(|u| Client::new(u, api_key.clone(), timeout)).collect::<std::result::Result<Vec<_>, _>>();
        let clients = clients.map_err(|e| LmError::Invalid(e.to_string()))?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| LmError::Invalid(format!("the OpenAI client needs a runtime: {e}")))?;
        Ok(Self { backend: backend.clone(), urls, pool: Arc::new(Pool::new(clients, backend.retries)), runtime })
    }
}

impl VisionLm for OpenAiLm {
    fn describe(&self) -> String {
        let at = match self.urls.as_slice() {
            [one] => one.clone(),
            many => format!("{} endpoints ({})", many.len(), many.join(", ")),
        };
        format!("{at} (model {}, {} at a time)", self.backend.model, self.backend.concurrency)
    }

    fn encode_prompt(&self, question: &str, images: &[Vec<u8>]) -> Result<Prompt> {
        Ok(Prompt(Repr::Chat(Arc::new(user_message(images, question)))))
    }

    fn continue_prompt(&self, _: &Prompt, _: &str) -> Result<Prompt> {
        Err(LmError::Invalid(format!("{} cannot continue a response prefix: use a policy checkpoint", self.describe())))
    }

    /// One request per sample; a request that still fails after its retries becomes a sample
    /// with finish_reason `error` and its failure, not an error. Results come in work order,
    /// `batch_size` at a time.
    fn sample(&self, work: &[Work<'_>], params: &SamplingParams, batch_size: usize, out: &mut dyn FnMut(Vec<Sampled>) -> bool) -> Result<()> {
        let mut jobs = Vec::new();
        for (w, item) in work.iter().enumerate() {
            let Repr::Chat(message) = &item.prompt.0 else { return Err(LmError::Invalid("a token prompt given to an endpoint".into())) };
            jobs.extend(item.seeds.iter().enumerate().map(|(s, &seed)| (w, s, seed, message.clone())));
        }
        let requests = jobs.into_iter().map(|(w, s, seed, message)| {
            let req = ChatRequest {
                model: Some(self.backend.model.clone()),
                messages: vec![(*message).clone()],
                n: Some(1),
                temperature: Some(params.temperature),
                top_p: (params.top_p < 1.0).then_some(params.top_p),
                top_k: (params.top_k > 0).then_some(params.top_k as i64),
                max_tokens: Some(params.max_new_tokens),
                max_completion_tokens: None,
                seed: Some(seed),
                logprobs: Some(true),
                stream: None,
            };
            let pool = self.pool.clone();
            async move { (w, s, pool.complete(&req).await) }
        });
        self.runtime.block_on(async {
            let mut results = futures::stream::iter(requests).buffered(self.backend.concurrency.max(1)).chunks(batch_size.max(1));
            while let Some(chunk) = results.next().await {
                let batch = chunk
                    .into_iter()
                    .map(|(w, s, r)| {
                        let failed = |attempts, error| Sample {
                            text: String::new(),
                            num_tokens: 0,
                            logprob: f64::NAN,
                            finish_reason: "error".into(),
                            failure: Some((attempts, error)),
                        };
                        let sample = match r {
                            Ok(mut choices) if !choices.is_empty() => {
                                let c = choices.swap_remove(0);
                                Sample {
                                    text: c.text,
                                    num_tokens: c.tokens.unwrap_or(0),
                                    logprob: c.logprob.unwrap_or(f64::NAN),
                                    finish_reason: c.finish_reason,
                                    failure: None,
                                }
                            }
                            Ok(_) => failed(1, "response had no choices".to_string()),
                            Err(f) => failed(f.attempts, f.error),
                        };
                        Sampled { work: w, seed: s, sample }
                    })
                    .collect();
                if !out(batch) {
                    break;
                }
            }
        });
        Ok(())
    }
}
