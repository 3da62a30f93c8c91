//! The Qwen-VL family behind one type: a checkpoint folder (model by `architectures`, weights,
//! tokenizer, image processor, chat template) and the calls generation and training make.

use super::hf::{self, chat::ChatTemplate, processor::ImageProcessor, HfError};
use super::qwen2_5_vl::{self, lora, text::TextModel, Qwen25Vl};
use super::qwen3_vl::{self, Qwen3Vl};
use super::tiny_vlm::Mask;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarMap;
use std::path::Path;

/// A Qwen-VL model of either generation.
#[derive(Debug, Clone)]
pub enum QwenVl {
    Qwen25(Qwen25Vl),
    Qwen3(Qwen3Vl),
}

impl QwenVl {
    pub fn text(&self) -> &TextModel {
        match self {
            QwenVl::Qwen25(m) => &m.text,
            QwenVl::Qwen3(m) => &m.text,
        }
    }

    pub fn image_token_id(&self) -> u32 {
        match self {
            QwenVl::Qwen25(m) => m.cfg.image_token_id,
            QwenVl::Qwen3(m) => m.cfg.image_token_id,
        }
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        match self {
            QwenVl::Qwen25(m) => &m.cfg.eos_token_ids,
            QwenVl::Qwen3(m) => &m.cfg.eos_token_ids,
        }
    }

    fn merge_size(&self) -> usize {
        match self {
            QwenVl::Qwen25(m) => m.cfg.vision.spatial_merge_size,
            QwenVl::Qwen3(m) => m.cfg.vision.spatial_merge_size,
        }
    }

    /// (patch, merge, temporal) sizes the image processor must use.
    fn patching(&self) -> (usize, usize, usize) {
        match self {
            QwenVl::Qwen25(m) => (m.cfg.vision.patch_size, m.cfg.vision.spatial_merge_size, m.cfg.vision.temporal_patch_size),
            QwenVl::Qwen3(m) => (m.cfg.vision.patch_size, m.cfg.vision.spatial_merge_size, m.cfg.vision.temporal_patch_size),
        }
    }

    /// Hidden states (1, T, C) of a prompt with its images, filling `cache`; and the next
    /// text position (one past the largest M-RoPE position).
    pub fn prefill(&self, ids: &[u32], pixels: Option<&Tensor>, grids: &[[usize; 3]], cache: Option<&mut qwen2_5_vl::text::Cache>) -> Result<(Tensor, i64)> {
        let text = self.text();
        let dev = text.embed.embeddings().device().clone();
        let id_t = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &dev)?;
        let (feats, deep) = match (self, pixels) {
            (QwenVl::Qwen25(m), Some(p)) => (Some(m.vision.forward(p, grids)?), vec![]),
            (QwenVl::Qwen3(m), Some(p)) => {
                let (f, d) = m.vision.forward(p, grids)?;
                let rows = m.deepstack_rows(&id_t, &d)?;
                (Some(f), rows)
            }
            (_, None) => (None, vec![]),
        };
        let x = qwen2_5_vl::embed_with_images(text, &id_t, feats.as_ref(), self.image_token_id())?;
        let pos = qwen2_5_vl::rope_index(ids, grids, self.image_token_id(), self.merge_size())?;
        let next = pos.iter().flat_map(|p| p.iter().copied()).max().map_or(0, |m| m + 1);
        let (cos, sin) = text.rope_tables(&[pos], &dev)?;
        Ok((text.forward_deepstack(&x, &cos, &sin, Mask::Causal, cache, &deep)?, next))
    }

    /// Logits (1, T, V) of one sequence with its images.
    pub fn forward(&self, ids: &[u32], pixels: Option<&Tensor>, grids: &[[usize; 3]]) -> Result<Tensor> {
        let (h, _) = self.prefill(ids, pixels, grids, None)?;
        self.text().logits(&h)
    }
}

/// A checkpoint folder: model, weights as variables (for training), processor, tokenizer, template.
pub struct Checkpoint {
    pub model: QwenVl,
    pub varmap: VarMap,
    pub processor: ImageProcessor,
    pub tokenizer: tokenizers::Tokenizer,
    pub chat: ChatTemplate,
}

impl Checkpoint {
    /// Loads a Qwen2.5-VL or Qwen3-VL folder (by config.json's `architectures`): config.json,
    /// weights, tokenizer.json, preprocessor_config.json and the chat template.
    pub fn load(dir: &Path, dtype: DType, dev: &Device) -> hf::Result<Self> {
        Self::load_with_adapter(dir, None, dtype, dev)
    }

    /// `load`, plus a peft LoRA adapter folder whose weights join the model's.
    pub fn load_with_adapter(dir: &Path, adapter: Option<&Path>, dtype: DType, dev: &Device) -> hf::Result<Self> {
        let cfg_path = dir.join("config.json");
        let raw = hf::read_json(&cfg_path)?;
        let mut tensors = hf::weights::load(dir, dtype, dev)?;
        let lora = match adapter {
            Some(a) => {
                let (lc, extra) = lora::load_adapter(a, dtype, dev)?;
                tensors.extend(extra);
                Some(lc)
            }
            None => None,
        };
        let at = |e: candle_core::Error| hf::invalid(adapter.unwrap_or(dir), e.to_string());
        let (model, varmap) = match hf::architecture(&raw) {
            Some("Qwen2_5_VLForConditionalGeneration") => {
                let cfg = qwen2_5_vl::Config::from_value(&raw, &cfg_path)?;
                let (m, v) = Qwen25Vl::from_tensors(&cfg, tensors, lora.as_ref(), dtype, dev).map_err(at)?;
                (QwenVl::Qwen25(m), v)
            }
            Some("Qwen3VLForConditionalGeneration") => {
                let cfg = qwen3_vl::Config::from_value(&raw, &cfg_path)?;
                let (m, v) = Qwen3Vl::from_tensors(&cfg, tensors, lora.as_ref(), dtype, dev).map_err(at)?;
                (QwenVl::Qwen3(m), v)
            }
            other => {
                return Err(hf::invalid(&cfg_path, format!("architecture {other:?} is not supported (Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration are)")));
            }
        };
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| hf::invalid(&tok_path, e.to_string()))?;
        let processor = ImageProcessor::from_file(&dir.join("preprocessor_config.json"))?;
        if (processor.patch_size, processor.merge_size, processor.temporal_patch_size) != model.patching() {
            return Err(hf::invalid(dir, "preprocessor_config.json's patch, merge or temporal sizes differ from config.json's vision_config"));
        }
        let chat = ChatTemplate::from_dir(dir)?;
        Ok(Self { model, varmap, processor, tokenizer, chat })
    }

    /// The processor's text expansion: each `<|image_pad|>` becomes one token per merged patch.
    pub fn expand_image_pads(&self, text: &str, grids: &[[usize; 3]]) -> std::result::Result<String, HfError> {
        const PAD: &str = "<|image_pad|>";
        let parts: Vec<&str> = text.split(PAD).collect();
        if parts.len() - 1 != grids.len() {
            return Err(HfError::Image(format!("the prompt has {} image placeholders but {} images were given", parts.len() - 1, grids.len())));
        }
        let mut out = String::with_capacity(text.len());
        for (i, part) in parts.iter().enumerate() {
            out.push_str(part);
            if let Some(g) = grids.get(i) {
                out.push_str(&PAD.repeat(self.processor.num_tokens(*g)));
            }
        }
        Ok(out)
    }

    /// Token ids of `text` (special tokens parsed, none added), as the processor's tokenizer call.
    pub fn encode(&self, text: &str) -> hf::Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| HfError::Template(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }
}
