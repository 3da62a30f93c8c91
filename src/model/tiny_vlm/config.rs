//! Hyperparameters of the tiny vision-language model, stored as a Hugging Face-style
//! `config.json` next to `model.safetensors` and `tokenizer.json`.

use serde::{Deserialize, Serialize};

pub const ARCHITECTURE: &str = "MstarTinyVlm";
/// The process reward model: the same network with a scalar `score_head` on the hidden states.
pub const PRM_ARCHITECTURE: &str = "MstarTinyVlmPrm";

/// A config the model code cannot run: keys that do not decode, or a broken invariant (named by
/// its keys).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unknown key or wrong type (serde's message names the key).
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("hidden_size must split into an even head_dim per attention head")]
    HeadDim,
    #[error("vision_config.hidden_size must be divisible by its num_attention_heads")]
    VisionHeads,
    #[error("vision_config.image_size must be a multiple of patch_size")]
    ImageSize,
    #[error("vision_config.stem_channels must be at least 1")]
    StemChannels,
    #[error("vision_config.merge_size {merge_size} must divide the {grid} patches per side")]
    MergeSize { merge_size: usize, grid: usize },
    #[error("vision_config.pool_grid and merge_size > 1 cannot be combined")]
    PoolGridWithMerge,
    #[error("vision_config.pool_grid {pool_grid}: every one of the {pool_grid}×{pool_grid} regions needs a patch centre ({grid} patches per side)")]
    PoolGrid { pool_grid: usize, grid: usize },
    #[error("special token id {id} ≥ vocab_size {vocab_size}")]
    SpecialToken { id: u32, vocab_size: usize },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// Side of the square of neighbouring patches merged into one decoder token after the
    /// encoder (Qwen2-VL's patch merger); 1 keeps one token per patch.
    #[serde(default = "one")]
    pub merge_size: usize,
    /// Channels of an optional convolutional stem (two 3×3 convolutions with SiLU at full
    /// resolution) before the patch embedding; absent: the patch embedding reads raw pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stem_channels: Option<usize>,
    /// Image tokens per side after the encoder: each of the `pool_grid`² regions of the image
    /// becomes one decoder token, the mean of the patch features whose centres lie in it
    /// (adaptive average pooling); absent: one token per (merged) patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_grid: Option<usize>,
}

fn one() -> usize {
    1
}

impl VisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn num_patches(&self) -> usize {
        self.grid().pow(2)
    }
    /// Tokens an image takes in the decoder: pooled regions, or patches after merging.
    pub fn image_tokens(&self) -> usize {
        match self.pool_grid {
            Some(g) => g * g,
            None => self.num_patches() / (self.merge_size * self.merge_size),
        }
    }
    /// Region (row-major over a `g`×`g` grid) of each patch: the one its centre lies in.
    pub fn patch_regions(&self, g: usize) -> Vec<usize> {
        let region = |c: usize| ((c * self.patch_size + self.patch_size / 2) * g / self.image_size).min(g - 1);
        let n = self.grid();
        (0..n * n).map(|i| region(i / n) * g + region(i % n)).collect()
    }
    pub fn patch_dim(&self) -> usize {
        self.num_channels * self.patch_size * self.patch_size
    }
    /// Features per patch that the patch embedding reads: raw pixels, or stem channels.
    pub fn embed_dim(&self) -> usize {
        self.stem_channels.unwrap_or(self.num_channels) * self.patch_size * self.patch_size
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub architectures: Vec<String>,
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub vision_config: VisionConfig,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
    pub pad_token_id: u32,
    pub image_token_id: u32,
}

impl Config {
    /// A preset by name: `tiny` (~1M parameters), `small` (~5M), `base` (~19M).
    pub fn preset(name: &str, vocab_size: usize) -> Option<Config> {
        let (h, layers, heads, inter, vh, vlayers, vheads, vinter) = match name {
            "tiny" => (128, 4, 4, 352, 96, 2, 4, 256),
            "small" => (256, 6, 8, 688, 160, 3, 4, 448),
            "base" => (448, 8, 8, 1216, 256, 4, 8, 768),
            _ => return None,
        };
        Some(Config {
            architectures: vec![ARCHITECTURE.into()],
            model_type: "mstar_tiny_vlm".into(),
            vocab_size,
            hidden_size: h,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 512,
            tie_word_embeddings: true,
            vision_config: VisionConfig {
                image_size: 56,
                patch_size: 8,
                num_channels: 3,
                hidden_size: vh,
                num_hidden_layers: vlayers,
                num_attention_heads: vheads,
                intermediate_size: vinter,
                merge_size: 1,
                stem_channels: None,
                pool_grid: None,
            },
            bos_token_id: 1,
            eos_token_id: 2,
            pad_token_id: 0,
            image_token_id: 3,
        })
    }

