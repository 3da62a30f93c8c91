//! Supervised fine-tuning: AdamW with decoupled weight decay, LR schedules, gradient clipping,
//! micro-batches with gradient accumulation, and optimizer/scheduler state for checkpoints.

pub mod cpu;
pub mod epochs;
pub mod qwen;
pub mod regions;

use crate::model::layers::{masked_bce_with_logits, masked_cross_entropy};
use crate::model::policy::{ModelError, Policy, Result};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Learning rate as a function of the optimizer step, carried across iterations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    Constant {
        lr: f64,
    },
    /// Linear warm-up to `lr`, then cosine decay to `min_lr` at `total_steps` (flat after).
    WarmupCosine {
        lr: f64,
        warmup_steps: u64,
        total_steps: u64,
        #[serde(default)]
        min_lr: f64,
    },
}

impl Schedule {
    /// What makes this schedule unusable, by key: a rate that is not a positive finite number,
    /// `min_lr` above `lr` or negative, more warm-up steps than steps.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let lr = match *self {
            Schedule::Constant { lr } | Schedule::WarmupCosine { lr, .. } => lr,
        };
        if !(lr.is_finite() && lr > 0.0) {
            out.push(("lr", format!("lr must be a positive finite number, got {lr}")));
        }
        if let Schedule::WarmupCosine { lr, warmup_steps, total_steps, min_lr } = *self {
            if !(min_lr.is_finite() && min_lr >= 0.0 && min_lr <= lr) {
                out.push(("min_lr", format!("min_lr must be between 0 and lr ({lr}), got {min_lr}")));
            }
            if warmup_steps > total_steps {
                out.push(("warmup_steps", format!("warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps})")));
            }
        }
        out
    }

    pub fn lr_at(&self, step: u64) -> f64 {
        match *self {
            Schedule::Constant { lr } => lr,
            Schedule::WarmupCosine { lr, warmup_steps, total_steps, min_lr } => {
                if step < warmup_steps {
                    lr * (step + 1) as f64 / warmup_steps as f64
                } else if step >= total_steps {
                    min_lr
                } else {
                    let span = (total_steps - warmup_steps).max(1) as f64;
                    let progress = (step - warmup_steps) as f64 / span;
                    min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    #[serde(default = "beta1")]
    pub beta1: f64,
    #[serde(default = "beta2")]
    pub beta2: f64,
    #[serde(default = "eps")]
    pub eps: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Weight-name prefixes that are not trained (e.g. `vision.`: a pretrained encoder kept
    /// as it is); their gradients are dropped before clipping.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<String>,
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn eps() -> f64 {
    1e-8
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: beta1(), beta2: beta2(), eps: eps(), weight_decay: 0.0, freeze: vec![] }
    }
}

/// AdamW whose moments can be saved and restored.
pub struct AdamW {
    pub cfg: AdamWConfig,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig) -> Self {
        Self { cfg, m: BTreeMap::new(), v: BTreeMap::new() }
    }

    /// Whether `name` is excluded from training by `freeze`.
    pub fn frozen(&self, name: &str) -> bool {
        self.cfg.freeze.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// One update of every variable with a gradient. `t` is the 1-based step (bias correction).
    pub fn step(&mut self, vars: &[(String, Var)], grads: &BTreeMap<String, Tensor>, lr: f64, t: u64) -> Result<()> {
        let c = &self.cfg;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t as i32), 1.0 - c.beta2.powi(t as i32));
        for (name, var) in vars {
            let Some(g) = grads.get(name) else { continue };
            if var.device().is_cpu() && var.dtype() == DType::F32 && g.dtype() == DType::F32 {
                // one pass over plain buffers instead of a dozen candle ops
                let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
                let shape = var.shape().clone();
                let (mut w, gv) = (flat(var.as_tensor())?, flat(g)?);
                let mut m = self.m.get(name).map(flat).transpose()?.unwrap_or_else(|| vec![0.0; w.len()]);
                let mut v = self.v.get(name).map(flat).transpose()?.unwrap_or_else(|| vec![0.0; w.len()]);
                let decay = if c.weight_decay > 0.0 && var.rank() >= 2 { (1.0 - lr * c.weight_decay) as f32 } else { 1.0 };
                let step = crate::model::tiny_vlm::kernels::AdamWStep {
                    beta1: c.beta1 as f32,
                    beta2: c.beta2 as f32,
                    inv_bc1: (1.0 / bc1) as f32,
                    inv_bc2: (1.0 / bc2) as f32,
                    eps: c.eps as f32,
                    lr: lr as f32,
                    decay,
                };
                crate::model::tiny_vlm::kernels::adamw(&mut w, &mut m, &mut v, &gv, step);
                let dev = var.device();
                var.set(&Tensor::from_vec(w, &shape, dev)?)?;
                self.m.insert(name.clone(), Tensor::from_vec(m, &shape, dev)?);
                self.v.insert(name.clone(), Tensor::from_vec(v, &shape, dev)?);
                continue;
            }
            let m = match self.m.get(name) {
                Some(m) => ((m * c.beta1)? + (g * (1.0 - c.beta1))?)?,
                None => (g * (1.0 - c.beta1))?,
            };
            let v = match self.v.get(name) {
                Some(v) => ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?,
                None => (g.sqr()? * (1.0 - c.beta2))?,
            };
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let mut w = var.as_tensor().clone();
            if c.weight_decay > 0.0 && w.rank() >= 2 {
                w = (w * (1.0 - lr * c.weight_decay))?;
            }
            var.set(&(w - (update * lr)?)?)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }

    /// Moments as `exp_avg.<name>` / `exp_avg_sq.<name>`.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (k, t) in &self.m {
            out.insert(format!("exp_avg.{k}"), t.clone());
        }
        for (k, t) in &self.v {
            out.insert(format!("exp_avg_sq.{k}"), t.clone());
        }
        out
    }

    pub fn from_state(cfg: AdamWConfig, tensors: HashMap<String, Tensor>) -> Result<Self> {
        let mut o = Self::new(cfg);
        for (k, t) in tensors {
            if let Some(n) = k.strip_prefix("exp_avg_sq.") {
                o.v.insert(n.to_string(), t);
            } else if let Some(n) = k.strip_prefix("exp_avg.") {
                o.m.insert(n.to_string(), t);
            } else {
                return Err(ModelError::Invalid(format!("optimizer state: unexpected tensor `{k}`")));
            }
        }
        Ok(o)
    }
}

