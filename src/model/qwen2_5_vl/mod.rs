//! Qwen2.5-VL from a local Hugging Face checkpoint folder: own differentiable candle code for
//! the vision tower and the M-RoPE decoder, loaded and checked against transformers' logits.

pub mod config;
pub mod generate;
pub mod lora;
#[cfg(test)]
mod parity;
pub mod text;
pub mod vision;

pub use config::Config;

use crate::model::hf::{self, chat::ChatTemplate, processor::ImageProcessor, HfError};
use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use lora::LoraConfig;
use candle_nn::{VarBuilder, VarMap};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use text::{Cache, TextModel};
use vision::VisionTower;

#[derive(Debug, Clone)]
pub struct Qwen25Vl {
    pub cfg: Config,
    pub vision: VisionTower,
    pub text: TextModel,
}

/// A checkpoint folder: model, weights as variables (for training), processor, tokenizer, template.
pub struct Checkpoint {
    pub model: Qwen25Vl,
    pub varmap: VarMap,
    pub processor: ImageProcessor,
    pub tokenizer: tokenizers::Tokenizer,
    pub chat: ChatTemplate,
}

/// Hands out the loaded tensors by name, checking shapes and remembering which were asked for.
struct Weights {
    tensors: HashMap<String, Tensor>,
    used: Arc<Mutex<HashSet<String>>>,
}

impl SimpleBackend for Weights {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!("weight `{name}` has shape {:?}, the config needs {:?}", t.dims(), s.dims());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| candle_core::Error::Msg(format!("weight `{name}` is missing from the checkpoint")))?;
        self.used.lock().expect("not poisoned").insert(name.to_string());
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

impl Qwen25Vl {
    /// The model over `vb` (the checkpoint's root); with `lora`, the targeted linear layers
    /// also read `…lora_A.weight` / `…lora_B.weight`.
    pub fn new(cfg: &Config, vb: VarBuilder, lora: Option<&LoraConfig>) -> Result<Self> {
        Ok(Self { cfg: cfg.clone(), vision: VisionTower::new(&cfg.vision, vb.pp("visual"), lora)?, text: TextModel::new(cfg, vb, lora)? })
    }

