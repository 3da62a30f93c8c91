//! The `train` operator: SFT of a policy on (question, image, response) rows, starting from the
//! base checkpoint or this stage's previous one, carrying optimizer and schedule when asked.
//! Outputs a checkpoint and a `train_log` side table.

use super::{OpContext, OpError, OpOutput, Operator, Result};
use crate::model::checkpoint::{self, OPTIMIZER_FILE, STATE_FILE};
use crate::model::lm::{QwenLm, QwenTraining, TrainExample, TrainRow, TrainableLm};
use crate::model::policy::{safetensors_bytes, Policy};
use crate::model::qwen2_5_vl::lora::LoraConfig;
use crate::model::tiny_vlm::image_patches;
use crate::spec::{Pipeline, Scope, StageCheck, StageSpec};
use crate::train::epochs::{run_epochs, StepLog};
use crate::train::{AdamW, TrainerState};
use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// train: SFT of a policy on (prompt, image, response) rows; outputs a checkpoint.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Stage with `question`, `images` and `response` columns (this iteration's rows).
    pub data: String,
    /// Stage holding the starting checkpoint (a model_init or a setup train stage).
    #[serde(default)]
    pub base: String,
    /// Instead of `base`: a Hugging Face checkpoint folder (Qwen2.5-VL, Qwen3-VL) to fine-tune.
    #[serde(default)]
    pub model: Option<crate::spec::ModelPath>,
    /// With `model`: train LoRA adapters (peft's format) instead of every weight.
    #[serde(default)]
    pub lora: Option<LoraSpec>,
    /// With `model`: recompute each decoder layer's activations in the backward pass instead
    /// of keeping them (less memory, one more forward).
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// `last`: start from this stage's previous-iteration checkpoint when there is one
    /// (continuous / iterative RFT); `initial`: always from `base` (ReST-EM).
    #[serde(default)]
    pub init: Init,
    /// `continue`: keep the optimizer moments and scheduler position of this stage's previous
    /// iteration (a fresh optimizer when it starts from `base`); `reset`: a fresh optimizer.
    #[serde(default)]
    pub optimizer: OptimizerMode,
    #[serde(default = "default_epochs")]
    pub epochs: u32,
    #[serde(default = "default_micro")]
    pub micro_batch: usize,
    #[serde(default = "default_accum")]
    pub grad_accum: usize,
    pub schedule: crate::train::Schedule,
    #[serde(default)]
    pub adamw: crate::train::AdamWConfig,
    /// Global gradient-norm clip (none when absent).
    #[serde(default)]
    pub clip: Option<f64>,
    /// `sft`: token cross-entropy on the responses (a policy). `prm`: a process reward model,
    /// binary cross-entropy of each step's score against the `labels` column (one label in
    /// [0, 1] per step of `response`); a policy base gets a fresh score head. `regions`: vision
    /// pretraining on `images` and `region_labels` (g×g class ids per image, reading order).
    #[serde(default)]
    pub objective: TrainObjective,
    /// `regions` only: a stage of held-out `images` and `region_labels`, scored at every tenth
    /// of the training and at the end into the `region_eval` table (per label: regions, correct).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_data: Option<String>,
}

/// Where a `train` stage starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// This stage's previous-iteration checkpoint when there is one, else `base`.
    #[default]
    Last,
    /// Always `base`.
    Initial,
}

/// What a `train` stage does with the optimizer of its previous iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerMode {
    /// Keep its moments and the schedule's position.
    #[default]
    Continue,
    /// A fresh optimizer.
    Reset,
}

/// What a `train` stage trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainObjective {
    #[default]
    Sft,
    Prm,
    Regions,
}

impl std::fmt::Display for TrainObjective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrainObjective::Sft => "sft",
            TrainObjective::Prm => "prm",
            TrainObjective::Regions => "regions",
        })
    }
}
fn default_epochs() -> u32 {
    1
}
fn default_micro() -> usize {
    16
}
fn default_accum() -> usize {
    1
}

/// LoRA adapters: `rank`, `alpha` (scale alpha / rank) and the module names to adapt (every
/// linear layer of that name, as peft's `target_modules`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<String>,
}

