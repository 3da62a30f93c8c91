//! `train` with `model: {path: DIR}`: SFT of a Qwen-VL checkpoint folder, every weight or LoRA
//! adapters, continuing from this stage's previous checkpoint when asked; checkpoints are saved
//! in Hugging Face's layout (a model folder, or a peft adapter folder) plus the optimizer state.

use super::train::{train_log, TrainOp};
use super::{OpContext, OpOutput, Result};
use crate::model::checkpoint::{self, OPTIMIZER_FILE, STATE_FILE};
use crate::model::policy::safetensors_bytes;
use crate::model::qwen2_5_vl::lora::LoraConfig;
use crate::model::qwen_vl::{Checkpoint, Trainable};
use crate::train::epochs::run_epochs;
use crate::train::qwen::{accumulate, encode, encode_steps, QwenExample};
use crate::train::{optimizer_step, AdamW, TrainerState};
use arrow::array::{Array, AsArray};
use arrow_schema::{DataType, Field};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub async fn execute(op: &TrainOp, ctx: &OpContext<'_>, base_dir: &str) -> Result<OpOutput> {
    let spec = &op.spec;
    let dev = crate::model::device();
    let dtype = crate::model::hf_dtype(&dev);
    let lora = spec.lora.as_ref().map(|l| LoraConfig { rank: l.rank, alpha: l.alpha, targets: l.targets.clone() });
    let trainable = if lora.is_some() { Trainable::Adapters } else { Trainable::All };
    // where to start: this stage's previous checkpoint (init: last), else the folder
    let own = ctx.input_manifests.iter().find(|(n, _)| n == &op.stage).map(|(_, m)| m.as_slice()).unwrap_or(&[]);
    let prev = if spec.init == super::train::Init::Last { checkpoint::latest(own) } else { None };
    let prev_dir = match prev {
        Some(m) => Some(checkpoint::local_dir(ctx.store, m).await?),
        None => None,
    };
    let prm = spec.objective == super::train::TrainObjective::Prm;
    let (base, seed, prev2, lora2) = (PathBuf::from(base_dir), ctx.pipeline.seed, prev_dir.as_ref().map(|d| d.to_path_buf()), lora.clone());
    let ck = tokio::task::spawn_blocking(move || -> crate::model::hf::Result<Checkpoint> {
        let mut ck = match (prev2, lora2) {
            (Some(d), _) => return Checkpoint::open(&d, trainable, dtype, &dev),
            (None, Some(l)) => Checkpoint::load_with_new_adapter(&base, l, seed, dtype, &dev)?,
            (None, None) => Checkpoint::load_parts(&base, None, Trainable::All, dtype, &dev)?,
        };
        if prm && !ck.is_prm() {
            // a process reward model: the folder's network with a fresh score head
            ck.add_score_head(seed, true).map_err(|e| crate::model::hf::invalid(&base, e.to_string()))?;
        }
        Ok(ck)
    })
    .await
    .map_err(|e| op.fail(e))?
    .map_err(|e| op.fail(format!("model {}: {e}", prev_dir.as_deref().unwrap_or(Path::new(base_dir)).display())))?;
    if prev.is_some() && ck.lora != lora {
        return Err(op.fail(format!(
            "this stage's previous checkpoint has LoRA {:?} but the spec asks for {:?}; start over with `init: initial` or a new stage id",
            ck.lora, lora
        )));
    }
    if ck.is_prm() != prm {
        return Err(op.fail(format!("objective `{}` but the checkpoint {} a process reward model", spec.objective, if prm { "is not" } else { "is" })));
    }
    let (mut state, mut opt) = resume(op, ctx, prev_dir.as_deref(), &ck)?;

    // this iteration's rows, in a fixed order (the shuffle below is seeded)
    let filter = ctx.this_iteration(&spec.data, "").map(|c| format!(" WHERE {c}")).unwrap_or_default();
    let (q, needs) = super::training_rows_query(&spec.data, &filter, prm);
    let batches = crate::sql::query(&ctx.session, &q).await.map_err(|e| op.fail(format!("data `{}` needs columns {needs}: {e}", spec.data)))?.collect().await?;
    let mut examples: Vec<QwenExample> = Vec::new();
    for b in &batches {
        let (qs, rs) = (super::strings(b.column(0))?, super::strings(b.column(2))?);
        let ls = if prm { Some(arrow::compute::cast(b.column(3), &DataType::List(Arc::new(Field::new("item", DataType::Float32, true))))?) } else { None };
        for i in 0..b.num_rows() {
            if qs.is_null(i) || rs.is_null(i) {
                continue;
            }
            let images = super::models::all_images(b.column(1), i);
            let at = |e: &dyn std::fmt::Display| op.fail(format!("data `{}`, row {} (question {:?}): {e}", spec.data, examples.len(), qs.value(i)));
            let e = match &ls {
                None => encode(&ck, qs.value(i), &images, rs.value(i)).map_err(|e| at(&e))?,
                Some(ls) => {
                    let steps = crate::data::answer::split_steps(rs.value(i));
                    let row: Vec<Option<f32>> =
                        if ls.is_null(i) { vec![] } else { ls.as_list::<i32>().value(i).as_primitive::<arrow::datatypes::Float32Type>().iter().collect() };
                    if row.len() != steps.len() || row.iter().any(|l| !l.is_some_and(|l| (0.0..=1.0).contains(&l))) {
                        return Err(at(&format!("{} labels for {} steps, or a label outside [0, 1] (labels {row:?})", row.len(), steps.len())));
                    }
                    let row: Vec<f32> = row.into_iter().map(|l| l.unwrap_or(0.0)).collect();
                    encode_steps(&ck, qs.value(i), &images, &steps, Some(&row)).map_err(|e| at(&e))?.0
                }
            };
            examples.push(e);
        }
    }
    let pad = *ck.eos_ids.first().ok_or_else(|| op.fail("the checkpoint names no end-of-turn token to pad with"))?;
    let vars = ck.trainable();
    let per_step = spec.micro_batch * spec.grad_accum;
    if examples.is_empty() {
        eprintln!("  train: no rows in `{}` this iteration; the checkpoint is carried over", spec.data);
    }
    let log = run_epochs(
        "train",
        &examples,
        spec.epochs,
        per_step,
        &mut state,
        &ctx.cancel,
        |state, batch, _| {
            let micro: Vec<Vec<&QwenExample>> = batch.chunks(spec.micro_batch).map(<[&QwenExample]>::to_vec).collect();
            optimizer_step(&vars, &mut opt, state, &micro, spec.clip, QwenExample::targets, |mb, share, grads| {
                accumulate(&ck, mb, pad, spec.gradient_checkpointing, share, grads)
            })
            .map_err(|e| op.fail(e))
        },
        |_| Ok(()),
    )?;
    ctx.side.push("train_log", train_log(&op.stage, log)?);
    let mut files = ck.to_files().map_err(|e| op.fail(e))?;
    files.push((OPTIMIZER_FILE.to_string(), safetensors_bytes(&opt.state_tensors()).map_err(|e| op.fail(e))?));
    files.push((STATE_FILE.to_string(), serde_json::to_vec_pretty(&state).map_err(|e| op.fail(e))?));
    let dir = format!("{}/{}", ctx.files_dir(), ctx.attempt);
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    Ok(OpOutput::Files(checkpoint::write(ctx.store, &dir, files).await?))
}