/// Counters and settings saved with a checkpoint (`trainer_state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken so far (the scheduler position).
    pub step: u64,
    pub examples_seen: u64,
    pub tokens_seen: u64,
    pub schedule: Schedule,
    pub adamw: AdamWConfig,
    /// Seed of the data order of the next epoch.
    pub rng: u64,
    #[serde(default)]
    pub last_loss: Option<f64>,
}

/// One SFT example: the prompt `[bos, image, question…]`, the response tokens followed by
/// EOS, and the image patches. The loss is on the response tokens only.
#[derive(Debug, Clone)]
pub struct Example {
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
    /// Shared by the examples of one image (a drill set holds ≈ 34 per image).
    pub patches: std::sync::Arc<[f32]>,
    /// The frozen vision encoder's output for the image (patches × vision hidden), computed
    /// once per image by [`frozen_features`]; training reads it instead of running the encoder.
    pub features: Option<std::sync::Arc<[f32]>>,
    /// PRM training only: (index into `response` of a step's last token, label in [0, 1]).
    pub labels: Vec<(usize, f32)>,
}

impl Example {
    /// How many loss terms the example contributes: response tokens, or step labels for a PRM.
    pub fn loss_terms(&self, prm: bool) -> usize {
        if prm {
            self.labels.len()
        } else {
            self.response.len()
        }
    }
}