impl super::OpConfig for TrainSpec {
    fn check(&self, c: &mut StageCheck) {
        if self.micro_batch == 0 || self.grad_accum == 0 {
            c.error("micro_batch", "micro_batch and grad_accum must be at least 1");
        }
        for (field, msg) in self.schedule.problems() {
            c.error(&format!("schedule.{field}"), msg);
        }
        match (self.base.is_empty(), &self.model) {
            (true, None) => c.error("base", "give `base` (a stage with a checkpoint) or `model` (a checkpoint folder)"),
            (false, Some(_)) => c.error("model", "give `base` (a stage with a checkpoint) or `model` (a checkpoint folder), not both"),
            (true, Some(_)) if self.objective == TrainObjective::Regions => c.error("objective", "a `model` folder trains with objective `sft` or `prm`"),
            _ => {}
        }
        if self.model.is_none() && (self.lora.is_some() || self.gradient_checkpointing) {
            c.error(if self.lora.is_some() { "lora" } else { "gradient_checkpointing" }, "applies to a `model` folder only");
        }
        if let Some(l) = &self.lora {
            if l.rank == 0 || !(l.alpha.is_finite() && l.alpha > 0.0) || l.targets.is_empty() {
                c.error("lora", "lora needs rank ≥ 1, alpha > 0 and at least one target module");
            }
        }
        if self.eval_data.is_some() && self.objective != TrainObjective::Regions {
            c.error("eval_data", "eval_data applies to objective `regions` only");
        }
        let named = [("data", &self.data), ("base", &self.base)].into_iter().chain(self.eval_data.as_ref().map(|e| ("eval_data", e)));
        for (field, name) in named.filter(|(_, n)| !n.is_empty()) {
            c.reads(field, name);
        }
        if self.init == Init::Last && c.scope() == Scope::Iteration {
            c.reads_own_prev();
        }
    }

    fn build(&self, pipeline: &Pipeline, stage: &StageSpec) -> Result<Box<dyn Operator>> {
        Ok(Box::new(TrainOp::new(pipeline, &stage.id, self)))
    }
}

pub struct TrainOp {
    pub(crate) stage: String,
    pub(crate) spec: TrainSpec,
    /// `model.path` resolved against the pipeline's folder.
    model_dir: Option<String>,
}

impl TrainOp {
    pub fn new(pipeline: &Pipeline, stage: &str, spec: &TrainSpec) -> Self {
        Self { stage: stage.to_string(), spec: spec.clone(), model_dir: spec.model.as_ref().map(|m| pipeline.resolve_path(&m.path)) }
    }

    pub(crate) fn fail(&self, e: impl std::fmt::Display) -> OpError {
        OpError::Invalid(format!("train: {e}"))
    }
}

/// The first image's bytes of row `i` of an `images` column (list of struct{bytes, path}).
pub fn first_image(col: &ArrayRef, i: usize) -> Option<Vec<u8>> {
    if col.is_null(i) {
        return None;
    }
    let list = col.as_list::<i32>().value(i);
    if list.is_empty() {
        return None;
    }
    let s = list.as_struct();
    let b = s.column_by_name("bytes")?;
    (!b.is_null(0)).then(|| b.as_binary::<i32>().value(0).to_vec())
}

impl Operator for TrainOp {

    /// 2: CPU micro-batches are sorted by length before their split into sub-batches, which
    /// changes the gradients' rounding. 3: on the CPU the decoder's backward is hand-written
    /// (`tiny_vlm::train_cpu`), equal to candle's autograd up to rounding. 4: its attention,
    /// softmax and SiLU on `tiny_vlm::kernels`, a frozen encoder outside candle, AdamW in one
    /// pass, vision pretraining in sub-batches on threads (the same math, other rounding).
    fn version(&self) -> u32 {
        4
    }

