//! LoRA adapters in peft's format (adapter_config.json + adapter_model.safetensors): a low-rank
//! update `scale · B·A` beside each targeted linear layer, trainable alone, mergeable on export.

use crate::model::hf::{invalid, read_json, weights::canonical_name, Result};
use crate::model::layers::Lin;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// Module names (the last part of a weight's path, e.g. `q_proj`, `qkv`), as peft's
    /// `target_modules` list: every linear layer of that name, in the vision tower too.
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// peft's scaling: alpha / rank.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn targets(&self, leaf: &str) -> bool {
        self.targets.iter().any(|t| t == leaf)
    }

    /// Reads peft's `adapter_config.json`; variants mstar does not implement are refused.
    pub fn from_file(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        if v.get("peft_type").and_then(|t| t.as_str()).is_some_and(|t| t != "LORA") {
            return Err(invalid(path, format!("peft_type {} is not LORA", v["peft_type"])));
        }
        for flag in ["use_rslora", "use_dora"] {
            if v.get(flag).and_then(|x| x.as_bool()) == Some(true) {
                return Err(invalid(path, format!("`{flag}` adapters are not supported")));
            }
        }
        if v.get("bias").and_then(|b| b.as_str()).is_some_and(|b| b != "none") {
            return Err(invalid(path, "only bias: none adapters are supported"));
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if v.get(key).and_then(|p| p.as_object()).is_some_and(|o| !o.is_empty()) {
                return Err(invalid(path, format!("`{key}` is not supported")));
            }
        }
        let rank = v.get("r").and_then(|x| x.as_u64()).filter(|&r| r > 0).ok_or_else(|| invalid(path, "`r` must be a positive integer"))? as usize;
        let alpha = v.get("lora_alpha").and_then(|x| x.as_f64()).ok_or_else(|| invalid(path, "`lora_alpha` must be a number"))?;
        let targets = match v.get("target_modules") {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
            other => return Err(invalid(path, format!("`target_modules` must be a list of module names, got {other:?}"))),
        };
        Ok(Self { rank, alpha, targets })
    }
}

/// A linear layer with an optional LoRA update.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    base: Lin,
    lora: Option<(Lin, Lin, f64)>,
}

impl LoraLinear {
    /// `vb` at the layer (`…q_proj`); `leaf` its module name. Adapter weights are read as
    /// `lora_A.weight` (rank × in) and `lora_B.weight` (out × rank) beside the base weight.
    pub fn new(i: usize, o: usize, bias: bool, leaf: &str, vb: VarBuilder, lora: Option<&LoraConfig>) -> candle_core::Result<Self> {
        let base = if bias { candle_nn::linear(i, o, vb.clone())? } else { candle_nn::linear_no_bias(i, o, vb.clone())? };
        let base = Lin::from_weight(base.weight().clone(), base.bias().cloned());
        let lora = match lora.filter(|l| l.targets(leaf)) {
            Some(l) => {
                let a = vb.get((l.rank, i), "lora_A.weight")?;
                let b = vb.get((o, l.rank), "lora_B.weight")?;
                Some((Lin::from_weight(a, None), Lin::from_weight(b, None), l.scale()))
            }
            None => None,
        };
        Ok(Self { base, lora })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.base.forward(x)?;
        match &self.lora {
            Some((a, b, s)) => y + (b.forward(&a.forward(x)?)? * *s)?,
            None => Ok(y),
        }
    }
}

/// `adapter_model.safetensors` under canonical weight names (`base_model.model.` dropped).
pub fn load_adapter(dir: &Path, dtype: DType, dev: &Device) -> Result<(LoraConfig, HashMap<String, Tensor>)> {
    let cfg = LoraConfig::from_file(&dir.join("adapter_config.json"))?;
    let f = dir.join("adapter_model.safetensors");
    let raw = candle_core::safetensors::load(&f, dev).map_err(|e| invalid(&f, format!("unreadable safetensors: {e}")))?;
    let mut out = HashMap::new();
    for (name, t) in raw {
        let short = name.strip_prefix("base_model.model.").unwrap_or(&name);
        out.insert(canonical_name(short), t.to_dtype(dtype)?);
    }
    Ok((cfg, out))
}

