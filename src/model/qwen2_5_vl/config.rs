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
    /// Qwen3: explicit head size (else hidden_size / heads).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Qwen3: biases on q, k, v and o (Qwen2: q, k, v only).
    #[serde(default)]
    pub attention_bias: Option<bool>,
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

/// The language model's shape and the Qwen2 / Qwen3 differences.
#[derive(Debug, Clone)]
pub struct DecoderSpec {
    pub text: TextConfig,
    /// Rotary frequencies given to (temporal, height, width) positions.
    pub mrope_section: Vec<usize>,
    /// Qwen3-VL: frequencies interleaved T H W T H W … (else in three blocks).
    pub mrope_interleaved: bool,
    /// Qwen3: RMSNorm of each head's queries and keys before RoPE.
    pub qk_norm: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub tie_word_embeddings: bool,
}

impl DecoderSpec {
    /// The text part of a Qwen-VL `config.json` (top level or `text_config`).
    pub fn from_value(v: &serde_json::Value, path: &Path, qwen3: bool) -> Result<Self> {
        let text_v = v.get("text_config").filter(|t| t.is_object()).unwrap_or(v);
        let text: TextConfig = serde_json::from_value(text_v.clone()).map_err(|e| invalid(path, format!("text config: {e}")))?;
        let scaling = text.rope_scaling.clone().unwrap_or_default();
        let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
        if !matches!(kind, "default" | "mrope") {
            return Err(invalid(path, format!("rope_scaling type `{kind}` is not supported (default / mrope are)")));
        }
        let half = text.head_dim() / 2;
        let mrope_section: Vec<usize> = match scaling.get("mrope_section").and_then(|s| s.as_array()) {
            Some(a) => a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect::<Option<_>>().ok_or_else(|| invalid(path, "mrope_section must be integers"))?,
            None => return Err(invalid(path, "rope_scaling.mrope_section missing (Qwen-VL models need it)")),
        };
        if mrope_section.len() != 3 || mrope_section.iter().sum::<usize>() != half {
            return Err(invalid(path, format!("mrope_section {mrope_section:?} must be 3 numbers summing to head_dim/2 = {half}")));
        }
        if text.hidden_act != "silu" {
            return Err(invalid(path, format!("text hidden_act `{}` is not supported (silu is)", text.hidden_act)));
        }
        if text.use_sliding_window {
            return Err(invalid(path, "use_sliding_window is not supported"));
        }
        if !text.num_attention_heads.is_multiple_of(text.num_key_value_heads) || (text.head_dim.is_none() && !text.hidden_size.is_multiple_of(text.num_attention_heads)) {
            return Err(invalid(path, "num_attention_heads must divide by num_key_value_heads, and hidden_size by heads (or give head_dim)"));
        }
        let interleaved = scaling.get("mrope_interleaved").and_then(|x| x.as_bool()).unwrap_or(qwen3);
        if interleaved && mrope_section.iter().skip(1).any(|&n| n * 3 > half) {
            return Err(invalid(path, format!("interleaved mrope_section {mrope_section:?} does not fit head_dim/2 = {half}")));
        }
        let tie = v.get("tie_word_embeddings").and_then(|x| x.as_bool()).or(text.tie_word_embeddings).unwrap_or(false);
        let bias = text.attention_bias;
        Ok(Self {
            mrope_section,
            mrope_interleaved: interleaved,
            qk_norm: qwen3,
            qkv_bias: bias.unwrap_or(!qwen3),
            o_bias: bias.unwrap_or(false) && qwen3,
            tie_word_embeddings: tie,
            text,
        })
    }

    /// For each rotary frequency of a head's half: 0 temporal, 1 height, 2 width.
    pub fn axes(&self) -> Vec<usize> {
        let half = self.text.head_dim() / 2;
        let s = &self.mrope_section;
        if self.mrope_interleaved {
            // transformers' apply_interleaved_mrope: H at 1, 4, … < 3·s[1]; W at 2, 5, … < 3·s[2]
            (0..half).map(|j| if j % 3 == 1 && j < 3 * s[1] { 1 } else if j % 3 == 2 && j < 3 * s[2] { 2 } else { 0 }).collect()
        } else {
            (0..3).flat_map(|a| std::iter::repeat_n(a, s[a])).collect()
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub decoder: DecoderSpec,
    pub vision: VisionConfig,
    pub image_token_id: u32,
    pub vision_start_token_id: u32,
    pub eos_token_ids: Vec<u32>,
}

impl TextConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_value(&read_json(path)?, path)
    }

    pub fn from_value(v: &serde_json::Value, path: &Path) -> Result<Self> {
        let decoder = DecoderSpec::from_value(v, path, false)?;
        let text_v = v.get("text_config").filter(|t| t.is_object()).unwrap_or(v);
        let vision: VisionConfig = serde_json::from_value(v.get("vision_config").cloned().unwrap_or_default())
            .map_err(|e| invalid(path, format!("vision_config: {e}")))?;
        let (image_token_id, vision_start_token_id, eos_token_ids) = token_ids(v, text_v, path)?;
        if vision.hidden_act != "silu" {
            return Err(invalid(path, format!("vision hidden_act `{}` is not supported (silu is)", vision.hidden_act)));
        }
        let v_ = &vision;
        if !v_.hidden_size.is_multiple_of(v_.num_heads) || !(v_.hidden_size / v_.num_heads).is_multiple_of(4) {
            return Err(invalid(path, "vision head_dim (hidden_size / num_heads) must be a multiple of 4"));
        }
        if !v_.window_size.is_multiple_of(v_.spatial_merge_size * v_.patch_size) || v_.window_size == 0 {
            return Err(invalid(path, "vision window_size must be a positive multiple of spatial_merge_size × patch_size"));
        }
        if let Some(&b) = v_.fullatt_block_indexes.iter().find(|&&b| b >= v_.depth) {
            return Err(invalid(path, format!("fullatt_block_indexes has {b}, beyond depth {}", v_.depth)));
        }
        Ok(Self { image_token_id, vision_start_token_id, eos_token_ids, decoder, vision })
    }
}

/// (image_token_id, vision_start_token_id, eos ids) from the top level or `text_config`.
pub fn token_ids(v: &serde_json::Value, text_v: &serde_json::Value, path: &Path) -> Result<(u32, u32, Vec<u32>)> {
    let id = |k: &str| -> Result<u32> {
        v.get(k).or_else(|| text_v.get(k)).and_then(|x| x.as_u64()).map(|x| x as u32).ok_or_else(|| invalid(path, format!("`{k}` missing")))
    };
    let eos = match v.get("eos_token_id").or_else(|| text_v.get("eos_token_id")) {
        Some(serde_json::Value::Number(n)) => n.as_u64().into_iter().map(|x| x as u32).collect(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => vec![],
    };
    Ok((id("image_token_id")?, id("vision_start_token_id")?, eos))
}