    fn fingerprint_extra<'a>(&'a self, _iteration: u32) -> BoxFuture<'a, Result<Value>> {
        // a checkpoint folder is an input: its files' names, sizes and mtimes
        async move { Ok(self.model_dir.as_deref().map(super::models::folder_fingerprint).unwrap_or_else(|| json!({}))) }.boxed()
    }

    fn output_schema<'a>(&'a self, _ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<Option<SchemaRef>>> {
        async move { Ok(None) }.boxed()
    }

    fn execute<'a>(&'a self, ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<OpOutput>> {
        async move {
            let prm = self.spec.objective == TrainObjective::Prm;
            let (mut lm, saved): (Box<dyn TrainableLm>, Option<Saved>) = match &self.model_dir {
                Some(dir) => {
                    let (lm, saved) = self.open_folder(ctx, dir, prm).await?;
                    (Box::new(lm), saved)
                }
                None => {
                    let (mut policy, saved) = self.open_tiny(ctx, prm).await?;
                    if self.spec.objective == TrainObjective::Regions {
                        let (state, opt) = self.resume(ctx, saved.as_ref(), &policy.device)?;
                        policy.freeze(&opt);
                        return self.pretrain_regions(ctx, policy, state).await;
                    }
                    (Box::new(policy), saved)
                }
            };
            let (mut state, mut opt) = self.resume(ctx, saved.as_ref(), &lm.device())?;
            lm.freeze(&opt);
            let examples = self.examples(ctx, lm.as_ref(), prm).await?;
            if examples.is_empty() {
                eprintln!("  train: no rows in `{}` this iteration; the checkpoint is carried over", self.spec.data);
            }
            let per_step = self.spec.micro_batch * self.spec.grad_accum;
            let started = std::time::Instant::now();
            let log = run_epochs(
                "train",
                &examples,
                self.spec.epochs,
                per_step,
                &mut state,
                &ctx.cancel,
                |state, batch, _| {
                    let micro: Vec<Vec<&TrainExample>> = batch.chunks(self.spec.micro_batch).map(<[&TrainExample]>::to_vec).collect();
                    lm.train_step(&mut opt, state, &micro, self.spec.clip).map_err(|e| self.fail(e))
                },
                |_| Ok(()),
            )?;
            let losses = &log.losses;
            if let Some(l) = losses.last() {
                eprintln!(
                    "  train: {} examples × {} epoch(s), {} steps in {:.1}s, loss {:.4} → {:.4}",
                    examples.len(),
                    self.spec.epochs,
                    losses.len(),
                    started.elapsed().as_secs_f64(),
                    losses[0],
                    l
                );
            }
            lm.end_training();
            ctx.side.push("train_log", train_log(&self.stage, log)?);
            let mut files = lm.to_files().map_err(|e| self.fail(e))?;
            files.push((OPTIMIZER_FILE.to_string(), safetensors_bytes(&opt.state_tensors()).map_err(|e| self.fail(e))?));
            files.push((STATE_FILE.to_string(), serde_json::to_vec_pretty(&state).map_err(|e| self.fail(e))?));
            self.write(ctx, files).await
        }
        .boxed()
    }
}

/// The trainer state and optimizer moments of this stage's previous checkpoint, when training
/// goes on from it.
struct Saved {
    state: Vec<u8>,
    optimizer: Option<Vec<u8>>,
}

impl TrainOp {
    /// The tiny VLM to train: this stage's previous checkpoint (`init: last`) or the base
    /// stage's; a reward head added for `objective: prm`.
    async fn open_tiny(&self, ctx: &OpContext<'_>, prm: bool) -> Result<(Policy, Option<Saved>)> {
        let manifests = |name: &str| ctx.input_manifests.iter().find(|(n, _)| n == name).map(|(_, m)| m.as_slice()).unwrap_or(&[]);
        let own_prev = if self.spec.init == Init::Last { checkpoint::latest(manifests(&self.stage)) } else { None };
        let from_own = own_prev.is_some();
        let from = match own_prev {
            Some(m) => m,
            None => checkpoint::latest(manifests(&self.spec.base)).ok_or_else(|| self.fail(format!("base `{}` has no committed checkpoint", self.spec.base)))?,
        };
        let mut files = checkpoint::read(ctx.store, from).await?;
        let mut policy = Policy::from_files(&files, &crate::model::device()).map_err(|e| self.fail(e))?;
        if prm {
            policy = policy.into_prm(ctx.pipeline.seed).map_err(|e| self.fail(e))?;
        } else if policy.cfg.is_prm() {
            return Err(self.fail(format!("objective `sft` but the checkpoint of `{}` is a process reward model", from.stage)));
        }
        // the optimizer and schedule go on only from this stage's own checkpoint; starting from
        // another stage's (the base) they start fresh — the warm-up's schedule is the warm-up's
        let saved = match files.remove(STATE_FILE) {
            Some(state) if from_own => Some(Saved { state, optimizer: files.remove(OPTIMIZER_FILE) }),
            _ => None,
        };
        Ok((policy, saved))
    }

