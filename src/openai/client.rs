//! The `openai` generate backend's client of one endpoint: one chat-completions request, its
//! failure classified for the pool (`pool.rs`): endpoint down, worth retrying, or final.

use super::{ChatRequest, Choice};
use serde_json::Value;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    api_key: Option<String>,
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

/// What a failed attempt says about the endpoint and the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The endpoint is down or broken (connection refused or reset, timeout, a 5xx, a body cut
    /// short): another endpoint may answer.
    Endpoint,
    /// The endpoint is up but asks to wait (408, 429): worth retrying after a backoff.
    Busy,
    /// The request itself was refused (other 4xx) or the answer is not a completion.
    Final,
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    pub error: String,
    /// The response's `Retry-After` in seconds, when it gave one.
    pub retry_after: Option<Duration>,
}

impl Client {
    /// `base_url` as OpenAI SDKs take it (e.g. `http://127.0.0.1:8000/v1`).
    pub fn new(base_url: &str, api_key: Option<String>, timeout: Duration) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder().timeout(timeout).build().map_err(ClientError)?;
        Ok(Self { http, url: format!("{}/chat/completions", base_url.trim_end_matches('/')), api_key })
    }

    /// The chat-completions URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `req` once.
    pub async fn send(&self, req: &ChatRequest) -> Result<Vec<Choice>, Fault> {
        let mut r = self.http.post(&self.url).header("content-type", "application/json").body(serde_json::to_vec(req).expect("serializable"));
        if let Some(k) = &self.api_key {
            r = r.bearer_auth(k);
        }
        let down = |e: reqwest::Error| Fault { kind: FaultKind::Endpoint, error: format!("request to {}: {e}", self.url), retry_after: None };
        let resp = r.send().await.map_err(down)?;
        let status = resp.status();
        let retry_after = resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok()).map(Duration::from_secs);
        let body = resp.bytes().await.map_err(down)?;
        if status.is_success() {
            return parse(&body).map_err(|e| Fault { kind: FaultKind::Final, error: e.to_string(), retry_after: None });
        }
        let msg = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
        let kind = match status.as_u16() {
            500.. => FaultKind::Endpoint,
            408 | 429 => FaultKind::Busy,
            _ => FaultKind::Final,
        };
        Err(Fault { kind, error: format!("HTTP {status}: {msg}"), retry_after })
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
