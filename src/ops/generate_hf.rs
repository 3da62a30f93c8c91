//! `generate` with `model: {path: DIR}`: rollouts from a Hugging Face checkpoint folder
//! (Qwen2.5-VL). Each prompt's images and question are rendered with the checkpoint's chat
//! template; sample k of prompt p is seeded from (run seed, iteration, prompt_id, k) as always.

use super::generate::{rollouts_schema, GenerateOp};
use super::{OpContext, OpOutput, Result};
use crate::model::checkpoint;
use crate::model::generate::rollout_seed;
use crate::model::qwen2_5_vl::generate::{generate_many, Prompt};
use crate::model::qwen_vl::{Checkpoint, Trainable};
use arrow::array::{Array, AsArray, Float64Array, Int32Array, RecordBatch, StringArray, UInt64Array};
use candle_core::Tensor;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

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
pub(crate) fn all_images(col: &arrow::array::ArrayRef, i: usize) -> Vec<Vec<u8>> {
    if col.is_null(i) {
        return vec![];
    }
    let list = col.as_list::<i32>().value(i);
    let Some(b) = list.as_struct().column_by_name("bytes") else { return vec![] };
    let b = b.as_binary::<i32>();
    (0..b.len()).filter(|&j| !b.is_null(j)).map(|j| b.value(j).to_vec()).collect()
}

/// The Hugging Face checkpoint folder a stage samples from: the newest checkpoint of the first
/// of `policy` that has one when it is a HF folder, else `model` while none has one; None when
/// the stage runs a policy of mstar's own.
pub async fn hf_source(ctx: &OpContext<'_>, policy: &[String], model: Option<&str>) -> Result<Option<checkpoint::LocalDir>> {
    Ok(match (super::generate::find_checkpoint(ctx, policy), model) {
        (Some((_, m)), _) if checkpoint::is_hf(m) => Some(checkpoint::local_dir(ctx.store, m).await?),
        (None, Some(d)) => Some(checkpoint::LocalDir::existing(d)),
        _ => None,
    })
}

/// Loads a checkpoint folder (model or adapter) for inference on the default device, bf16 on a
/// GPU and f32 on the CPU, with its end-of-turn tokens (an error when it names none).
pub async fn load_for_inference(dir: &Path) -> std::result::Result<(Checkpoint, Vec<u32>), String> {
    let dev = crate::model::device();
    let dtype = crate::model::hf_dtype(&dev);
    let d = dir.to_path_buf();
    let ck = tokio::task::spawn_blocking(move || Checkpoint::open(&d, Trainable::Nothing, dtype, &dev))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("model {}: {e}", dir.display()))?;
    let ids = ck.eos_ids.clone();
    if ids.is_empty() {
        return Err(format!("model {}: no eos_token_id in generation_config.json or config.json, nor eos_token in tokenizer_config.json", ck.dir.display()));
    }
    Ok((ck, ids))
}