    /// This config with `over`'s keys merged in (objects key by key), checked like a file.
    pub fn with_overrides(&self, over: &serde_json::Value) -> Result<Config, ConfigError> {
        fn merge(base: &mut serde_json::Value, over: &serde_json::Value) {
            match (base, over) {
                (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
                    for (k, v) in o {
                        merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                    }
                }
                (b, o) => *b = o.clone(),
            }
        }
        let mut v = serde_json::to_value(self)?;
        merge(&mut v, over);
        let cfg: Config = serde_json::from_value(v)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Whether this is a process reward model (has a `score_head`).
    pub fn is_prm(&self) -> bool {
        self.architectures.iter().any(|a| a == PRM_ARCHITECTURE)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks the invariants the model code relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let v = &self.vision_config;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) || !self.head_dim().is_multiple_of(2) {
            return Err(ConfigError::HeadDim);
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(ConfigError::VisionHeads);
        }
        if !v.image_size.is_multiple_of(v.patch_size) {
            return Err(ConfigError::ImageSize);
        }
        if v.stem_channels == Some(0) {
            return Err(ConfigError::StemChannels);
        }
        if v.merge_size == 0 || !v.grid().is_multiple_of(v.merge_size) {
            return Err(ConfigError::MergeSize { merge_size: v.merge_size, grid: v.grid() });
        }
        if let Some(g) = v.pool_grid {
            if v.merge_size != 1 {
                return Err(ConfigError::PoolGridWithMerge);
            }
            let regions = if g == 0 { vec![] } else { v.patch_regions(g) };
            if g == 0 || (0..g * g).any(|r| !regions.contains(&r)) {
                return Err(ConfigError::PoolGrid { pool_grid: g, grid: v.grid() });
            }
        }
        for id in [self.bos_token_id, self.eos_token_id, self.pad_token_id, self.image_token_id] {
            if id as usize >= self.vocab_size {
                return Err(ConfigError::SpecialToken { id, vocab_size: self.vocab_size });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_merge_key_by_key_and_are_checked() {
        let c = Config::preset("tiny", 384).unwrap();
        let o = c.with_overrides(&serde_json::json!({"vision_config": {"patch_size": 4}, "num_hidden_layers": 2})).unwrap();
        assert_eq!((o.vision_config.patch_size, o.vision_config.hidden_size, o.num_hidden_layers), (4, c.vision_config.hidden_size, 2));
        assert!(c.with_overrides(&serde_json::json!({"vision_config": {"patch": 4}})).unwrap_err().to_string().contains("patch"));
        assert!(c.with_overrides(&serde_json::json!({"vision_config": {"patch_size": 5}})).unwrap_err().to_string().contains("multiple"));
        assert!(c.with_overrides(&serde_json::json!({"vision_config": {"merge_size": 2}})).unwrap_err().to_string().contains("merge_size 2 must divide the 7"));
        assert!(matches!(c.with_overrides(&serde_json::json!({"vision_config": {"merge_size": 2}})), Err(ConfigError::MergeSize { merge_size: 2, grid: 7 })));
        assert!(matches!(c.with_overrides(&serde_json::json!({"vision_config": {"patch": 4}})), Err(ConfigError::Json(_))));
        let m = c.with_overrides(&serde_json::json!({"vision_config": {"patch_size": 4, "merge_size": 2}})).unwrap();
        assert_eq!((m.vision_config.num_patches(), m.vision_config.image_tokens()), (196, 49));
        let p = c.with_overrides(&serde_json::json!({"vision_config": {"pool_grid": 3}})).unwrap();
        assert_eq!((p.vision_config.num_patches(), p.vision_config.image_tokens()), (49, 9));
        // 7 patches of 8 px over 3 regions of 56/3 px: centres 4, 12 | 20, 28, 36 | 44, 52
        assert_eq!(&p.vision_config.patch_regions(3)[..7], &[0, 0, 1, 1, 1, 2, 2]);
        assert!(c.with_overrides(&serde_json::json!({"vision_config": {"pool_grid": 8}})).unwrap_err().to_string().contains("needs a patch centre"));
        assert!(c.with_overrides(&serde_json::json!({"vision_config": {"pool_grid": 0}})).unwrap_err().to_string().contains("pool_grid 0"));
    }
}