/// When the policy trains on the CPU with its vision encoder frozen, runs the encoder once per
/// distinct image (examples sharing one `patches` allocation share it) on up to
/// [`crate::model::threads`] threads and stores its output in each example's `features`.
pub fn frozen_features(policy: &Policy, examples: &mut [Example]) -> Result<()> {
    if !policy.device.is_cpu() || autograd_forced() || !policy.model.vision_is_frozen() {
        return Ok(());
    }
    let Some(vision) = policy.model.cpu_vision()? else { return Ok(()) };
    let mut images: Vec<std::sync::Arc<[f32]>> = Vec::new();
    let mut index = std::collections::HashMap::new();
    let which: Vec<usize> = examples
        .iter()
        .map(|e| {
            *index.entry(std::sync::Arc::as_ptr(&e.patches) as *const f32 as usize).or_insert_with(|| {
                images.push(e.patches.clone());
                images.len() - 1
            })
        })
        .collect();
    let threads = crate::model::threads().clamp(1, images.len().max(1));
    let per = images.len().div_ceil(threads).max(1);
    let feats: Vec<std::sync::Arc<[f32]>> = std::thread::scope(|s| {
        let handles: Vec<_> =
            images.chunks(per).map(|part| s.spawn(|| part.iter().map(|p| std::sync::Arc::from(vision.forward(p, 1))).collect::<Vec<_>>())).collect();
        handles.into_iter().flat_map(|h| h.join().expect("a vision thread panicked")).collect()
    });
    for (e, i) in examples.iter_mut().zip(which) {
        e.features = Some(feats[i].clone());
    }
    Ok(())
}

/// Inputs of one micro-batch: ids (B, T) right-padded, patches, targets and loss weights in
/// the expanded (image-features) coordinates. Returns also the number of target tokens.
pub fn batch_tensors(policy: &Policy, examples: &[&Example]) -> Result<(Tensor, Tensor, Tensor, Tensor, usize)> {
    let cfg = &policy.cfg;
    let dev = &policy.device;
    let np = cfg.vision_config.num_patches();
    let ni = cfg.vision_config.image_tokens();
    let pd = cfg.vision_config.patch_dim();
    let t = examples.iter().map(|e| e.prompt.len() + e.response.len()).max().unwrap_or(0);
    let texp = t - 1 + ni;
    let b = examples.len();
    let (mut ids, mut patches, mut targets, mut weights) = (Vec::new(), Vec::new(), vec![0u32; b * texp], vec![0f32; b * texp]);
    let mut n_tokens = 0;
    for (row, e) in examples.iter().enumerate() {
        if e.prompt.len() < 2 || e.prompt[1] != cfg.image_token_id {
            return Err(ModelError::Invalid("an example's prompt must start with [bos, image]".into()));
        }
        let mut seq: Vec<u32> = e.prompt.iter().chain(&e.response).copied().collect();
        seq.resize(t, cfg.pad_token_id);
        ids.extend_from_slice(&seq);
        patches.extend_from_slice(&e.patches);
        // expanded position of sequence index i ≥ 2 is i − 1 + P
        let first = e.prompt.len();
        for j in 0..e.response.len() {
            let target_seq = first + j;
            let pos = target_seq - 1 + ni - 1;
            targets[row * texp + pos] = e.response[j];
            weights[row * texp + pos] = 1.0;
            n_tokens += 1;
        }
    }
    Ok((
        Tensor::from_vec(ids, (b, t), dev)?,
        Tensor::from_vec(patches, (b, np, pd), dev)?,
        Tensor::from_vec(targets, (b, texp), dev)?,
        Tensor::from_vec(weights, (b, texp), dev)?,
        n_tokens,
    ))
}