/// Rollouts from the checkpoint folder `dir`: a model folder, or a LoRA adapter folder over its base.
pub async fn execute(op: &GenerateOp, ctx: &OpContext<'_>, dir: &Path) -> Result<OpOutput> {
    let (ck, eos) = load_for_inference(dir).await.map_err(|e| op.fail(e))?;
    let dev = ck.model.text().embed.embeddings().device().clone();
    let params = op.sampling(ctx).await?;
    let filter = ctx.this_iteration(&op.spec.prompts, "").map(|c| format!(" WHERE {c}")).unwrap_or_default();
    let q = format!(
        "SELECT CAST(prompt_id AS VARCHAR) AS prompt_id, CAST(question AS VARCHAR) AS question, images FROM \"{}\"{filter} ORDER BY prompt_id",
        op.spec.prompts
    );
    let batches = crate::sql::query(&ctx.session, &q)
        .await
        .map_err(|e| op.fail(format!("prompts `{}` need prompt_id, question, images: {e}", op.spec.prompts)))?
        .collect()
        .await?;
    let mut prompts: Vec<(String, Prompt)> = Vec::new();
    for b in &batches {
        let (ids, qs, imgs) = (super::strings(b.column(0))?, super::strings(b.column(1))?, b.column(2));
        for i in 0..b.num_rows() {
            let id = ids.value(i).to_string();
            let prompt = encode_prompt(&ck, qs.value(i), &all_images(imgs, i), &dev).map_err(|e| op.fail(format!("prompt {id}: {e}")))?;
            prompts.push((id, prompt));
        }
    }
    let (seed, iteration, k) = (ctx.pipeline.seed, ctx.iteration, op.spec.samples);
    let total = prompts.len();
    // groups of whole prompts, at most `batch_size` samples a group (at least one prompt)
    let per_group = (op.spec.batch_size / (k as usize).max(1)).max(1);
    let mut groups: Vec<Vec<(String, Prompt)>> = Vec::new();
    for p in prompts {
        match groups.last_mut() {
            Some(g) if g.len() < per_group => g.push(p),
            _ => groups.push(vec![p]),
        }
    }
    let ck = Arc::new(ck);
    let eos = Arc::new(eos);
    let started = std::time::Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stream = futures::stream::iter(groups).then(move |group| {
        let (ck, eos, params, done) = (ck.clone(), eos.clone(), params.clone(), done.clone());
        async move {
            let seeds: Vec<Vec<u64>> = group.iter().map(|(id, _)| (0..k).map(|s| rollout_seed(seed, iteration, id, s)).collect()).collect();
            let (ck2, params2, seeds2) = (ck.clone(), params.clone(), seeds.clone());
            let (group, gens) = tokio::task::spawn_blocking(move || {
                let batch: Vec<(&Prompt, &[u64])> = group.iter().zip(&seeds2).map(|((_, p), s)| (p, s.as_slice())).collect();
                let gens = generate_many(&ck2.model, &batch, &params2, &eos);
                (group, gens)
            })
            .await
            .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
            let gens = gens
                .map_err(|e| datafusion::error::DataFusionError::Execution(format!("generate: prompts {} to {}: {e}", group[0].0, group[group.len() - 1].0)))?;
            let n = done.fetch_add(group.len(), std::sync::atomic::Ordering::Relaxed) + group.len();
            if n * 10 / total.max(1) != (n - group.len()) * 10 / total.max(1) || n == total {
                eprintln!("  generate: {n}/{total} prompts × {k} samples, {:.1}s", started.elapsed().as_secs_f64());
            }
            let rows: Vec<(&str, u32, u64, &crate::model::generate::Generation)> = group
                .iter()
                .zip(&seeds)
                .zip(&gens)
                .flat_map(|(((id, _), s), g)| (0..k).map(move |j| (id.as_str(), j, s[j as usize], &g[j as usize])))
                .collect();
            RecordBatch::try_new(
                rollouts_schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                    Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1 as i32))),
                    Arc::new(Float64Array::from(vec![params.temperature; rows.len()])),
                    Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.2))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| ck.tokenizer.decode(&r.3.tokens, true).unwrap_or_default()))),
                    Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.3.tokens.len() as i32))),
                    Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.3.logprob))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3.finish_reason))),
                ],
            )
            .map_err(Into::into)
        }
    });
    Ok(OpOutput::Table(Box::pin(RecordBatchStreamAdapter::new(rollouts_schema(), stream))))
}

/// A question and its images as the model's prompt: the chat template's user turn with the
/// generation prompt, image placeholders expanded, tokenized; the images' patches on `dev`.
pub fn encode_prompt(ck: &Checkpoint, question: &str, images: &[Vec<u8>], dev: &candle_core::Device) -> std::result::Result<Prompt, String> {
    let parts = ck.prompt_parts(question, images).map_err(|e| e.to_string())?;
    let (ids, values, grids) = (parts.ids, parts.pixels, parts.grids);
    let dtype = ck.model.text().embed.embeddings().dtype();
    let pixels = if grids.is_empty() {
        None
    } else {
        let cols = values_cols(ck);
        Some(
            Tensor::from_vec(values, (grids.iter().map(|g| g.iter().product::<usize>()).sum::<usize>(), cols), dev)
                .and_then(|t| t.to_dtype(dtype))
                .map_err(|e| e.to_string())?,
        )
    };
    Ok(Prompt { ids, pixels, grids })
}

fn values_cols(ck: &Checkpoint) -> usize {
    3 * ck.processor.temporal_patch_size * ck.processor.patch_size * ck.processor.patch_size
}