/// The optimizer and counters to go on with: the previous checkpoint's with `optimizer:
/// continue`, else fresh ones (the spec's schedule and AdamW settings apply either way).
fn resume(op: &TrainOp, ctx: &OpContext<'_>, prev: Option<&Path>, ck: &Checkpoint) -> Result<(TrainerState, AdamW)> {
    let spec = &op.spec;
    let state_file = prev.map(|d| d.join(STATE_FILE)).filter(|p| p.exists());
    match state_file {
        Some(sf) if spec.optimizer == super::train::OptimizerMode::Continue => {
            let st: TrainerState = serde_json::from_slice(&std::fs::read(&sf).map_err(|e| op.fail(format!("{}: {e}", sf.display())))?)
                .map_err(|e| op.fail(format!("{}: {e}", sf.display())))?;
            let of = sf.with_file_name(OPTIMIZER_FILE);
            let dev = ck.model.text().embed.embeddings().device().clone();
            let moments = if of.exists() {
                candle_core::safetensors::load(&of, &dev).map_err(|e| op.fail(format!("{}: {e}", of.display())))?
            } else {
                Default::default()
            };
            let opt = AdamW::from_state(spec.adamw.clone(), moments).map_err(|e| op.fail(e))?;
            Ok((TrainerState { schedule: spec.schedule.clone(), adamw: spec.adamw.clone(), ..st }, opt))
        }
        _ => Ok((
            TrainerState {
                step: 0,
                examples_seen: 0,
                tokens_seen: 0,
                schedule: spec.schedule.clone(),
                adamw: spec.adamw.clone(),
                rng: ctx.pipeline.seed ^ 0x5eed,
                last_loss: None,
            },
            AdamW::new(spec.adamw.clone()),
        )),
    }
}