/// Mean loss of a micro-batch and its number of terms: token cross-entropy for a policy,
/// binary cross-entropy of the step scores against the step labels for a PRM.
pub fn batch_loss(policy: &Policy, examples: &[&Example]) -> Result<(Tensor, usize)> {
    let (ids, patches, targets, weights, n) = batch_tensors(policy, examples)?;
    if !policy.cfg.is_prm() {
        let logits = policy.model.forward(&ids, 1, &patches)?;
        return Ok((masked_cross_entropy(&logits, &targets, &weights)?, n));
    }
    let (b, texp) = targets.dims2()?;
    let ni = policy.cfg.vision_config.image_tokens();
    let (mut labels, mut w) = (vec![0f32; b * texp], vec![0f32; b * texp]);
    let mut n = 0;
    for (row, e) in examples.iter().enumerate() {
        for &(j, y) in &e.labels {
            if j >= e.response.len() || !(0.0..=1.0).contains(&y) {
                return Err(ModelError::Invalid(format!("step label ({j}, {y}) outside the response of {} tokens or [0, 1]", e.response.len())));
            }
            // the hidden state of sequence token s sits at s − 1 + image_tokens
            let pos = e.prompt.len() + j - 1 + ni;
            labels[row * texp + pos] = y;
            w[row * texp + pos] = 1.0;
            n += 1;
        }
    }
    let dev = &policy.device;
    let scores = policy.model.scores(&policy.model.forward_hidden(&ids, 1, &patches)?)?;
    let loss = masked_bce_with_logits(&scores, &Tensor::from_vec(labels, (b, texp), dev)?, &Tensor::from_vec(w, (b, texp), dev)?)?;
    Ok((loss, n))
}

#[derive(Debug, thiserror::Error)]
#[error("the loss became {loss} at optimizer step {step}; the step was not applied")]
pub struct NonFiniteLoss {
    pub loss: f64,
    pub step: u64,
}

/// One optimizer step over micro-batches (gradient accumulation, token-weighted mean),
/// with global-norm clipping. Returns the step's mean loss. A NaN/inf loss applies nothing.
pub fn train_step(policy: &Policy, opt: &mut AdamW, state: &mut TrainerState, micro: &[Vec<&Example>], clip: Option<f64>) -> Result<f64> {
    let prm = policy.cfg.is_prm();
    let terms = |e: &Example| e.loss_terms(prm);
    // on the CPU the decoder trains outside candle's autograd (`train::cpu`), on a snapshot of
    // this step's weights
    let dec = if policy.device.is_cpu() && !autograd_forced() { Some(policy.model.cpu_decoder()?) } else { None };
    // a frozen encoder runs outside candle too
    let precomputed = micro.iter().flatten().all(|e| e.features.is_some());
    let vision = if dec.is_some() && policy.model.vision_is_frozen() && !precomputed { policy.model.cpu_vision()? } else { None };
    optimizer_step(&policy.named_vars(), opt, state, micro, clip, terms, |mb, share, grads| {
        if !policy.device.is_cpu() {
            let (loss, _) = batch_loss(policy, mb)?;
            return grads.backward(&loss, share);
        }
        // sub-batches of similar lengths pad less; the mean loss is the same up to rounding, and
        // the stable sort keeps it independent of the thread count
        let mut by_len = mb.to_vec();
        by_len.sort_by_key(|e| e.prompt.len() + e.response.len());
        chunked_backward(&by_len, share, grads, terms, |chunk, scale| match &dec {
            Some(dec) => cpu::sub_batch_grads(policy, dec, vision.as_ref(), chunk, scale),
            None => autograd(&batch_loss(policy, chunk)?.0, scale),
        })
    })
}

/// Whether the tiny VLM trains on the CPU through candle's autograd; see [`force_autograd`].
static AUTOGRAD_FORCED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Trains the tiny VLM on the CPU through candle's autograd, as on a GPU, instead of the
/// hand-written decoder backward (for comparisons and benchmarks), for the rest of the process.
/// The CLI sets it at start-up from `MSTAR_TRAIN_AUTOGRAD=1`; the library reads no environment.
/// A process-wide switch, not an argument, because the trainers that call [`train_step`] take
/// none for it.
pub fn force_autograd(on: bool) {
    AUTOGRAD_FORCED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`force_autograd`] is on.
