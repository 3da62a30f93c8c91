//! Qwen2.5-VL's `config.json`: the text model (at the top level, or under `text_config` as
//! transformers ≥ 4.57 writes it), `vision_config`, and the special token ids.

use crate::model::hf::{invalid, read_json, Result};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default = "eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "theta")]
    pub rope_theta: f64,
    #[serde(default = "silu")]
    pub hidden_act: String,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub out_hidden_size: usize,
    #[serde(default = "patch")]
    pub patch_size: usize,
    #[serde(default = "two")]
    pub spatial_merge_size: usize,
    #[serde(default = "two")]
    pub temporal_patch_size: usize,
    #[serde(default = "window")]
    pub window_size: usize,
    #[serde(default)]
    pub fullatt_block_indexes: Vec<usize>,
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "silu")]
    pub hidden_act: String,
}

fn eps() -> f64 {
    1e-6
}
fn theta() -> f64 {
    1_000_000.0
}
fn silu() -> String {
    "silu".into()
}
fn patch() -> usize {
    14
}
fn two() -> usize {
    2
}
fn three() -> usize {
    3
}
fn window() -> usize {
    112
}

#[derive(Debug, Clone)]
pub struct Config {
    pub text: TextConfig,
    pub vision: VisionConfig,
    /// Frequencies of each head's rotary half given to (temporal, height, width) positions.
    pub mrope_section: Vec<usize>,
    pub tie_word_embeddings: bool,
    pub image_token_id: u32,
    pub vision_start_token_id: u32,
    pub eos_token_ids: Vec<u32>,
}

impl TextConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_value(&read_json(path)?, path)
    }

    pub fn from_value(v: &serde_json::Value, path: &Path) -> Result<Self> {
        let text_v = v.get("text_config").filter(|t| t.is_object()).unwrap_or(v);
        let text: TextConfig = serde_json::from_value(text_v.clone()).map_err(|e| invalid(path, format!("text config: {e}")))?;
        let vision: VisionConfig = serde_json::from_value(v.get("vision_config").cloned().unwrap_or_default())
            .map_err(|e| invalid(path, format!("vision_config: {e}")))?;
        let id = |k: &str| -> Result<u32> {
            v.get(k).or_else(|| text_v.get(k)).and_then(|x| x.as_u64()).map(|x| x as u32).ok_or_else(|| invalid(path, format!("`{k}` missing")))
        };
        let eos_token_ids = match v.get("eos_token_id").or_else(|| text_v.get("eos_token_id")) {
            Some(serde_json::Value::Number(n)) => n.as_u64().into_iter().map(|x| x as u32).collect(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
            _ => vec![],
        };
        let scaling = text.rope_scaling.clone().unwrap_or_default();
        let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
        if !matches!(kind, "default" | "mrope") {
            return Err(invalid(path, format!("rope_scaling type `{kind}` is not supported (default / mrope are)")));
        }
        let half = text.head_dim() / 2;
        let mrope_section: Vec<usize> = match scaling.get("mrope_section").and_then(|s| s.as_array()) {
            Some(a) => a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect::<Option<_>>().ok_or_else(|| invalid(path, "mrope_section must be integers"))?,
            None => return Err(invalid(path, "rope_scaling.mrope_section missing (Qwen2.5-VL needs it)")),
        };
        if mrope_section.len() != 3 || mrope_section.iter().sum::<usize>() != half {
            return Err(invalid(path, format!("mrope_section {mrope_section:?} must be 3 numbers summing to head_dim/2 = {half}")));
        }
        for (what, act) in [("text", &text.hidden_act), ("vision", &vision.hidden_act)] {
            if act != "silu" {
                return Err(invalid(path, format!("{what} hidden_act `{act}` is not supported (silu is)")));
            }
        }
        if text.use_sliding_window {
            return Err(invalid(path, "use_sliding_window is not supported"));
        }
        if text.hidden_size % text.num_attention_heads != 0 || text.num_attention_heads % text.num_key_value_heads != 0 {
            return Err(invalid(path, "hidden_size must divide by num_attention_heads, and heads by num_key_value_heads"));
        }
        let v_ = &vision;
        if v_.hidden_size % v_.num_heads != 0 || (v_.hidden_size / v_.num_heads) % 4 != 0 {
            return Err(invalid(path, "vision head_dim (hidden_size / num_heads) must be a multiple of 4"));
        }
        if v_.window_size % (v_.spatial_merge_size * v_.patch_size) != 0 || v_.window_size == 0 {
            return Err(invalid(path, "vision window_size must be a positive multiple of spatial_merge_size × patch_size"));
        }
        if let Some(&b) = v_.fullatt_block_indexes.iter().find(|&&b| b >= v_.depth) {
            return Err(invalid(path, format!("fullatt_block_indexes has {b}, beyond depth {}", v_.depth)));
        }
        let tie_word_embeddings = v.get("tie_word_embeddings").and_then(|x| x.as_bool()).or(text.tie_word_embeddings).unwrap_or(false);
        Ok(Self {
            image_token_id: id("image_token_id")?,
            vision_start_token_id: id("vision_start_token_id")?,
            eos_token_ids,
            mrope_section,
            tie_word_embeddings,
            text,
            vision,
        })
    }
}
