//! Checkpoint folders in the run store: written as files of a stage (config.json,
//! tokenizer.json, model.safetensors, optimizer.safetensors, trainer_state.json) and read back.

use super::policy::ModelError;
use crate::store::{FileEntry, Manifest, RunStore, StoreError};
use object_store::ObjectStoreExt;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";

/// Writes the files under `dir` (a folder below the stage's files folder); returns entries.
/// Writes a checkpoint's files under `dir`. Refused, before anything is written, when a
/// `.safetensors` file (weights, adapters, optimizer moments) holds a NaN or an infinity: a
/// diverged training step never becomes a committed checkpoint.
pub async fn write<N: AsRef<str>>(store: &RunStore, dir: &str, files: Vec<(N, Vec<u8>)>) -> Result<Vec<FileEntry>, StoreError> {
    for (name, bytes) in &files {
        let name = name.as_ref();
        if name.ends_with(".safetensors") {
            if let Some(msg) = non_finite(bytes).map_err(|e| StoreError::Other(format!("{name}: {e}")))? {
                return Err(StoreError::Other(format!(
                    "checkpoint not committed: {name} has {msg} (training diverged: lower the learning rate or clip gradients)"
                )));
            }
        }
    }
    let mut out = Vec::new();
    for (name, bytes) in files {
        let rel = format!("{dir}/{}", name.as_ref());
        let n = bytes.len() as u64;
        store.write_bytes(&rel, bytes).await?;
        out.push(FileEntry { path: rel, bytes: n, rows: None });
    }
    Ok(out)
}

/// The first tensor of a safetensors file with non-finite values, described ("3 of 64 values of
/// `model.norm.weight` are NaN or infinite"); None when every float is finite.
pub fn non_finite(bytes: &[u8]) -> Result<Option<String>, String> {
    use safetensors::Dtype;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    for name in names {
        let t = st.tensor(&name).map_err(|e| e.to_string())?;
        let d = t.data();
        let bad = match t.dtype() {
            Dtype::F32 => d.chunks_exact(4).filter(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()).count(),
            Dtype::F64 => d.chunks_exact(8).filter(|c| !f64::from_le_bytes((*c).try_into().expect("8 bytes")).is_finite()).count(),
            // bf16: exponent bits all ones; f16 likewise in its 5-bit exponent
            Dtype::BF16 => d.chunks_exact(2).filter(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0x7f80).count(),
            Dtype::F16 => d.chunks_exact(2).filter(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00).count(),
            _ => 0,
        };
        if bad > 0 {
            let n = d.len() * 8 / t.dtype().bitsize().max(1);
            return Ok(Some(format!("{bad} of {n} values of `{name}` NaN or infinite")));
        }
    }
    Ok(None)
}

/// The files of a committed checkpoint, by file name.
pub async fn read(store: &RunStore, m: &Manifest) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
    let mut out = BTreeMap::new();
    for f in &m.files {
        let name = f.path.rsplit('/').next().unwrap_or(&f.path).to_string();
        let bytes = store.loc.store.get(&store.loc.path(&f.path)).await?.bytes().await?;
        out.insert(name, bytes.to_vec());
    }
    Ok(out)
}

/// The newest committed checkpoint among `manifests` (model weights or a LoRA adapter).
pub fn latest(manifests: &[Manifest]) -> Option<&Manifest> {
    manifests
        .iter()
        .filter(|m| {
            m.kind == crate::store::manifest::OutputKind::Files
                && m.files.iter().any(|f| f.path.ends_with(super::policy::WEIGHTS_FILE) || f.path.ends_with(super::qwen_vl::ADAPTER_WEIGHTS))
        })
        .max_by_key(|m| m.iteration)
}

/// Whether a checkpoint is a Hugging Face folder (an image processor or a LoRA adapter) rather
/// than a policy of mstar's own.
pub fn is_hf(m: &Manifest) -> bool {
    m.files.iter().any(|f| {
        f.path.ends_with("/preprocessor_config.json") || f.path.ends_with("/processor_config.json") || f.path.ends_with(super::qwen_vl::ADAPTER_CONFIG)
    })
}

/// A stored checkpoint's files in a local folder, for loaders that read folders; a temporary
/// copy is removed when this is dropped (once the model is loaded).
pub struct LocalDir {
    path: PathBuf,
    temporary: bool,
}

impl LocalDir {
    /// A folder that is already local (nothing to remove).
    pub fn existing(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), temporary: false }
    }
}