pub fn autograd_forced() -> bool {
    AUTOGRAD_FORCED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Gradients of one sub-batch: candle's gradient store, gradients by variable name, or both.
#[derive(Default)]
pub struct Partial {
    pub store: Option<candle_core::backprop::GradStore>,
    pub named: Vec<(String, Tensor)>,
}

/// The mean loss of `loss` and the autograd gradients of `loss × scale`.
pub fn autograd(loss: &Tensor, scale: f64) -> Result<(f64, Partial)> {
    let l = loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? as f64;
    let store = (loss * scale)?.backward()?;
    Ok((l, Partial { store: Some(store), named: vec![] }))
}

/// Examples per sub-batch when [`chunked_backward`] splits a CPU micro-batch. Fixed, so the
/// gradients do not depend on how many threads compute them.
pub const CPU_CHUNK: usize = 8;

/// Adds to `grads` the gradients of a micro-batch's mean loss × `share`, computed in
/// sub-batches of [`CPU_CHUNK`] examples on up to [`crate::model::threads`] threads and summed
/// in sub-batch order. `run(sub_batch, scale)` returns a sub-batch's mean loss and the
/// gradients of that loss × `scale` (here its share of the loss terms × `share`). Returns the
/// micro-batch's mean loss. On the CPU this runs each sub-batch on one thread, about twice as
/// fast on 2 cores as one batch with candle's per-op threads (`mstar model bench`).
pub fn chunked_backward<E: Sync>(
    mb: &[&E],
    share: f64,
    grads: &mut Grads,
    terms: impl Fn(&E) -> usize + Sync,
    run: impl Fn(&[&E], f64) -> Result<(f64, Partial)> + Sync,
) -> Result<f64> {
    let chunks: Vec<&[&E]> = mb.chunks(CPU_CHUNK).collect();
    if chunks.len() <= 1 {
        let (l, part) = run(mb, share)?;
        grads.check_value(l)?;
        grads.add_partial(&part)?;
        return Ok(l);
    }
    let n_mb = mb.iter().map(|e| terms(e)).sum::<usize>().max(1) as f64;
    let weight = |c: &[&E]| c.iter().map(|e| terms(e)).sum::<usize>() as f64 / n_mb;
    let done = on_threads(&chunks, |c| run(c, share * weight(c)));
    let mut mean = 0.0;
    for (c, r) in chunks.iter().zip(done) {
        let (l, part) = r?;
        mean += grads.check_value(l)? * weight(c);
        grads.add_partial(&part)?;
    }
    Ok(mean)
}

/// `run` of every item, in item order, on up to [`crate::model::threads`] threads (item i on
/// thread i mod threads, so the assignment does not depend on timing); one item runs on the
/// calling thread.
pub fn on_threads<C: Sync, T: Send>(items: &[C], run: impl Fn(&C) -> T + Sync) -> Vec<T> {
    if items.len() <= 1 {
        return items.iter().map(run).collect();
    }
    let threads = crate::model::threads().clamp(1, items.len());
    let mut done: Vec<Option<T>> = (0..items.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let run = &run;
                s.spawn(move || (t..items.len()).step_by(threads).map(|i| (i, run(&items[i]))).collect::<Vec<_>>())
            })
            .collect();
        for h in handles {
            for (i, r) in h.join().expect("a training thread panicked") {
                done[i] = Some(r);
            }
        }
    });
    done.into_iter().map(|r| r.expect("every item ran")).collect()
}

/// Gradients of one optimizer step, summed over micro-batches, by variable name.
pub struct Grads<'a> {
    vars: &'a [(String, Var)],
    frozen: Vec<bool>,
    step: u64,
    pub sum: BTreeMap<String, Tensor>,
}

impl<'a> Grads<'a> {
    /// No gradients yet, for `vars` as `opt` trains them (its `freeze` list), at optimizer `step`.
    pub fn new(vars: &'a [(String, Var)], opt: &AdamW, step: u64) -> Self {
        Grads { vars, frozen: vars.iter().map(|(n, _)| opt.frozen(n)).collect(), step, sum: BTreeMap::new() }
    }

    /// Adds the gradients `store` holds for the (unfrozen) variables.
    pub fn add(&mut self, store: &candle_core::backprop::GradStore) -> Result<()> {
        for ((name, var), &frozen) in self.vars.iter().zip(&self.frozen) {
            if frozen {
                continue;
            }
            if let Some(g) = store.get(var.as_tensor()) {
                let acc = match self.sum.remove(name) {
                    Some(prev) => (prev + g)?,
                    None => g.clone(),
                };
                self.sum.insert(name.clone(), acc);
            }
        }
        Ok(())
    }