    /// Builds the model over `tensors` (canonical names) as trainable variables. Every weight the
    /// config needs must be there with its shape; weights nobody reads are an error too.
    pub fn from_tensors(cfg: &Config, tensors: HashMap<String, Tensor>, lora: Option<&LoraConfig>, dtype: DType, dev: &Device) -> Result<(Self, VarMap)> {
        let names: HashSet<String> = tensors.keys().cloned().collect();
        let used = Arc::new(Mutex::new(HashSet::new()));
        let backend = Weights { tensors, used: used.clone() };
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, dev.clone());
        // first pass: names and shapes, reading only
        let probe = Self::new(cfg, vb.clone(), lora)?;
        drop(probe);
        let used = used.lock().expect("not poisoned").clone();
        let mut unused: Vec<&String> = names.iter().filter(|n| !used.contains(*n)).collect();
        unused.sort();
        if !unused.is_empty() {
            let more = if unused.len() > 5 { format!(" and {} more", unused.len() - 5) } else { String::new() };
            candle_core::bail!("the checkpoint has weights this config does not use: {:?}{more}", &unused[..unused.len().min(5)]);
        }
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().expect("not poisoned");
            for name in &names {
                let t = vb.get_unchecked(name)?;
                data.insert(name.clone(), Var::from_tensor(&t)?);
            }
        }
        let model = Self::new(cfg, VarBuilder::from_varmap(&varmap, dtype, dev), lora)?;
        let n = varmap.all_vars().len();
        if n != names.len() {
            candle_core::bail!("the model created {} weights the checkpoint does not have", n - names.len());
        }
        Ok((model, varmap))
    }

    /// transformers' `get_rope_index` for one sequence of images and text: text tokens count
    /// up on all three axes; an image's tokens get (start, start + row, start + column).
    pub fn rope_index(&self, ids: &[u32], grids: &[[usize; 3]]) -> Result<Vec<[i64; 3]>> {
        let ms = self.cfg.vision.spatial_merge_size;
        let mut out: Vec<[i64; 3]> = Vec::with_capacity(ids.len());
        let mut next = 0i64;
        let mut i = 0usize;
        let mut images = grids.iter();
        while i < ids.len() {
            let starts_image = ids[i] == self.cfg.image_token_id;
            if !starts_image {
                out.push([next; 3]);
                next += 1;
                i += 1;
                continue;
            }
            let &[t, h, w] = images.next().ok_or_else(|| candle_core::Error::Msg(format!("more images in the text than the {} given", grids.len())))?;
            let (lh, lw) = (h / ms, w / ms);
            let n = t * lh * lw;
            if ids.len() < i + n || ids[i..i + n].iter().any(|&x| x != self.cfg.image_token_id) {
                candle_core::bail!("image at token {i} needs {n} image tokens");
            }
            for _f in 0..t {
                for y in 0..lh {
                    for x in 0..lw {
                        out.push([next, next + y as i64, next + x as i64]);
                    }
                }
            }
            next += lh.max(lw) as i64;
            i += n;
        }
        if images.next().is_some() {
            candle_core::bail!("{} images given but the text has fewer image placeholders", grids.len());
        }
        Ok(out)
    }

    /// Token embeddings (B, T, C) with each image token replaced, in order, by a row of `feats`.
    pub fn embed(&self, ids: &Tensor, feats: Option<&Tensor>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let x = candle_core::Module::forward(&self.text.embed, ids)?;
        let Some(feats) = feats else { return Ok(x) };
        let flat: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        let mut k = 0u32;
        let index: Vec<u32> = flat
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                if id == self.cfg.image_token_id {
                    k += 1;
                    (b * t) as u32 + k - 1
                } else {
                    i as u32
                }
            })
            .collect();
        if k as usize != feats.dim(0)? {
            candle_core::bail!("{k} image tokens in the text but {} image features", feats.dim(0)?);
        }
        let c = x.dim(2)?;
        let all = Tensor::cat(&[&x.reshape((b * t, c))?, &feats.to_dtype(x.dtype())?], 0)?;
        all.index_select(&Tensor::from_vec(index, b * t, ids.device())?, 0)?.reshape((b, t, c))
    }

    /// Logits (1, T, V) of one sequence with its images (pixels of all images, their grids).
    pub fn forward(&self, ids: &[u32], pixels: Option<&Tensor>, grids: &[[usize; 3]]) -> Result<Tensor> {
        let dev = self.text.embed.embeddings().device().clone();
        let feats = match pixels {
            Some(p) => Some(self.vision.forward(p, grids)?),
            None => None,
        };
        let id_t = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &dev)?;
        let x = self.embed(&id_t, feats.as_ref())?;
        let pos = self.rope_index(ids, grids)?;
        let (cos, sin) = self.text.rope_tables(&[pos], &dev)?;
        let h = self.text.forward(&x, &cos, &sin, crate::model::tiny_vlm::Mask::Causal, None::<&mut Cache>)?;
        self.text.logits(&h)
    }
}

impl Checkpoint {
    /// Loads a Qwen2.5-VL folder: config.json, weights, tokenizer.json, preprocessor_config.json
    /// and the chat template.
    pub fn load(dir: &Path, dtype: DType, dev: &Device) -> hf::Result<Self> {
        Self::load_with_adapter(dir, None, dtype, dev)
    }

    /// `load`, plus a peft LoRA adapter folder whose weights join the model's.
    pub fn load_with_adapter(dir: &Path, adapter: Option<&Path>, dtype: DType, dev: &Device) -> hf::Result<Self> {
        let cfg_path = dir.join("config.json");
        let raw = hf::read_json(&cfg_path)?;
        match hf::architecture(&raw) {
            Some("Qwen2_5_VLForConditionalGeneration") => {}
            other => {
                return Err(hf::invalid(&cfg_path, format!("architecture {other:?} is not Qwen2_5_VLForConditionalGeneration")));
            }
        }
        let cfg = Config::from_value(&raw, &cfg_path)?;
        let mut tensors = hf::weights::load(dir, dtype, dev)?;
        let lora = match adapter {
            Some(a) => {
                let (lc, extra) = lora::load_adapter(a, dtype, dev)?;
                tensors.extend(extra);
                Some(lc)
            }
            None => None,
        };
        let (model, varmap) = Qwen25Vl::from_tensors(&cfg, tensors, lora.as_ref(), dtype, dev).map_err(|e| hf::invalid(adapter.unwrap_or(dir), e.to_string()))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| hf::invalid(&tok_path, e.to_string()))?;
        let processor = ImageProcessor::from_file(&dir.join("preprocessor_config.json"))?;
        if processor.patch_size != cfg.vision.patch_size || processor.merge_size != cfg.vision.spatial_merge_size || processor.temporal_patch_size != cfg.vision.temporal_patch_size {
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
