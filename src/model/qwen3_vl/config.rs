//! Qwen3-VL's `config.json`: the Qwen3 text model under `text_config` (q/k norms, interleaved
//! M-RoPE, explicit head_dim) and the vision tower with learned positions and DeepStack.

use crate::model::hf::{invalid, read_json, Result};
use crate::model::qwen2_5_vl::config::{three, token_ids, two, vision_config, DecoderSpec, Generation};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `vision_config`, with the defaults of transformers 5.24's `Qwen3VLVisionConfig`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct VisionConfig {
    #[serde(default = "d27")]
    pub depth: usize,
    #[serde(default = "d1152")]
    pub hidden_size: usize,
    #[serde(default = "d4304")]
    pub intermediate_size: usize,
    #[serde(default = "d16")]
    pub num_heads: usize,
    #[serde(default = "d3584")]
    pub out_hidden_size: usize,
    #[serde(default = "d16")]
    pub patch_size: usize,
    #[serde(default = "two")]
    pub spatial_merge_size: usize,
    #[serde(default = "two")]
    pub temporal_patch_size: usize,
    /// A square grid of learned position embeddings, interpolated to each image's grid.
    #[serde(default = "d2304")]
    pub num_position_embeddings: usize,
    /// Blocks whose output also feeds the decoder's first layers (one merger each).
    #[serde(default = "deepstack")]
    pub deepstack_visual_indexes: Vec<usize>,
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "gelu_tanh")]
    pub hidden_act: String,
}

fn d27() -> usize {
    27
}
fn d1152() -> usize {
    1152
}
fn d4304() -> usize {
    4304
}
fn d16() -> usize {
    16
}
fn d3584() -> usize {
    3584
}
fn d2304() -> usize {
    2304
}
fn deepstack() -> Vec<usize> {
    vec![8, 16, 24]
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
        let decoder = DecoderSpec::from_value(v, path, Generation::Qwen3)?;
        let vision: VisionConfig = vision_config(v, path)?;
        let (image_token_id, vision_start_token_id, eos_token_ids) = token_ids(v, path)?;
        if !matches!(vision.hidden_act.as_str(), "gelu_pytorch_tanh" | "gelu") {
            return Err(invalid(path, format!("`vision_config.hidden_act` `{}` is not supported (gelu_pytorch_tanh, gelu are)", vision.hidden_act)));
        }
        if vision.num_heads == 0 || !vision.hidden_size.is_multiple_of(vision.num_heads) || !(vision.hidden_size / vision.num_heads).is_multiple_of(4) {
            return Err(invalid(path, "vision_config: head_dim (hidden_size / num_heads) must be a multiple of 4"));
        }
        let side = (vision.num_position_embeddings as f64).sqrt() as usize;
        if side * side != vision.num_position_embeddings || side < 2 {
            return Err(invalid(path, format!("`vision_config.num_position_embeddings` {} is not a square ≥ 4", vision.num_position_embeddings)));
        }
        Ok(Self { decoder, vision, image_token_id, vision_start_token_id, eos_token_ids })
    }
}
