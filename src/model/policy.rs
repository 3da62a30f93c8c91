//! A policy = config + tokenizer + weights: created with seeded random weights, saved to and
//! loaded from checkpoint files (config.json, tokenizer.json, model.safetensors).

use super::tiny_vlm::{Config, TinyVlm};
use super::tokenizer::TextTokenizer;
use crate::rng::Normal;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Tokenizer(#[from] super::tokenizer::TokenizerError),
    #[error("{0}")]
    Invalid(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

pub struct Policy {
    pub cfg: Config,
    pub tokenizer: TextTokenizer,
    pub model: TinyVlm,
    /// The weights as trainable variables.
    pub varmap: VarMap,
    pub device: Device,
}

impl Policy {
    /// A fresh policy: norms 1, biases 0, vision matrices He-normal, other weights N(0, 0.02²),
    /// all from `seed`.
    pub fn new_random(cfg: &Config, tokenizer: TextTokenizer, seed: u64, device: &Device) -> Result<Self> {
        if tokenizer.vocab_size() > cfg.vocab_size {
            return Err(ModelError::Invalid(format!("tokenizer has {} tokens but vocab_size is {}", tokenizer.vocab_size(), cfg.vocab_size)));
        }
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        TinyVlm::new(cfg, vb)?;
        let mut rng = Normal::new(seed);
        let mut names: Vec<(String, Var)> = varmap.data().lock().expect("varmap").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, var) in names {
            let shape = var.shape().clone();
            let t = if name.ends_with(".bias") {
                Tensor::zeros(&shape, DType::F32, device)?
            } else if shape.rank() == 1 {
                Tensor::ones(&shape, DType::F32, device)?
            } else {
                // convolutions: N(0, 1/fan_in), so the stem passes the image's scale on
                // vision matrices: He-normal N(0, 2/fan_in) — with 0.02 the encoder learns to
                // read digits about half as fast (docs/experiments.md, "Where perception fails")
                let std = if shape.rank() == 4 {
                    (1.0 / (shape.elem_count() / shape.dims()[0]) as f32).sqrt()
                } else if name.starts_with("vision.") && shape.rank() == 2 && name != "vision.pos_embed" {
                    (2.0 / shape.dims()[1] as f32).sqrt()
                } else {
                    0.02
                };
                let v: Vec<f32> = (0..shape.elem_count()).map(|_| rng.sample() * std).collect();
                Tensor::from_vec(v, &shape, device)?
            };
            var.set(&t)?;
        }
        Self::build(cfg.clone(), tokenizer, varmap, device)
    }

    fn build(cfg: Config, tokenizer: TextTokenizer, varmap: VarMap, device: &Device) -> Result<Self> {
        let model = TinyVlm::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        Ok(Self { cfg, tokenizer, model, varmap, device: device.clone() })
    }

    /// Loads a checkpoint from its files' bytes. The weights go through a VarBuilder over the
    /// safetensors (which checks every name and shape), then become trainable variables.
    pub fn from_bytes(config: &[u8], tokenizer: &[u8], weights: &[u8], device: &Device) -> Result<Self> {
        let cfg: Config = serde_json::from_slice(config).map_err(|e| ModelError::Invalid(format!("{CONFIG_FILE}: {e}")))?;
        use super::tiny_vlm::config::{ARCHITECTURE, PRM_ARCHITECTURE};
        if !cfg.architectures.iter().any(|a| a == ARCHITECTURE || a == PRM_ARCHITECTURE) {
            return Err(ModelError::Invalid(format!("{CONFIG_FILE}: architectures {:?} is neither {ARCHITECTURE} nor {PRM_ARCHITECTURE}", cfg.architectures)));
        }
        let tokenizer = TextTokenizer::from_bytes(tokenizer)?;
        let tensors = candle_core::safetensors::load_buffer(weights, device)?;
        // every weight the model needs must be there with its shape
        TinyVlm::new(&cfg, VarBuilder::from_tensors(tensors.clone(), DType::F32, device))?;
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().expect("varmap");
            for (name, t) in tensors {
                data.insert(name, Var::from_tensor(&t.to_dtype(DType::F32)?)?);
            }
        }
        Self::build(cfg, tokenizer, varmap, device)
    }

    /// The checkpoint files: (name, bytes).
    pub fn to_files(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let config = serde_json::to_vec_pretty(&self.cfg).map_err(|e| ModelError::Invalid(e.to_string()))?;
        Ok(vec![(CONFIG_FILE, config), (TOKENIZER_FILE, self.tokenizer.to_json()?.into_bytes()), (WEIGHTS_FILE, safetensors_bytes(&self.named_tensors())?)])
    }

    /// The weights by name, sorted.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v: Vec<(String, Var)> = self.varmap.data().lock().expect("varmap").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn named_tensors(&self) -> HashMap<String, Tensor> {
        self.named_vars().into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect()
    }

    /// Prompt tokens: `[bos, image]` then the question and a newline.
    pub fn encode_prompt(&self, question: &str) -> Result<Vec<u32>> {
        let mut ids = vec![self.cfg.bos_token_id, self.cfg.image_token_id];
        ids.extend(self.tokenizer.encode(&format!("{question}\n"))?);
        Ok(ids)
    }

    /// This policy as a process reward model: the same weights plus a `score_head` with
    /// seeded N(0, 0.02²) weights and a zero bias. A PRM is returned as it is.
    pub fn into_prm(mut self, seed: u64) -> Result<Self> {
        if self.cfg.is_prm() {
            return Ok(self);
        }
        let h = self.cfg.hidden_size;
        let mut rng = Normal::new(seed ^ 0x9a3d);
        let w: Vec<f32> = (0..h).map(|_| rng.sample() * 0.02).collect();
        {
            let mut data = self.varmap.data().lock().expect("varmap");
            data.insert("score_head.weight".into(), Var::from_tensor(&Tensor::from_vec(w, (1, h), &self.device)?)?);
            data.insert("score_head.bias".into(), Var::from_tensor(&Tensor::zeros(1, DType::F32, &self.device)?)?);
        }
        self.cfg.architectures = vec![super::tiny_vlm::config::PRM_ARCHITECTURE.into()];
        Self::build(self.cfg, self.tokenizer, self.varmap, &self.device)
    }

    /// Tokens of a response's steps joined by newlines, and the index of each step's last
    /// token (where a PRM reads the step's score). The same for training and scoring.
    pub fn encode_steps<S: AsRef<str>>(&self, steps: &[S]) -> Result<(Vec<u32>, Vec<usize>)> {
        let newline = self.tokenizer.encode("\n")?;
        let (mut ids, mut ends) = (Vec::new(), Vec::new());
        for (i, s) in steps.iter().enumerate() {
            if i > 0 {
                ids.extend_from_slice(&newline);
            }
            let t = self.tokenizer.encode(s.as_ref())?;
            if t.is_empty() {
                return Err(ModelError::Invalid(format!("step {} is empty", i + 1)));
            }
            ids.extend(t);
            ends.push(ids.len() - 1);
        }
        Ok((ids, ends))
    }

    /// Response tokens followed by EOS.
    pub fn encode_response(&self, response: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(response)?;
        ids.push(self.cfg.eos_token_id);
        Ok(ids)
    }

    /// Loads a checkpoint from its files by name.
    pub fn from_files(files: &std::collections::BTreeMap<String, Vec<u8>>, device: &Device) -> Result<Self> {
        let get = |n: &str| files.get(n).ok_or_else(|| ModelError::Invalid(format!("checkpoint has no {n}")));
        Self::from_bytes(get(CONFIG_FILE)?, get(TOKENIZER_FILE)?, get(WEIGHTS_FILE)?, device)
    }

    pub fn num_params(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// Serializes tensors as safetensors bytes.
pub fn safetensors_bytes(tensors: &HashMap<String, Tensor>) -> Result<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("mstar-st-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("t.safetensors");
    candle_core::safetensors::save(tensors, &path)?;
    let bytes = std::fs::read(&path)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(bytes)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    /// The initial weights' normal draws for a fixed seed, bit for bit.
    #[test]
    fn normal_draws_are_pinned() {
        let mut rng = crate::rng::Normal::new(11);
        let got: Vec<u32> = (0..4).map(|_| rng.sample().to_bits()).collect();
        // -0.072796077, -0.054851852, -1.2673675, 0.035214011
        assert_eq!(got, [0xbd95_161c, 0xbd60_ac56, 0xbfa2_3919, 0x3d10_3c91]);
    }
}
