//! Chat templates: the Jinja template a checkpoint ships (chat_template.jinja, chat_template.json
//! or tokenizer_config.json), rendered with minijinja and Python string methods.

use super::{invalid, read, read_json, HfError, Result};
use std::path::Path;

/// A checkpoint's chat template and the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

fn token_text(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// Finds the template as transformers does: `chat_template.jinja`, then
    /// `chat_template.json`, then `tokenizer_config.json`'s `chat_template` (a string, or the
    /// entry named `default` of a list).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let tc_path = dir.join("tokenizer_config.json");
        let tc = if tc_path.exists() { read_json(&tc_path)? } else { serde_json::Value::Null };
        let jinja = dir.join("chat_template.jinja");
        let json = dir.join("chat_template.json");
        let source = if jinja.exists() {
            String::from_utf8(read(&jinja)?).map_err(|_| invalid(&jinja, "not UTF-8"))?
        } else if json.exists() {
            read_json(&json)?.get("chat_template").and_then(|t| t.as_str()).map(str::to_string).ok_or_else(|| invalid(&json, "no `chat_template` string"))?
        } else {
            match tc.get("chat_template") {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str())
                    .map(str::to_string)
                    .ok_or_else(|| invalid(&tc_path, "`chat_template` list has no entry named `default`"))?,
                _ => return Err(invalid(dir, "no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json's chat_template)")),
            }
        };
        let t = Self { source, bos_token: token_text(tc.get("bos_token")), eos_token: token_text(tc.get("eos_token")) };
        t.env()?; // syntax errors surface at load time
        Ok(t)
    }

    pub fn from_source(source: &str) -> Self {
        Self { source: source.to_string(), bos_token: String::new(), eos_token: String::new() }
    }

    fn env(&self) -> Result<minijinja::Environment<'_>> {
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", &self.source).map_err(|e| HfError::Template(format!("{e:#}")))?;
        Ok(env)
    }

    /// Renders `messages` (OpenAI/transformers style: role + string or list of typed parts).
    pub fn render(&self, messages: &serde_json::Value, add_generation_prompt: bool) -> Result<String> {
        let env = self.env()?;
        let tmpl = env.get_template("chat").map_err(|e| HfError::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| HfError::Template(format!("{e:#}")))
    }
}

impl ChatTemplate {
    /// The token that ends an assistant turn: the first special token the template writes
    /// after an assistant message's text (Qwen's `<|im_end|>`), if any.
    pub fn end_of_turn(&self, tokenizer: &tokenizers::Tokenizer) -> Option<u32> {
        const MARK: &str = "\u{1}mstar-end-of-turn-probe\u{1}";
        let msgs = serde_json::json!([
            {"role": "user", "content": [{"type": "text", "text": "x"}]},
            {"role": "assistant", "content": [{"type": "text", "text": MARK}]},
        ]);
        let text = self.render(&msgs, false).ok()?;
        let after = &text[text.find(MARK)? + MARK.len()..];
        let enc = tokenizer.encode(after, false).ok()?;
        let special: std::collections::HashSet<u32> =
            tokenizer.get_added_vocabulary().get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(&id, _)| id).collect();
        enc.get_ids().iter().copied().find(|id| special.contains(id))
    }
}

/// A user turn of `n_images` images followed by `question`, as the Qwen-VL processors expect.
pub fn user_turn(n_images: usize, question: &str) -> serde_json::Value {
    let mut content: Vec<serde_json::Value> = (0..n_images).map(|_| serde_json::json!({"type": "image"})).collect();
    content.push(serde_json::json!({"type": "text", "text": question}));
    serde_json::json!([{"role": "user", "content": content}])
}