    /// A Qwen-VL checkpoint folder to train: this stage's previous checkpoint (`init: last`)
    /// or the folder `dir`, with new LoRA adapters when asked.
    async fn open_folder(&self, ctx: &OpContext<'_>, dir: &str, prm: bool) -> Result<(QwenLm, Option<Saved>)> {
        let spec = &self.spec;
        let own = ctx.input_manifests.iter().find(|(n, _)| n == &self.stage).map(|(_, m)| m.as_slice()).unwrap_or(&[]);
        let prev = if spec.init == Init::Last { checkpoint::latest(own) } else { None };
        let prev_dir = match prev {
            Some(m) => Some(checkpoint::local_dir(ctx.store, m).await?),
            None => None,
        };
        let lora = spec.lora.as_ref().map(|l| LoraConfig { rank: l.rank, alpha: l.alpha, targets: l.targets.clone() });
        let (base, previous, seed, recompute, lora2) =
            (PathBuf::from(dir), prev_dir.as_ref().map(|d| d.to_path_buf()), ctx.pipeline.seed, spec.gradient_checkpointing, lora.clone());
        let lm = tokio::task::spawn_blocking(move || {
            let dev = crate::model::device();
            let how = QwenTraining { base: &base, previous: previous.as_deref(), lora: lora2, prm, seed, gradient_checkpointing: recompute };
            QwenLm::open_for_training(&how, crate::model::hf_dtype(&dev), &dev)
        })
        .await
        .map_err(|e| self.fail(e))?
        .map_err(|e| self.fail(e))?;
        if prev.is_some() && lm.ck.lora != lora {
            return Err(self.fail(format!(
                "this stage's previous checkpoint has LoRA {:?} but the spec asks for {:?}; start over with `init: initial` or a new stage id",
                lm.ck.lora, lora
            )));
        }
        if lm.ck.is_prm() != prm {
            return Err(self.fail(format!("objective `{}` but the checkpoint {} a process reward model", spec.objective, if prm { "is not" } else { "is" })));
        }
        let saved = match prev_dir.as_deref().map(|d| d.join(STATE_FILE)).filter(|p| p.exists()) {
            Some(sf) => {
                let read = |p: &Path| std::fs::read(p).map_err(|e| self.fail(format!("{}: {e}", p.display())));
                let of = sf.with_file_name(OPTIMIZER_FILE);
                Some(Saved { state: read(&sf)?, optimizer: if of.exists() { Some(read(&of)?) } else { None } })
            }
            None => None,
        };
        Ok((lm, saved))
    }