    /// Adds a sub-batch's gradients: its gradient store's and its named ones.
    pub fn add_partial(&mut self, part: &Partial) -> Result<()> {
        if let Some(store) = &part.store {
            self.add(store)?;
        }
        for (name, g) in &part.named {
            let Some(i) = self.vars.iter().position(|(n, _)| n == name) else {
                return Err(ModelError::Invalid(format!("a gradient for `{name}`, which is not a weight of the model")));
            };
            if self.frozen[i] {
                continue;
            }
            let acc = match self.sum.remove(name) {
                Some(prev) => (prev + g)?,
                None => g.clone(),
            };
            self.sum.insert(name.clone(), acc);
        }
        Ok(())
    }

    /// Refuses a NaN/inf loss (nothing is applied), else adds the gradients of `loss · scale`.
    /// Returns the loss.
    pub fn backward(&mut self, loss: &Tensor, scale: f64) -> Result<f64> {
        let l = self.check(loss)?;
        let store = (loss * scale)?.backward()?;
        self.add(&store)?;
        Ok(l)
    }

    /// The loss's value, or the error that stops the stage when it is not finite.
    pub fn check(&self, loss: &Tensor) -> Result<f64> {
        self.check_value(loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? as f64)
    }

    /// `l`, or the error that stops the stage when it is not finite.
    pub fn check_value(&self, l: f64) -> Result<f64> {
        if !l.is_finite() {
            return Err(ModelError::Invalid(NonFiniteLoss { loss: l, step: self.step }.to_string()));
        }
        Ok(l)
    }
}

/// One optimizer step of any model. `run(micro_batch, share, grads)` adds the gradients of
/// the micro-batch's mean loss times `share` (its part of the step's loss terms, which `terms`
/// counts per example) to `grads` and returns that mean loss. The summed gradients are
/// clipped to a global norm and applied by AdamW at the schedule's learning rate. A NaN/inf
/// loss or gradient norm applies nothing.
pub fn optimizer_step<E>(
    vars: &[(String, Var)],
    opt: &mut AdamW,
    state: &mut TrainerState,
    micro: &[Vec<&E>],
    clip: Option<f64>,
    terms: impl Fn(&E) -> usize,
    mut run: impl FnMut(&[&E], f64, &mut Grads) -> Result<f64>,
) -> Result<f64> {
    let total: usize = micro.iter().map(|m| m.iter().map(|e| terms(e)).sum::<usize>()).sum();
    let mut grads = Grads::new(vars, opt, state.step);
    let mut loss_sum = 0.0;
    for mb in micro {
        let n: usize = mb.iter().map(|e| terms(e)).sum();
        let share = n as f64 / total.max(1) as f64;
        loss_sum += run(mb, share, &mut grads)? * share;
    }
    let mut grads = grads.sum;
    if let Some(max) = clip {
        let mut sq = 0f64;
        for g in grads.values() {
            sq += g.to_dtype(candle_core::DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let norm = sq.sqrt();
        if !norm.is_finite() {
            return Err(ModelError::Invalid(format!("the gradient norm became {norm} at optimizer step {}; the step was not applied", state.step)));
        }
        if norm > max {
            let s = max / (norm + 1e-6);
            for g in grads.values_mut() {
                *g = (&*g * s)?;
            }
        }
    }
    let lr = state.schedule.lr_at(state.step);
    opt.step(vars, &grads, lr, state.step + 1)?;
    state.step += 1;
    state.examples_seen += micro.iter().map(|m| m.len() as u64).sum::<u64>();
    state.tokens_seen += total as u64;
    state.last_loss = Some(loss_sum);
    Ok(loss_sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let s = Schedule::WarmupCosine { lr: 1.0, warmup_steps: 10, total_steps: 110, min_lr: 0.1 };
        assert!((s.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(10) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(60) - 0.55).abs() < 1e-12);
        assert!((s.lr_at(500) - 0.1).abs() < 1e-12);
        assert_eq!(Schedule::Constant { lr: 0.3 }.lr_at(1000), 0.3);
    }
}
