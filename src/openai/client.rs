//! The `openai` generate backend's client: chat completions against any OpenAI-compatible
//! endpoint, with retries and exponential backoff on connection errors, 429 and 5xx.

use super::{ChatRequest, Choice};
use serde_json::Value;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    api_key: Option<String>,
    retries: u32,
}

/// The HTTP client could not be built (TLS backend, settings).
#[derive(Debug, thiserror::Error)]
#[error("HTTP client: {0}")]
pub struct ClientError(reqwest::Error);

/// A success response whose body is not a chat completion.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error("response is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("response has no `choices`")]
    NoChoices,
}

/// Why a request finally failed, and after how many attempts: a row of the `generate` stage's
/// `generate_errors` side table (its `error` text is data, not an error value).
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub error: String,
    pub attempts: u32,
}

impl Client {
    /// `base_url` as OpenAI SDKs take it (e.g. `http://127.0.0.1:8000/v1`).
    pub fn new(base_url: &str, api_key: Option<String>, retries: u32, timeout: Duration) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder().timeout(timeout).build().map_err(ClientError)?;
        Ok(Self { http, url: format!("{}/chat/completions", base_url.trim_end_matches('/')), api_key, retries })
    }

    /// Sends `req`, retrying transient failures (connection errors, 408, 429, 5xx) with backoff
    /// 0.5 s, 1 s, 2 s, …; other errors fail at once.
    pub async fn complete(&self, req: &ChatRequest) -> Result<Vec<Choice>, Failure> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut r = self.http.post(&self.url).header("content-type", "application/json").body(serde_json::to_vec(req).expect("serializable"));
            if let Some(k) = &self.api_key {
                r = r.bearer_auth(k);
            }
            let (transient, error) = match r.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                    if status.is_success() {
                        return parse(&body).map_err(|e| Failure { error: e.to_string(), attempts: attempt });
                    }
                    let msg = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                        .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
                    (status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408, format!("HTTP {status}: {msg}"))
                }
                Err(e) => (true, format!("request to {}: {e}", self.url)),
            };
            if !transient || attempt > self.retries {
                return Err(Failure { error, attempts: attempt });
            }
            tokio::time::sleep(Duration::from_millis(500 << (attempt - 1).min(6))).await;
        }
    }
}

/// The choices of a response body: text, finish reason, and log-probs if present (mstar's
/// `{"sum", "tokens"}` or OpenAI's per-token `content` list).
pub fn parse(body: &[u8]) -> Result<Vec<Choice>, ResponseError> {
    let v: Value = serde_json::from_slice(body).map_err(ResponseError::NotJson)?;
    let choices = v.get("choices").and_then(|c| c.as_array()).ok_or(ResponseError::NoChoices)?;
    let usage = v.get("usage").and_then(|u| u.get("completion_tokens")).and_then(|t| t.as_u64());
    choices
        .iter()
        .map(|c| {
            let text = c.get("message").and_then(|m| m.get("content")).and_then(|t| t.as_str()).unwrap_or_default().to_string();
            let finish_reason = c.get("finish_reason").and_then(|f| f.as_str()).unwrap_or("unknown").to_string();
            let lp = c.get("logprobs");
            let (logprob, tokens) = match lp.and_then(|l| l.get("sum")) {
                Some(s) => (s.as_f64(), lp.and_then(|l| l.get("tokens")).and_then(|t| t.as_u64()).map(|t| t as usize)),
                None => match lp.and_then(|l| l.get("content")).and_then(|c| c.as_array()) {
                    Some(toks) => (Some(toks.iter().filter_map(|t| t.get("logprob")?.as_f64()).sum()), Some(toks.len())),
                    None => (None, if choices.len() == 1 { usage.map(|u| u as usize) } else { None }),
                },
            };
            Ok(Choice { text, finish_reason, logprob, tokens })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_is_not_a_completion_says_why() {
        assert!(matches!(parse(b"<html>"), Err(ResponseError::NotJson(_))));
        assert_eq!(parse(b"{}").unwrap_err().to_string(), "response has no `choices`");
        let c = parse(br#"{"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}"#).unwrap();
        assert_eq!((c[0].text.as_str(), c[0].finish_reason.as_str()), ("hi", "stop"));
    }
}