/// Folds adapters into the base weights (`W += scale · B·A`) and drops them: the merged
/// tensors load into any tool as a plain checkpoint.
pub fn merge(tensors: &HashMap<String, Tensor>, cfg: &LoraConfig) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut out: HashMap<String, Tensor> = tensors.iter().filter(|(k, _)| !k.contains(".lora_")).map(|(k, v)| (k.clone(), v.clone())).collect();
    for (name, a) in tensors.iter().filter(|(k, _)| k.ends_with(".lora_A.weight")) {
        let layer = name.trim_end_matches(".lora_A.weight");
        let b = tensors.get(&format!("{layer}.lora_B.weight")).ok_or_else(|| candle_core::Error::Msg(format!("{layer}: lora_A without lora_B")))?;
        let w = out.get_mut(&format!("{layer}.weight")).ok_or_else(|| candle_core::Error::Msg(format!("{layer}: adapter for a missing weight")))?;
        *w = (&*w + (b.matmul(a)? * cfg.scale())?)?;
    }
    Ok(out)
}

/// Fresh adapters for every linear weight (`….<target>.weight`, 2-D) of the targeted module
/// names, initialized as peft does: A ~ U(−1/√in, 1/√in) (kaiming-uniform with a = √5), B = 0,
/// so the adapted model starts equal to the base. Seeded; a target matching nothing is an error.
pub fn init_adapters(base: &HashMap<String, Tensor>, cfg: &LoraConfig, seed: u64) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut names: Vec<&String> = base.keys().collect();
    names.sort();
    let mut out = HashMap::new();
    let mut rng = crate::rng::SplitMix64::new(seed ^ 0x10ba_5eed);
    for t in &cfg.targets {
        let mut hits = 0;
        for name in &names {
            let Some(layer) = name.strip_suffix(".weight") else { continue };
            let w = &base[*name];
            if layer.rsplit('.').next() != Some(t.as_str()) || w.rank() != 2 {
                continue;
            }
            let (o, i) = w.dims2()?;
            let bound = 1.0 / (i as f64).sqrt();
            let a: Vec<f32> = (0..cfg.rank * i).map(|_| ((2.0 * rng.next_f64() - 1.0) * bound) as f32).collect();
            out.insert(format!("{layer}.lora_A.weight"), Tensor::from_vec(a, (cfg.rank, i), w.device())?.to_dtype(w.dtype())?);
            out.insert(format!("{layer}.lora_B.weight"), Tensor::zeros((o, cfg.rank), w.dtype(), w.device())?);
            hits += 1;
        }
        if hits == 0 {
            candle_core::bail!("LoRA target `{t}` matches no linear layer of the checkpoint");
        }
    }
    Ok(out)
}

/// The name peft (0.21, transformers ≥ 4.52) saves an adapter tensor under: the module's
/// in-memory path (`model.language_model.…`, `model.visual.…`) below `base_model.model.`.
pub fn peft_name(canonical: &str) -> String {
    let inner = if let Some(rest) = canonical.strip_prefix("model.") {
        format!("model.language_model.{rest}")
    } else if let Some(rest) = canonical.strip_prefix("visual.") {
        format!("model.visual.{rest}")
    } else {
        canonical.to_string()
    };
    format!("base_model.model.{inner}")
}

/// `adapter_config.json` as peft writes it, pointing at the base folder.
pub fn adapter_config_json(cfg: &LoraConfig, base_dir: &str, architecture: &str) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": null,
        "base_model_name_or_path": base_dir,
        "auto_mapping": {"base_model_class": architecture},
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "target_modules": cfg.targets,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "init_lora_weights": true,
        "inference_mode": true,
        "rank_pattern": {},
        "alpha_pattern": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh adapter's A for a fixed seed, bit for bit: U(±1/√3) for a 2 × 3 layer, rank 2.
    #[test]
    fn adapter_init_is_pinned() {
        let base = HashMap::from([("m.q_proj.weight".to_string(), Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap())]);
        let cfg = LoraConfig { rank: 2, alpha: 4.0, targets: vec!["q_proj".into()] };
        let a = init_adapters(&base, &cfg, 7).unwrap()["m.q_proj.lora_A.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got: Vec<u32> = a.iter().map(|x| x.to_bits()).collect();
        // 0.068872534, 0.30448693, 0.08715085, 0.47738159, 0.44388393, -0.24892493
        assert_eq!(got, [0x3d8d_0d0b, 0x3e9b_e5b6, 0x3db2_7c25, 0x3ef4_6b5c, 0x3ee3_44c1, 0xbe7e_e62d]);
    }
}
