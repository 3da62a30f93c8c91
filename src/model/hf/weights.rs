//! Checkpoint weights: `model.safetensors`, or the shards `model.safetensors.index.json` lists;
//! names normalized to the layout Hugging Face hub checkpoints use.

use super::{invalid, read_json, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// transformers ≥ 4.52 names Qwen-VL modules `model.language_model.*` and `model.visual.*`
/// in memory; hub checkpoints (and `save_pretrained`) use `model.*` and `visual.*`. Both load.
pub fn canonical_name(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("model.language_model.") {
        format!("model.{rest}")
    } else if let Some(rest) = name.strip_prefix("model.visual.") {
        format!("visual.{rest}")
    } else {
        name.to_string()
    }
}

/// All tensors of the folder's weights, converted to `dtype`, under their canonical names.
pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>> {
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<std::path::PathBuf> = if index.exists() {
        let v = read_json(&index)?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| invalid(&index, "no `weight_map` object"))?;
        let shards: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        if shards.is_empty() {
            return Err(invalid(&index, "`weight_map` lists no shard files"));
        }
        shards.into_iter().map(|f| dir.join(f)).collect()
    } else {
        vec![dir.join("model.safetensors")]
    };
    let mut out = HashMap::new();
    for f in &files {
        if !f.exists() {
            return Err(invalid(f, "missing (weights are read from model.safetensors or the shards model.safetensors.index.json lists)"));
        }
        let tensors = candle_core::safetensors::load(f, device).map_err(|e| invalid(f, format!("unreadable safetensors: {e}")))?;
        for (name, t) in tensors {
            let t = if t.dtype() == dtype { t } else { t.to_dtype(dtype)? };
            if out.insert(canonical_name(&name), t).is_some() {
                return Err(invalid(f, format!("tensor `{name}` appears twice")));
            }
        }
    }
    Ok(out)
}