    /// The optimizer and counters to go on with: the saved ones with `optimizer: continue`, else
    /// fresh ones; the spec's schedule and AdamW settings apply either way.
    fn resume(&self, ctx: &OpContext<'_>, saved: Option<&Saved>, device: &candle_core::Device) -> Result<(TrainerState, AdamW)> {
        let spec = &self.spec;
        match saved {
            Some(saved) if spec.optimizer == OptimizerMode::Continue => {
                let st: TrainerState = serde_json::from_slice(&saved.state).map_err(|e| self.fail(format!("{STATE_FILE}: {e}")))?;
                let moments = match &saved.optimizer {
                    Some(b) => candle_core::safetensors::load_buffer(b, device).map_err(|e| self.fail(format!("{OPTIMIZER_FILE}: {e}")))?,
                    None => Default::default(),
                };
                let opt = AdamW::from_state(spec.adamw.clone(), moments).map_err(|e| self.fail(e))?;
                // the position carries on
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

    /// This iteration's rows of `data` in a fixed order (the epochs' shuffle is seeded), as the
    /// model's examples; a PRM's rows with their step labels checked.
    async fn examples(&self, ctx: &OpContext<'_>, lm: &dyn TrainableLm, prm: bool) -> Result<Vec<TrainExample>> {
        let data = &self.spec.data;
        let filter = ctx.this_iteration(data, "").map(|c| format!(" WHERE {c}")).unwrap_or_default();
        let (q, needs) = super::training_rows_query(data, &filter, prm);
        let batches =
            crate::sql::query(&ctx.session, &q).await.map_err(|e| self.fail(format!("data `{data}` needs columns {needs}: {e}")))?.collect().await?;
        let mut rows: Vec<TrainRow> = Vec::new();
        let columns: Vec<_> = batches.iter().map(|b| Ok((super::strings(b.column(0))?, super::strings(b.column(2))?))).collect::<Result<_>>()?;
        for (b, (qs, rs)) in batches.iter().zip(&columns) {
            let ls = if prm { Some(arrow::compute::cast(b.column(3), &DataType::List(Arc::new(Field::new("item", DataType::Float32, true))))?) } else { None };
            for i in 0..b.num_rows() {
                if qs.is_null(i) || rs.is_null(i) {
                    continue;
                }
                let (question, response) = (qs.value(i), rs.value(i));
                let steps = match &ls {
                    None => None,
                    Some(ls) => {
                        let steps = crate::data::answer::split_steps(response);
                        let labels: Vec<Option<f32>> =
                            if ls.is_null(i) { vec![] } else { ls.as_list::<i32>().value(i).as_primitive::<arrow::datatypes::Float32Type>().iter().collect() };
                        if labels.len() != steps.len() || labels.iter().any(|l| !l.is_some_and(|l| (0.0..=1.0).contains(&l))) {
                            return Err(self.fail(format!(
                                "data `{data}`, row {} (question {question:?}): {} labels for {} steps, or a label outside [0, 1] (labels {labels:?}, response {response:?})",
                                rows.len(),
                                labels.len(),
                                steps.len()
                            )));
                        }
                        Some((steps, labels.into_iter().flatten().collect()))
                    }
                };
                rows.push(TrainRow { question, images: super::models::all_images(b.column(1), i), response, steps });
            }
        }
        lm.encode_examples(&rows).map_err(|e| self.fail(format!("data `{data}`, {e}")))
    }

    /// Commits `files` as this stage's checkpoint.
    async fn write(&self, ctx: &OpContext<'_>, files: Vec<(String, Vec<u8>)>) -> Result<OpOutput> {
        let dir = format!("{}/{}", ctx.files_dir(), ctx.attempt);
        Ok(OpOutput::Files(checkpoint::write(ctx.store, &dir, files).await?))
    }
}

impl TrainOp {
    /// `objective: regions`: vision pretraining on `images` + `region_labels` (a list of g²
    /// class ids per image, regions in reading order); the checkpoint keeps the policy's
    /// weights (the head is dropped) and a fresh optimizer state.
    async fn pretrain_regions(&self, ctx: &OpContext<'_>, policy: Policy, mut state: TrainerState) -> Result<OpOutput> {
        use crate::train::regions::{RegionExample, RegionTrainer};
        let filter = ctx.this_iteration(&self.spec.data, "").map(|c| format!(" WHERE {c}")).unwrap_or_default();
        let examples = self.region_examples(ctx, &policy, &self.spec.data, &filter).await?;
        let held_out = match &self.spec.eval_data {
            Some(t) => self.region_examples(ctx, &policy, t, "").await?,
            None => vec![],
        };
        let Some(first) = examples.first() else { return Err(self.fail(format!("no rows in `{}`", self.spec.data))) };
        let grid = (first.labels.len() as f64).sqrt().round() as usize;
        // a class only the held-out images show still gets an output (never right, and counted)
        let classes = examples.iter().chain(&held_out).flat_map(|e| e.labels.iter()).filter(|&&l| l != u32::MAX).max().map_or(0, |m| *m as usize + 1);
        if grid * grid != first.labels.len() {
            return Err(self.fail(format!("region_labels has {} entries; expected a square number (g × g regions)", first.labels.len())));
        }
        let trainer = RegionTrainer::new(&policy, grid, classes, self.spec.adamw.weight_decay, ctx.pipeline.seed).map_err(|e| self.fail(e))?;
        let held_out: Vec<&RegionExample> = held_out.iter().collect();
        let mut eval_rows: Vec<(i64, u32, u64, u64)> = vec![];
        let mut evaluate = |trainer: &RegionTrainer, step: u64| -> Result<()> {
            if held_out.is_empty() {
                return Ok(());
            }
            let per = trainer
                .evaluate(&policy, &held_out)
                .map_err(|e| self.fail(format!("eval_data `{}`: {e}", self.spec.eval_data.as_deref().unwrap_or_default())))?;
            let (n, c) = per.iter().fold((0, 0), |(n, c), e| (n + e.1, c + e.2));
            eprintln!("  train (regions): held-out accuracy {:.2}% of {n} regions at step {step}", 100.0 * c as f64 / n.max(1) as f64);
            eval_rows.extend(per.into_iter().map(|(l, n, c)| (step as i64, l, n, c)));
            Ok(())
        };
        let trainer = std::cell::RefCell::new(trainer);
        let log = run_epochs(
            "train (regions)",
            &examples,
            self.spec.epochs,
            self.spec.micro_batch.max(1),
            &mut state,
            &ctx.cancel,
            |state, batch: &[&RegionExample], lr| {
                let loss = trainer.borrow_mut().step(&policy, batch, lr).map_err(|e| self.fail(e))?;
                state.step += 1;
                state.examples_seen += batch.len() as u64;
                state.last_loss = Some(loss);
                Ok(loss)
            },
            |state| evaluate(&trainer.borrow(), state.step),
        )?;
        ctx.side.push("train_log", train_log(&self.stage, log)?);
        if !eval_rows.is_empty() {
            ctx.side.push("region_eval", region_eval(&self.stage, &eval_rows)?);
        }
        let mut files = TrainableLm::to_files(&policy).map_err(|e| self.fail(e))?;
        files.push((STATE_FILE.to_string(), serde_json::to_vec_pretty(&state).map_err(|e| self.fail(e))?));
        self.write(ctx, files).await
    }

    /// Rows of `images` + `region_labels` of `table` (a deterministic order), as patches.
    async fn region_examples(&self, ctx: &OpContext<'_>, policy: &Policy, table: &str, filter: &str) -> Result<Vec<crate::train::regions::RegionExample>> {
        let q = format!("SELECT images, region_labels FROM \"{table}\"{filter} ORDER BY region_labels, images[1]['bytes']");
        let batches = crate::sql::query(&ctx.session, &q)
            .await
            .map_err(|e| self.fail(format!("`{table}` needs columns images and region_labels: {e}")))?
            .collect()
            .await?;
        let mut examples = Vec::new();
        for b in &batches {
            let labels = arrow::compute::cast(b.column(1), &DataType::List(Arc::new(Field::new("item", DataType::UInt32, true))))?;
            for i in 0..b.num_rows() {
                let img = first_image(b.column(0), i).ok_or_else(|| self.fail(format!("`{table}` row {i} has no image")))?;
                if labels.is_null(i) {
                    return Err(self.fail(format!("`{table}` row {i} has no region_labels")));
                }
                let l: Vec<u32> =
                    labels.as_list::<i32>().value(i).as_primitive::<arrow::datatypes::UInt32Type>().iter().map(|x| x.unwrap_or(u32::MAX)).collect();
                examples.push(crate::train::regions::RegionExample {
                    patches: image_patches(&img, &policy.cfg.vision_config).map_err(|e| self.fail(e))?,
                    labels: l,
                });
            }
        }
        Ok(examples)
    }
}

/// The `region_eval` table: held-out regions and correct argmaxes per (step, label).
fn region_eval(stage: &str, rows: &[(i64, u32, u64, u64)]) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("stage", DataType::Utf8, false),
            Field::new("step", DataType::Int64, false),
            Field::new("label", DataType::Int64, false),
            Field::new("regions", DataType::Int64, false),
            Field::new("correct", DataType::Int64, false),
        ])),
        vec![
            Arc::new(arrow::array::StringArray::from(vec![stage.to_string(); rows.len()])),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| i64::from(r.1)).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.2 as i64).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.3 as i64).collect::<Vec<_>>())),
        ],
    )?)
}

