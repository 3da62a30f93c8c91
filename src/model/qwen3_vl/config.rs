//! Qwen3-VL's `config.json`: the Qwen3 text model under `text_config` (q/k norms, interleaved
//! M-RoPE, explicit head_dim) and the vision tower with learned positions and DeepStack.

use crate::model::hf::{invalid, read_json, Result};
use crate::model::qwen2_5_vl::config::{token_ids, DecoderSpec};
use serde::Deserialize;
use std::path::Path;

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
    /// A square grid of learned position embeddings, interpolated to each image's grid.
    pub num_position_embeddings: usize,
    /// Blocks whose output also feeds the decoder's first layers (one merger each).
    #[serde(default)]
    pub deepstack_visual_indexes: Vec<usize>,
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "gelu_tanh")]
    pub hidden_act: String,
}

fn patch() -> usize {
    16
}
fn two() -> usize {
    2
}
fn three() -> usize {
    3
}
fn gelu_tanh() -> String {
    "gelu_pytorch_tanh".into()
}

#[derive(Debug, Clone)]
pub struct Config {
    pub decoder: DecoderSpec,
    pub vision: VisionConfig,
    pub image_token_id: u32,
    pub vision_start_token_id: u32,
    pub eos_token_ids: Vec<u32>,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_value(&read_json(path)?, path)
    }

    pub fn from_value(v: &serde_json::Value, path: &Path) -> Result<Self> {
        let decoder = DecoderSpec::from_value(v, path, true)?;
        let text_v = v.get("text_config").filter(|t| t.is_object()).unwrap_or(v);
        let vision: VisionConfig = serde_json::from_value(v.get("vision_config").cloned().unwrap_or_default())
            .map_err(|e| invalid(path, format!("vision_config: {e}")))?;
        let (image_token_id, vision_start_token_id, eos_token_ids) = token_ids(v, text_v, path)?;
        if !matches!(vision.hidden_act.as_str(), "gelu_pytorch_tanh" | "gelu") {
            return Err(invalid(path, format!("vision hidden_act `{}` is not supported (gelu_pytorch_tanh, gelu are)", vision.hidden_act)));
        }
        if !vision.hidden_size.is_multiple_of(vision.num_heads) || !(vision.hidden_size / vision.num_heads).is_multiple_of(4) {
            return Err(invalid(path, "vision head_dim (hidden_size / num_heads) must be a multiple of 4"));
        }
        let side = (vision.num_position_embeddings as f64).sqrt() as usize;
        if side * side != vision.num_position_embeddings || side < 2 {
            return Err(invalid(path, format!("num_position_embeddings {} is not a square ≥ 4", vision.num_position_embeddings)));
        }
        if let Some(&b) = vision.deepstack_visual_indexes.iter().find(|&&b| b >= vision.depth) {
            return Err(invalid(path, format!("deepstack_visual_indexes has {b}, beyond depth {}", vision.depth)));
        }
        if vision.deepstack_visual_indexes.len() > decoder.text.num_hidden_layers {
            return Err(invalid(path, "more deepstack_visual_indexes than decoder layers"));
        }
        Ok(Self { decoder, vision, image_token_id, vision_start_token_id, eos_token_ids })
    }
}
