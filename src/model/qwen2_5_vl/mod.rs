//! Qwen2.5-VL from a local Hugging Face checkpoint folder: own differentiable candle code for
//! the vision tower and the M-RoPE decoder, loaded and checked against transformers' logits.

pub mod config;
#[cfg(test)]
mod config_cases;
pub mod generate;
pub mod lora;
#[cfg(test)]
pub(crate) mod parity;
pub mod text;
pub mod vision;

pub use config::Config;

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use lora::LoraConfig;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use text::TextModel;
use vision::VisionTower;

#[derive(Debug, Clone)]
pub struct Qwen25Vl {
    pub cfg: Config,
    pub vision: VisionTower,
    pub text: TextModel,
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
        Ok(Self { cfg: cfg.clone(), vision: VisionTower::new(&cfg.vision, vb.pp("visual"), lora)?, text: TextModel::new(&cfg.decoder, vb, lora)? })
    }

    /// Builds the model over `tensors` (canonical names), those `trainable` names as variables.
    /// Every weight the config needs must be there with its shape; weights nobody reads are an error too.
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

    pub fn rope_index(&self, ids: &[u32], grids: &[[usize; 3]]) -> Result<Vec<[i64; 3]>> {
        rope_index(ids, grids, self.cfg.image_token_id, self.cfg.vision.spatial_merge_size)
    }

    /// Token embeddings (B, T, C) with each image token replaced, in order, by a row of `feats`.
    pub fn embed(&self, ids: &Tensor, feats: Option<&Tensor>) -> Result<Tensor> {
        embed_with_images(&self.text, ids, feats, self.cfg.image_token_id)
    }
}

/// Builds a model with `build` over `tensors`: first reading only (every weight the model asks
/// for must be there with its shape, and every tensor must be asked for), then for real, with
/// the weights `trainable` names as variables (the returned VarMap) and the others as constants
/// (returned by name): constants record no backward graph, so inference keeps no activations
/// and LoRA training computes no gradients for the frozen weights.
pub fn build_checked<M>(
    tensors: HashMap<String, Tensor>,
    trainable: &dyn Fn(&str) -> bool,
    dtype: DType,
    dev: &Device,
    build: impl Fn(VarBuilder) -> Result<M>,
) -> Result<(M, VarMap, HashMap<String, Tensor>)> {
    let names: HashSet<String> = tensors.keys().cloned().collect();
    let used = Arc::new(Mutex::new(HashSet::new()));
    let backend = Weights { tensors, used: used.clone() };
    let vb = VarBuilder::from_backend(Box::new(backend), dtype, dev.clone());
    // first pass: names and shapes, reading only
    let probe = build(vb.clone())?;
    drop(probe);
    let used = used.lock().expect("not poisoned").clone();
    let mut unused: Vec<&String> = names.iter().filter(|n| !used.contains(*n)).collect();
    unused.sort();
    if !unused.is_empty() {
        let more = if unused.len() > 5 { format!(" and {} more", unused.len() - 5) } else { String::new() };
        candle_core::bail!("the checkpoint has weights this config does not use: {:?}{more}", &unused[..unused.len().min(5)]);
    }
    let varmap = VarMap::new();
    let mut constants = HashMap::new();
    let mut all = HashMap::new();
    {
        let mut data = varmap.data().lock().expect("not poisoned");
        for name in &names {
            let t = vb.get_unchecked(name)?;
            if trainable(name) {
                let v = Var::from_tensor(&t)?;
                all.insert(name.clone(), v.as_tensor().clone());
                data.insert(name.clone(), v);
            } else {
                all.insert(name.clone(), t.detach());
                constants.insert(name.clone(), t.detach());
            }
        }
    }
    let backend = Weights { tensors: all, used: Arc::new(Mutex::new(HashSet::new())) };
    let model = build(VarBuilder::from_backend(Box::new(backend), dtype, dev.clone()))?;
    Ok((model, varmap, constants))
}

/// transformers' `get_rope_index` for one sequence of images and text: text tokens count
/// up on all three axes; an image's tokens get (start, start + row, start + column).
pub fn rope_index(ids: &[u32], grids: &[[usize; 3]], image_token_id: u32, ms: usize) -> Result<Vec<[i64; 3]>> {
    let mut out: Vec<[i64; 3]> = Vec::with_capacity(ids.len());
    let mut next = 0i64;
    let mut i = 0usize;
    let mut images = grids.iter();
    while i < ids.len() {
        let starts_image = ids[i] == image_token_id;
        if !starts_image {
            out.push([next; 3]);
            next += 1;
            i += 1;
            continue;
        }
        let &[t, h, w] = images.next().ok_or_else(|| candle_core::Error::Msg(format!("more images in the text than the {} given", grids.len())))?;
        let (lh, lw) = (h / ms, w / ms);
        let n = t * lh * lw;
        if ids.len() < i + n || ids[i..i + n].iter().any(|&x| x != image_token_id) {
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
pub fn embed_with_images(text: &TextModel, ids: &Tensor, feats: Option<&Tensor>, image_token_id: u32) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let x = candle_core::Module::forward(&text.embed, ids)?;
    let Some(feats) = feats else { return Ok(x) };
    let flat: Vec<u32> = ids.flatten_all()?.to_vec1()?;
    let mut k = 0u32;
    let index: Vec<u32> = flat
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            if id == image_token_id {
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