pub(crate) fn train_log(stage: &str, log: StepLog) -> Result<RecordBatch> {
    let StepLog { steps, epochs, losses, lrs } = log;
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("stage", DataType::Utf8, false),
            Field::new("step", DataType::Int64, false),
            Field::new("epoch", DataType::Int64, false),
            Field::new("loss", DataType::Float64, false),
            Field::new("lr", DataType::Float64, false),
        ])),
        vec![
            Arc::new(arrow::array::StringArray::from(vec![stage.to_string(); steps.len()])),
            Arc::new(Int64Array::from(steps)),
            Arc::new(Int64Array::from(epochs)),
            Arc::new(Float64Array::from(losses)),
            Arc::new(Float64Array::from(lrs)),
        ],
    )?)
}


#[cfg(test)]
mod tests {
    /// The epoch order of the training examples for fixed seeds.
    #[test]
    fn shuffles_are_pinned() {
        for (seed, want) in [(5, [3, 6, 0, 4, 5, 1, 2, 9, 7, 8]), (0x5eed + 1, [6, 3, 2, 7, 0, 5, 1, 9, 8, 4])] {
            let mut v: Vec<usize> = (0..10).collect();
            crate::rng::SplitMix64::new(seed).shuffle(&mut v);
            assert_eq!(v, want, "seed {seed}");
        }
    }
}
