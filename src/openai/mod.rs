//! The OpenAI chat-completions API as mstar speaks it: request and response types, image parts
//! as base64 data URLs, `mstar serve` (server.rs) and the `openai` backend's client and pool.

pub mod client;
pub mod pool;
pub mod server;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A chat-completions request (fields mstar does not use are ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// vLLM / SGLang extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
}

/// One choice of a response, as the client reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub text: String,
    pub finish_reason: String,
    /// Sum of the sampled tokens' log-probabilities, when the server returned them.
    pub logprob: Option<f64>,
    pub tokens: Option<usize>,
}

/// A PNG/JPEG/… as a `data:` URL.
pub fn data_url(bytes: &[u8]) -> String {
    let mime = match bytes {
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [0xff, 0xd8, ..] => "image/jpeg",
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "image/webp",
        [b'G', b'I', b'F', ..] => "image/gif",
        _ => "application/octet-stream",
    };
    format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// An image URL the server cannot read.
#[derive(Debug, thiserror::Error)]
pub enum DataUrlError {
    /// The URL's first 40 characters.
    #[error("image URL `{0}…` is not a data: URL (this server cannot fetch URLs)")]
    NotData(String),
    #[error("data: URL without ;base64,")]
    NotBase64,
    #[error("bad base64 in data: URL: {0}")]
    Base64(base64::DecodeError),
}

/// OpenAI messages a chat template cannot take, named by their place in the request.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("messages[{0}] has no role")]
    NoRole(usize),
    #[error("messages[{message}].content[{part}]: image_url without url")]
    NoUrl { message: usize, part: usize },
    #[error("messages[{message}].content[{part}]: {err}")]
    Image { message: usize, part: usize, err: DataUrlError },
    /// `kind`: the part's `type`, if it has one.
    #[error("messages[{message}].content[{part}]: part type {kind:?} is not supported (text, image_url are)")]
    PartType { message: usize, part: usize, kind: Option<String> },
    #[error("messages[{message}].content must be a string or a list of parts, got {got}")]
    Content { message: usize, got: Value },
}

/// The bytes of a base64 `data:` URL (the only kind a server without network can read).
pub fn decode_data_url(url: &str) -> Result<Vec<u8>, DataUrlError> {
    let rest = url.strip_prefix("data:").ok_or_else(|| DataUrlError::NotData(url.chars().take(40).collect()))?;
    let (_, b64) = rest.split_once(";base64,").ok_or(DataUrlError::NotBase64)?;
    base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(DataUrlError::Base64)
}

/// The user message of a prompt: its images as data URLs, then the question.
pub fn user_message(images: &[Vec<u8>], question: &str) -> Value {
    let mut content: Vec<Value> = images.iter().map(|b| json!({"type": "image_url", "image_url": {"url": data_url(b)}})).collect();
    content.push(json!({"type": "text", "text": question}));
    json!({"role": "user", "content": content})
}

/// OpenAI messages → the messages a Hugging Face chat template expects (image parts become
/// `{"type": "image"}`) and the images' bytes in order.
pub fn template_messages(messages: &[Value]) -> Result<(Value, Vec<Vec<u8>>), MessageError> {
    let mut images = Vec::new();
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(|r| r.as_str()).ok_or(MessageError::NoRole(i))?;
        let content = match m.get("content") {
            Some(Value::String(s)) => Value::String(s.clone()),
            Some(Value::Array(parts)) => {
                let mut conv = Vec::with_capacity(parts.len());
                for (j, p) in parts.iter().enumerate() {
                    match p.get("type").and_then(|t| t.as_str()) {
                        Some("text") => conv.push(json!({"type": "text", "text": p.get("text").and_then(|t| t.as_str()).unwrap_or_default()})),
                        Some("image_url") => {
                            let url = p
                                .get("image_url")
                                .and_then(|u| u.get("url").or(Some(u)))
                                .and_then(|u| u.as_str())
                                .ok_or(MessageError::NoUrl { message: i, part: j })?;
                            images.push(decode_data_url(url).map_err(|err| MessageError::Image { message: i, part: j, err })?);
                            conv.push(json!({"type": "image"}));
                        }
                        other => return Err(MessageError::PartType { message: i, part: j, kind: other.map(str::to_string) }),
                    }
                }
                Value::Array(conv)
            }
            Some(Value::Null) | None => Value::String(String::new()),
            Some(other) => return Err(MessageError::Content { message: i, got: other.clone() }),
        };
        out.push(json!({"role": role, "content": content}));
    }
    Ok((Value::Array(out), images))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_round_trip_and_messages_convert() {
        let png = [0x89, b'P', b'N', b'G', 1, 2, 3];
        let url = data_url(&png);
        assert!(url.starts_with("data:image/png;base64,"));
        assert_eq!(decode_data_url(&url).unwrap(), png);
        assert!(decode_data_url("https://x/y.png").unwrap_err().to_string().contains("not a data: URL"));
        assert_eq!(decode_data_url("data:image/png,xyz").unwrap_err().to_string(), "data: URL without ;base64,");
        let (m, imgs) = template_messages(&[json!({"role": "system", "content": "s"}), user_message(&[png.to_vec()], "q?")]).unwrap();
        assert_eq!(imgs, vec![png.to_vec()]);
        assert_eq!(m[1]["content"], json!([{"type": "image"}, {"type": "text", "text": "q?"}]));
        let err = template_messages(&[json!({"role": "user", "content": [{"type": "audio"}]})]).unwrap_err();
        assert_eq!(err.to_string(), "messages[0].content[0]: part type Some(\"audio\") is not supported (text, image_url are)");
        let err = template_messages(&[json!({"role": "user", "content": 3})]).unwrap_err();
        assert_eq!(err.to_string(), "messages[0].content must be a string or a list of parts, got 3");
        let err = template_messages(&[json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x;base64,!!"}}]})]).unwrap_err();
        assert!(err.to_string().starts_with("messages[0].content[0]: bad base64 in data: URL: "), "{err}");
    }
}