impl std::ops::Deref for LocalDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl Drop for LocalDir {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The checkpoint's files as a local folder: the files themselves in a local store; otherwise a
/// copy under the system's temporary folder (`mstar-checkpoints/`), removed when dropped.
pub async fn local_dir(store: &RunStore, m: &Manifest) -> Result<LocalDir, StoreError> {
    let dirs: BTreeSet<&str> = m.files.iter().map(|f| f.path.rsplit_once('/').map_or("", |(d, _)| d)).collect();
    let [dir] = dirs.into_iter().collect::<Vec<_>>()[..] else {
        return Err(StoreError::Other(format!("checkpoint of `{}` (iteration {}) spans several folders", m.stage, m.iteration)));
    };
    if store.loc.url_root.scheme() == "file" {
        return Ok(LocalDir::existing(format!("/{}", store.loc.path(dir))));
    }
    static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let local = LocalDir {
        path: std::env::temp_dir().join("mstar-checkpoints").join(format!("{}-{n}-{}-{}", std::process::id(), m.stage, m.iteration)),
        temporary: true,
    };
    std::fs::create_dir_all(&*local).map_err(|e| StoreError::Other(format!("{}: {e}", local.display())))?;
    for f in &m.files {
        let name = f.path.rsplit('/').next().unwrap_or(&f.path);
        let bytes = store.loc.store.get(&store.loc.path(&f.path)).await?.bytes().await?;
        std::fs::write(local.join(name), &bytes).map_err(|e| StoreError::Other(format!("{}: {e}", local.join(name).display())))?;
    }
    Ok(local)
}

/// Writes the checkpoint a stage committed (the newest, or the one of `iteration`) to the new or
/// empty folder `out` as a plain model folder other tools load: a Qwen-VL checkpoint with its
/// LoRA adapters merged into the weights, in the dtype its config.json names (`torch_dtype` /
/// `dtype`, else the training dtype); a policy of mstar's own as it is. Returns the iteration
/// and the file names written.
pub async fn export(store: &RunStore, stage: &str, iteration: Option<u32>, out: &Path) -> Result<(u32, Vec<String>), ModelError> {
    let bad = |m: String| ModelError::Invalid(m);
    let all = store.manifests().await.map_err(|e| bad(e.to_string()))?;
    let mine: Vec<Manifest> = all.into_iter().filter(|m| m.stage == stage && iteration.is_none_or(|i| m.iteration == i)).collect();
    let m = latest(&mine).ok_or_else(|| {
        bad(format!(
            "stage `{stage}` has no committed checkpoint{} in {}",
            iteration.map(|i| format!(" at iteration {i}")).unwrap_or_default(),
            store.display()
        ))
    })?;
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        return Err(bad(format!("{} is not empty; export writes a new folder", out.display())));
    }
    let files: Vec<(String, Vec<u8>)> = if is_hf(m) {
        let dir = local_dir(store, m).await.map_err(|e| bad(e.to_string()))?;
        tokio::task::spawn_blocking(move || -> Result<Vec<(String, Vec<u8>)>, ModelError> {
            let dev = candle_core::Device::Cpu;
            let ck =
                super::qwen_vl::Checkpoint::open(&dir, super::qwen_vl::Trainable::Nothing, candle_core::DType::F32, &dev).map_err(|e| bad(e.to_string()))?;
            let cfg = super::hf::read_json(&ck.dir.join("config.json")).map_err(|e| bad(e.to_string()))?;
            let named = ["torch_dtype", "dtype"]
                .iter()
                .find_map(|k| cfg.get(*k).or_else(|| cfg.get("text_config").and_then(|t| t.get(*k))).and_then(|v| v.as_str()).map(str::to_string));
            let dtype = match named.as_deref() {
                Some("bfloat16") => candle_core::DType::BF16,
                Some("float16") => candle_core::DType::F16,
                _ => candle_core::DType::F32,
            };
            ck.merged_files(dtype).map_err(|e| bad(e.to_string()))
        })
        .await
        .map_err(|e| bad(e.to_string()))??
    } else {
        read(store, m).await.map_err(|e| bad(e.to_string()))?.into_iter().filter(|(n, _)| n != OPTIMIZER_FILE && n != STATE_FILE).collect()
    };
    std::fs::create_dir_all(out)?;
    let mut names = Vec::new();
    for (name, bytes) in files {
        std::fs::write(out.join(&name), bytes)?;
        names.push(name);
    }
    Ok((m.iteration, names))
}

#[cfg(test)]
mod tests {
    use super::non_finite;
    use candle_core::{DType, Device, Tensor};
    use std::collections::HashMap;

    fn file(values: &[f32], dtype: DType) -> Vec<u8> {
        let t = Tensor::new(values, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let ok = Tensor::ones(3, dtype, &Device::Cpu).unwrap();
        crate::model::policy::safetensors_bytes(&HashMap::from([("b.weight".to_string(), t), ("a.ok".to_string(), ok)])).unwrap()
    }

    #[test]
    fn non_finite_weights_are_found_in_every_float_dtype() {
        for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64] {
            assert_eq!(non_finite(&file(&[1.0, -2.5, 0.0, 1e-3], dtype)).unwrap(), None, "{dtype:?}");
            let msg = non_finite(&file(&[1.0, f32::NAN, f32::INFINITY, -f32::INFINITY], dtype)).unwrap().unwrap();
            assert_eq!(msg, "3 of 4 values of `b.weight` NaN or infinite", "{dtype:?}");
        }
        assert!(non_finite(b"not a safetensors file").is_err());
    }
}
