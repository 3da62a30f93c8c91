//! Qwen3-VL (dense) from a local Hugging Face checkpoint folder: own candle vision tower
//! (learned interpolated positions, DeepStack) on the shared Qwen decoder with q/k norms and
//! interleaved M-RoPE; checked against transformers' logits.

pub mod config;
#[cfg(test)]
mod parity;
pub mod vision;

pub use config::Config;

use crate::model::qwen2_5_vl::lora::LoraConfig;
use crate::model::qwen2_5_vl::text::TextModel;
use crate::model::qwen2_5_vl::{build_checked, embed_with_images, rope_index};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;
use vision::VisionTower;

#[derive(Debug, Clone)]
pub struct Qwen3Vl {
    pub cfg: Config,
    pub vision: VisionTower,
    pub text: TextModel,
}

impl Qwen3Vl {
    /// transformers ≥ 4.57 names: `model.visual.*`, `model.language_model.*` (canonicalized to
    /// `visual.*`, `model.*`), `lm_head.*` unless tied.
    pub fn new(cfg: &Config, vb: VarBuilder, lora: Option<&LoraConfig>) -> Result<Self> {
        Ok(Self { cfg: cfg.clone(), vision: VisionTower::new(&cfg.vision, vb.pp("visual"), lora)?, text: TextModel::new(&cfg.decoder, vb, lora)? })
    }

    pub fn from_tensors(
        cfg: &Config,
        tensors: HashMap<String, Tensor>,
        lora: Option<&LoraConfig>,
        trainable: &dyn Fn(&str) -> bool,
        dtype: DType,
        dev: &Device,
    ) -> Result<(Self, VarMap, HashMap<String, Tensor>)> {
        build_checked(tensors, trainable, dtype, dev, |vb| Self::new(cfg, vb, lora))
    }

    /// The DeepStack features scattered to the image tokens' rows: (B·T, C) per feature level.
    pub fn deepstack_rows(&self, ids: &Tensor, deep: &[Tensor]) -> Result<Vec<Tensor>> {
        let flat: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        let mut k = 0u32;
        let index: Vec<u32> = flat
            .iter()
            .map(|&id| {
                if id == self.cfg.image_token_id {
                    k += 1;
                    k
                } else {
                    0
                }
            })
            .collect();
        let index = Tensor::from_vec(index, flat.len(), ids.device())?;
        deep.iter()
            .map(|d| {
                let zero = Tensor::zeros((1, d.dim(1)?), d.dtype(), d.device())?;
                Tensor::cat(&[&zero, d], 0)?.index_select(&index, 0)
            })
            .collect()
    }

    /// Logits (1, T, V) of one sequence with its images.
    pub fn forward(&self, ids: &[u32], pixels: Option<&Tensor>, grids: &[[usize; 3]]) -> Result<Tensor> {
        let dev = self.text.embed.embeddings().device().clone();
        let (feats, deep) = match pixels {
            Some(p) => {
                let (f, d) = self.vision.forward(p, grids)?;
                (Some(f), d)
            }
            None => (None, vec![]),
        };
        let id_t = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &dev)?;
        let x = embed_with_images(&self.text, &id_t, feats.as_ref(), self.cfg.image_token_id)?;
        let deep = self.deepstack_rows(&id_t, &deep)?;
        let pos = rope_index(ids, grids, self.cfg.image_token_id, self.cfg.vision.spatial_merge_size)?;
        let (cos, sin) = self.text.rope_tables(&[pos], &dev)?;
        let h = self.text.forward_deepstack(&x, &cos, &sin, crate::model::layers::Mask::Causal, None, &deep)?;
        self.text.logits(&h)
    }
}
