//! The models a stage names, opened behind one interface: the newest checkpoint of its
//! checkpoint stages (mstar's own or a Hugging Face folder), a model folder, or an endpoint.

use super::{OpContext, OpError, Result};
use crate::model::checkpoint;
use crate::model::lm::{OpenAiBackend, OpenAiLm, QwenLm, VisionLm};
use crate::model::policy::Policy;
use arrow::array::{Array, ArrayRef, AsArray};
use serde_json::{json, Value};
use std::sync::Arc;

/// The newest committed checkpoint of the first stage in `names` that has one (`x@prev`:
/// earlier iterations), with that stage's name.
pub fn find_checkpoint<'c>(ctx: &'c OpContext<'_>, names: &'c [String]) -> Option<(&'c str, &'c crate::store::Manifest)> {
    names.iter().find_map(|raw| {
        let name = raw.strip_suffix("@prev").unwrap_or(raw);
        let ms = ctx.input_manifests.iter().find(|(n, _)| n == name).map(|(_, m)| m.as_slice()).unwrap_or(&[]);
        checkpoint::latest(ms).map(|m| (name, m))
    })
}

/// The model of a stage: the newest checkpoint of the first of `stages` that has one, else the
/// Hugging Face folder `model_dir`, else an error. Loaded for inference on the default device.
pub async fn open(ctx: &OpContext<'_>, stages: &[String], model_dir: Option<&str>) -> Result<Arc<dyn VisionLm>> {
    let op = ctx.stage.op_name;
    match (find_checkpoint(ctx, stages), model_dir) {
        (Some((name, m)), _) if checkpoint::is_hf(m) => {
            eprintln!("  {op}: the checkpoint of `{name}` (iteration {})", m.iteration);
            let dir = checkpoint::local_dir(ctx.store, m).await?;
            let lm = open_folder(dir.to_path_buf()).await.map_err(|e| OpError::Invalid(format!("checkpoint of `{name}`: {e}")))?;
            // the folder is only read while loading
            drop(dir);
            Ok(lm)
        }
        (Some((name, m)), _) => {
            let files = checkpoint::read(ctx.store, m).await?;
            let mut p = Policy::from_files(&files, &crate::model::device())
                .map_err(|e| OpError::Invalid(format!("checkpoint of `{name}` (iteration {}): {e}", m.iteration)))?;
            // inference needs no gradients
            p.model.use_inference_kernels(true).map_err(|e| OpError::Invalid(format!("checkpoint of `{name}`: {e}")))?;
            Ok(Arc::new(p))
        }
        (None, Some(dir)) => open_folder(dir.into()).await,
        (None, None) => Err(OpError::Invalid(format!("none of the stages {stages:?} has a committed checkpoint"))),
    }
}

/// [`open`] for a process reward model: an error when the checkpoint is a policy.
pub async fn open_prm(ctx: &OpContext<'_>, stages: &[String]) -> Result<Arc<dyn VisionLm>> {
    let lm = open(ctx, stages, None).await?;
    if !lm.is_prm() {
        let name = find_checkpoint(ctx, stages).map_or("?", |(n, _)| n);
        return Err(OpError::Invalid(format!("the checkpoint of `{name}` is a policy, not a process reward model (train it with objective: prm)")));
    }
    Ok(lm)
}

/// A Hugging Face checkpoint folder (model or adapter) for inference: bf16 on a GPU, f32 on
/// the CPU.
async fn open_folder(dir: std::path::PathBuf) -> Result<Arc<dyn VisionLm>> {
    let lm = tokio::task::spawn_blocking(move || {
        let dev = crate::model::device();
        QwenLm::open(&dir, crate::model::hf_dtype(&dev), &dev)
    })
    .await
    .map_err(|e| OpError::Invalid(e.to_string()))?
    .map_err(|e| OpError::Invalid(e.to_string()))?;
    Ok(Arc::new(lm))
}

/// The model a stage's config names: exactly one of `openai` (endpoints) and a policy
/// (`policy` checkpoint stages, a `model` folder); an endpoint's settings checked.
pub fn check_choice(c: &mut super::StageCheck, openai: Option<&OpenAiBackend>, policy: &[String], model: bool) {
    match openai {
        Some(_) if !policy.is_empty() || model => {
            c.error("openai", "give `openai` (an endpoint) or a policy (`policy` checkpoint stages, `model` folder), not both")
        }
        Some(o) if o.concurrency == 0 => c.error("openai.concurrency", "concurrency must be at least 1"),
        Some(o) => {
            if let Err((key, e)) = o.urls() {
                c.error(format!("openai.{key}").trim_end_matches('.'), e);
            }
        }
        None if !model && policy.is_empty() => c.error("policy", "name at least one checkpoint stage"),
        None => {}
    }
}

/// A client of an OpenAI-compatible endpoint, its API key read from the variable it names.
pub fn open_endpoint(backend: &OpenAiBackend) -> Result<Arc<dyn VisionLm>> {
    let key = std::env::var(&backend.api_key_env).ok().filter(|k| !k.is_empty());
    Ok(Arc::new(OpenAiLm::new(backend, key).map_err(|e| OpError::Invalid(e.to_string()))?))
}

/// Names, sizes and modification times of the folder's files: a changed checkpoint recomputes.
pub fn folder_fingerprint(dir: &str) -> Value {
    let mut files: Vec<Value> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    let mtime = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as u64;
                    m.is_file().then(|| json!([e.file_name().to_string_lossy(), m.len(), mtime]))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort_by_key(|v| v[0].as_str().unwrap_or_default().to_string());
    json!({ "model_dir": dir, "files": files })
}

/// Every image of row `i` of an `images` column (list of {bytes, …}).
pub fn all_images(col: &ArrayRef, i: usize) -> Vec<Vec<u8>> {
    if col.is_null(i) {
        return vec![];
    }
    let list = col.as_list::<i32>().value(i);
    let Some(b) = list.as_struct().column_by_name("bytes") else { return vec![] };
    let b = b.as_binary::<i32>();
    (0..b.len()).filter(|&j| !b.is_null(j)).map(|j| b.value(j).to_vec()).collect()
}
